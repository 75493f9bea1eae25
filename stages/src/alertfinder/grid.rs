//! The EventFinder grid (Kim et al. 2018): point-lens templates on a (t_eff, t0) grid, each
//! fitted per site in closed form, for the candidates that the broken line flags.
//!
//! Templates, with `Q = 1 + ((t - t0) / t_eff)^2`:
//! - regime 1 (high magnification): `A1 = Q^(-1/2)`;
//! - regime 2 (low magnification): `A2 = (1 - (1 + Q/2)^(-2))^(-1/2)`.
//!
//! Each site `s` gets its own `F = f1_s A + f0_s`, fitted by weighted least squares on the
//! points with `|t - t0| < half_window * t_eff`, against the flat `F = f0_s` on the same points:
//! `delta_chi2_s = max(C_s, 0)^2 / V_s` with `C_s = sum w A y - (sum w A)(sum w y) / W_s` and
//! `V_s = sum w A^2 - (sum w A)^2 / W_s` (the fit with `f1_s >= 0`: only brightenings count).
//! The grid's figure of merit is `delta_chi2 = sum_s delta_chi2_s`.
//! `t_eff` runs geometrically from `teff_min` by `teff_ratio` up to `teff_max`; `t0` runs in
//! steps of `t0_step * t_eff` from `now - t0_lookback_days` to `now + t0_lookahead * t_eff`
//! (a real-time search: the event is in progress). Each window is found with pointers that only
//! move forward as `t0` grows (by galloping search), so a `(t_eff, t0)` model costs its window's
//! points only. The window sums are the hot loop; [`Kernel`] picks AVX-512 or AVX2 code for
//! them at run time (see there), with a portable exact one as reference and fallback.

use serde::{Deserialize, Serialize};

use super::N_SITES;

/// Parameters of the EventFinder grid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GridParams {
    /// Smallest effective timescale `t_eff` (days).
    pub teff_min: f64,
    /// Largest effective timescale (days); the grid stops at the last step not above it.
    pub teff_max: f64,
    /// Ratio of consecutive `t_eff` values (> 1).
    pub teff_ratio: f64,
    /// Step of `t0` as a fraction of `t_eff`.
    pub t0_step: f64,
    /// Half width of the fitted window in units of `t_eff` (`|t - t0| < half_window * t_eff`).
    pub half_window: f64,
    /// Fewest points (all sites) a window must hold for its model to be tried.
    pub min_points: usize,
    /// Earliest `t0` tried, in days before `now`.
    pub t0_lookback_days: f64,
    /// Latest `t0` tried, in units of `t_eff` after `now`.
    pub t0_lookahead: f64,
}

impl Default for GridParams {
    fn default() -> Self {
        GridParams {
            teff_min: 0.5625,
            teff_max: 100.0,
            teff_ratio: 4.0 / 3.0,
            t0_step: 1.0 / 3.0,
            half_window: 5.0,
            min_points: 10,
            t0_lookback_days: 30.0,
            t0_lookahead: 1.0,
        }
    }
}

impl GridParams {
    /// The `t_eff` values of the grid (empty for nonsensical parameters, never endless).
    pub fn teffs(&self) -> Vec<f64> {
        let mut v = Vec::new();
        if !(self.teff_min > 0.0 && self.teff_ratio > 1.0 && self.teff_max.is_finite()) {
            return v;
        }
        let mut te = self.teff_min;
        // Relative slack so that 0.5625 * (4/3)^k lands on teff_max when meant to.
        while te <= self.teff_max * (1.0 + 1e-9) && v.len() < 1000 {
            v.push(te);
            te *= self.teff_ratio;
        }
        v
    }
}

/// Which template.
pub const REGIME_HIGH: u8 = 1;
pub const REGIME_LOW: u8 = 2;

/// The two templates at `Q >= 1`, with two square roots and one division:
/// `1 - (1 + Q/2)^-2 = Q (Q + 4) / (2 + Q)^2`, so `A2 = (2 + Q) / sqrt(Q (Q + 4))` (no
/// cancellation), and `A1 = 1 / sqrt(Q)` shares the division.
#[inline(always)]
pub fn templates(q: f64) -> (f64, f64) {
    let sq = q.sqrt();
    let s = (q * (q + 4.0)).sqrt();
    let inv = 1.0 / (sq * s);
    (s * inv, (2.0 + q) * sq * inv)
}

/// The best grid model of a candidate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct GridFit {
    /// Time of the template's peak (days).
    pub t0: f64,
    /// Effective timescale (days).
    pub teff: f64,
    /// `REGIME_HIGH` (1) or `REGIME_LOW` (2).
    pub regime: u8,
    /// `chi2_flat - chi2_model` over the window, summed over sites.
    pub delta_chi2: f64,
    /// Points in the window.
    pub n_points: u32,
    /// Per-site template flux `f1_s` (0 where a site has fewer than two points in the window).
    pub f1: [f64; N_SITES],
    /// Per-site flat flux `f0_s` in the site's own flux scale (baseline median added back).
    pub f0: [f64; N_SITES],
    /// Per-site improvement.
    pub site_delta_chi2: [f64; N_SITES],
    /// Models tried.
    pub n_models: u32,
}

/// Per-site, time-sorted points of a candidate: `y` is the flux minus the site's median and
/// `w = 1 / (k_s e)^2`.
#[derive(Debug, Default, Clone)]
pub struct SitePoints {
    pub t: [Vec<f64>; N_SITES],
    pub y: [Vec<f64>; N_SITES],
    pub w: [Vec<f64>; N_SITES],
    /// Points before each entry (`cum[s][i]`; `len + 1` values): an entry can be a night's
    /// points merged ([`super::NightSum`]). Empty: every entry is one point.
    pub cum: [Vec<u32>; N_SITES],
    /// Baseline medians, added back to `f0`.
    pub median: [f64; N_SITES],
}

impl SitePoints {
    pub fn clear(&mut self) {
        for s in 0..N_SITES {
            self.t[s].clear();
            self.y[s].clear();
            self.w[s].clear();
            self.cum[s].clear();
        }
    }

    /// Points in entries `lo..hi` of site `s`.
    #[inline]
    pub fn points(&self, s: usize, lo: usize, hi: usize) -> usize {
        match self.cum[s].len() {
            0 => hi - lo,
            _ => (self.cum[s][hi] - self.cum[s][lo]) as usize,
        }
    }

    pub fn len(&self) -> usize {
        self.t.iter().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Sums of one site's window for both templates.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Sums {
    n: usize,
    w: f64,
    wy: f64,
    a: [f64; 2],
    aa: [f64; 2],
    ay: [f64; 2],
}

/// Lanes of the exact kernel's accumulation: independent partial sums let the compiler keep
/// several points in flight although floating-point addition does not reassociate.
const LANES: usize = 4;

/// How the window sums are evaluated. All kernels accumulate in f64; they differ in how the
/// two square roots and the division of [`templates`] are done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// Portable: `sqrt` and a division per point (correctly rounded, any CPU).
    Exact,
    /// AVX2+FMA, 4 points per step: a 12-bit `rsqrtps` estimate refined by three Newton
    /// steps in f64 (relative error of the templates ~1e-16, as with `sqrt`).
    Avx2,
    /// AVX-512F, 8 points per step: a 14-bit `vrsqrt14pd` estimate refined by two Newton steps
    /// in f64 (the same accuracy), with masked loads for the tail of a window.
    Avx512,
}

impl Kernel {
    /// Whether this CPU runs the kernel (detected at run time; std caches the detection).
    pub fn runs(self) -> bool {
        match self {
            Kernel::Exact => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The fastest kernel this CPU runs.
    pub fn detect() -> Kernel {
        [Kernel::Avx512, Kernel::Avx2].into_iter().find(|k| k.runs()).unwrap_or(Kernel::Exact)
    }

    /// Every kernel this CPU runs, the exact one first.
    pub fn available() -> Vec<Kernel> {
        [Kernel::Exact, Kernel::Avx2, Kernel::Avx512].into_iter().filter(|k| k.runs()).collect()
    }

    /// Sums of a window for both templates. A kernel this CPU lacks falls back to `Exact`.
    #[inline]
    pub(crate) fn window_sums(self, t: &[f64], y: &[f64], w: &[f64], t0: f64, inv_teff: f64) -> Sums {
        let n = t.len().min(y.len()).min(w.len());
        let (t, y, w) = (&t[..n], &y[..n], &w[..n]);
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                Kernel::Avx512 if self.runs() => {
                    // SAFETY: the CPU has the feature the function is compiled for; the slices
                    // have equal lengths.
                    return unsafe { simd::window_sums_avx512(t, y, w, t0, inv_teff) };
                }
                Kernel::Avx2 if self.runs() => {
                    // SAFETY: as above.
                    return unsafe { simd::window_sums_avx2(t, y, w, t0, inv_teff) };
                }
                _ => {}
            }
        }
        window_sums_exact(t, y, w, t0, inv_teff)
    }
}

fn window_sums_exact(t: &[f64], y: &[f64], w: &[f64], t0: f64, inv_teff: f64) -> Sums {
    let n = t.len().min(y.len()).min(w.len());
    let mut acc = [[0.0f64; LANES]; 8];
    let point = |acc: &mut [[f64; LANES]; 8], l: usize, ti: f64, yi: f64, wi: f64| {
        let u = (ti - t0) * inv_teff;
        let (a1, a2) = templates(1.0 + u * u);
        let wy = wi * yi;
        acc[0][l] += wi;
        acc[1][l] += wy;
        acc[2][l] += wi * a1;
        acc[3][l] += wi * a1 * a1;
        acc[4][l] += wy * a1;
        acc[5][l] += wi * a2;
        acc[6][l] += wi * a2 * a2;
        acc[7][l] += wy * a2;
    };
    let chunks = n / LANES;
    for c in 0..chunks {
        let (tc, yc, wc) = (&t[c * LANES..][..LANES], &y[c * LANES..][..LANES], &w[c * LANES..][..LANES]);
        for l in 0..LANES {
            point(&mut acc, l, tc[l], yc[l], wc[l]);
        }
    }
    for i in chunks * LANES..n {
        point(&mut acc, 0, t[i], y[i], w[i]);
    }
    let sum = |k: usize| acc[k].iter().sum::<f64>();
    Sums { n, w: sum(0), wy: sum(1), a: [sum(2), sum(5)], aa: [sum(3), sum(6)], ay: [sum(4), sum(7)] }
}

/// The SIMD kernels. Both evaluate, per lane, `Q = 1 + u^2`, `A1 = rsqrt(Q)` and
/// `A2 = (2 + Q) rsqrt(Q (Q + 4))` (the same algebra as [`templates`]); `rsqrt` is a hardware
/// estimate refined by Newton's step `r += r (1/2 - (x/2) r^2)`, which squares the relative
/// error each time (12 bits -> 24 -> 48 -> rounding; 14 -> 28 -> rounding).
#[cfg(target_arch = "x86_64")]
mod simd {
    use super::Sums;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f")]
    #[inline]
    fn newton512(x_half: __m512d, r: __m512d) -> __m512d {
        let e = _mm512_fnmadd_pd(_mm512_mul_pd(x_half, r), r, _mm512_set1_pd(0.5));
        _mm512_fmadd_pd(r, e, r)
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    fn rsqrt512(x: __m512d) -> __m512d {
        let h = _mm512_mul_pd(x, _mm512_set1_pd(0.5));
        let r = _mm512_rsqrt14_pd(x);
        newton512(h, newton512(h, r))
    }

    /// # Safety
    /// The CPU must have AVX-512F; `t`, `y`, `w` must have equal lengths.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn window_sums_avx512(t: &[f64], y: &[f64], w: &[f64], t0: f64, inv_teff: f64) -> Sums {
        let n = t.len();
        debug_assert!(y.len() == n && w.len() == n);
        let vt0 = _mm512_set1_pd(t0);
        let vinv = _mm512_set1_pd(inv_teff);
        let one = _mm512_set1_pd(1.0);
        let two = _mm512_set1_pd(2.0);
        let four = _mm512_set1_pd(4.0);
        let z = _mm512_setzero_pd();
        let (mut sw, mut swy) = (z, z);
        let (mut sa1, mut saa1, mut say1) = (z, z, z);
        let (mut sa2, mut saa2, mut say2) = (z, z, z);
        let mut i = 0;
        while i < n {
            let (vt, vy, vw) = if n - i >= 8 {
                // SAFETY: i + 8 <= n.
                unsafe { (_mm512_loadu_pd(t.as_ptr().add(i)), _mm512_loadu_pd(y.as_ptr().add(i)), _mm512_loadu_pd(w.as_ptr().add(i))) }
            } else {
                // Lanes past the end: t = t0 (finite templates), y = w = 0 (no contribution).
                let m: __mmask8 = (1u8 << (n - i)) - 1;
                // SAFETY: masked-off lanes are not read.
                unsafe {
                    (
                        _mm512_mask_loadu_pd(vt0, m, t.as_ptr().add(i)),
                        _mm512_maskz_loadu_pd(m, y.as_ptr().add(i)),
                        _mm512_maskz_loadu_pd(m, w.as_ptr().add(i)),
                    )
                }
            };
            let u = _mm512_mul_pd(_mm512_sub_pd(vt, vt0), vinv);
            let q = _mm512_fmadd_pd(u, u, one);
            let a1 = rsqrt512(q);
            let a2 = _mm512_mul_pd(_mm512_add_pd(two, q), rsqrt512(_mm512_mul_pd(q, _mm512_add_pd(q, four))));
            let wy = _mm512_mul_pd(vw, vy);
            sw = _mm512_add_pd(sw, vw);
            swy = _mm512_add_pd(swy, wy);
            let wa1 = _mm512_mul_pd(vw, a1);
            sa1 = _mm512_add_pd(sa1, wa1);
            saa1 = _mm512_fmadd_pd(wa1, a1, saa1);
            say1 = _mm512_fmadd_pd(wy, a1, say1);
            let wa2 = _mm512_mul_pd(vw, a2);
            sa2 = _mm512_add_pd(sa2, wa2);
            saa2 = _mm512_fmadd_pd(wa2, a2, saa2);
            say2 = _mm512_fmadd_pd(wy, a2, say2);
            i += 8;
        }
        let h = |v: __m512d| _mm512_reduce_add_pd(v);
        Sums { n, w: h(sw), wy: h(swy), a: [h(sa1), h(sa2)], aa: [h(saa1), h(saa2)], ay: [h(say1), h(say2)] }
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn newton256(x_half: __m256d, r: __m256d) -> __m256d {
        let e = _mm256_fnmadd_pd(_mm256_mul_pd(x_half, r), r, _mm256_set1_pd(0.5));
        _mm256_fmadd_pd(r, e, r)
    }

    /// The estimate is taken in f32: fine for the `Q (Q + 4)` of any window (`|u| < 1e9`).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn rsqrt256(x: __m256d) -> __m256d {
        let h = _mm256_mul_pd(x, _mm256_set1_pd(0.5));
        let r = _mm256_cvtps_pd(_mm_rsqrt_ps(_mm256_cvtpd_ps(x)));
        newton256(h, newton256(h, newton256(h, r)))
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn hsum256(v: __m256d) -> f64 {
        let s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
        _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)))
    }

    /// # Safety
    /// The CPU must have AVX2 and FMA; `t`, `y`, `w` must have equal lengths.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn window_sums_avx2(t: &[f64], y: &[f64], w: &[f64], t0: f64, inv_teff: f64) -> Sums {
        let n = t.len();
        debug_assert!(y.len() == n && w.len() == n);
        let vt0 = _mm256_set1_pd(t0);
        let vinv = _mm256_set1_pd(inv_teff);
        let one = _mm256_set1_pd(1.0);
        let two = _mm256_set1_pd(2.0);
        let four = _mm256_set1_pd(4.0);
        let z = _mm256_setzero_pd();
        let (mut sw, mut swy) = (z, z);
        let (mut sa1, mut saa1, mut say1) = (z, z, z);
        let (mut sa2, mut saa2, mut say2) = (z, z, z);
        let mut i = 0;
        while i < n {
            let (vt, vy, vw) = if n - i >= 4 {
                // SAFETY: i + 4 <= n.
                unsafe { (_mm256_loadu_pd(t.as_ptr().add(i)), _mm256_loadu_pd(y.as_ptr().add(i)), _mm256_loadu_pd(w.as_ptr().add(i))) }
            } else {
                // The tail, padded with t = t0 and y = w = 0 (no contribution).
                let (mut tt, mut yy, mut ww) = ([t0; 4], [0.0; 4], [0.0; 4]);
                tt[..n - i].copy_from_slice(&t[i..]);
                yy[..n - i].copy_from_slice(&y[i..]);
                ww[..n - i].copy_from_slice(&w[i..]);
                // SAFETY: the arrays hold 4 values each.
                unsafe { (_mm256_loadu_pd(tt.as_ptr()), _mm256_loadu_pd(yy.as_ptr()), _mm256_loadu_pd(ww.as_ptr())) }
            };
            let u = _mm256_mul_pd(_mm256_sub_pd(vt, vt0), vinv);
            let q = _mm256_fmadd_pd(u, u, one);
            let a1 = rsqrt256(q);
            let a2 = _mm256_mul_pd(_mm256_add_pd(two, q), rsqrt256(_mm256_mul_pd(q, _mm256_add_pd(q, four))));
            let wy = _mm256_mul_pd(vw, vy);
            sw = _mm256_add_pd(sw, vw);
            swy = _mm256_add_pd(swy, wy);
            let wa1 = _mm256_mul_pd(vw, a1);
            sa1 = _mm256_add_pd(sa1, wa1);
            saa1 = _mm256_fmadd_pd(wa1, a1, saa1);
            say1 = _mm256_fmadd_pd(wy, a1, say1);
            let wa2 = _mm256_mul_pd(vw, a2);
            sa2 = _mm256_add_pd(sa2, wa2);
            saa2 = _mm256_fmadd_pd(wa2, a2, saa2);
            say2 = _mm256_fmadd_pd(wy, a2, say2);
            i += 4;
        }
        let h = |v: __m256d| hsum256(v);
        Sums { n, w: h(sw), wy: h(swy), a: [h(sa1), h(sa2)], aa: [h(saa1), h(saa2)], ay: [h(say1), h(say2)] }
    }
}

/// Closed-form fit of one site and template from its sums: (delta_chi2 with f1 >= 0, f1, f0).
#[inline(always)]
fn site_fit(s: &Sums, r: usize) -> (f64, f64, f64) {
    if s.n < 2 || s.w <= 0.0 {
        let f0 = if s.w > 0.0 { s.wy / s.w } else { 0.0 };
        return (0.0, 0.0, f0);
    }
    let inv_w = 1.0 / s.w;
    let cov = s.ay[r] - s.a[r] * s.wy * inv_w;
    let var = s.aa[r] - s.a[r] * s.a[r] * inv_w;
    if !(var > 1e-12 * s.aa[r]) || cov <= 0.0 || !cov.is_finite() {
        return (0.0, 0.0, s.wy * inv_w);
    }
    let f1 = cov / var;
    (cov * cov / var, f1, (s.wy - f1 * s.a[r]) * inv_w)
}

/// Fit one `(t0, teff)` model with the given regime exactly on its window.
pub fn fit_model(pts: &SitePoints, t0: f64, teff: f64, regime: u8, half_window: f64) -> GridFit {
    fit_model_with(Kernel::detect(), pts, t0, teff, regime, half_window)
}

/// [`fit_model`] with a chosen kernel.
pub fn fit_model_with(kernel: Kernel, pts: &SitePoints, t0: f64, teff: f64, regime: u8, half_window: f64) -> GridFit {
    let r = if regime == REGIME_LOW { 1 } else { 0 };
    let mut g = GridFit { t0, teff, regime: r as u8 + 1, ..Default::default() };
    if !(teff > 0.0) {
        return g;
    }
    let half = half_window * teff;
    for s in 0..N_SITES {
        let t = &pts.t[s];
        let lo = t.partition_point(|&x| x <= t0 - half);
        let hi = t.partition_point(|&x| x < t0 + half).max(lo);
        let sums = kernel.window_sums(&t[lo..hi], &pts.y[s][lo..hi], &pts.w[s][lo..hi], t0, 1.0 / teff);
        let (d, f1, f0) = site_fit(&sums, r);
        g.site_delta_chi2[s] = d;
        g.delta_chi2 += d;
        g.f1[s] = f1;
        g.f0[s] = f0 + pts.median[s];
        g.n_points += pts.points(s, lo, hi) as u32;
    }
    g
}

/// The first index at or after `from` where `pred` fails (`pred` true on a prefix of `t`), by
/// exponential then binary search: `O(log(answer - from))`.
#[inline]
fn gallop(t: &[f64], from: usize, pred: impl Fn(f64) -> bool) -> usize {
    let rest = &t[from.min(t.len())..];
    let mut bound = 1;
    while bound <= rest.len() && pred(rest[bound - 1]) {
        bound *= 2;
    }
    let lo = bound / 2;
    let hi = bound.min(rest.len());
    from.min(t.len()) + lo + rest[lo..hi].partition_point(|&x| pred(x))
}

/// Search the grid with the fastest kernel; `None` when no model has a window with enough
/// points.
pub fn search_grid(pts: &SitePoints, now: f64, p: &GridParams) -> Option<GridFit> {
    search_grid_with(Kernel::detect(), pts, now, p)
}

/// [`search_grid`] with a chosen kernel.
pub fn search_grid_with(kernel: Kernel, pts: &SitePoints, now: f64, p: &GridParams) -> Option<GridFit> {
    let mut best: Option<(f64, f64, f64, u8)> = None;
    let mut n_models = 0u32;
    if !(now.is_finite() && p.t0_step > 0.0 && p.half_window > 0.0) {
        return None;
    }
    for teff in p.teffs() {
        let step = p.t0_step * teff;
        let t0_lo = now - p.t0_lookback_days;
        let t0_hi = now + p.t0_lookahead * teff;
        if !(t0_hi >= t0_lo) {
            continue;
        }
        let n_t0 = ((t0_hi - t0_lo) / step).floor() as usize + 1;
        let half = p.half_window * teff;
        let inv_teff = 1.0 / teff;
        let mut lo = [0usize; N_SITES];
        let mut hi = [0usize; N_SITES];
        for j in 0..n_t0 {
            let t0 = t0_lo + j as f64 * step;
            let mut n = 0;
            for s in 0..N_SITES {
                // A step of t0 moves a window by a thirtieth of its width: walking there point
                // by point cost as much as the sums, a binary search over the rest of the
                // season still a fifth; galloping costs the log of the move.
                let t = &pts.t[s];
                lo[s] = gallop(t, lo[s], |x| x <= t0 - half);
                hi[s] = gallop(t, hi[s].max(lo[s]), |x| x < t0 + half);
                n += pts.points(s, lo[s], hi[s]);
            }
            if n < p.min_points.max(2) {
                continue;
            }
            n_models += 2;
            let mut d = [0.0f64; 2];
            for s in 0..N_SITES {
                let (l, h) = (lo[s], hi[s]);
                if h - l < 2 {
                    continue;
                }
                let sums = kernel.window_sums(&pts.t[s][l..h], &pts.y[s][l..h], &pts.w[s][l..h], t0, inv_teff);
                d[0] += site_fit(&sums, 0).0;
                d[1] += site_fit(&sums, 1).0;
            }
            for r in 0..2 {
                if d[r] > best.map_or(0.0, |b| b.0) {
                    best = Some((d[r], t0, teff, r as u8 + 1));
                }
            }
        }
    }
    let (_, t0, teff, regime) = best?;
    let mut g = fit_model_with(kernel, pts, t0, teff, regime, p.half_window);
    g.n_models = n_models;
    Some(g)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::wls;
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use rand_distr::StandardNormal;

    /// Three sites over 40 days with a bump of template `regime` at t0 = 8520, t_eff = 3.
    fn points(seed: u64, amp: f64, regime: u8) -> SitePoints {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut p = SitePoints::default();
        for s in 0..N_SITES {
            let n = 200 + 50 * s;
            let mut t: Vec<f64> = (0..n).map(|_| 8500.0 + 40.0 * rng.random::<f64>()).collect();
            t.sort_by(f64::total_cmp);
            for ti in t {
                let u = (ti - 8520.0) / 3.0;
                let (a1, a2) = templates(1.0 + u * u);
                let a = if regime == REGIME_LOW { a2 } else { a1 };
                let e = 0.5 + rng.random::<f64>();
                let g: f64 = rng.sample(StandardNormal);
                p.t[s].push(ti);
                p.y[s].push(5.0 * s as f64 + amp * (1.0 + s as f64) * a + e * g);
                p.w[s].push(1.0 / (e * e));
            }
            p.median[s] = 100.0 * s as f64;
        }
        p
    }

    #[test]
    fn closed_form_site_fits_match_brute_force() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for seed in 0..6 {
            let pts = points(seed, if seed % 2 == 0 { 4.0 } else { 0.0 }, REGIME_HIGH);
            for _ in 0..40 {
                let t0 = 8495.0 + 50.0 * rng.random::<f64>();
                let teff = 0.5 + 20.0 * rng.random::<f64>();
                for regime in [REGIME_HIGH, REGIME_LOW] {
                    let g = fit_model(&pts, t0, teff, regime, 5.0);
                    let mut total = 0.0;
                    let mut n = 0;
                    for s in 0..N_SITES {
                        let idx: Vec<usize> = (0..pts.t[s].len()).filter(|&i| (pts.t[s][i] - t0).abs() < 5.0 * teff).collect();
                        n += idx.len();
                        if idx.len() < 2 {
                            continue;
                        }
                        let y: Vec<f64> = idx.iter().map(|&i| pts.y[s][i]).collect();
                        let w: Vec<f64> = idx.iter().map(|&i| pts.w[s][i]).collect();
                        let a: Vec<f64> = idx
                            .iter()
                            .map(|&i| {
                                let u = (pts.t[s][i] - t0) / teff;
                                let q = 1.0 + u * u;
                                if regime == REGIME_LOW {
                                    (1.0 - (1.0 + q / 2.0).powi(-2)).powf(-0.5)
                                } else {
                                    q.powf(-0.5)
                                }
                            })
                            .collect();
                        let ones = vec![1.0; y.len()];
                        let (c_flat, _) = wls(std::slice::from_ref(&ones), &y, &w);
                        let (c_mod, beta) = wls(&[a, ones], &y, &w);
                        let (d, f1, f0) = if beta[0] > 0.0 { (c_flat - c_mod, beta[0], beta[1]) } else { (0.0, 0.0, g.f0[s] - pts.median[s]) };
                        let tol = 1e-8 * d.abs().max(1.0);
                        assert!((g.site_delta_chi2[s] - d).abs() < tol, "site {s}: {} vs {d}", g.site_delta_chi2[s]);
                        assert!((g.f1[s] - f1).abs() < 1e-8 * f1.abs().max(1.0), "f1 {} vs {f1}", g.f1[s]);
                        assert!((g.f0[s] - pts.median[s] - f0).abs() < 1e-8 * f0.abs().max(1.0), "f0 {} vs {f0}", g.f0[s]);
                        total += d;
                    }
                    assert_eq!(g.n_points as usize, n);
                    assert!((g.delta_chi2 - total).abs() < 1e-8 * total.max(1.0));
                }
            }
        }
    }

    #[test]
    fn grid_search_finds_the_exhaustive_best_and_the_injected_bump() {
        let p = GridParams { t0_lookback_days: 45.0, ..GridParams::default() };
        let now = 8541.0;
        for regime in [REGIME_HIGH, REGIME_LOW] {
            let pts = points(3, 3.0, regime);
            let g = search_grid(&pts, now, &p).expect("a bump rises");
            // Exhaustive: every model of the same grid fitted independently.
            let mut best = 0.0f64;
            for teff in p.teffs() {
                let step = p.t0_step * teff;
                let n_t0 = ((p.t0_lookahead * teff + p.t0_lookback_days) / step).floor() as usize + 1;
                for j in 0..n_t0 {
                    let t0 = now - p.t0_lookback_days + j as f64 * step;
                    for r in [REGIME_HIGH, REGIME_LOW] {
                        let m = fit_model(&pts, t0, teff, r, p.half_window);
                        if m.n_points as usize >= p.min_points {
                            best = best.max(m.delta_chi2);
                        }
                    }
                }
            }
            assert!((g.delta_chi2 - best).abs() <= 1e-9 * best, "{} vs {best}", g.delta_chi2);
            assert!((g.t0 - 8520.0).abs() < 1.5, "t0 {}", g.t0);
            assert!(g.teff > 3.0 * 0.56 && g.teff < 3.0 * 1.8, "teff {}", g.teff);
        }
        assert_eq!(p.teffs().len(), 19);
        assert!((p.teffs()[18] - 0.5625 * 4f64.powi(18) / 3f64.powi(18)).abs() < 1e-9);
    }

    #[test]
    fn gallop_is_partition_point_from_a_start() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for n in 0..70 {
            let mut t: Vec<f64> = (0..n).map(|_| (rng.random::<f64>() * 20.0).floor()).collect();
            t.sort_by(f64::total_cmp);
            for cut in -1..22 {
                let c = cut as f64;
                let want = t.partition_point(|&x| x <= c);
                for from in 0..=n {
                    assert_eq!(gallop(&t, from, |x| x <= c), want.max(from), "n={n} cut={cut} from={from}");
                }
            }
        }
    }

    #[test]
    fn every_kernel_agrees_with_the_exact_sums() {
        let kernels = Kernel::available();
        eprintln!("kernels on this CPU: {kernels:?}; detected {:?}", Kernel::detect());
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        // Every tail length of both vector widths, and long windows.
        for n in (0..=17).chain([100, 1001, 26_000]) {
            let t0 = 8500.0 + 10.0 * rng.random::<f64>();
            let teff = 0.3 + 50.0 * rng.random::<f64>();
            let mut t: Vec<f64> = (0..n).map(|_| t0 + teff * 5.0 * (2.0 * rng.random::<f64>() - 1.0)).collect();
            t.sort_by(f64::total_cmp);
            let y: Vec<f64> = (0..n).map(|_| 100.0 * (rng.random::<f64>() - 0.3)).collect();
            let w: Vec<f64> = (0..n).map(|_| 0.1 + rng.random::<f64>()).collect();
            let exact = window_sums_exact(&t, &y, &w, t0, 1.0 / teff);
            for &k in &kernels {
                let s = k.window_sums(&t, &y, &w, t0, 1.0 / teff);
                assert_eq!(s.n, n);
                let close = |a: f64, b: f64, what: &str| {
                    // Sums of positive terms (all but wy, ay): relative; the others against
                    // the sum of magnitudes, bounded by 100 * w.
                    assert!((a - b).abs() <= 1e-13 * (b.abs() + 100.0 * exact.w + 1e-300), "{k:?} n={n} {what}: {a} vs {b}");
                };
                close(s.w, exact.w, "w");
                close(s.wy, exact.wy, "wy");
                for r in 0..2 {
                    close(s.a[r], exact.a[r], "a");
                    close(s.aa[r], exact.aa[r], "aa");
                    close(s.ay[r], exact.ay[r], "ay");
                }
            }
        }
        // The templates themselves, over the whole range a window can hold and beyond.
        for &k in &kernels {
            for i in 0..2000 {
                let u = i as f64 * 0.01 - 10.0;
                let s = k.window_sums(&[u], &[0.0], &[1.0], 0.0, 1.0);
                let (a1, a2) = templates(1.0 + u * u);
                assert!((s.a[0] - a1).abs() <= 4.0 * f64::EPSILON * a1, "{k:?} A1({u}) {} vs {a1}", s.a[0]);
                assert!((s.a[1] - a2).abs() <= 4.0 * f64::EPSILON * a2, "{k:?} A2({u}) {} vs {a2}", s.a[1]);
            }
        }
    }

    #[test]
    fn every_kernel_finds_the_same_grid_model() {
        let p = GridParams { t0_lookback_days: 45.0, ..GridParams::default() };
        for (seed, amp) in [(3, 3.0), (4, 0.3), (5, 0.0)] {
            let pts = points(seed, amp, REGIME_HIGH);
            let exact = search_grid_with(Kernel::Exact, &pts, 8541.0, &p);
            for k in Kernel::available() {
                let g = search_grid_with(k, &pts, 8541.0, &p);
                match (&exact, &g) {
                    (Some(e), Some(g)) => {
                        assert_eq!((e.t0, e.teff, e.regime, e.n_points, e.n_models), (g.t0, g.teff, g.regime, g.n_points, g.n_models), "{k:?}");
                        assert!((e.delta_chi2 - g.delta_chi2).abs() <= 1e-12 * e.delta_chi2.max(1.0), "{k:?}");
                    }
                    (None, None) => {}
                    _ => panic!("{k:?}: {g:?} vs exact {exact:?}"),
                }
            }
        }
    }

    #[test]
    fn empty_and_tiny_inputs_give_none_or_finite() {
        let p = GridParams::default();
        assert!(search_grid(&SitePoints::default(), 8500.0, &p).is_none());
        let mut pts = SitePoints::default();
        for i in 0..12 {
            pts.t[0].push(8500.0); // constant times
            pts.y[0].push(i as f64);
            pts.w[0].push(1.0);
        }
        if let Some(g) = search_grid(&pts, 8500.0, &p) {
            assert!(g.delta_chi2.is_finite() && g.f1.iter().chain(&g.f0).all(|x| x.is_finite()));
        }
        assert!(search_grid(&pts, f64::NAN, &p).is_none());
    }
}
