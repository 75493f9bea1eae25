//! Robust per-site baseline (median flux, MAD-rescaled error bars) and the N_high pre-selection.
//!
//! The baseline of each site is the median flux of the star's history (points older than the
//! search window); the error bars of each site are multiplied by
//! `k_s = 1.4826 * median(|f_i - median| / e_i)`, the MAD-based robust estimate of the standard
//! deviation of the normalised residuals, so that the baseline's reduced chi-square is about 1
//! while a past event or a few outliers in the history barely move it.

use serde::Serialize;

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

/// Reusable buffers of the baseline estimate, so a batch allocates once per thread.
#[derive(Debug, Default)]
pub struct BaselineScratch {
    flux: [Vec<f64>; N_SITES],
    err: [Vec<f64>; N_SITES],
    sel: Vec<f64>,
}

/// Estimate the robust baseline of every site from the valid points with `time < history_end`
/// among the first `end` points; a site with fewer than `min_baseline_points` such points falls
/// back to all its valid points before `end` (a short event barely moves a median).
pub fn site_baselines(
    lc: &LightCurve<'_>,
    end: usize,
    history_end: f64,
    p: &AlertParams,
    scratch: &mut BaselineScratch,
) -> [SiteBaseline; N_SITES] {
    let mut out = [SiteBaseline::default(); N_SITES];
    for s in 0..N_SITES {
        scratch.flux[s].clear();
        scratch.err[s].clear();
    }
    let mut n_all = [0usize; N_SITES];
    for i in 0..end {
        let (t, f, e, s) = (lc.time[i], lc.flux[i], lc.err[i], lc.site[i]);
        if !valid(t, f, e, s) {
            continue;
        }
        let s = s as usize;
        n_all[s] += 1;
        if t < history_end {
            scratch.flux[s].push(f);
            scratch.err[s].push(e);
        }
    }
    for s in 0..N_SITES {
        let min = p.min_baseline_points.max(1);
        out[s].from_season = scratch.flux[s].len() >= min;
        if scratch.flux[s].len() < min && n_all[s] >= min {
            // Short history: use every valid point of the site instead.
            scratch.flux[s].clear();
            scratch.err[s].clear();
            for i in 0..end {
                let (t, f, e, si) = (lc.time[i], lc.flux[i], lc.err[i], lc.site[i]);
                if si as usize == s && valid(t, f, e, si) {
                    scratch.flux[s].push(f);
                    scratch.err[s].push(e);
                }
            }
        }
        let n = scratch.flux[s].len();
        if n < min {
            out[s].n = n as u32;
            continue;
        }
        let mean_err = scratch.err[s].iter().sum::<f64>() / n as f64;
        let sel = &mut scratch.sel;
        sel.clear();
        sel.extend_from_slice(&scratch.flux[s]);
        let med = median_in_place(sel);
        sel.clear();
        sel.extend(scratch.flux[s].iter().zip(&scratch.err[s]).map(|(f, e)| (f - med).abs() / e));
        let k = (MAD_TO_SIGMA * median_in_place(sel)).max(p.min_error_scale);
        if !(k.is_finite() && med.is_finite()) {
            // Overflowing residuals (absurd flux over a tiny error): the site cannot be scaled.
            out[s].n = n as u32;
            continue;
        }
        out[s] = SiteBaseline { n: n as u32, usable: true, median: med, error_scale: k, mean_err, from_season: out[s].from_season };
    }
    out
}
