//! Events injected into real light curves: the standard way to get realistic positives (survey
//! efficiency studies do it), because the cadence, gaps, noise, outliers and systematics stay
//! the real ones. A point-lens or binary-lens magnification A(t) of a source that makes up a
//! fraction `fs` of the star's baseline flux F0 adds `fs F0 (A(t) - 1)` to every epoch's
//! difference flux; the flux error grows with the extra photons; the magnitude brightens by
//! `2.5 log10(1 + fs (A - 1) F0 / F)`. Times, seeing, sky and airmass are never touched.

use rand::Rng;

use crate::photometry::{SiteCurve, StarCurves};
use crate::ingest::MAG_ZP;
use crate::simulate::lens::{pspl, trajectory, u_of_t, BinaryLens};

/// The lens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Lens {
    /// Point source, point lens (Paczyński).
    Point,
    /// Point source, binary lens of mass ratio `q` and separation `s` (Einstein radii); the
    /// source crosses at angle `alpha` (radians) to the binary axis.
    Binary { q: f64, s: f64, alpha: f64 },
}

/// One injected event.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Injection {
    /// Time of closest approach, HJD - 2450000.
    pub t0: f64,
    /// Impact parameter (Einstein radii).
    pub u0: f64,
    /// Einstein time, days.
    pub te: f64,
    /// Source flux as a fraction of the star's baseline flux (1: no blending).
    pub fs: f64,
    pub lens: Lens,
}

impl Injection {
    /// The magnification at time `t`.
    pub fn magnification(&self, t: f64) -> f64 {
        match self.lens {
            Lens::Point => pspl(u_of_t(t, self.t0, self.te, self.u0)),
            Lens::Binary { q, s, alpha } => {
                let mut warm = None;
                BinaryLens { q, s }.magnification(trajectory(t, self.t0, self.te, self.u0, alpha), &mut warm)
            }
        }
    }

    /// A draw from broad priors for training sets: t0 uniform over `[t_first, t_last]`, u0
    /// uniform in [0, 1], tE log-uniform in [2, 200] days, fs uniform in [0.1, 1]; a binary lens
    /// with probability `binary_fraction` (q log-uniform in [1e-3, 1], s log-uniform in [0.5, 2]).
    pub fn draw(rng: &mut impl Rng, t_first: f64, t_last: f64, binary_fraction: f64) -> Injection {
        let log_uniform = |rng: &mut dyn rand::RngCore, lo: f64, hi: f64| (lo.ln() + (hi.ln() - lo.ln()) * rng.random::<f64>()).exp();
        let lens = if rng.random::<f64>() < binary_fraction {
            Lens::Binary { q: log_uniform(rng, 1e-3, 1.0), s: log_uniform(rng, 0.5, 2.0), alpha: std::f64::consts::TAU * rng.random::<f64>() }
        } else {
            Lens::Point
        };
        Injection {
            t0: t_first + (t_last - t_first) * rng.random::<f64>(),
            u0: rng.random::<f64>(),
            te: log_uniform(rng, 2.0, 200.0),
            fs: 0.1 + 0.9 * rng.random::<f64>(),
            lens,
        }
    }
}

/// The baseline (total) flux of a curve on the zp-28 scale, from its magnitudes: the median over
/// epochs of `10^(-0.4 (mag - 28)) - flux` (the total flux minus the difference flux). `None`
/// without finite magnitudes.
pub fn baseline_flux(c: &SiteCurve) -> Option<f64> {
    let mut v: Vec<f64> = c
        .mag
        .iter()
        .zip(&c.flux)
        .filter(|(m, f)| m.is_finite() && f.is_finite())
        .map(|(m, f)| 10f64.powf(-0.4 * (m - MAG_ZP)) - f)
        .filter(|b| b.is_finite() && *b > 0.0)
        .collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

/// What an injection did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Injected {
    /// Largest magnification at an epoch of the star.
    pub peak_magnification: f64,
    /// Epochs whose flux changed by more than 1e-9 of the baseline.
    pub epochs_changed: usize,
    /// Curves left alone because their baseline flux is unknown (no magnitudes).
    pub curves_skipped: usize,
}

/// Injects `inj` into every curve of `star` whose baseline flux is known (all bands: microlensing
/// is achromatic; blending differs per band in reality, one `fs` is used here).
pub fn inject(star: &mut StarCurves, inj: &Injection) -> Injected {
    let mut out = Injected { peak_magnification: 1.0, epochs_changed: 0, curves_skipped: 0 };
    for c in &mut star.curves {
        let Some(f0) = baseline_flux(c) else {
            out.curves_skipped += 1;
            continue;
        };
        for i in 0..c.hjd.len() {
            let a = inj.magnification(c.hjd[i]);
            out.peak_magnification = out.peak_magnification.max(a);
            let extra = inj.fs * f0 * (a - 1.0);
            if extra.abs() <= 1e-9 * f0 {
                continue;
            }
            out.epochs_changed += 1;
            let before = (f0 + if c.flux[i].is_finite() { c.flux[i] } else { 0.0 }).max(1e-9 * f0);
            c.flux[i] += extra;
            // Photon noise of the extra light: sigma scales with the square root of the flux.
            c.flux_err[i] *= ((before + extra) / before).max(1.0).sqrt();
            if c.mag[i].is_finite() {
                c.mag[i] -= 2.5 * ((before + extra) / before).log10();
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::photometry::{Band, Field, Site, StarId};

    /// A constant star of magnitude 18 (F0 = 10^(0.4 * 10) = 10,000) observed every 0.25 d.
    fn constant_star() -> StarCurves {
        let n = 1200;
        let hjd: Vec<f64> = (0..n).map(|i| 9000.0 + 0.25 * i as f64).collect();
        let curve = SiteCurve {
            site: Some(Site::Kmtc),
            band: Some(Band::I),
            flux: vec![0.0; n],
            flux_err: vec![50.0; n],
            mag: vec![18.0; n],
            mag_err: vec![0.01; n],
            fwhm: (0..n).map(|i| 3.0 + (i % 7) as f64 * 0.1).collect(),
            sky: vec![900.0; n],
            airmass: vec![1.2; n],
            hjd,
        };
        StarCurves { star: StarId("S1".into()), field: Field(14), curves: vec![curve] }
    }

    #[test]
    fn the_injected_magnification_is_the_one_asked_for() {
        let mut star = constant_star();
        let before = star.clone();
        let inj = Injection { t0: 9100.0, u0: 0.1, te: 20.0, fs: 1.0, lens: Lens::Point };
        let r = inject(&mut star, &inj);
        let c = &star.curves[0];
        let f0 = 10f64.powf(0.4 * 10.0);
        for i in 0..c.hjd.len() {
            // Unblended: total flux / baseline flux is the magnification, at every epoch.
            let a = (f0 + c.flux[i]) / f0;
            assert!((a - pspl(u_of_t(c.hjd[i], 9100.0, 20.0, 0.1))).abs() < 1e-9, "epoch {i}");
            let m = 18.0 - 2.5 * a.log10();
            assert!((c.mag[i] - m).abs() < 1e-9);
        }
        let at_peak = c.hjd.iter().position(|&t| t == 9100.0).unwrap();
        assert!((r.peak_magnification - pspl(0.1)).abs() < 1e-12 && (c.flux[at_peak] / f0 + 1.0 - pspl(0.1)).abs() < 1e-9);
        // Blended: the source is fs of the baseline.
        let mut blended = before.clone();
        inject(&mut blended, &Injection { fs: 0.25, ..inj });
        assert!((blended.curves[0].flux[at_peak] - 0.25 * f0 * (pspl(0.1) - 1.0)).abs() < 1e-6);
        // The real data is otherwise untouched: times, seeing, sky, airmass bit for bit; far
        // from the event the flux too (to 1e-6 of the baseline).
        let (c0, c1) = (&before.curves[0], &star.curves[0]);
        assert_eq!((&c0.hjd, &c0.fwhm, &c0.sky, &c0.airmass, &c0.mag_err), (&c1.hjd, &c1.fwhm, &c1.sky, &c1.airmass, &c1.mag_err));
        for i in 0..c0.hjd.len() {
            if (c0.hjd[i] - 9100.0).abs() > 100.0 * 20.0 {
                assert!((c1.flux[i] - c0.flux[i]).abs() < 1e-6 * f0);
            }
            assert!(c1.flux_err[i] >= c0.flux_err[i], "errors never shrink");
        }
    }

    #[test]
    fn a_curve_without_magnitudes_is_left_alone_and_binary_lenses_inject_too() {
        let mut star = constant_star();
        star.curves[0].mag = vec![f64::NAN; star.curves[0].hjd.len()];
        let before = star.clone();
        let r = inject(&mut star, &Injection { t0: 9100.0, u0: 0.1, te: 20.0, fs: 1.0, lens: Lens::Point });
        assert_eq!((r.curves_skipped, r.epochs_changed), (1, 0));
        assert_eq!(star.curves[0].flux, before.curves[0].flux);

        let mut star = constant_star();
        let binary = Injection { t0: 9100.0, u0: 0.05, te: 25.0, fs: 1.0, lens: Lens::Binary { q: 0.01, s: 1.0, alpha: 0.8 } };
        let r = inject(&mut star, &binary);
        assert!(r.peak_magnification > 2.0 && r.epochs_changed > 100, "{r:?}");
        assert!(star.curves[0].flux.iter().all(|f| f.is_finite()));
    }

    #[test]
    fn draws_stay_in_their_priors_and_a_seed_repeats() {
        use rand::SeedableRng;
        let mut a = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let mut b = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let mut binaries = 0;
        for _ in 0..500 {
            let x = Injection::draw(&mut a, 9000.0, 9240.0, 0.2);
            assert_eq!(x, Injection::draw(&mut b, 9000.0, 9240.0, 0.2));
            assert!((9000.0..=9240.0).contains(&x.t0) && (0.0..=1.0).contains(&x.u0) && (2.0..=200.0).contains(&x.te) && (0.1..=1.0).contains(&x.fs));
            binaries += matches!(x.lens, Lens::Binary { .. }) as usize;
        }
        assert!((60..140).contains(&binaries), "{binaries} of 500");
    }

    #[test]
    fn the_baseline_flux_comes_from_the_magnitudes() {
        let star = constant_star();
        assert!((baseline_flux(&star.curves[0]).unwrap() - 10_000.0).abs() < 1e-6);
    }
}
