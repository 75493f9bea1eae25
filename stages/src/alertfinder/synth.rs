//! Synthetic KMTNet-like season light curves for the AlertFinder's tests and benchmark.
//!
//! The generator (deliberately simple; the realistic simulator lives in `crate::simulate`):
//! - three sites observe the bulge for `night_hours` centred on their local midnight
//!   (KMTA 14.1 h UT, KMTC 4.7 h UT, KMTS 22.6 h UT), `night_hours * cadence_per_hour` epochs
//!   a night (randomly rounded) evenly spread with 30 % jitter, every night of the season except lost ones (each site-night
//!   is lost to weather with probability `weather_loss`);
//! - the reported error of each epoch is `sigma * U(0.8, 1.2)`, the true scatter is that error
//!   times the site's `true_error_scale` (KMTNet error bars are usually underestimated);
//! - flux = site baseline + `fs * (A(u) - 1)` of an optional point-lens event + Gaussian noise;
//! - FWHM ~ 4 px (1 + 0.2 |N|), sky ~ 1000 (1 + 0.2 |N|).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use super::N_SITES;
use crate::photometry::MergedCurve;

/// A point-lens (PSPL) event: `A(u) = (u^2 + 2) / (u sqrt(u^2 + 4))`,
/// `u = sqrt(u0^2 + ((t - t0) / te)^2)`, added as `fs * (A - 1)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pspl {
    pub t0: f64,
    pub te: f64,
    pub u0: f64,
    /// Source flux (same units as the curve's flux).
    pub fs: f64,
}

impl Pspl {
    pub fn magnification(&self, t: f64) -> f64 {
        let tau = (t - self.t0) / self.te;
        let u2 = self.u0 * self.u0 + tau * tau;
        let u = u2.sqrt();
        (u2 + 2.0) / (u * (u2 + 4.0).sqrt())
    }

    /// `u0 * te`, the grid's `t_eff` in the high-magnification limit.
    pub fn teff(&self) -> f64 {
        self.u0 * self.te
    }
}

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthSpec {
    /// First night (HJD - 2450000).
    pub season_start: f64,
    pub season_days: f64,
    /// Epochs per hour at each site.
    pub cadence_per_hour: f64,
    pub night_hours: f64,
    pub weather_loss: f64,
    /// Typical reported error bar (flux units).
    pub sigma: f64,
    /// True scatter over reported error, per site.
    pub true_error_scale: [f64; N_SITES],
    /// Baseline flux per site (each site has its own zero point in difference flux).
    pub baseline: [f64; N_SITES],
    pub event: Option<Pspl>,
}

impl SynthSpec {
    /// A season of a field observed `cadence_per_hour` times an hour at each site.
    pub fn season(cadence_per_hour: f64) -> Self {
        SynthSpec {
            season_start: 8200.0,
            season_days: 240.0,
            cadence_per_hour,
            night_hours: 8.0,
            weather_loss: 0.25,
            sigma: 100.0,
            true_error_scale: [1.3, 1.1, 1.5],
            baseline: [50.0, -120.0, 300.0],
            event: None,
        }
    }
}

/// Local midnight of each site as a fraction of the HJD day (which starts at noon UT).
const MIDNIGHT: [f64; N_SITES] = [(14.06 - 12.0) / 24.0, (28.72 - 12.0) / 24.0, (22.61 - 12.0) / 24.0];

/// Generate one light curve, reproducibly from `seed`.
pub fn generate(spec: &SynthSpec, seed: u64) -> MergedCurve {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut rows: Vec<(f64, u8)> = Vec::new();
    let per_night = spec.night_hours.max(0.0) * spec.cadence_per_hour.max(0.0);
    let night = spec.night_hours.max(0.0) / 24.0;
    for d in 0..spec.season_days.max(0.0) as usize {
        for s in 0..N_SITES {
            if rng.random::<f64>() < spec.weather_loss {
                continue;
            }
            let start = spec.season_start + d as f64 + MIDNIGHT[s] - night / 2.0;
            // Random rounding keeps the mean cadence right when a night holds ~1.6 epochs.
            let n = (per_night + rng.random::<f64>()).floor() as usize;
            let step = night / n.max(1) as f64;
            for j in 0..n {
                let t = start + (j as f64 + 0.5 + 0.3 * (rng.random::<f64>() - 0.5)) * step;
                rows.push((t, s as u8));
            }
        }
    }
    rows.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut m = MergedCurve::default();
    for (t, s) in rows {
        let e = spec.sigma * (0.8 + 0.4 * rng.random::<f64>());
        let noise: f64 = rng.sample(StandardNormal);
        let signal = spec.event.map_or(0.0, |ev| ev.fs * (ev.magnification(t) - 1.0));
        let f = spec.baseline[s as usize] + signal + noise * e * spec.true_error_scale[s as usize];
        let g1: f64 = rng.sample(StandardNormal);
        let g2: f64 = rng.sample(StandardNormal);
        m.time.push(t);
        m.flux.push(f);
        m.err.push(e);
        m.site.push(s);
        m.fwhm.push(4.0 * (1.0 + 0.2 * g1.abs()));
        m.sky.push(1000.0 * (1.0 + 0.2 * g2.abs()));
    }
    m
}
