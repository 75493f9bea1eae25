//! Photometric noise of one epoch: stated pySIS error from sky, seeing and flux (fitted to the
//! real BLG14 files), true scatter larger than stated, bad-frame outliers.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use super::cadence::{uni, Epoch};

/// Stated flux error of a frame for a star of total flux `f`: the background term is the
/// least-squares fit to the real 2018 BLG14 baseline (log err = 2.13 + 0.30 log sky +
/// 0.65 log fwhm; coefficient 8.44 lowered to 7.8 because the simulated sky runs a little
/// brighter), plus photon noise of the star and a 0.3 % stated systematic floor.
pub fn stated_error(e: &Epoch, f: f64) -> f64 {
    let bg = 7.8 * e.sky.max(1.0).powf(0.30) * e.fwhm.max(0.5).powf(0.65);
    (bg * bg + f.max(0.0) + (0.003 * f).powi(2)).sqrt()
}

/// One observed epoch: (observed total flux, stated error).
///
/// The true scatter is `underestimate` times the stated error plus a 0.5 % floor the pipeline
/// does not report (real baseline: robust scatter/err 1.6-1.7). Bad frames get a heavy-tailed
/// offset and an error inflated 2-10x; 0.4 % of other points are single-star outliers (cosmic
/// rays, bad pixels).
pub fn observe(rng: &mut ChaCha8Rng, e: &Epoch, f: f64, underestimate: f64) -> (f64, f64) {
    let mut err = stated_error(e, f) * (0.12 * gauss(rng)).exp();
    let sd = ((underestimate * err).powi(2) + (0.005 * f).powi(2)).sqrt();
    let mut obs = f + sd * gauss(rng);
    if e.bad {
        let heavy = gauss(rng) / rng.random::<f64>().max(0.02).powf(0.7);
        obs += 3.0 * err * heavy;
        err *= uni(rng, 2.0, 10.0);
    } else if rng.random::<f64>() < 0.004 {
        obs += err * uni(rng, 5.0, 30.0) * if rng.random::<f64>() < 0.5 { -1.0 } else { 1.0 };
    }
    (obs, err)
}

pub(crate) fn gauss(rng: &mut ChaCha8Rng) -> f64 {
    StandardNormal.sample(rng)
}
