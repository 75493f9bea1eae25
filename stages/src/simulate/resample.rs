//! Variants of real light curves for training negatives: the same star observed less often and
//! with more noise. A real variable's season (a dwarf nova's outbursts, a Mira's rise) stays
//! what it is, so its variants stay negatives, but the alertfinder meets it on other nights and
//! at other signal-to-noise: more of the moments at which a real variable looks like a rising
//! event, from the few real variables there are (the mirror of [`super::inject`], which makes
//! positives from real photometry).
//!
//! A variant keeps each point with probability `1 - drop` (independently; times, seeing, sky and
//! airmass of a kept point are untouched) and multiplies its noise by `noise` (>= 1): the flux
//! gets Gaussian noise of `err * sqrt(noise^2 - 1)` and the stated error becomes `err * noise`,
//! so that the star is as a fainter copy of itself would be measured; the magnitude follows
//! the flux (the total flux from the magnitude, as [`super::inject`] does) and its error scales
//! by the same factor.

use rand::Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::ingest::MAG_ZP;
use crate::photometry::{SiteCurve, StarCurves};
use crate::simulate::inject::baseline_flux;

/// One variant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Resampling {
    /// Chance that a point is left out, in [0, 1).
    pub drop: f64,
    /// Noise multiplier, >= 1.
    pub noise: f64,
}

impl Resampling {
    /// A draw for training sets: `drop` uniform in [0, max_drop], `noise` uniform in
    /// [1, max_noise].
    pub fn draw(rng: &mut impl Rng, max_drop: f64, max_noise: f64) -> Resampling {
        Resampling { drop: max_drop.clamp(0.0, 0.95) * rng.random::<f64>(), noise: 1.0 + (max_noise - 1.0).max(0.0) * rng.random::<f64>() }
    }
}

/// `star` resampled by `r` (see the module docs), with its randomness from `rng`.
pub fn resample(star: &StarCurves, r: &Resampling, rng: &mut impl Rng) -> StarCurves {
    let extra = (r.noise * r.noise - 1.0).max(0.0).sqrt();
    let mut curves = Vec::with_capacity(star.curves.len());
    for src in &star.curves {
        let f0 = baseline_flux(src);
        let mut kept = SiteCurve { site: src.site, band: src.band, ..Default::default() };
        for i in 0..src.hjd.len() {
            if rng.random::<f64>() < r.drop {
                continue;
            }
            let (mut flux, mut err, mut mag, mut mag_err) = (src.flux[i], src.flux_err[i], src.mag[i], src.mag_err[i]);
            if extra > 0.0 && flux.is_finite() && err.is_finite() && err > 0.0 {
                let g: f64 = StandardNormal.sample(rng);
                let d = err * extra * g;
                if mag.is_finite() {
                    // The total flux of the epoch, from the baseline and the difference flux (or
                    // its magnitude); a total pushed to zero or below has no magnitude.
                    let total = f0.map_or_else(|| 10f64.powf(-0.4 * (mag - MAG_ZP)), |f0| f0 + flux);
                    mag = if total + d > 0.0 && total > 0.0 { mag - 2.5 * ((total + d) / total).log10() } else { f64::NAN };
                }
                flux += d;
                err *= r.noise;
                mag_err *= r.noise;
            }
            kept.hjd.push(src.hjd[i]);
            kept.flux.push(flux);
            kept.flux_err.push(err);
            kept.mag.push(mag);
            kept.mag_err.push(mag_err);
            kept.fwhm.push(src.fwhm[i]);
            kept.sky.push(src.sky[i]);
            kept.airmass.push(src.airmass[i]);
        }
        curves.push(kept);
    }
    StarCurves { star: star.star.clone(), field: star.field, curves }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::photometry::{Band, Field, Site, StarId};
    use rand::SeedableRng;

    fn star() -> StarCurves {
        let n = 2000;
        let curve = SiteCurve {
            site: Some(Site::Kmtc),
            band: Some(Band::I),
            hjd: (0..n).map(|i| 9000.0 + 0.1 * i as f64).collect(),
            flux: (0..n).map(|i| (i as f64 * 0.37).sin() * 100.0).collect(),
            flux_err: vec![50.0; n],
            mag: (0..n).map(|i| 18.0 - 2.5 * ((10_000.0 + (i as f64 * 0.37).sin() * 100.0) / 10_000.0).log10()).collect(),
            mag_err: vec![0.01; n],
            fwhm: (0..n).map(|i| 3.0 + (i % 7) as f64 * 0.1).collect(),
            sky: (0..n).map(|i| 900.0 + i as f64).collect(),
            airmass: vec![1.2; n],
        };
        StarCurves { star: StarId("S1".into()), field: Field(14), curves: vec![curve] }
    }

    #[test]
    fn no_drop_and_no_noise_is_the_star_itself() {
        let s = star();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let v = resample(&s, &Resampling { drop: 0.0, noise: 1.0 }, &mut rng);
        assert_eq!(format!("{:?}", v.curves), format!("{:?}", s.curves));
    }

    #[test]
    fn a_variant_keeps_a_share_of_the_real_points_with_more_noise() {
        let s = star();
        let r = Resampling { drop: 0.4, noise: 1.5 };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let v = resample(&s, &r, &mut rng);
        let (a, b) = (&s.curves[0], &v.curves[0]);
        let kept = b.hjd.len() as f64 / a.hjd.len() as f64;
        assert!((kept - 0.6).abs() < 0.05, "kept {kept}");
        let mut resid = Vec::new();
        for j in 0..b.hjd.len() {
            // Every kept point is a real epoch, its conditions untouched.
            let i = a.hjd.iter().position(|&t| t == b.hjd[j]).expect("a real epoch");
            assert_eq!((a.fwhm[i], a.sky[i], a.airmass[i]), (b.fwhm[j], b.sky[j], b.airmass[j]));
            assert!((b.flux_err[j] - 75.0).abs() < 1e-9 && (b.mag_err[j] - 0.015).abs() < 1e-12);
            // The magnitude follows the flux (baseline 10,000 on the zp-28 scale).
            assert!((b.mag[j] - (18.0 - 2.5 * ((10_000.0 + b.flux[j]) / 10_000.0).log10())).abs() < 1e-9, "epoch {j}");
            resid.push(b.flux[j] - a.flux[i]);
        }
        // The added noise has the asked-for spread: 50 * sqrt(1.5^2 - 1) = 55.9.
        let sd = (resid.iter().map(|d| d * d).sum::<f64>() / resid.len() as f64).sqrt();
        assert!((sd - 55.9).abs() < 4.0, "added noise sd {sd}");
        // The same seed repeats the variant; another gives another.
        let again = resample(&s, &r, &mut rand_chacha::ChaCha8Rng::seed_from_u64(7));
        assert_eq!(format!("{:?}", again.curves), format!("{:?}", v.curves));
        let other = resample(&s, &r, &mut rand_chacha::ChaCha8Rng::seed_from_u64(8));
        assert_ne!(format!("{:?}", other.curves), format!("{:?}", v.curves));
    }

    #[test]
    fn draws_stay_in_their_ranges() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for _ in 0..200 {
            let r = Resampling::draw(&mut rng, 0.5, 1.5);
            assert!((0.0..=0.5).contains(&r.drop) && (1.0..=1.5).contains(&r.noise), "{r:?}");
        }
    }
}
