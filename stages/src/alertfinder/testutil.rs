//! Test helpers of the AlertFinder: a dense weighted least-squares solver used as the
//! brute-force reference of the closed forms, and small random windows.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use super::brokenline::Window;

/// chi-square of the weighted least-squares fit of `y` on the columns `cols`, solved from
/// scratch by Gaussian elimination with partial pivoting on the normal equations; also returns
/// the coefficients. Columns that are identically zero are dropped (their coefficient is 0).
pub fn wls(cols: &[Vec<f64>], y: &[f64], w: &[f64]) -> (f64, Vec<f64>) {
    let keep: Vec<usize> = (0..cols.len()).filter(|&c| cols[c].iter().any(|&x| x != 0.0)).collect();
    let p = keep.len();
    let mut a = vec![vec![0.0f64; p + 1]; p];
    for (r, &cr) in keep.iter().enumerate() {
        for (c, &cc) in keep.iter().enumerate() {
            a[r][c] = (0..y.len()).map(|i| w[i] * cols[cr][i] * cols[cc][i]).sum();
        }
        a[r][p] = (0..y.len()).map(|i| w[i] * cols[cr][i] * y[i]).sum();
    }
    for col in 0..p {
        let piv = (col..p).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs())).expect("non-empty");
        a.swap(col, piv);
        for r in 0..p {
            if r != col {
                let f = a[r][col] / a[col][col];
                for c in col..=p {
                    a[r][c] -= f * a[col][c];
                }
            }
        }
    }
    let mut beta = vec![0.0; cols.len()];
    for (r, &cr) in keep.iter().enumerate() {
        beta[cr] = a[r][p] / a[r][r];
    }
    let chi2 = (0..y.len())
        .map(|i| {
            let m: f64 = (0..cols.len()).map(|c| beta[c] * cols[c][i]).sum();
            w[i] * (y[i] - m) * (y[i] - m)
        })
        .sum();
    (chi2, beta)
}

/// Per-site indicator columns of a window.
pub fn site_columns(site: &[u8]) -> Vec<Vec<f64>> {
    (0..super::N_SITES as u8).map(|s| site.iter().map(|&x| (x == s) as u8 as f64).collect()).collect()
}

/// A random window of `n` points over `n_sites` sites at HJD ~ 8500, with repeated epochs,
/// uneven weights, per-site offsets and (when `rise` > 0) a linear rise after a random break.
pub fn random_window(seed: u64, n: usize, n_sites: u8, rise: f64) -> Window {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut t: Vec<f64> = (0..n).map(|_| 8500.0 + 20.0 * rng.random::<f64>()).collect();
    t.sort_by(f64::total_cmp);
    // Some exact ties (two sites observing at the same second).
    for i in 1..n {
        if rng.random::<f64>() < 0.05 {
            t[i] = t[i - 1];
        }
    }
    let tb = 8500.0 + 12.0 * rng.random::<f64>();
    let mut win = Window::default();
    for (i, &ti) in t.iter().enumerate() {
        let s = rng.random_range(0..n_sites.max(1));
        let e = 0.5 + rng.random::<f64>();
        let g: f64 = rng.sample(StandardNormal);
        win.t.push(ti);
        win.y.push(10.0 * s as f64 - 3.0 + rise * (ti - tb).max(0.0) + e * g);
        win.w.push(1.0 / (e * e));
        win.site.push(s);
        win.index.push(i as u32);
    }
    win
}
