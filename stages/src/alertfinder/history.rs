//! Per-star history: each site's baseline from every stored night of the star, earlier seasons
//! included, kept as state that a run extends with the nights that became old enough instead of
//! recomputing it from the season (issue 12).
//!
//! A night is one site's points with the same `floor(time)`. Each night enters the history once,
//! as its median flux and an effective error (the median error bar over the square root of the
//! night's points, times sqrt(pi/2) for three or more points: the error of a median), when the
//! whole night is older than the run's `upto` (the start of its search window). So the history
//! of a star at `upto` is a function of its nights before `upto` only, fed in time order; a
//! chain of runs, a re-run, or a run from the season's start state all give the same bytes.
//!
//! Per site it keeps, in O(1) space (P² lags a trend: a rise absorbed over the last third of a
//! history lifts the level by a few per cent of its amplitude):
//! - the P² estimator (Jain & Chlamtac 1985) of the nightly fluxes' median, whose markers are
//!   also the quartiles: the level is the median, the nightly scatter is (median - first quartile) / 0.6745 (the
//!   lower half, which brightenings never reach);
//! - the mean effective error, so that the error-bar multiplier is scatter / error;
//! - brightenings that ended ("episodes"): at least two nights in a row `EPISODE_SIGMA` above
//!   the level, followed by `EPISODE_QUIET_NIGHTS` nights back within 2 sigma. A microlensing
//!   event does not recur; dwarf novae, flares and many variables do, so a candidate whose
//!   history holds ended brightenings at two sites (or at its only site with a history) is
//!   reported as recurrent ([`HistorySummary::recurrent`]; one site of several is more likely
//!   an artefact).

use serde::Serialize;

use super::baseline::{median_in_place, valid};
use super::N_SITES;
use crate::photometry::LightCurve;

/// Version of the serialised state ([`StarHistory::to_values`]).
pub const HISTORY_VERSION: u32 = 2;
/// Values per site in [`StarHistory::to_values`].
pub const SITE_VALUES: usize = 22;
/// Values per star.
pub const STAR_VALUES: usize = SITE_VALUES * N_SITES;
/// A night at least this many nightly sigmas above the level is high.
pub const EPISODE_SIGMA: f64 = 5.0;
/// High nights in a row that make a brightening.
pub const EPISODE_NIGHTS: u32 = 2;
/// Nights back within 2 sigma that end it.
pub const EPISODE_QUIET_NIGHTS: u32 = 3;
/// Nights the history needs before brightenings are counted (the level must be known).
pub const EPISODE_MIN_NIGHTS: u32 = 10;

/// The P² estimator of the median (five markers: minimum, quartiles, median, maximum).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct P2 {
    pub n: u32,
    pub q: [f64; 5],
    pub pos: [f64; 5],
}

impl P2 {
    pub fn push(&mut self, x: f64) {
        if self.n < 5 {
            self.q[self.n as usize] = x;
            self.n += 1;
            if self.n == 5 {
                self.q.sort_by(f64::total_cmp);
                self.pos = [1.0, 2.0, 3.0, 4.0, 5.0];
            }
            return;
        }
        let q = &mut self.q;
        let k = if x < q[0] {
            q[0] = x;
            0
        } else if x >= q[4] {
            q[4] = x;
            3
        } else {
            (0..4).find(|&i| x < q[i + 1]).unwrap_or(3)
        };
        for p in &mut self.pos[k + 1..] {
            *p += 1.0;
        }
        self.n += 1;
        let n = self.n as f64;
        let desired = [1.0, 1.0 + (n - 1.0) * 0.25, 1.0 + (n - 1.0) * 0.5, 1.0 + (n - 1.0) * 0.75, n];
        let pos = &mut self.pos;
        for i in 1..4 {
            let d = desired[i] - pos[i];
            if (d >= 1.0 && pos[i + 1] - pos[i] > 1.0) || (d <= -1.0 && pos[i - 1] - pos[i] < -1.0) {
                let d = d.signum();
                let parabolic = q[i]
                    + d / (pos[i + 1] - pos[i - 1])
                        * ((pos[i] - pos[i - 1] + d) * (q[i + 1] - q[i]) / (pos[i + 1] - pos[i])
                            + (pos[i + 1] - pos[i] - d) * (q[i] - q[i - 1]) / (pos[i] - pos[i - 1]));
                q[i] = if q[i - 1] < parabolic && parabolic < q[i + 1] {
                    parabolic
                } else {
                    let j = if d > 0.0 { i + 1 } else { i - 1 };
                    q[i] + d * (q[j] - q[i]) / (pos[j] - pos[i])
                };
                pos[i] += d;
            }
        }
    }

    /// (first quartile, median, third quartile); exact for fewer than five values.
    pub fn quartiles(&self) -> (f64, f64, f64) {
        match self.n {
            0 => (f64::NAN, f64::NAN, f64::NAN),
            1..=4 => {
                let mut v = self.q[..self.n as usize].to_vec();
                v.sort_by(f64::total_cmp);
                let at = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
                (at(0.25), at(0.5), at(0.75))
            }
            _ => (self.q[1], self.q[2], self.q[3]),
        }
    }
}

/// The history of one site.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SiteHistory {
    /// Nights absorbed.
    pub nights: u32,
    /// `floor(time)` of the newest absorbed night (-inf: none).
    pub last_night: f64,
    /// Nightly median fluxes.
    pub level: P2,
    /// Sum of the nightly effective errors.
    pub err_sum: f64,
    /// Ended brightenings.
    pub episodes: u32,
    /// High nights in a row now (a brightening in progress when >= EPISODE_NIGHTS).
    pub high_run: u32,
    /// Nights back at the level since the brightening in progress.
    pub quiet: u32,
    /// Highest nightly z seen (0 before EPISODE_MIN_NIGHTS).
    pub max_z: f64,
    /// The earlier seasons' (nights, level, scatter, mean effective error), frozen at the
    /// season's start ([`StarHistory::freeze_prior`]); NaN when there were none.
    pub prior: [f64; 4],
}

impl Default for SiteHistory {
    fn default() -> Self {
        SiteHistory {
            nights: 0,
            last_night: f64::NEG_INFINITY,
            level: P2::default(),
            err_sum: 0.0,
            episodes: 0,
            high_run: 0,
            quiet: 0,
            max_z: 0.0,
            prior: [f64::NAN; 4],
        }
    }
}

impl SiteHistory {
    /// (level, nightly scatter, mean effective error); None before any night.
    pub fn stats(&self) -> Option<(f64, f64, f64)> {
        if self.nights == 0 {
            return None;
        }
        let (q1, med, _) = self.level.quartiles();
        let mean_err = self.err_sum / self.nights as f64;
        // The lower half only: brightenings (events, outbursts) never reach it.
        let scatter = (med - q1) / 0.674_489_750_196_081_7;
        Some((med, scatter, mean_err))
    }

    /// The earlier seasons' (nights, level, scatter, mean effective error) if frozen.
    pub fn prior(&self) -> Option<(u32, f64, f64, f64)> {
        let [n, l, sc, e] = self.prior;
        (n.is_finite() && n > 0.0).then_some((n as u32, l, sc, e))
    }

    fn absorb_night(&mut self, flux: f64, err: f64) {
        if self.nights >= EPISODE_MIN_NIGHTS {
            if let Some((med, scatter, mean_err)) = self.stats() {
                let z = (flux - med) / scatter.max(mean_err);
                if z.is_finite() {
                    self.max_z = self.max_z.max(z);
                    if z >= EPISODE_SIGMA {
                        self.high_run += 1;
                        self.quiet = 0;
                    } else if self.high_run >= EPISODE_NIGHTS {
                        if z < 2.0 {
                            self.quiet += 1;
                            if self.quiet >= EPISODE_QUIET_NIGHTS {
                                self.episodes += 1;
                                self.high_run = 0;
                                self.quiet = 0;
                            }
                        } else {
                            self.quiet = 0;
                        }
                    } else {
                        self.high_run = 0;
                    }
                }
            }
        }
        self.level.push(flux);
        self.err_sum += err;
        self.nights += 1;
    }
}

/// The history of one star (per site).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct StarHistory {
    pub sites: [SiteHistory; N_SITES],
}

/// What a search saw of a star's history (a column of the candidates).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct HistorySummary {
    /// Nights per site.
    pub nights: [u32; N_SITES],
    /// Ended brightenings over all sites.
    pub episodes: u32,
    /// Highest nightly z over all sites.
    pub max_z: f64,
    /// Sites whose baseline came from the history.
    pub sites_used: u8,
    /// Sites with an ended brightening, and sites whose history is long enough to show one.
    pub episode_sites: u8,
    pub history_sites: u8,
}

impl HistorySummary {
    /// A recurrent brightener: ended brightenings at two sites, or at the only site with a
    /// history (a brightening at one site of several is more likely an artefact).
    pub fn recurrent(&self) -> bool {
        self.episode_sites > 0 && self.episode_sites >= self.history_sites.min(2)
    }
}

impl StarHistory {
    /// Feed the star's complete nights before `upto` that are newer than the ones absorbed.
    pub fn absorb(&mut self, lc: &LightCurve<'_>, upto: f64, buf: &mut NightBuffers) {
        let n = lc.time.len().min(lc.flux.len()).min(lc.err.len()).min(lc.site.len());
        let oldest = self.sites.iter().map(|s| s.last_night).fold(f64::INFINITY, f64::min);
        // Times are sorted (NaN times are skipped): start after the oldest absorbed night.
        let start = if oldest.is_finite() { lc.time[..n].partition_point(|&t| !(t >= oldest + 1.0)) } else { 0 };
        for s in 0..N_SITES {
            buf.night[s] = f64::NAN;
            buf.flux[s].clear();
            buf.err[s].clear();
        }
        for i in start..n {
            let (t, f, e, s) = (lc.time[i], lc.flux[i], lc.err[i], lc.site[i]);
            if !valid(t, f, e, s) {
                continue;
            }
            let night = t.floor();
            if !(night + 1.0 <= upto) {
                break;
            }
            let s = s as usize;
            if night <= self.sites[s].last_night {
                continue;
            }
            if buf.night[s] != night {
                self.flush(s, buf);
                buf.night[s] = night;
            }
            buf.flux[s].push(f);
            buf.err[s].push(e);
        }
        for s in 0..N_SITES {
            self.flush(s, buf);
        }
    }

    fn flush(&mut self, s: usize, buf: &mut NightBuffers) {
        let k = buf.flux[s].len();
        if k == 0 {
            return;
        }
        let f = median_in_place(&mut buf.flux[s]);
        let e = median_in_place(&mut buf.err[s]);
        let e_eff = if k >= 3 { e * (std::f64::consts::FRAC_PI_2 / k as f64).sqrt() } else { e / (k as f64).sqrt() };
        if f.is_finite() && e_eff.is_finite() {
            self.sites[s].absorb_night(f, e_eff);
            self.sites[s].last_night = buf.night[s];
        }
        buf.flux[s].clear();
        buf.err[s].clear();
    }

    /// Freeze the history so far as the earlier seasons' baseline (at a season's start).
    pub fn freeze_prior(&mut self) {
        for s in &mut self.sites {
            s.prior = match s.stats() {
                Some((l, sc, e)) => [s.nights as f64, l, sc, e],
                None => [f64::NAN; 4],
            };
        }
    }

    pub fn summary(&self) -> HistorySummary {
        HistorySummary {
            nights: std::array::from_fn(|s| self.sites[s].nights),
            episodes: self.sites.iter().map(|s| s.episodes).sum(),
            max_z: self.sites.iter().map(|s| s.max_z).fold(0.0, f64::max),
            sites_used: 0,
            episode_sites: self.sites.iter().filter(|s| s.episodes > 0).count() as u8,
            history_sites: self.sites.iter().filter(|s| s.nights >= EPISODE_MIN_NIGHTS).count() as u8,
        }
    }

    /// The state as `STAR_VALUES` numbers (the stored form).
    pub fn to_values(&self, out: &mut Vec<f64>) {
        for s in &self.sites {
            out.extend_from_slice(&[s.nights as f64, s.last_night, s.level.n as f64]);
            out.extend_from_slice(&s.level.q);
            out.extend_from_slice(&s.level.pos);
            out.extend_from_slice(&[s.err_sum, s.episodes as f64, s.high_run as f64, s.quiet as f64, s.max_z]);
            out.extend_from_slice(&s.prior);
        }
    }

    /// The inverse of [`StarHistory::to_values`]; None when `v` has the wrong length.
    pub fn from_values(v: &[f64]) -> Option<StarHistory> {
        if v.len() != STAR_VALUES {
            return None;
        }
        let mut h = StarHistory::default();
        for (s, c) in h.sites.iter_mut().zip(v.chunks_exact(SITE_VALUES)) {
            *s = SiteHistory {
                nights: c[0] as u32,
                last_night: c[1],
                level: P2 { n: c[2] as u32, q: [c[3], c[4], c[5], c[6], c[7]], pos: [c[8], c[9], c[10], c[11], c[12]] },
                err_sum: c[13],
                episodes: c[14] as u32,
                high_run: c[15] as u32,
                quiet: c[16] as u32,
                max_z: c[17],
                prior: [c[18], c[19], c[20], c[21]],
            };
        }
        Some(h)
    }
}

/// Reusable buffers of [`StarHistory::absorb`].
#[derive(Debug, Default)]
pub struct NightBuffers {
    night: [f64; N_SITES],
    flux: [Vec<f64>; N_SITES],
    err: [Vec<f64>; N_SITES],
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn curve(nights: &[(f64, f64)], per_night: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<u8>) {
        let (mut t, mut f, mut e, mut s) = (vec![], vec![], vec![], vec![]);
        for &(night, flux) in nights {
            for k in 0..per_night {
                t.push(night + 0.1 + 0.5 * k as f64 / per_night as f64);
                f.push(flux);
                e.push(1.0);
                s.push(1);
            }
        }
        (t, f, e, s)
    }

    #[test]
    fn p2_tracks_the_median_and_quartiles() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut p = P2::default();
        let mut all = vec![];
        for _ in 0..5000 {
            // 10 % outliers far above: the median barely moves.
            let x: f64 = if rng.random::<f64>() < 0.1 { 50.0 + rng.random::<f64>() } else { rng.random::<f64>() * 2.0 - 1.0 };
            p.push(x);
            all.push(x);
        }
        all.sort_by(f64::total_cmp);
        let (q1, med, q3) = p.quartiles();
        assert!((med - all[2500]).abs() < 0.05, "{med} vs {}", all[2500]);
        assert!((q1 - all[1250]).abs() < 0.05 && (q3 - all[3750]).abs() < 0.1, "{q1} {q3}");
    }

    #[test]
    fn any_chain_of_runs_gives_the_same_history() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let nights: Vec<(f64, f64)> = (0..200).map(|k| (8000.0 + k as f64, rng.random::<f64>())).collect();
        let (t, f, e, s) = curve(&nights, 3);
        let lc = LightCurve { time: &t, flux: &f, err: &e, site: &s, fwhm: &[], sky: &[] };
        let mut buf = NightBuffers::default();
        let mut once = StarHistory::default();
        once.absorb(&lc, 8150.0, &mut buf);
        let mut chain = StarHistory::default();
        for upto in [8001.5, 8010.0, 8010.0, 8077.3, 8149.0, 8150.0] {
            chain.absorb(&lc, upto, &mut buf);
        }
        assert_eq!(format!("{once:?}"), format!("{chain:?}"));
        assert_eq!(once.sites[1].nights, 150, "nights 8000..8149 are complete before 8150");
        let mut v = vec![];
        once.to_values(&mut v);
        assert_eq!(v.len(), STAR_VALUES);
        let mut back = vec![];
        StarHistory::from_values(&v).unwrap().to_values(&mut back);
        assert_eq!(format!("{v:?}"), format!("{back:?}"));
    }

    #[test]
    fn an_ended_brightening_is_an_episode_and_a_rise_is_not() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let quiet = |n: f64, rng: &mut rand::rngs::StdRng| (n, rng.random::<f64>() - 0.5);
        let mut nights: Vec<(f64, f64)> = (0..40).map(|k| quiet(8000.0 + k as f64, &mut rng)).collect();
        // A four-night outburst, then quiet again.
        nights.extend((40..44).map(|k| (8000.0 + k as f64, 30.0)));
        nights.extend((44..60).map(|k| quiet(8000.0 + k as f64, &mut rng)));
        let (t, f, e, s) = curve(&nights, 1);
        let lc = LightCurve { time: &t, flux: &f, err: &e, site: &s, fwhm: &[], sky: &[] };
        let mut h = StarHistory::default();
        h.absorb(&lc, 9000.0, &mut NightBuffers::default());
        assert_eq!(h.summary().episodes, 1);
        // A rise that has not come back is not (yet) an episode.
        let mut rising: Vec<(f64, f64)> = (0..40).map(|k| quiet(8000.0 + k as f64, &mut rng)).collect();
        rising.extend((40..60).map(|k| (8000.0 + k as f64, 3.0 * (k - 39) as f64)));
        let (t, f, e, s) = curve(&rising, 1);
        let lc = LightCurve { time: &t, flux: &f, err: &e, site: &s, fwhm: &[], sky: &[] };
        let mut h = StarHistory::default();
        h.absorb(&lc, 9000.0, &mut NightBuffers::default());
        assert_eq!(h.summary().episodes, 0);
        assert!(h.summary().max_z > 10.0);
        let (level, sigma, _) = h.sites[1].stats().unwrap();
        // P² lags a trend: a rise over the last third of the history lifts the level by a few
        // per cent of the rise's amplitude (60), not to it.
        assert!(level.abs() < 3.0 && sigma < 4.0, "the level stays near the baseline: {level} {sigma}");
    }
}
