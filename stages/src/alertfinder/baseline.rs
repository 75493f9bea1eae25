//! Robust per-site baseline (median flux, MAD-rescaled error bars) and the N_high pre-selection.
//!
//! The baseline of each site is the median flux of the season's points older than the search
//! window; the error bars of each site are multiplied by `k_s = 1.4826 * median(|f_i - m_i| /
//! e_i)`, the MAD-based robust estimate of the standard deviation of the normalised residuals,
//! so that the baseline's reduced chi-square is about 1 while a past event or a few outliers
//! barely move it. Both medians are P² estimates ([`SiteEstimator`]) fed once per point in time
//! order (`m_i` is the median before point `i`), so that a run can carry them as state and read
//! only a star's recent points (issue 14).

use serde::Serialize;

use super::history::P2;
use super::{AlertParams, N_SITES};
use crate::photometry::LightCurve;

/// The MAD of a unit Gaussian is 1/1.4826 of its standard deviation.
const MAD_TO_SIGMA: f64 = 1.482_602_218_505_602;

/// Robust baseline statistics of one site.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct SiteBaseline {
    /// Points the baseline was estimated from (history, or all points if the history was short).
    pub n: u32,
    /// Whether the site had enough points to be used at all.
    pub usable: bool,
    /// Median flux (the site's baseline in its own flux scale).
    pub median: f64,
    /// Multiplier of the reported error bars (`k_s`), clamped below by `min_error_scale`.
    pub error_scale: f64,
    /// Mean reported error bar of the baseline points (before rescaling).
    pub mean_err: f64,
    /// The season's points before the window were enough on their own (no fallback to all).
    #[serde(skip)]
    pub from_season: bool,
}

/// A point is usable when all of its numbers are finite and its error bar is positive.
#[inline(always)]
pub(crate) fn valid(t: f64, f: f64, e: f64, s: u8) -> bool {
    t.is_finite() & f.is_finite() & e.is_finite() & (e > 0.0) & ((s as usize) < N_SITES)
}

/// The value of rank `n / 2` (upper median) in O(n); reorders `v`.
pub(crate) fn median_in_place(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mid = v.len() / 2;
    let (_, m, _) = v.select_nth_unstable_by(mid, |a, b| a.total_cmp(b));
    *m
}

/// A site's streaming baseline estimators, fed with its valid points once, in time order
/// (issue 14: the same state whether a run fed every point of the season or a stored state
/// carried the older ones): the count, the running sum of the error bars, the P² median of the
/// flux, and the P² median of `|f - m| / e`, `m` being the flux median before the point.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SiteEstimator {
    pub n: u32,
    pub sum_err: f64,
    pub level: P2,
    pub resid: P2,
}

impl SiteEstimator {
    #[inline]
    pub fn push(&mut self, f: f64, e: f64) {
        if self.level.n > 0 {
            let m = self.level.quartiles().1;
            self.resid.push((f - m).abs() / e);
        }
        self.level.push(f);
        self.n += 1;
        self.sum_err += e;
    }

    /// The site's baseline from the points fed so far (unusable below `min_baseline_points`).
    pub fn baseline(&self, p: &AlertParams) -> SiteBaseline {
        let n = self.n;
        if (n as usize) < p.min_baseline_points.max(1) {
            return SiteBaseline { n, ..Default::default() };
        }
        let mean_err = self.sum_err / n as f64;
        let med = self.level.quartiles().1;
        let k = (MAD_TO_SIGMA * self.resid.quartiles().1).max(p.min_error_scale);
        if !(k.is_finite() && med.is_finite()) {
            // Overflowing residuals (absurd flux over a tiny error): the site cannot be scaled.
            return SiteBaseline { n, ..Default::default() };
        }
        SiteBaseline { n, usable: true, median: med, error_scale: k, mean_err, from_season: false }
    }
}

/// The estimators of every site.
pub type Estimators = [SiteEstimator; N_SITES];

/// Estimate the robust baseline of every site from the valid points with `time < history_end`
/// among the first `end` points, continuing `start` (the estimators of the star's points before
/// `lc`'s first, or the default); a site with fewer than `min_baseline_points` such points
/// falls back to all its valid points before `end` (a short event barely moves a median).
pub fn site_baselines(lc: &LightCurve<'_>, end: usize, history_end: f64, p: &AlertParams, start: &Estimators) -> [SiteBaseline; N_SITES] {
    let mut est = *start;
    let mut i = 0;
    while i < end {
        let (t, f, e, s) = (lc.time[i], lc.flux[i], lc.err[i], lc.site[i]);
        if t >= history_end {
            break;
        }
        if valid(t, f, e, s) {
            est[s as usize].push(f, e);
        }
        i += 1;
    }
    let min = p.min_baseline_points.max(1);
    let short: [bool; N_SITES] = std::array::from_fn(|s| (est[s].n as usize) < min);
    let mut out: [SiteBaseline; N_SITES] = std::array::from_fn(|s| {
        let b = est[s].baseline(p);
        SiteBaseline { from_season: b.usable, ..b }
    });
    if short.iter().any(|&x| x) {
        // Short history: every valid point of the site instead (the same estimators, fed on).
        for j in i..end {
            let (t, f, e, s) = (lc.time[j], lc.flux[j], lc.err[j], lc.site[j]);
            if valid(t, f, e, s) && short[s as usize] {
                est[s as usize].push(f, e);
            }
        }
        for s in (0..N_SITES).filter(|&s| short[s]) {
            out[s] = est[s].baseline(p);
        }
    }
    out
}
