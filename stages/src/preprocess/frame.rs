//! The polars side of preprocess: the bridge from in-memory light curves to one long points
//! frame, the whole-batch expression pipeline (window expressions over (candidate, site)), and
//! the final scatter of its columns into the contiguous tensors.

use polars::prelude::*;

use super::stats::{MeanStd, PreprocessStats};
use super::{Candidate, PreprocessError, CLIP, N_CHANNELS, N_SEQ_SITES, OUTLIER_SIGMA, SEQ_LEN, SEQ_VALUES};
use crate::alertfinder::{DIAGNOSIS_NAMES, N_DIAGNOSIS};
use crate::photometry::Band;

/// MAD to standard deviation for a Gaussian.
const MAD_TO_SIGMA: f64 = 1.482_602_218_505_602;

/// One row per I-band point of every candidate: `cand` (input position), `site`, `g` (the
/// (candidate, site) group key `cand * 3 + site`, one integer so that every window expression
/// hashes one column), `t`, `flux`, `err`, `fwhm`, `sky`, `airmass`, `now`.
///
/// This is the one conversion from `StarCurves` into columns; everything after it is polars.
pub fn points_frame(cands: &[Candidate<'_>]) -> Result<DataFrame, PreprocessError> {
    let n: usize = cands
        .iter()
        .flat_map(|c| c.star.curves.iter())
        .filter(|c| c.band == Some(Band::I) && c.site.is_some())
        .map(|c| c.len())
        .sum();
    let mut cand = Vec::with_capacity(n);
    let mut site = Vec::with_capacity(n);
    let mut g = Vec::with_capacity(n);
    let mut now = Vec::with_capacity(n);
    let (mut t, mut flux, mut err) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut fwhm, mut sky, mut air) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    for (i, c) in cands.iter().enumerate() {
        for sc in c.star.curves.iter().filter(|c| c.band == Some(Band::I)) {
            let Some(s) = sc.site else { continue };
            let len = sc.len();
            // A curve with ragged columns is treated as missing where a column is short.
            let at = |v: &Vec<f64>, k: usize| v.get(k).copied().unwrap_or(f64::NAN);
            for k in 0..len {
                cand.push(i as u32);
                site.push(s.index() as u32);
                g.push((i * N_SEQ_SITES + s.index()) as u32);
                now.push(c.now);
                t.push(sc.hjd[k]);
                flux.push(at(&sc.flux, k));
                err.push(at(&sc.flux_err, k));
                fwhm.push(at(&sc.fwhm, k));
                sky.push(at(&sc.sky, k));
                air.push(at(&sc.airmass, k));
            }
        }
    }
    let cols = vec![
        Column::new("cand".into(), cand),
        Column::new("site".into(), site),
        Column::new("g".into(), g),
        Column::new("t".into(), t),
        Column::new("flux".into(), flux),
        Column::new("err".into(), err),
        Column::new("fwhm".into(), fwhm),
        Column::new("sky".into(), sky),
        Column::new("airmass".into(), air),
        Column::new("now".into(), now),
    ];
    Ok(DataFrame::new(n, cols)?)
}

fn max2(a: Expr, b: Expr) -> Expr {
    when(a.clone().gt_eq(b.clone())).then(a).otherwise(b)
}

fn by_g(e: Expr) -> Result<Expr, PreprocessError> {
    Ok(e.over([col("g")])?)
}

/// Steps 1-4 of the module docs plus the raw (unstandardised) channels: truncation, NaN
/// removal, robust scale, spike removal, tail. Columns out: `cand`, `site`, `from_end` (0 =
/// newest), `n_spikes` (per candidate), `x_flux`, `x_err` (final), `u_fwhm`, `u_sky`, `u_air`,
/// `u_dt` (raw, to be standardised with global statistics).
fn cleaned_tail(points: DataFrame) -> Result<LazyFrame, PreprocessError> {
    let finite = col("t").is_finite().and(col("flux").is_finite()).and(col("err").is_finite());
    let sort = SortMultipleOptions::default().with_maintain_order(true);
    let lf = points
        .lazy()
        .filter(col("t").lt_eq(col("now")).and(finite).and(col("err").gt(lit(0.0))))
        .sort(["g", "t"], sort)
        .with_columns([by_g(col("flux").median())?.alias("med"), by_g(col("err").median())?.alias("err_med")])
        .with_column(by_g((col("flux") - col("med")).abs().median())?.alias("mad"))
        .with_column(max2(max2(lit(MAD_TO_SIGMA) * col("mad"), lit(0.5) * col("err_med")), lit(1e-6)).alias("sigma"))
        .with_columns([
            by_g(col("flux").shift(lit(1)))?.alias("f_prev"),
            by_g(col("flux").shift(lit(-1)))?.alias("f_next"),
        ]);
    // A spike: far from the mean of both neighbours, which agree with each other. A missing
    // neighbour (first or newest point of a site) makes the comparison null: never a spike.
    let s = max2(col("sigma"), col("err"));
    let jump = col("flux") - (col("f_prev") + col("f_next")) * lit(0.5);
    let spike = jump
        .clone()
        .abs()
        .gt(lit(OUTLIER_SIGMA) * s)
        .and((col("f_prev") - col("f_next")).abs().lt(jump.abs() * lit(0.25)))
        .fill_null(lit(false));
    let lf = lf
        .with_column(spike.alias("spike"))
        .with_column(col("spike").cast(DataType::UInt32).sum().over([col("cand")])?.alias("n_spikes"))
        .filter(col("spike").not())
        .with_column(col("t").max().over([col("cand")])?.alias("t_last"))
        .with_row_index("row", None)
        .with_columns([
            by_g(col("row").min())?.alias("row0"),
            by_g(len())?.alias("n"),
        ])
        .with_column(
            (col("n").cast(DataType::Int64) - lit(1i64) - (col("row").cast(DataType::Int64) - col("row0").cast(DataType::Int64)))
                .alias("from_end"),
        )
        .filter(col("from_end").lt(lit(SEQ_LEN as i64)))
        .select([
            col("cand"),
            col("site"),
            col("from_end"),
            col("n_spikes"),
            ((col("flux") - col("med")) / col("sigma")).arcsinh().alias("x_flux"),
            (col("err") / col("sigma")).arcsinh().alias("x_err"),
            col("fwhm").log(lit(std::f64::consts::E)).alias("u_fwhm"),
            col("sky").log(lit(std::f64::consts::E)).alias("u_sky"),
            col("airmass").alias("u_air"),
            (lit(0.0) - (col("t_last") - col("t")).log1p()).alias("u_dt"),
        ]);
    Ok(lf)
}

/// Standardise, clip, and turn NaN/null into 0 (the training mean).
fn standardise(e: Expr, m: MeanStd) -> Expr {
    ((e - lit(m.mean)) / lit(m.std))
        .clip(lit(-CLIP), lit(CLIP))
        .fill_nan(lit(0.0))
        .fill_null(lit(0.0))
        .cast(DataType::Float32)
}

/// The `seq` tensor `[n, 3, SEQ_LEN, N_CHANNELS]`, real points per (candidate, site), and
/// spikes removed per candidate.
#[allow(clippy::type_complexity)]
pub fn seq_tensor(
    points: DataFrame,
    n_cands: usize,
    stats: &PreprocessStats,
) -> Result<(Vec<f32>, Vec<[u32; N_SEQ_SITES]>, Vec<u32>), PreprocessError> {
    let df = cleaned_tail(points)?
        .select([
            col("cand"),
            col("site"),
            col("from_end"),
            col("n_spikes"),
            col("x_flux").clip(lit(-4.0 * CLIP), lit(4.0 * CLIP)).fill_nan(lit(0.0)).cast(DataType::Float32),
            col("x_err").clip(lit(0.0), lit(CLIP)).fill_nan(lit(0.0)).cast(DataType::Float32),
            standardise(col("u_fwhm"), stats.log_fwhm).alias("c_fwhm"),
            standardise(col("u_sky"), stats.log_sky).alias("c_sky"),
            standardise(col("u_air"), stats.airmass).alias("c_air"),
            standardise(col("u_dt"), stats.dt).alias("c_dt"),
        ])
        .collect()?;
    let mut seq = vec![0f32; n_cands * SEQ_VALUES];
    let mut n_points = vec![[0u32; N_SEQ_SITES]; n_cands];
    let mut n_outliers = vec![0u32; n_cands];
    let cand = df.column("cand")?.u32()?;
    let site = df.column("site")?.u32()?;
    let from_end = df.column("from_end")?.i64()?;
    let spikes = df.column("n_spikes")?.u32()?;
    let chans: Vec<&Float32Chunked> = ["x_flux", "x_err", "c_fwhm", "c_sky", "c_air", "c_dt"]
        .iter()
        .map(|name| df.column(name).and_then(|c| c.f32()))
        .collect::<PolarsResult<_>>()?;
    // The scatter is one pass over the collected columns (a kernel over the batch, not a
    // per-star loop): row r goes to (cand, site, SEQ_LEN - 1 - from_end).
    let mut chan_iters: Vec<_> = chans.iter().map(|c| c.iter()).collect();
    for ((c, s), (k, sp)) in cand.iter().zip(site.iter()).zip(from_end.iter().zip(spikes.iter())) {
        let vals: Vec<f32> = chan_iters.iter_mut().map(|it| it.next().flatten().unwrap_or(0.0)).collect();
        let (Some(c), Some(s), Some(k)) = (c, s, k) else { continue };
        let (c, s) = (c as usize, s as usize);
        if c >= n_cands || s >= N_SEQ_SITES || !(0..SEQ_LEN as i64).contains(&k) {
            continue;
        }
        let slot = SEQ_LEN - 1 - k as usize;
        let base = c * SEQ_VALUES + (s * SEQ_LEN + slot) * N_CHANNELS;
        seq[base..base + N_CHANNELS - 1].copy_from_slice(&vals);
        seq[base + N_CHANNELS - 1] = 1.0;
        n_points[c][s] += 1;
        n_outliers[c] = sp.unwrap_or(0);
    }
    Ok((seq, n_points, n_outliers))
}

/// Mean and standard deviation of the raw `u_fwhm`, `u_sky`, `u_air`, `u_dt` over the kept
/// points with finite values.
pub fn seq_moments(points: DataFrame) -> Result<[MeanStd; 4], PreprocessError> {
    let names = ["u_fwhm", "u_sky", "u_air", "u_dt"];
    let mut exprs = Vec::new();
    for n in names {
        let v = col(n).filter(col(n).is_finite());
        exprs.push(v.clone().mean().alias(format!("{n}_mean")));
        exprs.push(v.std(1).alias(format!("{n}_std")));
    }
    let df = cleaned_tail(points)?.select(exprs).collect()?;
    let get = |name: String| -> Result<Option<f64>, PreprocessError> {
        Ok(df.column(&name)?.cast(&DataType::Float64)?.f64()?.get(0))
    };
    let mut out = [MeanStd::IDENTITY; 4];
    for (i, n) in names.iter().enumerate() {
        out[i] = MeanStd::from_moments(get(format!("{n}_mean"))?, get(format!("{n}_std"))?);
    }
    Ok(out)
}

/// The diagnosis vectors as a frame of 47 named f64 columns.
fn diag_frame(cands: &[Candidate<'_>]) -> Result<DataFrame, PreprocessError> {
    let cols = (0..N_DIAGNOSIS)
        .map(|j| Column::new(DIAGNOSIS_NAMES[j].into(), cands.iter().map(|c| c.diag[j]).collect::<Vec<f64>>()))
        .collect();
    Ok(DataFrame::new(cands.len(), cols)?)
}

fn diag_transformed(j: usize, stats: &PreprocessStats) -> Expr {
    let x = col(DIAGNOSIS_NAMES[j]);
    if stats.diag_asinh.get(j).copied().unwrap_or(true) {
        x.arcsinh()
    } else {
        x
    }
}

/// The `diag` tensor `[n, stats.n_diag()]` (the model's prefix of the features), row-major.
pub fn diag_tensor(cands: &[Candidate<'_>], stats: &PreprocessStats) -> Result<Vec<f32>, PreprocessError> {
    let width = stats.n_diag();
    let exprs: Vec<Expr> = (0..width)
        .map(|j| standardise(diag_transformed(j, stats), stats.diag[j]).alias(DIAGNOSIS_NAMES[j]))
        .collect();
    let df = diag_frame(cands)?.lazy().select(exprs).collect()?;
    let n = cands.len();
    let mut out = vec![0f32; n * width];
    for (j, name) in DIAGNOSIS_NAMES.iter().enumerate().take(width) {
        for (i, v) in df.column(name)?.f32()?.iter().enumerate().take(n) {
            out[i * width + j] = v.unwrap_or(0.0);
        }
    }
    Ok(out)
}

/// Mean and standard deviation of each transformed diagnosis feature.
pub fn diag_moments(cands: &[Candidate<'_>], stats: &PreprocessStats) -> Result<Vec<MeanStd>, PreprocessError> {
    let mut exprs = Vec::new();
    for j in 0..N_DIAGNOSIS {
        let x = diag_transformed(j, stats);
        exprs.push(x.clone().mean().alias(format!("m{j}")));
        exprs.push(x.std(1).alias(format!("s{j}")));
    }
    let df = diag_frame(cands)?.lazy().select(exprs).collect()?;
    (0..N_DIAGNOSIS)
        .map(|j| {
            let m = df.column(&format!("m{j}"))?.f64()?.get(0);
            let s = df.column(&format!("s{j}"))?.f64()?.get(0);
            Ok(MeanStd::from_moments(m, s))
        })
        .collect()
}
