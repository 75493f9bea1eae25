//! The broken-line scan: flat until `t_rise`, rising linearly after, against a flat line, with
//! every data epoch tried as `t_rise` in one backward pass of running sums.
//!
//! Model (weights `w_i = 1 / (k_s e_i)^2`, `y_i` the flux minus the site's baseline median):
//!
//! ```text
//! flat:   y_i = c_s(i)
//! broken: y_i = c_s(i) + b * h_i,   h_i = max(0, t_i - t_rise)
//! ```
//!
//! Each site has its own offset `c_s`; the slope `b` (flux per day) is shared by the sites, which
//! is right when the sites' difference fluxes share a scale (as in the KMTNet pySIS reductions
//! that align each site to the same reference flux) and a slight approximation otherwise.
//! Eliminating the offsets gives the closed form, with per-site sums over the window
//! `W_s = sum w`, `Y_s = sum w y`, `H_s = sum w h`, `HH_s = sum w h^2`, `HY_s = sum w h y`:
//!
//! ```text
//! N = sum_s (HY_s - H_s Y_s / W_s),   D = sum_s (HH_s - H_s^2 / W_s)
//! b = N / D,   sigma_b = 1 / sqrt(D),   chi2_flat - chi2_broken = N^2 / D
//! ```
//!
//! Only rises count: the reported `delta_chi2` is `max(N, 0)^2 / D` (the fit with `b >= 0`).
//! `t_rise` runs over the epochs `t_k` from the last to the first; moving the break from
//! `t_{k+1}` back to `t_k` shifts every hinge by `d = t_{k+1} - t_k >= 0`, so the sums update as
//! `HH += 2 d H + d^2 W>`, `H += d W>`, `HY += d Y>` (with `W>`, `Y>` over the points after the
//! break): all terms of `HH` and `H` are non-negative, so the running sums suffer no
//! cancellation and need no reference time, and the whole scan is linear in the points.

use serde::Serialize;

use super::N_SITES;

/// The points of the search window in time order, in the units the fits use.
#[derive(Debug, Default, Clone)]
pub struct Window {
    /// Time (HJD - 2450000, days).
    pub t: Vec<f64>,
    /// Flux minus the site's baseline median.
    pub y: Vec<f64>,
    /// Weight `1 / (k_s e)^2`.
    pub w: Vec<f64>,
    /// Site index (always < `N_SITES`).
    pub site: Vec<u8>,
    /// Index of the point in the light curve (for the quality indicators).
    pub index: Vec<u32>,
}

impl Window {
    pub fn clear(&mut self) {
        self.t.clear();
        self.y.clear();
        self.w.clear();
        self.site.clear();
        self.index.clear();
    }

    pub fn len(&self) -> usize {
        self.t.len()
    }

    pub fn is_empty(&self) -> bool {
        self.t.is_empty()
    }
}

/// The best broken line of a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct BrokenLine {
    /// `chi2_flat - chi2_broken` of the best rising break (0 when nothing rises).
    pub delta_chi2: f64,
    /// chi-square of the flat (per-site constant) fit of the window.
    pub chi2_flat: f64,
    /// Break time (days); the epoch of the best break.
    pub t_rise: f64,
    /// Shared slope `b` (flux per day, rescaled-error weighted).
    pub slope: f64,
    /// Formal error of the slope, `1 / sqrt(D)`.
    pub slope_err: f64,
    /// Rise significance `N / sqrt(D) = b / sigma_b` (signed; `sqrt(delta_chi2)` when rising).
    pub significance: f64,
    /// Points strictly after `t_rise`.
    pub n_after: u32,
    /// Sites with at least two points strictly after `t_rise`.
    pub n_sites_after: u8,
    /// Sites with at least two points after `t_rise` whose own data rise (positive covariance).
    pub n_sites_rising: u8,
    /// Points in the window (with the history anchors, when the search adds them:
    /// [`super::AlertParams::anchor_history`]) and number of break epochs tried.
    pub n_points: u32,
    pub n_breaks: u32,
    /// Per-site offsets `c_s` relative to the baseline median (0 for a site without points).
    pub offset: [f64; N_SITES],
}

/// Call `f(k, N, D)` for every allowed break epoch `t_k`, `k` descending: at least `min_after`
/// points strictly after the break and at least `min_before` points at or before it.
/// `N` and `D` are the unconstrained numerator and denominator of the module docs (so
/// `N^2 / D` is the improvement of the break at `t_k`); breaks where `D` is lost in rounding
/// (`D <= 1e-12 * sum HH`) are skipped. `t` must be sorted ascending.
pub fn for_each_break(
    t: &[f64],
    y: &[f64],
    w: &[f64],
    site: &[u8],
    min_after: usize,
    min_before: usize,
    mut f: impl FnMut(usize, f64, f64),
) {
    let m = t.len().min(y.len()).min(w.len()).min(site.len());
    if m == 0 {
        return;
    }
    let mut tot_w = [0.0f64; N_SITES];
    let mut tot_y = [0.0f64; N_SITES];
    for i in 0..m {
        let s = site[i] as usize % N_SITES;
        tot_w[s] += w[i];
        tot_y[s] += w[i] * y[i];
    }
    // 1/W_s, or 0 for an empty site so it drops out of N and D.
    let inv_w = tot_w.map(|x| if x > 0.0 { 1.0 / x } else { 0.0 });
    let mut sw = [0.0f64; N_SITES];
    let mut sy = [0.0f64; N_SITES];
    let mut sh = [0.0f64; N_SITES];
    let mut shh = [0.0f64; N_SITES];
    let mut shy = [0.0f64; N_SITES];
    let mut n_strict = 0usize;
    let min_before = min_before.max(1);
    for k in (0..m).rev() {
        if k + 1 < min_before {
            break;
        }
        if k + 1 < m {
            // Point k+1 joins the "after" set with h = 0, then every hinge grows by d.
            let j = k + 1;
            let s = site[j] as usize % N_SITES;
            sw[s] += w[j];
            sy[s] += w[j] * y[j];
            let d = t[j] - t[k];
            if d > 0.0 {
                for s in 0..N_SITES {
                    shh[s] += d * (2.0 * sh[s] + d * sw[s]);
                    sh[s] += d * sw[s];
                    shy[s] += d * sy[s];
                }
                n_strict = m - 1 - k;
            }
        }
        if n_strict < min_after {
            continue;
        }
        let mut num = 0.0;
        let mut den = 0.0;
        let mut hh = 0.0;
        for s in 0..N_SITES {
            num += shy[s] - sh[s] * tot_y[s] * inv_w[s];
            den += shh[s] - sh[s] * sh[s] * inv_w[s];
            hh += shh[s];
        }
        if den > 1e-12 * hh && den.is_finite() && num.is_finite() {
            f(k, num, den);
        }
    }
}

/// The best rising break of a window (see the module docs), or `None` when no break is
/// allowed or every one is degenerate. `t` must be sorted ascending.
pub fn scan_broken_line(win: &Window, min_after: usize, min_before: usize) -> Option<BrokenLine> {
    let m = win.len();
    let mut best: Option<(usize, f64, f64)> = None;
    let mut n_breaks = 0u32;
    for_each_break(&win.t, &win.y, &win.w, &win.site, min_after, min_before, |k, num, den| {
        n_breaks += 1;
        // Ties (a falling window) keep the latest break, which is the first one seen.
        let q = if num > 0.0 { num * num / den } else { 0.0 };
        if best.is_none_or(|(_, bq, _)| q > bq) {
            best = Some((k, q, num / den));
        }
    });
    let (k, dchi2, _) = best?;
    let t_rise = win.t[k];
    // Recompute the per-site sums at the best break (one pass) for slope, offsets and sites.
    let mut sw = [0.0f64; N_SITES];
    let mut sy = [0.0f64; N_SITES];
    let mut sh = [0.0f64; N_SITES];
    let mut shh = [0.0f64; N_SITES];
    let mut shy = [0.0f64; N_SITES];
    let mut n_after_site = [0u32; N_SITES];
    for i in 0..m {
        let s = win.site[i] as usize % N_SITES;
        let (w, y) = (win.w[i], win.y[i]);
        let h = (win.t[i] - t_rise).max(0.0);
        sw[s] += w;
        sy[s] += w * y;
        sh[s] += w * h;
        shh[s] += w * h * h;
        shy[s] += w * h * y;
        if h > 0.0 {
            n_after_site[s] += 1;
        }
    }
    let mut num = 0.0;
    let mut den = 0.0;
    let mut n_sites_after = 0u8;
    let mut n_sites_rising = 0u8;
    for s in 0..N_SITES {
        if sw[s] <= 0.0 {
            continue;
        }
        let cov = shy[s] - sh[s] * sy[s] / sw[s];
        num += cov;
        den += shh[s] - sh[s] * sh[s] / sw[s];
        if n_after_site[s] >= 2 {
            n_sites_after += 1;
            if cov > 0.0 {
                n_sites_rising += 1;
            }
        }
    }
    let (slope, slope_err, significance) = if den > 0.0 {
        let b = num / den;
        (b.max(0.0), 1.0 / den.sqrt(), num / den.sqrt())
    } else {
        (0.0, 0.0, 0.0)
    };
    let mut offset = [0.0f64; N_SITES];
    for s in 0..N_SITES {
        if sw[s] > 0.0 {
            offset[s] = (sy[s] - slope * sh[s]) / sw[s];
        }
    }
    Some(BrokenLine {
        delta_chi2: dchi2,
        chi2_flat: chi2_flat(win),
        t_rise,
        slope,
        slope_err,
        significance: if significance.is_finite() { significance } else { 0.0 },
        n_after: n_after_site.iter().sum(),
        n_sites_after,
        n_sites_rising,
        n_points: m as u32,
        n_breaks,
        offset,
    })
}

/// chi-square of per-site constants, two passes (means first) so a large offset cannot cancel.
pub fn chi2_flat(win: &Window) -> f64 {
    let mut sw = [0.0f64; N_SITES];
    let mut sy = [0.0f64; N_SITES];
    for i in 0..win.len() {
        let s = win.site[i] as usize % N_SITES;
        sw[s] += win.w[i];
        sy[s] += win.w[i] * win.y[i];
    }
    let mean = std::array::from_fn::<f64, N_SITES, _>(|s| if sw[s] > 0.0 { sy[s] / sw[s] } else { 0.0 });
    let mut c = 0.0;
    for i in 0..win.len() {
        let r = win.y[i] - mean[win.site[i] as usize % N_SITES];
        c += win.w[i] * r * r;
    }
    c
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{random_window, site_columns, wls};
    use super::*;

    /// Re-fit from scratch at every allowed break: (k, chi2_flat - chi2_broken, slope).
    fn brute(win: &Window, min_after: usize, min_before: usize) -> Vec<(usize, f64, f64)> {
        let m = win.len();
        let sites = site_columns(&win.site);
        let (chi2_flat, _) = wls(&sites, &win.y, &win.w);
        let mut out = Vec::new();
        for k in (0..m).rev() {
            let after = win.t.iter().filter(|&&x| x > win.t[k]).count();
            if after < min_after || k + 1 < min_before {
                continue;
            }
            let mut cols = sites.clone();
            cols.push(win.t.iter().map(|&x| (x - win.t[k]).max(0.0)).collect());
            let (chi2, beta) = wls(&cols, &win.y, &win.w);
            out.push((k, chi2_flat - chi2, beta[N_SITES]));
        }
        out
    }

    #[test]
    fn prefix_scan_matches_brute_force_refits() {
        let mut worst = 0.0f64;
        for seed in 0..24u64 {
            let n_sites = 1 + (seed % 3) as u8;
            let rise = if seed % 2 == 0 { 0.0 } else { 0.7 };
            let win = random_window(seed, 150 + 10 * seed as usize, n_sites, rise);
            let mut fast = Vec::new();
            for_each_break(&win.t, &win.y, &win.w, &win.site, 3, 3, |k, num, den| fast.push((k, num * num / den, num / den)));
            let slow = brute(&win, 3, 3);
            assert_eq!(fast.len(), slow.len(), "seed {seed}: same breaks tried");
            for (&(kf, qf, bf), &(ks, qs, bs)) in fast.iter().zip(&slow) {
                assert_eq!(kf, ks);
                let rel = (qf - qs).abs() / qs.abs().max(1.0);
                worst = worst.max(rel);
                assert!(rel < 1e-9, "seed {seed} k {kf}: fast {qf} brute {qs}");
                assert!((bf - bs).abs() <= 1e-9 * bs.abs().max(1.0), "seed {seed} k {kf}: slope {bf} vs {bs}");
            }
            // The reported best is the brute-force maximum of the rising breaks.
            let best = scan_broken_line(&win, 3, 3).expect("breaks exist");
            let (kb, qb, bb) = slow
                .iter()
                .map(|&(k, q, b)| (k, if b > 0.0 { q } else { 0.0 }, b))
                .fold((0, -1.0, 0.0), |a, x| if x.1 > a.1 { x } else { a });
            assert!((best.delta_chi2 - qb).abs() <= 1e-9 * qb.max(1.0), "seed {seed}: best {} vs {qb}", best.delta_chi2);
            if qb > 1e-6 {
                assert!((best.t_rise - win.t[kb]).abs() < 1e-12 || (best.delta_chi2 - qb).abs() < 1e-9 * qb);
                assert!((best.slope - bb).abs() <= 1e-9 * bb.abs().max(1.0));
            }
            if rise > 0.0 {
                assert!(best.delta_chi2 > 100.0, "seed {seed}: injected rise found ({})", best.delta_chi2);
            }
            let (c_flat, _) = wls(&site_columns(&win.site), &win.y, &win.w);
            assert!((best.chi2_flat - c_flat).abs() <= 1e-9 * c_flat);
        }
        eprintln!("worst relative difference prefix scan vs brute force: {worst:.2e}");
    }

    #[test]
    fn degenerate_windows_give_no_break_and_no_nan() {
        let mut w = Window::default();
        assert!(scan_broken_line(&w, 3, 3).is_none());
        for i in 0..10 {
            w.t.push(8000.0); // all at one epoch: no point is ever after a break
            w.y.push(i as f64);
            w.w.push(1.0);
            w.site.push(0);
            w.index.push(i);
        }
        assert!(scan_broken_line(&w, 3, 3).is_none());
        assert!(scan_broken_line(&w, 0, 0).is_none_or(|b| b.delta_chi2.is_finite()));
    }
}
