//! Low-precision ephemerides (sun, moon, bulge) and calendar helpers for the season simulator.
//!
//! Accuracy is about 0.01 deg for the sun and 0.3 deg for the moon (Astronomical Almanac
//! low-precision formulae), far better than what night boundaries, sky brightness and airmass
//! need. Times are HJD - 2450000; the heliocentric correction (at most 8.3 minutes) is ignored
//! for these purposes.

use std::f64::consts::PI;

/// Right ascension of the bulge pointing centre (17h57m) in degrees.
pub const BULGE_RA_DEG: f64 = 269.25;
/// Declination of the bulge pointing centre in degrees.
pub const BULGE_DEC_DEG: f64 = -29.0;

const DEG: f64 = PI / 180.0;
const JD_OFFSET: f64 = 2_450_000.0;

/// HJD - 2450000 of 1 January of `year`, 0h UT.
pub fn year_start(year: i32) -> f64 {
    // Count days from 2000-01-01 0h UT (JD 2451544.5) with the Gregorian leap-year rule.
    let leap = |y: i32| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let mut days = 0i64;
    if year >= 2000 {
        for y in 2000..year {
            days += if leap(y) { 366 } else { 365 };
        }
    } else {
        for y in year..2000 {
            days -= if leap(y) { 366 } else { 365 };
        }
    }
    2_451_544.5 - JD_OFFSET + days as f64
}

/// Greenwich mean sidereal time in degrees.
fn gmst_deg(t: f64) -> f64 {
    let d = t + JD_OFFSET - 2_451_545.0;
    (280.460_618_37 + 360.985_647_366_29 * d).rem_euclid(360.0)
}

/// Altitude in degrees of an object at (ra, dec) seen from (lon east, lat) at time `t`.
pub fn altitude_deg(t: f64, ra_deg: f64, dec_deg: f64, lon_deg: f64, lat_deg: f64) -> f64 {
    let ha = (gmst_deg(t) + lon_deg - ra_deg) * DEG;
    let (lat, dec) = (lat_deg * DEG, dec_deg * DEG);
    let s = lat.sin() * dec.sin() + lat.cos() * dec.cos() * ha.cos();
    s.clamp(-1.0, 1.0).asin() / DEG
}

/// Hour angle in hours (-12..12) of an object at `ra_deg`.
pub fn hour_angle_h(t: f64, ra_deg: f64, lon_deg: f64) -> f64 {
    let ha = (gmst_deg(t) + lon_deg - ra_deg + 180.0).rem_euclid(360.0) - 180.0;
    ha / 15.0
}

/// Ecliptic to equatorial (ra, dec) in degrees.
fn ecl_to_eq(lambda_deg: f64, beta_deg: f64, t: f64) -> (f64, f64) {
    let n = t + JD_OFFSET - 2_451_545.0;
    let eps = (23.439 - 0.000_000_4 * n) * DEG;
    let (l, b) = (lambda_deg * DEG, beta_deg * DEG);
    let x = b.cos() * l.cos();
    let y = eps.cos() * b.cos() * l.sin() - eps.sin() * b.sin();
    let z = eps.sin() * b.cos() * l.sin() + eps.cos() * b.sin();
    let ra = y.atan2(x) / DEG;
    (ra.rem_euclid(360.0), z.clamp(-1.0, 1.0).asin() / DEG)
}

/// Ecliptic longitude of the sun in degrees.
fn sun_lambda_deg(t: f64) -> f64 {
    let n = t + JD_OFFSET - 2_451_545.0;
    let l = 280.460 + 0.985_647_4 * n;
    let g = (357.528 + 0.985_600_3 * n) * DEG;
    l + 1.915 * g.sin() + 0.020 * (2.0 * g).sin()
}

/// Sun (ra, dec) in degrees.
pub fn sun_radec(t: f64) -> (f64, f64) {
    ecl_to_eq(sun_lambda_deg(t), 0.0, t)
}

/// Moon ecliptic (longitude, latitude) in degrees.
fn moon_ecliptic(t: f64) -> (f64, f64) {
    let tc = (t + JD_OFFSET - 2_451_545.0) / 36_525.0;
    let s = |a: f64, b: f64| ((a + b * tc) * DEG).sin();
    let lambda = 218.32 + 481_267.881 * tc + 6.29 * s(135.0, 477_198.87)
        - 1.27 * s(259.3, -413_335.36)
        + 0.66 * s(235.7, 890_534.22)
        + 0.21 * s(269.9, 954_397.74)
        - 0.19 * s(357.5, 35_999.05)
        - 0.11 * s(186.5, 966_404.03);
    let beta = 5.13 * s(93.3, 483_202.02) + 0.28 * s(228.2, 960_400.89)
        - 0.28 * s(318.3, 6_003.15)
        - 0.17 * s(217.6, -407_332.21);
    (lambda, beta)
}

/// Moon (ra, dec) in degrees.
pub fn moon_radec(t: f64) -> (f64, f64) {
    let (l, b) = moon_ecliptic(t);
    ecl_to_eq(l, b, t)
}

/// Illuminated fraction of the moon (0 new, 1 full).
pub fn moon_illumination(t: f64) -> f64 {
    let (l, b) = moon_ecliptic(t);
    let cos_elong = (b * DEG).cos() * ((l - sun_lambda_deg(t)) * DEG).cos();
    0.5 * (1.0 - cos_elong)
}

/// Angular separation in degrees between two (ra, dec) positions.
pub fn separation_deg(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (r1, d1, r2, d2) = (a.0 * DEG, a.1 * DEG, b.0 * DEG, b.1 * DEG);
    let c = d1.sin() * d2.sin() + d1.cos() * d2.cos() * (r1 - r2).cos();
    c.clamp(-1.0, 1.0).acos() / DEG
}

/// Airmass (sec z with the Hardie correction) for an altitude in degrees; infinite below 1 deg.
pub fn airmass(alt_deg: f64) -> f64 {
    if alt_deg < 1.0 {
        return f64::INFINITY;
    }
    let secz = 1.0 / (alt_deg * DEG).sin();
    let x = secz - 1.0;
    secz - 0.001_816_7 * x - 0.002_875 * x * x - 0.000_808_3 * x * x * x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_and_sun_are_sane() {
        // 2018-02-21 = HJD 2458170.5; the real KMTC BLG14 file starts at 8168.83.
        assert!((year_start(2018) + 31.0 + 20.0 - 8170.5).abs() < 1e-9);
        assert!((year_start(2000) - 1544.5).abs() < 1e-9);
        // June solstice 2025: sun declination near +23.4.
        let t = year_start(2025) + 171.0;
        assert!((sun_radec(t).1 - 23.4).abs() < 0.3);
    }

    #[test]
    fn moon_phase_cycles() {
        // Full moon 2025-06-11 07:44 UT, new moon 2025-06-25 10:31 UT.
        let full = year_start(2025) + 161.0 + 0.32;
        let new = year_start(2025) + 175.0 + 0.44;
        assert!(moon_illumination(full) > 0.97);
        assert!(moon_illumination(new) < 0.03);
    }

    #[test]
    fn bulge_transits_high_in_chile_in_june_night() {
        // Around local midnight in June the bulge is near the meridian at CTIO: altitude ~ 89 deg.
        let lon = -70.8065;
        let lat = -30.1691;
        let t0 = year_start(2025) + 170.0;
        let best = (0..288)
            .map(|k| altitude_deg(t0 + k as f64 / 288.0, BULGE_RA_DEG, BULGE_DEC_DEG, lon, lat))
            .fold(f64::MIN, f64::max);
        assert!((best - (90.0 - 1.17)).abs() < 0.5, "max altitude {best}");
        assert!((airmass(90.0) - 1.0).abs() < 1e-9);
        assert!((airmass(30.0) - 1.995).abs() < 0.01);
    }
}
