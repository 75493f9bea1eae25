//! Writes a simulated season to disk: pySIS text files per star and site/band, exactly in the
//! real files' format, plus `truth.parquet`.
//!
//! Layout: `OUT/BLG14/BLG14.0000123/KMTC14_I.pysis` (one folder per star, one file per site
//! and band), and `OUT/truth.parquet`.
//!
//! Format (checked byte for byte against all 2986 rows of the real 2018 BLG14 files):
//! - I band: header `# HJD  \Delta_flux flux_err  mag  mag_err  fwhm  sky  secz`, rows
//!   `%10.5f %12.4f %10.4f %10.4f %9.6f %7.2f %5.0f %5.2f`;
//! - V band: header `# HJD  \Delta_flux flux_err  fwhm  sky  secz` (no mag columns, as in the
//!   real KMTC/KMTS V files), rows `%10.5f %12.4f %10.4f %7.2f %5.0f %5.2f`;
//! - Δflux is written with the files' sign (brightening negative); missing mag/mag_err as
//!   `nan`; a failed seeing measurement as fwhm `-1.00`; rare `___` mag placeholders.
//!
//! # truth.parquet schema (one row per star, sorted by field then index)
//! | column | type | meaning |
//! | --- | --- | --- |
//! | star_id | utf8 | `BLG14.0000123`, the star's folder name |
//! | field | utf8 | `BLG14` |
//! | index | uint64 | star index within the field |
//! | class | utf8 | microlensing, constant, variable, cataclysmic, flare, asteroid, artefact |
//! | subtype | utf8 | pspl, fspl, binary, planetary; rr_lyrae, eclipsing, long_period, semi_regular; dwarf_nova; flare; asteroid; bleed_trail, diffraction_spike, bad_seeing, high_sky, site_trend; constant |
//! | label | utf8 | yes, maybe, no (see `label` module for the rule) |
//! | label_reason | utf8 | why, with the data statistics |
//! | t0 | float64 | peak time HJD-2450000 (events t0; dwarf nova first outburst; flare/asteroid peak) |
//! | tE, u0, rho | float64 | Einstein time (days), impact parameter, source radius (θ*/θE) |
//! | fs, fb | float64 | I-band source and blend flux (pySIS units, mag = 28 - 2.5 log10 F) |
//! | source_mag, baseline_mag | float64 | I magnitudes of the source and of source + blend |
//! | blend_fraction | float64 | fs / (fs + fb) |
//! | q, s, alpha | float64 | binary mass ratio, separation (θE), trajectory angle (rad) |
//! | period, amplitude | float64 | days (variables; recurrence for dwarf novae) and I mag |
//! | color_vi | float64 | V - I |
//! | site | utf8, null | site of a one-site artefact |
//! | delta_chi2, n_significant, n_rise, peak_covered, n_points | float64, uint32, uint32, bool, uint32 | the vetting statistics behind the label |
//!
//! NaN marks a parameter that does not apply to the class.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Float64Array, StringArray, UInt32Array, UInt64Array};
use arrow::datatypes::{DataType, Field as ArrowField, Schema};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use rand::Rng;
use rayon::prelude::*;

use super::{rng_for, Season, SimConfig, SimError, SimStar, Truth};
use crate::photometry::{Band, SiteCurve};

/// Header of I-band files, exactly as in the real files.
pub const HEADER_I: &str = "# HJD  \\Delta_flux flux_err  mag  mag_err  fwhm  sky  secz";
/// Header of V-band files (no magnitude columns).
pub const HEADER_V: &str = "# HJD  \\Delta_flux flux_err  fwhm  sky  secz";

/// File name of a curve, `KMTC14_I.pysis`.
pub fn file_name(curve: &SiteCurve, field: u8) -> String {
    let site = curve.site.map(|s| s.code()).unwrap_or("KMTX");
    let band = curve.band.map(|b| b.code()).unwrap_or("I");
    format!("{site}{field:02}_{band}.pysis")
}

fn num(out: &mut String, v: f64, width: usize, prec: usize) {
    // Rust prints NaN as "NaN"; the files print "nan".
    if v.is_nan() {
        let _ = write!(out, "{:>width$}", "nan");
    } else {
        let _ = write!(out, "{v:>width$.prec$}");
    }
}

/// The pySIS text of one curve. `placeholders[i]` writes `___` for row i's mag and mag_err.
pub fn format_pysis(curve: &SiteCurve, placeholders: &[bool]) -> String {
    let v_band = curve.band == Some(Band::V);
    let mut out = String::with_capacity(80 * (curve.len() + 1));
    out.push_str(if v_band { HEADER_V } else { HEADER_I });
    out.push('\n');
    for i in 0..curve.len() {
        num(&mut out, curve.hjd[i], 10, 5);
        out.push(' ');
        // The files store brightening as negative Δflux.
        num(&mut out, -curve.flux[i] + 0.0, 12, 4);
        out.push(' ');
        num(&mut out, curve.flux_err[i], 10, 4);
        if !v_band {
            out.push(' ');
            if placeholders.get(i).copied().unwrap_or(false) {
                let _ = write!(out, "{:>10} {:>9}", "___", "___");
            } else {
                num(&mut out, curve.mag[i], 10, 4);
                out.push(' ');
                num(&mut out, curve.mag_err[i], 9, 6);
            }
        }
        out.push(' ');
        num(&mut out, if curve.fwhm[i].is_nan() { -1.0 } else { curve.fwhm[i] }, 7, 2);
        out.push(' ');
        num(&mut out, curve.sky[i], 5, 0);
        out.push(' ');
        num(&mut out, curve.airmass[i], 5, 2);
        out.push('\n');
    }
    out
}

/// What a season write produced.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SeasonSummary {
    pub stars: u64,
    pub files: u64,
    pub points: u64,
    /// Stars labelled yes, maybe, no.
    pub labels: [u64; 3],
    /// Stars per class name, sorted by name.
    pub classes: Vec<(String, u64)>,
    pub truth_path: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SimError + '_ {
    move |source| SimError::Io { path: path.display().to_string(), source }
}

/// Write the files of one star under `dir` (its folder is created).
pub fn write_star(config: &SimConfig, star: &SimStar, dir: &Path) -> Result<(u64, u64), SimError> {
    let sdir = dir.join(&star.curves.star.0);
    fs::create_dir_all(&sdir).map_err(io(&sdir))?;
    let mut files = 0;
    let mut points = 0;
    for (k, c) in star.curves.curves.iter().enumerate() {
        let mut rng = rng_for(config.seed, &[0x7C, star.curves.field.0 as u64, star.truth.index, k as u64]);
        let ph: Vec<bool> = (0..c.len()).map(|_| rng.random::<f64>() < config.placeholder_rate).collect();
        let path = sdir.join(file_name(c, star.curves.field.0));
        fs::write(&path, format_pysis(c, &ph)).map_err(io(&path))?;
        files += 1;
        points += c.len() as u64;
    }
    Ok((files, points))
}

/// Simulate the configured season and write it under `out_dir` (pySIS files + truth.parquet).
/// Stars are generated and written in parallel in chunks of 512 to bound memory; output is
/// byte-identical for the same config.
pub fn write_season(config: &SimConfig, out_dir: &Path) -> Result<SeasonSummary, SimError> {
    let season = Season::new(config)?;
    fs::create_dir_all(out_dir).map_err(io(out_dir))?;
    let mut truths: Vec<Truth> = Vec::new();
    let mut summary = SeasonSummary::default();
    for (sched, _) in &season.fields {
        let field = sched.field;
        let fdir = out_dir.join(field.name());
        fs::create_dir_all(&fdir).map_err(io(&fdir))?;
        let mut start = 0;
        while start < config.stars {
            let end = (start + 512).min(config.stars);
            let chunk: Vec<Result<(Truth, u64, u64), SimError>> = (start..end)
                .into_par_iter()
                .map(|i| {
                    let s = season.star(field, i)?;
                    let (f, p) = write_star(config, &s, &fdir)?;
                    Ok((s.truth, f, p))
                })
                .collect();
            for r in chunk {
                let (t, f, p) = r?;
                summary.files += f;
                summary.points += p;
                truths.push(t);
            }
            start = end;
        }
    }
    truths.sort_by(|a, b| (a.field, a.index).cmp(&(b.field, b.index)));
    summary.stars = truths.len() as u64;
    for t in &truths {
        summary.labels[t.label as usize] += 1;
        match summary.classes.iter_mut().find(|(n, _)| n == t.class.name()) {
            Some(e) => e.1 += 1,
            None => summary.classes.push((t.class.name().to_string(), 1)),
        }
    }
    summary.classes.sort();
    let path = out_dir.join("truth.parquet");
    write_truth(&truths, &path)?;
    summary.truth_path = path;
    Ok(summary)
}

/// The truth table as one Arrow batch (schema in the module docs).
pub fn truth_batch(truths: &[Truth]) -> Result<RecordBatch, SimError> {
    let f64col = |f: &dyn Fn(&Truth) -> f64| -> ArrayRef { Arc::new(Float64Array::from_iter_values(truths.iter().map(f))) };
    let u32col = |f: &dyn Fn(&Truth) -> u32| -> ArrayRef { Arc::new(UInt32Array::from_iter_values(truths.iter().map(f))) };
    let strcol = |f: &dyn Fn(&Truth) -> String| -> ArrayRef { Arc::new(StringArray::from_iter_values(truths.iter().map(f))) };
    let cols: Vec<(&str, ArrayRef)> = vec![
        ("star_id", strcol(&|t| t.star_id.0.clone())),
        ("field", strcol(&|t| t.field.name())),
        ("index", Arc::new(UInt64Array::from_iter_values(truths.iter().map(|t| t.index)))),
        ("class", strcol(&|t| t.class.name().to_string())),
        ("subtype", strcol(&|t| t.subtype.to_string())),
        ("label", strcol(&|t| t.label.name().to_string())),
        ("label_reason", strcol(&|t| t.label_reason.clone())),
        ("t0", f64col(&|t| t.t0)),
        ("tE", f64col(&|t| t.te)),
        ("u0", f64col(&|t| t.u0)),
        ("rho", f64col(&|t| t.rho)),
        ("fs", f64col(&|t| t.fs)),
        ("fb", f64col(&|t| t.fb)),
        ("source_mag", f64col(&|t| t.source_mag)),
        ("baseline_mag", f64col(&|t| t.baseline_mag)),
        ("blend_fraction", f64col(&|t| t.blend_fraction)),
        ("q", f64col(&|t| t.q)),
        ("s", f64col(&|t| t.s)),
        ("alpha", f64col(&|t| t.alpha)),
        ("period", f64col(&|t| t.period)),
        ("amplitude", f64col(&|t| t.amplitude)),
        ("color_vi", f64col(&|t| t.color_vi)),
        ("site", Arc::new(StringArray::from_iter(truths.iter().map(|t| t.site.map(|s| s.code()))))),
        ("delta_chi2", f64col(&|t| t.stats.delta_chi2)),
        ("n_significant", u32col(&|t| t.stats.n_significant as u32)),
        ("n_rise", u32col(&|t| t.stats.n_rise as u32)),
        ("peak_covered", Arc::new(BooleanArray::from_iter(truths.iter().map(|t| Some(t.stats.peak_covered))))),
        ("n_points", u32col(&|t| t.n_points as u32)),
    ];
    let schema = Schema::new(
        cols.iter()
            .map(|(n, a)| ArrowField::new(*n, a.data_type().clone(), *n == "site"))
            .collect::<Vec<_>>(),
    );
    debug_assert!(schema.fields().iter().any(|f| f.data_type() == &DataType::Utf8));
    Ok(RecordBatch::try_new(Arc::new(schema), cols.into_iter().map(|c| c.1).collect())?)
}

/// Write `truth.parquet` (zstd).
pub fn write_truth(truths: &[Truth], path: &Path) -> Result<(), SimError> {
    let batch = truth_batch(truths)?;
    let file = fs::File::create(path).map_err(io(path))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build();
    let mut w = ArrowWriter::try_new(file, batch.schema(), Some(props))?;
    w.write(&batch)?;
    w.close()?;
    Ok(())
}

/// The columns of `truth.parquet` that evaluations join on (replay and demo summaries).
#[derive(Debug, Clone, PartialEq)]
pub struct TruthRow {
    pub star_id: String,
    pub field: String,
    pub class: String,
    pub subtype: String,
    /// yes, maybe or no.
    pub label: String,
    /// Peak time, HJD - 2450000 (NaN where it does not apply).
    pub t0: f64,
    pub te: f64,
}

/// Read `truth.parquet` as written by [`write_truth`].
pub fn read_truth(path: &Path) -> Result<Vec<TruthRow>, SimError> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::Float64Type;
    let file = fs::File::open(path).map_err(|e| SimError::Real { path: path.display().to_string(), reason: e.to_string() })?;
    let bad = |reason: String| SimError::Real { path: path.display().to_string(), reason };
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)?.build()?;
    let mut out = Vec::new();
    for b in reader {
        let b = b?;
        let s = |n: &str| b.column_by_name(n).and_then(|c| c.as_string_opt::<i32>().cloned()).ok_or_else(|| bad(format!("column {n} missing or not utf8")));
        let f = |n: &str| b.column_by_name(n).and_then(|c| c.as_primitive_opt::<Float64Type>().cloned()).ok_or_else(|| bad(format!("column {n} missing or not f64")));
        let (star, field, class, subtype, label, t0, te) = (s("star_id")?, s("field")?, s("class")?, s("subtype")?, s("label")?, f("t0")?, f("tE")?);
        for i in 0..b.num_rows() {
            out.push(TruthRow {
                star_id: star.value(i).to_string(),
                field: field.value(i).to_string(),
                class: class.value(i).to_string(),
                subtype: subtype.value(i).to_string(),
                label: label.value(i).to_string(),
                t0: if t0.is_null(i) { f64::NAN } else { t0.value(i) },
                te: if te.is_null(i) { f64::NAN } else { te.value(i) },
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::photometry::Field;
    use crate::simulate::{ClassMix, SimConfig};

    fn cfg(seed: u64) -> SimConfig {
        SimConfig { fields: vec![Field(14)], stars: 6, seed, placeholder_rate: 0.01, mix: ClassMix::default(), season: 2025 }
    }

    #[test]
    fn pysis_format_round_trips() {
        let season = Season::new(&cfg(3)).expect("season");
        let s = season.star(Field(14), 1).expect("star");
        for c in &s.curves.curves {
            let text = format_pysis(c, &[]);
            let mut lines = text.lines();
            let v = c.band == Some(Band::V);
            assert_eq!(lines.next(), Some(if v { HEADER_V } else { HEADER_I }));
            for (i, l) in lines.enumerate() {
                let cols: Vec<&str> = l.split_whitespace().collect();
                assert_eq!(cols.len(), if v { 6 } else { 8 }, "{l}");
                let x: Vec<f64> = cols.iter().map(|s| s.parse::<f64>().expect("number")).collect();
                assert!((x[0] - c.hjd[i]).abs() < 1e-5);
                assert!((x[1] + c.flux[i]).abs() < 1e-3, "sign flipped on write");
                assert!((x[x.len() - 1] - c.airmass[i]).abs() < 0.006);
                if !v && x[3].is_finite() {
                    // mag is the total magnitude of reference + Δflux with ZP 28.
                    let total = 10f64.powf(0.4 * (28.0 - x[3]));
                    assert!(total > x[2]);
                }
                let fw = x[x.len() - 3];
                assert!(fw == -1.0 || (1.5..20.0).contains(&fw));
            }
        }
        // Format of one row matches the real files' column widths.
        let c = &s.curves.curves[0];
        let line = format_pysis(c, &[]).lines().nth(1).map(str::to_string).unwrap_or_default();
        // HJD-2450000 has five integer digits after 2022, so the first column widens to 11,
        // exactly as %10.5f does in the pySIS writer.
        let w0 = format!("{:.5}", c.hjd[0]).len().max(10);
        assert_eq!(&line[w0..w0 + 1], " ");
        assert_eq!(line.len(), w0 + 13 + 11 + 11 + 10 + 8 + 6 + 6);
    }

    #[test]
    fn written_season_is_byte_identical_for_same_seed() {
        let d1 = tempfile::tempdir().expect("tmp");
        let d2 = tempfile::tempdir().expect("tmp");
        let d3 = tempfile::tempdir().expect("tmp");
        let s1 = write_season(&cfg(7), d1.path()).expect("write");
        write_season(&cfg(7), d2.path()).expect("write");
        write_season(&cfg(8), d3.path()).expect("write");
        assert_eq!(s1.stars, 6);
        let f = "BLG14/BLG14.0000002/KMTC14_I.pysis";
        let a = fs::read(d1.path().join(f)).expect("read");
        let b = fs::read(d2.path().join(f)).expect("read");
        let c = fs::read(d3.path().join(f)).expect("read");
        assert_eq!(a, b);
        assert_ne!(a, c);
        let ta = fs::read(d1.path().join("truth.parquet")).expect("read");
        let tb = fs::read(d2.path().join("truth.parquet")).expect("read");
        assert_eq!(ta, tb);
        assert!(String::from_utf8_lossy(&a).starts_with(HEADER_I));
    }
}
