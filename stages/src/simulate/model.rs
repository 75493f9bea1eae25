//! What each simulated star is (microlensing event or confuser), its drawn parameters, and
//! its noise-free flux at any epoch.
//!
//! Flux units are those of the pySIS files: F = 10^(0.4 (28 - mag)) (zero point 28, read off the
//! real BLG14 files, whose reference flux 1585 is exactly I = 20.00).

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use super::cadence::{uni, Epoch, FieldSchedule};
use super::lens::{self, BinaryLens};
use crate::photometry::{Band, Site};

/// Magnitude zero point of the pySIS flux scale: mag = ZP - 2.5 log10(F).
pub const ZERO_POINT: f64 = 28.0;

pub fn mag_to_flux(m: f64) -> f64 {
    10f64.powf(0.4 * (ZERO_POINT - m))
}

/// Broad class of a simulated star.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    Microlensing,
    Constant,
    Variable,
    Cataclysmic,
    Flare,
    Asteroid,
    Artefact,
}

impl Class {
    pub fn name(self) -> &'static str {
        match self {
            Class::Microlensing => "microlensing",
            Class::Constant => "constant",
            Class::Variable => "variable",
            Class::Cataclysmic => "cataclysmic",
            Class::Flare => "flare",
            Class::Asteroid => "asteroid",
            Class::Artefact => "artefact",
        }
    }
}

/// Relative weights of the classes (normalised when drawn). The default gives ~20 % events:
/// real positives are rare, and training needs them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassMix {
    /// Microlensing events (PSPL 60 %, FSPL 10 %, binary 15 %, planetary 15 %).
    pub microlensing: f64,
    /// Constant stars.
    pub constant: f64,
    /// Periodic variables (RR Lyrae, eclipsing, long-period, semi-regular).
    pub variable: f64,
    /// Dwarf novae.
    pub cataclysmic: f64,
    /// Stellar flares.
    pub flare: f64,
    /// Asteroid crossings.
    pub asteroid: f64,
    /// Instrumental artefacts.
    pub artefact: f64,
}

impl Default for ClassMix {
    fn default() -> Self {
        ClassMix {
            microlensing: 0.20,
            constant: 0.30,
            variable: 0.22,
            cataclysmic: 0.05,
            flare: 0.04,
            asteroid: 0.05,
            artefact: 0.14,
        }
    }
}

impl ClassMix {
    /// The stars of a real field: mostly constant, a few per cent variable, events rare (a
    /// 10⁶-star KMTNet field has of the order of a hundred events a season).
    pub fn field() -> ClassMix {
        ClassMix { microlensing: 0.0002, constant: 0.95, variable: 0.04, cataclysmic: 0.0005, flare: 0.002, asteroid: 0.005, artefact: 0.002 }
    }

    fn draw(&self, rng: &mut ChaCha8Rng) -> Class {
        let w = [
            (Class::Microlensing, self.microlensing),
            (Class::Constant, self.constant),
            (Class::Variable, self.variable),
            (Class::Cataclysmic, self.cataclysmic),
            (Class::Flare, self.flare),
            (Class::Asteroid, self.asteroid),
            (Class::Artefact, self.artefact),
        ];
        let total: f64 = w.iter().map(|x| x.1.max(0.0)).sum();
        let mut u = rng.random::<f64>() * total;
        for (c, x) in w {
            u -= x.max(0.0);
            if u < 0.0 {
                return c;
            }
        }
        Class::Constant
    }
}

/// The noise-free light curve of a star.
#[derive(Debug, Clone, PartialEq)]
pub enum Model {
    Constant,
    Pspl { t0: f64, te: f64, u0: f64 },
    Fspl { t0: f64, te: f64, u0: f64, rho: f64 },
    Binary { t0: f64, te: f64, u0: f64, rho: f64, alpha: f64, q: f64, s: f64 },
    RrLyrae { period: f64, amp: f64, phase: f64 },
    Eclipsing { period: f64, depth1: f64, depth2: f64, width: f64, phase: f64 },
    LongPeriod { period: f64, amp: f64, phase: f64 },
    SemiRegular { p1: f64, a1: f64, ph1: f64, p2: f64, a2: f64, ph2: f64 },
    DwarfNova { first: f64, recur: f64, amp: f64, rise: f64, plateau: f64, decay: f64, jitter: [f64; DN_OUTBURSTS] },
    Flare { t0: f64, amp: f64, rise: f64, decay: f64 },
    Asteroid { t0: f64, flux: f64, width: f64 },
    BleedTrail { site: Site, fwhm_max: f64, flux: f64 },
    DiffractionSpike { site: Site, flux: f64, nights: u64 },
    BadSeeing { coef: f64 },
    HighSky { coef: f64 },
    SiteTrend { site: Site, slope: f64, curve: f64, tmid: f64 },
}

/// Every drawn parameter of a star (NaN where not applicable); the truth table's physics.
#[derive(Debug, Clone, PartialEq)]
pub struct Star {
    pub class: Class,
    pub subtype: &'static str,
    pub model: Model,
    /// I-band magnitude of the (variable or lensed) source.
    pub source_mag: f64,
    /// I-band source flux and blend flux (pySIS units).
    pub fs: f64,
    pub fb: f64,
    /// V - I colour of the whole star.
    pub color_vi: f64,
    /// Site of a one-site artefact.
    pub site: Option<Site>,
}

impl Star {
    pub fn baseline_flux(&self) -> f64 {
        self.fs + self.fb
    }

    /// Noise-free total flux of the star at an epoch (I or V band, pySIS units).
    pub fn flux(&self, e: &Epoch, site: Site, band: Band, ctx: &FluxCtx) -> f64 {
        let vscale = match band {
            Band::I => 1.0,
            Band::V => 10f64.powf(-0.4 * self.color_vi),
        };
        let t = e.hjd;
        let (fs, fb) = (self.fs * vscale, self.fb * vscale);
        // Variability in magnitudes is larger in V (about x1.4 for pulsators).
        let vamp = if band == Band::V { 1.4 } else { 1.0 };
        let var = |dm: f64| (fs + fb) * 10f64.powf(-0.4 * dm * vamp);
        match &self.model {
            Model::Constant => fs + fb,
            Model::Pspl { t0, te, u0 } => fs * lens::pspl(lens::u_of_t(t, *t0, *te, *u0)) + fb,
            Model::Fspl { t0, te, u0, rho } => {
                fs * lens::fspl(lens::u_of_t(t, *t0, *te, *u0), *rho) + fb
            }
            Model::Binary { t0, te, u0, rho, alpha, q, s } => {
                let b = BinaryLens { q: *q, s: *s };
                let mut warm = None;
                let z = lens::trajectory(t, *t0, *te, *u0, *alpha);
                fs * b.magnification_fs(z, *rho, &mut warm) + fb
            }
            Model::RrLyrae { period, amp, phase } => {
                // Fast rise over 15 % of the cycle, slow linear decline: the classic RRab shape.
                let ph = ((t / period) + phase).rem_euclid(1.0);
                let shape = if ph < 0.15 { 1.0 - ph / 0.15 } else { (ph - 0.15) / 0.85 };
                var(amp * (shape - 0.5))
            }
            Model::Eclipsing { period, depth1, depth2, width, phase } => {
                let ph = ((t / period) + phase).rem_euclid(1.0);
                let g = |c: f64| {
                    let d = (ph - c).abs().min(1.0 - (ph - c).abs());
                    (-0.5 * (d / width).powi(2)).exp()
                };
                var(depth1 * g(0.0) + depth2 * g(0.5))
            }
            Model::LongPeriod { period, amp, phase } => {
                let x = std::f64::consts::TAU * (t / period + phase);
                var(-amp * 0.5 * (x.sin() + 0.2 * (2.0 * x).sin()))
            }
            Model::SemiRegular { p1, a1, ph1, p2, a2, ph2 } => {
                let tau = std::f64::consts::TAU;
                var(-a1 * (tau * (t / p1 + ph1)).sin() - a2 * (tau * (t / p2 + ph2)).sin())
            }
            Model::DwarfNova { .. } => var(-dwarf_nova_dm(&self.model, t)),
            Model::Flare { t0, amp, rise, decay } => {
                let dt = t - t0;
                let shape = if dt < -rise * 3.0 {
                    0.0
                } else if dt < 0.0 {
                    (dt / rise).exp()
                } else {
                    (-dt / decay).exp()
                };
                fs + fb + amp * vscale * 0.6 * shape
            }
            Model::Asteroid { t0, flux, width } => {
                fs + fb + flux * vscale * 0.8 * (-0.5 * ((t - t0) / width).powi(2)).exp()
            }
            Model::BleedTrail { site: s, fwhm_max, flux } => {
                // A saturated neighbour bleeds into the aperture only in good seeing.
                if *s == site && e.fwhm < *fwhm_max {
                    fs + fb + flux * vscale * (fwhm_max / e.fwhm - 1.0).min(1.5)
                } else {
                    fs + fb
                }
            }
            Model::DiffractionSpike { site: s, flux, nights } => {
                // Pointing jitter puts the star on a neighbour's spike on some nights only.
                if *s == site && ((nights >> (e.night % 64)) & 1) == 1 {
                    fs + fb + flux * vscale * (4.0 / e.fwhm).min(2.0)
                } else {
                    fs + fb
                }
            }
            Model::BadSeeing { coef } => {
                let med = ctx.fwhm_median[site.index()];
                fs + fb + coef * vscale * (e.fwhm / med - 1.0).max(0.0).powi(2)
            }
            Model::HighSky { coef } => {
                let med = ctx.sky_median[site.index()];
                fs + fb + coef * vscale * (e.sky / med - 1.0).max(0.0)
            }
            Model::SiteTrend { site: s, slope, curve, tmid } => {
                if *s == site {
                    let x = (t - tmid) / 100.0;
                    fs + fb + vscale * (slope * x + curve * x * x)
                } else {
                    fs + fb
                }
            }
        }
    }

    /// Time of the model's maximum (events, outbursts, flares, asteroids), NaN otherwise.
    pub fn t_peak(&self) -> f64 {
        match &self.model {
            Model::Pspl { t0, .. } | Model::Fspl { t0, .. } | Model::Binary { t0, .. } => *t0,
            Model::Flare { t0, .. } | Model::Asteroid { t0, .. } => *t0,
            Model::DwarfNova { first, .. } => *first,
            _ => f64::NAN,
        }
    }
}

/// Outbursts a simulated dwarf nova has (enough for a season at the shortest recurrence).
pub const DN_OUTBURSTS: usize = 40;

/// Magnitude excursion of a dwarf nova (positive = brighter) at time t.
pub fn dwarf_nova_dm(m: &Model, t: f64) -> f64 {
    let Model::DwarfNova { first, recur, amp, rise, plateau, decay, jitter } = m else {
        return 0.0;
    };
    let k = ((t - first) / recur).floor();
    let mut best: f64 = 0.0;
    for kk in [k - 1.0, k] {
        if kk < 0.0 || kk >= DN_OUTBURSTS as f64 {
            continue;
        }
        let start = first + kk * recur + jitter[kk as usize] * recur;
        let dt = t - start;
        let dm = if dt < 0.0 {
            0.0
        } else if dt < *rise {
            amp * dt / rise
        } else if dt < rise + plateau {
            *amp
        } else {
            (amp - (dt - rise - plateau) / decay).max(0.0)
        };
        best = best.max(dm);
    }
    best
}

/// Outburst start times of a dwarf nova.
pub fn dwarf_nova_starts(m: &Model) -> Vec<f64> {
    match m {
        Model::DwarfNova { first, recur, jitter, .. } => {
            (0..DN_OUTBURSTS).map(|k| first + k as f64 * recur + jitter[k] * recur).collect()
        }
        _ => Vec::new(),
    }
}

/// Per-field context a few artefact models need.
#[derive(Debug, Clone)]
pub struct FluxCtx {
    pub fwhm_median: [f64; 3],
    pub sky_median: [f64; 3],
    /// First and last epoch of the field's season.
    pub season: (f64, f64),
}

impl FluxCtx {
    pub fn new(s: &FieldSchedule) -> FluxCtx {
        let mut fwhm_median = [4.0; 3];
        let mut sky_median = [800.0; 3];
        let mut lo = f64::INFINITY;
        let mut hi = f64::NEG_INFINITY;
        for ss in s.sites.iter().filter(|x| x.band == Band::I) {
            let mut f: Vec<f64> = ss.epochs.iter().map(|e| e.fwhm).collect();
            let mut k: Vec<f64> = ss.epochs.iter().map(|e| e.sky).collect();
            if !f.is_empty() {
                fwhm_median[ss.site.index()] = median(&mut f);
                sky_median[ss.site.index()] = median(&mut k);
            }
            if let (Some(a), Some(b)) = (ss.epochs.first(), ss.epochs.last()) {
                lo = lo.min(a.hjd);
                hi = hi.max(b.hjd);
            }
        }
        if !lo.is_finite() {
            (lo, hi) = (0.0, 1.0);
        }
        FluxCtx { fwhm_median, sky_median, season: (lo, hi) }
    }
}

pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// Source magnitudes follow a rising luminosity function, p(m) ∝ 10^(0.3 m), on [lo, hi].
fn draw_mag(rng: &mut ChaCha8Rng, lo: f64, hi: f64) -> f64 {
    let a = 0.3 * std::f64::consts::LN_10;
    let u = rng.random::<f64>();
    lo + ((1.0 - u) + u * (a * (hi - lo)).exp()).ln() / a
}

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    StandardNormal.sample(rng)
}

fn log_uniform(rng: &mut ChaCha8Rng, lo: f64, hi: f64) -> f64 {
    (uni(rng, lo.ln(), hi.ln())).exp()
}

/// Draw a star: class from the mix, then its parameters. Events peak uniformly from 40 days
/// before to 40 days after the field's season, so some peak before, during and after it.
pub fn draw_star(rng: &mut ChaCha8Rng, mix: &ClassMix, ctx: &FluxCtx, sched: &FieldSchedule) -> Star {
    let class = mix.draw(rng);
    let (s0, s1) = ctx.season;
    let color_vi = uni(rng, 1.6, 3.2);
    let plain = |rng: &mut ChaCha8Rng, lo: f64, hi: f64| {
        let m = draw_mag(rng, lo, hi);
        (m, mag_to_flux(m))
    };
    let mut star = Star {
        class,
        subtype: "constant",
        model: Model::Constant,
        source_mag: f64::NAN,
        fs: 0.0,
        fb: 0.0,
        color_vi,
        site: None,
    };
    let pick_site = |rng: &mut ChaCha8Rng| Site::ALL[(rng.random::<f64>() * 3.0) as usize % 3];
    match class {
        Class::Microlensing => {
            let m = draw_mag(rng, 16.0, 22.0);
            star.source_mag = m;
            star.fs = mag_to_flux(m);
            // A third of events unblended; the rest with source fraction log-uniform 0.05-1.
            let fsfrac = if rng.random::<f64>() < 0.33 { 1.0 } else { log_uniform(rng, 0.05, 1.0) };
            star.fb = star.fs * (1.0 / fsfrac - 1.0);
            let t0 = uni(rng, s0 - 40.0, s1 + 40.0);
            let te = (18f64.ln() + 0.75 * normal(rng)).exp().clamp(1.0, 300.0);
            let rho = log_uniform(rng, 5e-4, 1e-2);
            let u = rng.random::<f64>();
            if u < 0.60 {
                star.subtype = "pspl";
                star.model = Model::Pspl { t0, te, u0: uni(rng, 0.0, 1.5) };
            } else if u < 0.70 {
                star.subtype = "fspl";
                star.model = Model::Fspl { t0, te, u0: uni(rng, 0.0, 2.0) * rho, rho };
            } else {
                let planetary = u >= 0.85;
                let (q, s) = if planetary {
                    star.subtype = "planetary";
                    (log_uniform(rng, 1e-4, 1e-2), log_uniform(rng, 0.6, 1.7))
                } else {
                    star.subtype = "binary";
                    (log_uniform(rng, 0.05, 1.0), log_uniform(rng, 0.3, 3.0))
                };
                let alpha = uni(rng, 0.0, std::f64::consts::TAU);
                // Planetary events are found when the trajectory passes near the central or
                // planetary caustic; bias u0 small so a useful share show anomalies.
                let u0 = if planetary { uni(rng, 0.0, 0.3) } else { uni(rng, 0.0, 1.0) };
                star.model = Model::Binary { t0, te, u0, rho, alpha, q, s };
            }
        }
        Class::Constant => {
            let (m, f) = plain(rng, 14.0, 21.5);
            (star.source_mag, star.fs) = (m, f);
        }
        Class::Variable => {
            let (m, f) = plain(rng, 14.0, 20.5);
            (star.source_mag, star.fs) = (m, f);
            let u = rng.random::<f64>();
            let phase = rng.random::<f64>();
            if u < 0.3 {
                star.subtype = "rr_lyrae";
                star.model = Model::RrLyrae { period: uni(rng, 0.45, 0.75), amp: uni(rng, 0.2, 0.7), phase };
            } else if u < 0.6 {
                star.subtype = "eclipsing";
                star.model = Model::Eclipsing {
                    period: log_uniform(rng, 0.3, 20.0),
                    depth1: uni(rng, 0.1, 0.9),
                    depth2: uni(rng, 0.0, 0.5),
                    width: uni(rng, 0.015, 0.06),
                    phase,
                };
            } else if u < 0.8 {
                star.subtype = "long_period";
                // Miras are bright and red.
                let (m, f) = plain(rng, 13.0, 17.0);
                (star.source_mag, star.fs) = (m, f);
                star.color_vi = uni(rng, 3.0, 5.0);
                star.model = Model::LongPeriod { period: uni(rng, 100.0, 600.0), amp: uni(rng, 0.5, 2.5), phase };
            } else {
                star.subtype = "semi_regular";
                star.model = Model::SemiRegular {
                    p1: uni(rng, 20.0, 150.0),
                    a1: uni(rng, 0.05, 0.4),
                    ph1: phase,
                    p2: uni(rng, 20.0, 150.0),
                    a2: uni(rng, 0.02, 0.2),
                    ph2: rng.random::<f64>(),
                };
            }
        }
        Class::Cataclysmic => {
            star.subtype = "dwarf_nova";
            let (m, f) = plain(rng, 18.5, 21.5);
            (star.source_mag, star.fs) = (m, f);
            // Outbursts as in real OGLE bulge dwarf novae: ranges are the 10th-90th percentiles
            // measured on real-dev's training half (231 stars, 2,538 outbursts; models/README.md,
            // "Real dwarf novae"): recurrence 9-235 d (log-uniform), amplitude 1-3 mag above the
            // median, rise 0.7-4.7 d from the last quiet point, decline 0.6-4.6 d per mag.
            let recur = uni(rng, 9f64.ln(), 235f64.ln()).exp();
            let mut jitter = [0.0; DN_OUTBURSTS];
            for j in jitter.iter_mut() {
                *j = uni(rng, -0.15, 0.15);
            }
            star.model = Model::DwarfNova {
                first: uni(rng, s0 - recur, s0 + 0.5 * recur.min(s1 - s0)),
                recur,
                amp: uni(rng, 1.0, 3.0),
                rise: uni(rng, 0.7, 4.7),
                plateau: uni(rng, 0.5, 8.0),
                decay: uni(rng, 0.6, 4.6),
                jitter,
            };
        }
        Class::Flare => {
            star.subtype = "flare";
            let (m, f) = plain(rng, 17.0, 21.5);
            (star.source_mag, star.fs) = (m, f);
            let t0 = random_epoch(rng, sched).unwrap_or(s0) + uni(rng, -0.05, 0.02);
            star.model = Model::Flare {
                t0,
                amp: f * (10f64.powf(0.4 * uni(rng, 0.5, 4.0)) - 1.0),
                rise: uni(rng, 2.0, 10.0) / 1440.0,
                decay: uni(rng, 10.0, 90.0) / 1440.0,
            };
        }
        Class::Asteroid => {
            star.subtype = "asteroid";
            let (m, f) = plain(rng, 15.0, 21.5);
            (star.source_mag, star.fs) = (m, f);
            let t0 = random_epoch(rng, sched).unwrap_or(s0) + uni(rng, -0.01, 0.01);
            star.model = Model::Asteroid {
                t0,
                flux: mag_to_flux(uni(rng, 16.5, 20.5)),
                width: uni(rng, 0.3, 1.2) / 24.0,
            };
        }
        Class::Artefact => {
            let (m, f) = plain(rng, 15.0, 21.0);
            (star.source_mag, star.fs) = (m, f);
            let site = pick_site(rng);
            let amp = mag_to_flux(uni(rng, 17.0, 20.0));
            let u = rng.random::<f64>();
            if u < 0.2 {
                star.subtype = "bleed_trail";
                star.site = Some(site);
                star.model =
                    Model::BleedTrail { site, fwhm_max: ctx.fwhm_median[site.index()] * uni(rng, 0.8, 1.0), flux: amp };
            } else if u < 0.4 {
                star.subtype = "diffraction_spike";
                star.site = Some(site);
                let mut nights = 0u64;
                for b in 0..64 {
                    if rng.random::<f64>() < 0.25 {
                        nights |= 1 << b;
                    }
                }
                star.model = Model::DiffractionSpike { site, flux: amp, nights };
            } else if u < 0.6 {
                star.subtype = "bad_seeing";
                star.model = Model::BadSeeing { coef: amp * uni(rng, 0.5, 2.0) };
            } else if u < 0.8 {
                star.subtype = "high_sky";
                star.model = Model::HighSky { coef: amp * uni(rng, 0.1, 0.4) };
            } else {
                star.subtype = "site_trend";
                star.site = Some(site);
                let sign = if rng.random::<f64>() < 0.5 { -1.0 } else { 1.0 };
                star.model = Model::SiteTrend {
                    site,
                    slope: sign * amp * uni(rng, 0.3, 1.5),
                    curve: amp * uni(rng, -1.0, 1.0),
                    tmid: 0.5 * (s0 + s1),
                };
            }
        }
    }
    star
}

/// A random I-band epoch of the field (so one-night confusers land where data exist).
fn random_epoch(rng: &mut ChaCha8Rng, sched: &FieldSchedule) -> Option<f64> {
    let total: usize = sched.sites.iter().filter(|s| s.band == Band::I).map(|s| s.epochs.len()).sum();
    if total == 0 {
        return None;
    }
    let mut k = (rng.random::<f64>() * total as f64) as usize % total;
    for s in sched.sites.iter().filter(|s| s.band == Band::I) {
        if k < s.epochs.len() {
            return Some(s.epochs[k].hjd);
        }
        k -= s.epochs.len();
    }
    None
}
