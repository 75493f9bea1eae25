//! KMTNet-like season simulator with ground truth (issue 3).
//!
//! Entry points: [`Season::new`] builds the field-independent and per-field observing
//! schedules once; [`Season::star`] simulates one star in memory (no I/O);
//! [`Season::field`] does a whole field in parallel with rayon (deterministic: every star has
//! its own ChaCha stream seeded from (seed, field, index)); [`simulate_star`] is the one-shot
//! convenience; `writer::write_season` writes pySIS files and `truth.parquet`;
//! `report::report` compares simulated with real KMTNet statistics; [`bench_simulate`] measures
//! throughput.

pub mod astro;
pub mod cadence;
pub mod inject;
pub mod label;
pub mod lens;
pub mod model;
pub mod noise;
pub mod report;
pub mod resample;
pub mod store;
pub mod writer;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::photometry::{Band, Field, Site, SiteCurve, StarCurves, StarId};
use cadence::{FieldSchedule, SiteSeason};
pub use label::{Label, VetPoint, VetStats};
pub use model::{Class, ClassMix, Model, Star, ZERO_POINT};
pub use writer::{read_truth, write_season, SeasonSummary, TruthRow};

/// Errors of the simulator. None is retryable except I/O on the output folder.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("field {0} is not in the simulation config")]
    UnknownField(Field),
    #[error("invalid simulation config: {0}")]
    Config(String),
    #[error("cannot write {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("cannot write truth table: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("cannot write truth parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("cannot read real pySIS file {path}: {reason}")]
    Real { path: String, reason: String },
}

impl SimError {
    /// Whether retrying the same call can help (only I/O can).
    pub fn is_retryable(&self) -> bool {
        matches!(self, SimError::Io { .. })
    }
}

/// What to simulate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    /// Calendar year of the bulge season.
    pub season: i32,
    /// Fields to simulate.
    pub fields: Vec<Field>,
    /// Stars per field (indices 0..stars).
    pub stars: u64,
    /// Master seed; the same seed gives byte-identical output.
    pub seed: u64,
    /// Relative class weights.
    pub mix: ClassMix,
    /// Fraction of I-band rows whose mag and mag_err are written as `___` placeholders (the
    /// 2018 calibration files have none, they show `nan` where total flux <= error; the
    /// parser must survive both).
    pub placeholder_rate: f64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            season: 2025,
            fields: vec![Field(14)],
            stars: 1000,
            seed: 7,
            mix: ClassMix::default(),
            placeholder_rate: 0.0005,
        }
    }
}

impl SimConfig {
    pub fn validate(&self) -> Result<(), SimError> {
        if !(1990..=2100).contains(&self.season) {
            return Err(SimError::Config(format!("season {} outside 1990-2100", self.season)));
        }
        if self.fields.is_empty() {
            return Err(SimError::Config("no fields".into()));
        }
        if !(0.0..=1.0).contains(&self.placeholder_rate) {
            return Err(SimError::Config("placeholder_rate outside 0-1".into()));
        }
        Ok(())
    }
}

/// Ground truth of one star: one row of `truth.parquet` (NaN where not applicable).
#[derive(Debug, Clone, PartialEq)]
pub struct Truth {
    pub star_id: StarId,
    pub field: Field,
    pub index: u64,
    pub class: Class,
    pub subtype: &'static str,
    pub label: Label,
    pub label_reason: String,
    /// Peak time (events: t0; dwarf nova: first outburst; flare/asteroid: peak), HJD-2450000.
    pub t0: f64,
    pub te: f64,
    pub u0: f64,
    pub rho: f64,
    /// Source and blend flux, I band, pySIS units (ZP 28).
    pub fs: f64,
    pub fb: f64,
    pub source_mag: f64,
    pub baseline_mag: f64,
    /// fs / (fs + fb).
    pub blend_fraction: f64,
    pub q: f64,
    pub s: f64,
    pub alpha: f64,
    /// Period (variables) or recurrence time (dwarf novae), days.
    pub period: f64,
    /// Amplitude in I magnitudes (variables, outbursts, flares, asteroids).
    pub amplitude: f64,
    /// Site of a one-site artefact.
    pub site: Option<Site>,
    pub color_vi: f64,
    pub stats: VetStats,
    pub n_points: usize,
}

/// One simulated star.
#[derive(Debug, Clone, PartialEq)]
pub struct SimStar {
    pub curves: StarCurves,
    pub truth: Truth,
    /// pySIS reference flux per curve (same order as `curves.curves`), the flux that mag
    /// columns are computed against.
    pub ref_flux: Vec<f64>,
}

/// The schedules of a season: build once, then simulate any number of stars.
#[derive(Debug, Clone)]
pub struct Season {
    pub config: SimConfig,
    pub sites: Vec<SiteSeason>,
    pub fields: Vec<(FieldSchedule, model::FluxCtx)>,
}

/// Star identifier: `BLG14.0001234`.
pub fn star_id(field: Field, index: u64) -> StarId {
    StarId(format!("{}.{:07}", field.name(), index))
}

impl Season {
    pub fn new(config: &SimConfig) -> Result<Season, SimError> {
        config.validate()?;
        let sites: Vec<SiteSeason> = Site::ALL
            .par_iter()
            .map(|&s| cadence::site_season(config.seed, config.season, s))
            .collect();
        let mut fields: Vec<Field> = config.fields.clone();
        fields.sort();
        fields.dedup();
        let fields = fields
            .into_iter()
            .map(|f| {
                let sched = FieldSchedule {
                    field: f,
                    sites: sites
                        .iter()
                        .flat_map(|ss| cadence::field_site_schedule(config.seed, config.season, f, ss))
                        .filter(|s| !s.epochs.is_empty())
                        .collect(),
                };
                let ctx = model::FluxCtx::new(&sched);
                (sched, ctx)
            })
            .collect();
        Ok(Season { config: config.clone(), sites, fields })
    }

    pub fn schedule(&self, field: Field) -> Result<&(FieldSchedule, model::FluxCtx), SimError> {
        self.fields.iter().find(|(s, _)| s.field == field).ok_or(SimError::UnknownField(field))
    }

    /// Simulate star `index` of `field` in memory.
    pub fn star(&self, field: Field, index: u64) -> Result<SimStar, SimError> {
        let (sched, ctx) = self.schedule(field)?;
        Ok(simulate_with(&self.config, sched, ctx, index))
    }

    /// All stars of a field, in index order, generated in parallel.
    pub fn field(&self, field: Field) -> Result<Vec<SimStar>, SimError> {
        let (sched, ctx) = self.schedule(field)?;
        Ok((0..self.config.stars)
            .into_par_iter()
            .map(|i| simulate_with(&self.config, sched, ctx, i))
            .collect())
    }

    /// Stars `range` of a field, lazily and sequentially (for streaming into training).
    pub fn iter(
        &self,
        field: Field,
        range: std::ops::Range<u64>,
    ) -> Result<impl Iterator<Item = SimStar> + '_, SimError> {
        let (sched, ctx) = self.schedule(field)?;
        Ok(range.map(move |i| simulate_with(&self.config, sched, ctx, i)))
    }
}

/// One-shot: simulate star `index` of `field` (builds the season's schedule first; prefer
/// [`Season`] for many stars).
pub fn simulate_star(config: &SimConfig, field: Field, index: u64) -> Result<(StarCurves, Truth), SimError> {
    let mut c = config.clone();
    c.fields = vec![field];
    let s = Season::new(&c)?.star(field, index)?;
    Ok((s.curves, s.truth))
}

fn simulate_with(config: &SimConfig, sched: &FieldSchedule, ctx: &model::FluxCtx, index: u64) -> SimStar {
    let field = sched.field;
    let mut rng = rng_for(config.seed, &[0x57A2, config.season as u64, field.0 as u64, index]);
    let star = model::draw_star(&mut rng, &config.mix, ctx, sched);
    let base = star.baseline_flux();
    let mut curves = Vec::with_capacity(sched.sites.len());
    let mut ref_flux = Vec::with_capacity(sched.sites.len());
    let mut vet_pts: Vec<VetPoint> = Vec::new();
    for ss in &sched.sites {
        let vscale = match ss.band {
            Band::I => 1.0,
            Band::V => 10f64.powf(-0.4 * star.color_vi),
        };
        // Each site's reference image differs a little from the true baseline.
        let fref = base * vscale * (0.05 * noise::gauss(&mut rng)).exp();
        // Stated errors are under-estimated by this factor (real baseline: 1.6-1.7).
        let under = (1.6f64.ln() + 0.18 * noise::gauss(&mut rng)).exp().clamp(1.1, 3.0);
        let mut c = SiteCurve::new(ss.site, ss.band);
        let n = ss.epochs.len();
        for v in [&mut c.hjd, &mut c.flux, &mut c.flux_err, &mut c.mag, &mut c.mag_err, &mut c.fwhm, &mut c.sky, &mut c.airmass] {
            v.reserve(n);
        }
        let first_pt = vet_pts.len();
        for e in &ss.epochs {
            let f = star.flux(e, ss.site, ss.band, ctx);
            let (obs, err) = noise::observe(&mut rng, e, f, under);
            let delta = obs - fref;
            c.hjd.push(e.hjd);
            c.flux.push(delta);
            c.flux_err.push(err);
            let (m, me) = if ss.band == Band::I { mag_of(fref + delta, err) } else { (f64::NAN, f64::NAN) };
            c.mag.push(m);
            c.mag_err.push(me);
            c.fwhm.push(if e.fwhm_ok { e.fwhm } else { f64::NAN });
            c.sky.push(e.sky);
            c.airmass.push(e.airmass);
            if ss.band == Band::I {
                vet_pts.push(VetPoint { t: e.hjd, d: obs - base, m: f - base, sigma: err });
            }
        }
        if ss.band == Band::I {
            // The vetter's error scale: robust scatter of the residuals over the stated error.
            let mut r: Vec<f64> = vet_pts[first_pt..].iter().map(|p| ((p.d - p.m) / p.sigma).abs()).collect();
            let k = (model::median(&mut r) * 1.4826).max(1.0);
            for p in &mut vet_pts[first_pt..] {
                p.sigma *= if k.is_finite() { k } else { 1.0 };
            }
        }
        curves.push(c);
        ref_flux.push(fref);
    }
    let m_peak = peak_excess(&star, ctx);
    let (label, reason, stats) = label::vet(&star, &vet_pts, m_peak);
    let truth = make_truth(field, index, &star, label, reason, stats, vet_pts.len());
    SimStar { curves: StarCurves { star: star_id(field, index), field, curves }, truth, ref_flux }
}

/// pySIS magnitude columns from total flux and error: mag = ZP - 2.5 log10(F) and
/// mag_err = -2.5 log10(1 - err/F), NaN when F <= err (the rule the real files follow exactly).
pub fn mag_of(total: f64, err: f64) -> (f64, f64) {
    if total > err && total > 0.0 {
        (ZERO_POINT - 2.5 * total.log10(), -2.5 * (1.0 - err / total).log10())
    } else {
        (f64::NAN, f64::NAN)
    }
}

/// Largest model excess near the peak (dense grid of ±2 tE), for the peak-coverage test.
fn peak_excess(star: &Star, ctx: &model::FluxCtx) -> f64 {
    let (t0, te) = match star.model {
        Model::Pspl { t0, te, .. } | Model::Fspl { t0, te, .. } | Model::Binary { t0, te, .. } => (t0, te),
        _ => return f64::NAN,
    };
    let base = star.baseline_flux();
    let mut e = cadence::Epoch { hjd: t0, airmass: 1.0, fwhm: 4.0, fwhm_ok: true, sky: 800.0, bad: false, night: 0 };
    let mut best: f64 = 0.0;
    for k in 0..=800 {
        e.hjd = t0 + te * (-2.0 + 4.0 * k as f64 / 800.0);
        best = best.max(star.flux(&e, Site::Kmtc, Band::I, ctx) - base);
    }
    best
}

fn make_truth(field: Field, index: u64, star: &Star, label: Label, reason: String, stats: VetStats, n: usize) -> Truth {
    let nan = f64::NAN;
    let mut t = Truth {
        star_id: star_id(field, index),
        field,
        index,
        class: star.class,
        subtype: star.subtype,
        label,
        label_reason: reason,
        t0: star.t_peak(),
        te: nan,
        u0: nan,
        rho: nan,
        fs: star.fs,
        fb: star.fb,
        source_mag: star.source_mag,
        baseline_mag: ZERO_POINT - 2.5 * star.baseline_flux().log10(),
        blend_fraction: star.fs / star.baseline_flux(),
        q: nan,
        s: nan,
        alpha: nan,
        period: nan,
        amplitude: nan,
        site: star.site,
        color_vi: star.color_vi,
        stats,
        n_points: n,
    };
    match star.model {
        Model::Pspl { te, u0, .. } => (t.te, t.u0) = (te, u0),
        Model::Fspl { te, u0, rho, .. } => (t.te, t.u0, t.rho) = (te, u0, rho),
        Model::Binary { te, u0, rho, alpha, q, s, .. } => {
            (t.te, t.u0, t.rho, t.alpha, t.q, t.s) = (te, u0, rho, alpha, q, s)
        }
        Model::RrLyrae { period, amp, .. } | Model::LongPeriod { period, amp, .. } => {
            (t.period, t.amplitude) = (period, amp)
        }
        Model::Eclipsing { period, depth1, .. } => (t.period, t.amplitude) = (period, depth1),
        Model::SemiRegular { p1, a1, a2, .. } => (t.period, t.amplitude) = (p1, 2.0 * (a1 + a2)),
        Model::DwarfNova { recur, amp, .. } => (t.period, t.amplitude) = (recur, amp),
        Model::Flare { amp, .. } => t.amplitude = 2.5 * (1.0 + amp / star.baseline_flux()).log10(),
        Model::Asteroid { flux, .. } => t.amplitude = 2.5 * (1.0 + flux / star.baseline_flux()).log10(),
        _ => {}
    }
    t
}

/// Throughput of in-memory generation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BenchResult {
    pub stars: u64,
    pub points: u64,
    pub seconds: f64,
    pub stars_per_second: f64,
    pub threads: usize,
}

/// Generate `stars` stars of one field in memory on all rayon threads and time it (schedule
/// building included). Used by `lensnet bench simulate`.
pub fn bench_simulate(config: &SimConfig, field: Field, stars: u64) -> Result<BenchResult, SimError> {
    let start = std::time::Instant::now();
    let mut c = config.clone();
    c.fields = vec![field];
    c.stars = stars;
    let season = Season::new(&c)?;
    let (sched, ctx) = season.schedule(field)?;
    let points: u64 = (0..stars)
        .into_par_iter()
        .map(|i| {
            let s = simulate_with(&c, sched, ctx, i);
            s.curves.curves.iter().map(|x| x.len() as u64).sum::<u64>()
        })
        .sum();
    let seconds = start.elapsed().as_secs_f64();
    Ok(BenchResult {
        stars,
        points,
        seconds,
        stars_per_second: stars as f64 / seconds.max(1e-9),
        threads: rayon::current_num_threads(),
    })
}

/// A ChaCha stream for (seed, tags): every star, site and field draws from its own stream, so
/// results do not depend on thread scheduling or on which other stars were generated.
pub(crate) fn rng_for(seed: u64, tags: &[u64]) -> ChaCha8Rng {
    let mut h = splitmix(seed ^ 0x9E37_79B9_7F4A_7C15);
    for &t in tags {
        h = splitmix(h ^ t.wrapping_mul(0xD1B5_4A32_D192_ED03));
    }
    ChaCha8Rng::seed_from_u64(h)
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests;
