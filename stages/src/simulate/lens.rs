//! Microlensing magnification: point-source point-lens (Paczyński), finite-source point-lens
//! (Gould 1994 / Yoo et al. 2004 B0 factor, uniform disk) and binary lenses from the five
//! roots of the Witt & Mao (1995) complex polynomial (Aberth-Ehrlich root finder).

use std::ops::{Add, Div, Mul, Neg, Sub};

/// Point-lens magnification A(u) = (u² + 2) / (u √(u² + 4)).
pub fn pspl(u: f64) -> f64 {
    let u = u.max(1e-12);
    (u * u + 2.0) / (u * (u * u + 4.0).sqrt())
}

/// Impact parameter u(t) = sqrt(u0² + ((t - t0)/tE)²).
pub fn u_of_t(t: f64, t0: f64, te: f64, u0: f64) -> f64 {
    let tau = (t - t0) / te;
    (u0 * u0 + tau * tau).sqrt()
}

/// Gould (1994) finite-source factor B0(z) = (4z/π) E(min(1, 1/z) ; z) for a uniform disk,
/// z = u/ρ. For z <= 1 it is (4z/π) E(z) (complete); for z > 1 the incomplete integral to
/// arcsin(1/z) is evaluated after the substitution sin θ = sin φ sin ψ, which removes the
/// endpoint singularity so a fixed Gauss-Legendre rule is accurate.
pub fn b0(z: f64) -> f64 {
    if z > 30.0 {
        // Asymptotic 1 + 1/(8 z²) for a source far from the lens.
        return 1.0 + 1.0 / (8.0 * z * z);
    }
    let sum = if z <= 1.0 {
        gauss_legendre(0.0, std::f64::consts::FRAC_PI_2, |th| {
            (1.0 - z * z * th.sin().powi(2)).max(0.0).sqrt()
        })
    } else {
        let sphi = 1.0 / z;
        gauss_legendre(0.0, std::f64::consts::FRAC_PI_2, |psi| {
            let c = psi.cos();
            sphi * c * c / (1.0 - sphi * sphi * psi.sin().powi(2)).max(1e-300).sqrt()
        })
    };
    4.0 * z / std::f64::consts::PI * sum
}

/// Finite-source point-lens magnification, A ≈ A_ps(u) B0(u/ρ) (valid for ρ ≪ 1).
pub fn fspl(u: f64, rho: f64) -> f64 {
    if !(rho > 0.0) {
        return pspl(u);
    }
    let z = u / rho;
    if z < 1e-6 {
        // Centre of the disk: A → √(1 + 4/ρ²).
        return (1.0 + 4.0 / (rho * rho)).sqrt();
    }
    pspl(u) * b0(z)
}

fn gauss_legendre(a: f64, b: f64, f: impl Fn(f64) -> f64) -> f64 {
    // 20-point Gauss-Legendre nodes and weights on [-1, 1] (positive half).
    const X: [f64; 10] = [
        0.076_526_521_133_497_33,
        0.227_785_851_141_645_08,
        0.373_706_088_715_419_56,
        0.510_867_001_950_827_1,
        0.636_053_680_726_515,
        0.746_331_906_460_150_8,
        0.839_116_971_822_218_8,
        0.912_234_428_251_326,
        0.963_971_927_277_913_8,
        0.993_128_599_185_094_9,
    ];
    const W: [f64; 10] = [
        0.152_753_387_130_725_85,
        0.149_172_986_472_603_75,
        0.142_096_109_318_382_05,
        0.131_688_638_449_176_63,
        0.118_194_531_961_518_42,
        0.101_930_119_817_240_44,
        0.083_276_741_576_704_75,
        0.062_672_048_334_109_06,
        0.040_601_429_800_386_94,
        0.017_614_007_139_152_12,
    ];
    let (m, h) = (0.5 * (a + b), 0.5 * (b - a));
    X.iter().zip(W.iter()).map(|(&x, &w)| w * (f(m - h * x) + f(m + h * x))).sum::<f64>() * h
}

/// A small complex number type (the crate has no complex dependency).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct C {
    pub re: f64,
    pub im: f64,
}

impl C {
    pub const fn new(re: f64, im: f64) -> C {
        C { re, im }
    }
    pub fn conj(self) -> C {
        C::new(self.re, -self.im)
    }
    pub fn norm2(self) -> f64 {
        self.re * self.re + self.im * self.im
    }
    pub fn abs(self) -> f64 {
        self.norm2().sqrt()
    }
    pub fn inv(self) -> C {
        let d = self.norm2();
        C::new(self.re / d, -self.im / d)
    }
}
impl Add for C {
    type Output = C;
    fn add(self, o: C) -> C {
        C::new(self.re + o.re, self.im + o.im)
    }
}
impl Sub for C {
    type Output = C;
    fn sub(self, o: C) -> C {
        C::new(self.re - o.re, self.im - o.im)
    }
}
impl Mul for C {
    type Output = C;
    fn mul(self, o: C) -> C {
        C::new(self.re * o.re - self.im * o.im, self.re * o.im + self.im * o.re)
    }
}
impl Div for C {
    type Output = C;
    fn div(self, o: C) -> C {
        self * o.inv()
    }
}
impl Neg for C {
    type Output = C;
    fn neg(self) -> C {
        C::new(-self.re, -self.im)
    }
}
impl Mul<f64> for C {
    type Output = C;
    fn mul(self, k: f64) -> C {
        C::new(self.re * k, self.im * k)
    }
}

/// Polynomial product; coefficients in increasing powers.
fn pmul(a: &[C], b: &[C]) -> Vec<C> {
    let mut r = vec![C::new(0.0, 0.0); a.len() + b.len() - 1];
    for (i, &x) in a.iter().enumerate() {
        for (j, &y) in b.iter().enumerate() {
            r[i + j] = r[i + j] + x * y;
        }
    }
    r
}

fn padd(a: &[C], b: &[C]) -> Vec<C> {
    let n = a.len().max(b.len());
    (0..n)
        .map(|i| {
            let x = a.get(i).copied().unwrap_or(C::new(0.0, 0.0));
            let y = b.get(i).copied().unwrap_or(C::new(0.0, 0.0));
            x + y
        })
        .collect()
}

fn pscale(a: &[C], k: C) -> Vec<C> {
    a.iter().map(|&x| x * k).collect()
}

/// Evaluate polynomial and derivative (Horner).
fn peval(p: &[C], z: C) -> (C, C) {
    let mut v = C::new(0.0, 0.0);
    let mut d = C::new(0.0, 0.0);
    for &c in p.iter().rev() {
        d = d * z + v;
        v = v * z + c;
    }
    (v, d)
}

/// All roots of a polynomial (increasing-power coefficients) by Aberth-Ehrlich iteration,
/// which converges simultaneously for all roots and does not need deflation. `start` may carry
/// the previous epoch's roots (they change smoothly along a trajectory).
pub fn roots(p: &[C], start: Option<&[C]>) -> Vec<C> {
    let n = p.len() - 1;
    let lead = p[n];
    let mut z: Vec<C> = match start {
        Some(s) if s.len() == n => s.to_vec(),
        _ => {
            // Initial guesses on a circle of the Cauchy-bound radius, rotated off symmetry axes.
            let r = 1.0 + p[..n].iter().map(|c| (*c / lead).abs()).fold(0.0, f64::max);
            (0..n)
                .map(|k| {
                    let a = std::f64::consts::TAU * k as f64 / n as f64 + 0.4;
                    C::new(r * 0.5 * a.cos(), r * 0.5 * a.sin())
                })
                .collect()
        }
    };
    for _ in 0..200 {
        let mut moved = 0.0f64;
        for k in 0..n {
            let (v, d) = peval(p, z[k]);
            if v.norm2() == 0.0 {
                continue;
            }
            let ratio = v / d;
            let mut s = C::new(0.0, 0.0);
            for j in 0..n {
                if j != k {
                    let diff = z[k] - z[j];
                    if diff.norm2() > 0.0 {
                        s = s + diff.inv();
                    } else {
                        s = s + C::new(1e12, 0.0);
                    }
                }
            }
            let denom = C::new(1.0, 0.0) - ratio * s;
            let w = if denom.norm2() > 0.0 { ratio / denom } else { ratio };
            z[k] = z[k] - w;
            moved = moved.max(w.abs() / (1.0 + z[k].abs()));
        }
        if moved < 1e-14 {
            break;
        }
    }
    z
}

/// A binary lens: mass ratio q = m2/m1, separation s (Einstein radii of the total mass),
/// origin at the centre of mass, masses on the real axis.
#[derive(Debug, Clone, Copy)]
pub struct BinaryLens {
    pub q: f64,
    pub s: f64,
}

impl BinaryLens {
    fn layout(&self) -> (f64, f64, f64, f64) {
        let m1 = 1.0 / (1.0 + self.q);
        let m2 = self.q / (1.0 + self.q);
        let z1 = -self.s * m2;
        let z2 = self.s * m1;
        (m1, m2, z1, z2)
    }

    /// Point-source magnification at source position ζ: sum of 1/|det J| over the images that
    /// satisfy the lens equation (3 or 5 of the 5 polynomial roots).
    pub fn magnification(&self, zeta: C, warm: &mut Option<Vec<C>>) -> f64 {
        let (m1, m2, z1, z2) = self.layout();
        let (z1c, z2c) = (C::new(z1, 0.0), C::new(z2, 0.0));
        // Far from the lenses the binary acts as a point lens of the total mass.
        if zeta.abs() > 20.0 * (1.0 + self.s) {
            return pspl(zeta.abs());
        }
        let one = C::new(1.0, 0.0);
        let zb = zeta.conj();
        // D = (z - z1)(z - z2); N = ζ̄ D - m1 (z - z2) - m2 (z - z1); P_i = N - z_i D.
        let d = pmul(&[-z1c, one], &[-z2c, one]);
        let n = padd(
            &pscale(&d, zb),
            &padd(&pscale(&[-z2c, one], C::new(-m1, 0.0)), &pscale(&[-z1c, one], C::new(-m2, 0.0))),
        );
        let p1 = padd(&n, &pscale(&d, -z1c));
        let p2 = padd(&n, &pscale(&d, -z2c));
        // (ζ - z) P1 P2 + m1 D P2 + m2 D P1 = 0.
        let poly = padd(
            &pmul(&[zeta, -one], &pmul(&p1, &p2)),
            &padd(&pscale(&pmul(&d, &p2), C::new(m1, 0.0)), &pscale(&pmul(&d, &p1), C::new(m2, 0.0))),
        );
        let rs = roots(&poly, warm.as_deref());
        let mut a = 0.0;
        let mut images = 0;
        for &z in &rs {
            let zbar = z.conj();
            let lens = z - (zbar - z1c).inv() * m1 - (zbar - z2c).inv() * m2;
            if (lens - zeta).abs() < 1e-6 * (1.0 + zeta.abs()) {
                let dz = ((zbar - z1c) * (zbar - z1c)).inv() * m1 + ((zbar - z2c) * (zbar - z2c)).inv() * m2;
                let det = 1.0 - dz.norm2();
                if det.abs() > 1e-12 {
                    a += 1.0 / det.abs();
                    images += 1;
                }
            }
        }
        *warm = Some(rs);
        if images < 3 {
            // Root polishing failed (rare, at a caustic): fall back to the point lens rather
            // than return garbage.
            return pspl(zeta.abs()).max(a);
        }
        a
    }

    /// Magnification with a crude finite source: the point-source value averaged over a
    /// centre + two rings (1 + 6 + 12 points) of a uniform disk of radius ρ when the source is
    /// near a caustic (point-source A above 8); keeps caustic crossings finite and smooth on the
    /// scale of ρ tE.
    pub fn magnification_fs(&self, zeta: C, rho: f64, warm: &mut Option<Vec<C>>) -> f64 {
        let a0 = self.magnification(zeta, warm);
        if !(rho > 0.0) || a0 < 8.0 {
            return a0;
        }
        let mut sum = a0;
        let mut n = 1.0;
        let mut w = warm.clone();
        for (r, k) in [(0.5, 6), (0.9, 12)] {
            for j in 0..k {
                let ang = std::f64::consts::TAU * j as f64 / k as f64 + 0.3 * r;
                let z = zeta + C::new(rho * r * ang.cos(), rho * r * ang.sin());
                sum += self.magnification(z, &mut w);
                n += 1.0;
            }
        }
        sum / n
    }
}

/// Source position on the trajectory at time t for angle α (radians, relative to the binary
/// axis).
pub fn trajectory(t: f64, t0: f64, te: f64, u0: f64, alpha: f64) -> C {
    let tau = (t - t0) / te;
    let (sa, ca) = alpha.sin_cos();
    C::new(tau * ca - u0 * sa, tau * sa + u0 * ca)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pspl_known_values() {
        assert!((pspl(1.0) - 3.0 / 5f64.sqrt()).abs() < 1e-12);
        assert!((pspl(0.1) - 10.0376).abs() < 1e-3);
    }

    #[test]
    fn finite_source_limits() {
        // Far from the lens B0 → 1; at the centre A = sqrt(1 + 4/ρ²).
        assert!((b0(20.0) - 1.0).abs() < 2e-3);
        let rho = 0.01;
        assert!((fspl(0.0, rho) - (1.0f64 + 4.0 / (rho * rho)).sqrt()).abs() < 1e-6);
        // Continuity across z = 1 and the expected B0(1) = 4/π.
        assert!((b0(1.0) - 4.0 / std::f64::consts::PI).abs() < 1e-6);
        assert!((b0(0.999) - b0(1.001)).abs() < 0.05);
        // Finite source smooths the peak: A_fs(u=0.5ρ) < A_ps.
        assert!(fspl(0.005, rho) < pspl(0.005));
    }

    #[test]
    fn binary_reduces_to_point_lens_for_tiny_q() {
        let b = BinaryLens { q: 1e-7, s: 1.5 };
        let mut warm = None;
        for &(x, y) in &[(0.3, 0.2), (-0.5, 0.1), (0.05, -0.6)] {
            let z = C::new(x, y);
            let a = b.magnification(z, &mut warm);
            assert!((a - pspl(z.abs())).abs() / pspl(z.abs()) < 1e-3, "{a} vs {}", pspl(z.abs()));
        }
    }

    #[test]
    fn equal_mass_binary_crossing_has_caustic_spikes() {
        let b = BinaryLens { q: 1.0, s: 1.0 };
        let mut warm = None;
        let mut peak: f64 = 0.0;
        let mut five = 0;
        for k in 0..2001 {
            let t = -1.0 + k as f64 / 1000.0;
            let a = b.magnification(trajectory(t, 0.0, 1.0, 0.05, 1.0), &mut warm);
            assert!(a.is_finite() && a >= 1.0, "A = {a} at {t}");
            peak = peak.max(a);
            if a > 3.0 {
                five += 1;
            }
        }
        assert!(peak > 20.0, "peak {peak}");
        assert!(five > 50);
    }
}
