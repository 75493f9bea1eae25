//! Time systems of input files and the one stored: HJD - 2450000 in days (f64). Detection looks
//! at the values, because survey exports rarely say which offset they use.

use std::fmt;
use std::str::FromStr;

/// The time columns ingest understands. All are heliocentric Julian dates with an offset; the
/// stored value is always `HJD - 2450000`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimeSystem {
    /// Full HJD (~2,458,000 in 2018).
    Hjd,
    /// HJD - 2450000 (~8,000 in 2018), the KMTNet pySIS and OGLE EWS convention when reduced.
    Hjd2450000,
    /// HJD - 2400000 (~58,000 in 2018), the "reduced" JD of many tools.
    Hjd2400000,
    /// Modified JD (JD - 2400000.5); never detected (its values overlap HJD - 2400000), only
    /// selected by a column mapping, e.g. for ZTF exports.
    Mjd,
}

impl TimeSystem {
    /// What to add to a value to get HJD - 2450000.
    pub fn offset_to_stored(self) -> f64 {
        match self {
            TimeSystem::Hjd => -2_450_000.0,
            TimeSystem::Hjd2450000 => 0.0,
            TimeSystem::Hjd2400000 => -50_000.0,
            TimeSystem::Mjd => -49_999.5,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TimeSystem::Hjd => "hjd",
            TimeSystem::Hjd2450000 => "hjd-2450000",
            TimeSystem::Hjd2400000 => "hjd-2400000",
            TimeSystem::Mjd => "mjd",
        }
    }

    /// Which system a single value belongs to, from its magnitude. The ranges cover 1968–2160 and
    /// do not overlap: full HJD > 2.4e6; HJD-2400000 in [40000, 120000) (1968–2187);
    /// HJD-2450000 in [-5000, 40000) (1982–2104).
    pub fn of_value(v: f64) -> Option<TimeSystem> {
        if !v.is_finite() {
            None
        } else if (2_400_000.0..2_600_000.0).contains(&v) {
            Some(TimeSystem::Hjd)
        } else if (40_000.0..120_000.0).contains(&v) {
            Some(TimeSystem::Hjd2400000)
        } else if (-5_000.0..40_000.0).contains(&v) {
            Some(TimeSystem::Hjd2450000)
        } else {
            None
        }
    }

    /// The system of a file's time column: every finite value must fall in one system's range,
    /// otherwise the file is ambiguous and detection fails (the caller quarantines it).
    pub fn detect(values: &[f64]) -> Result<TimeSystem, String> {
        let mut found: Option<TimeSystem> = None;
        for &v in values {
            let Some(s) = TimeSystem::of_value(v) else {
                return Err(format!("time {v} is outside every known system"));
            };
            match found {
                None => found = Some(s),
                Some(f) if f == s => {}
                Some(f) => {
                    return Err(format!(
                        "times mix {} and {} (value {v})",
                        f.name(),
                        s.name()
                    ))
                }
            }
        }
        found.ok_or_else(|| "no times to detect from".to_string())
    }
}

/// The time system a file declares in its leading header or comment lines (before its first data
/// line), when it names one unambiguously: `MJD`, `HJD-2450000`, `HJD-2400000`, `RJD`. A bare
/// `HJD` or `JD` is not a declaration (pySIS writes `HJD` over HJD - 2450000 values): detection
/// from the values decides then.
pub fn declared_time_system(text: &[u8]) -> Option<TimeSystem> {
    for line in text.split(|&b| b == b'\n').take(20) {
        let l = String::from_utf8_lossy(line);
        let t = l.trim();
        if t.is_empty() {
            continue;
        }
        let is_header = t.starts_with('#') || !t.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '+' || c == '.');
        if !is_header {
            return None;
        }
        let norm = t.to_ascii_lowercase().replace(['\u{2212}', ' '], "").replace('_', "-");
        for (needle, ts) in [
            ("hjd-2450000", TimeSystem::Hjd2450000),
            ("jd-2450000", TimeSystem::Hjd2450000),
            ("hjd-2400000", TimeSystem::Hjd2400000),
            ("jd-2400000", TimeSystem::Hjd2400000),
        ] {
            if norm.contains(needle) {
                return Some(ts);
            }
        }
        let words: Vec<String> = t.to_ascii_lowercase().split(|c: char| !c.is_ascii_alphanumeric()).map(str::to_string).collect();
        if words.iter().any(|w| w == "mjd") {
            return Some(TimeSystem::Mjd);
        }
        if words.iter().any(|w| w == "rjd") {
            return Some(TimeSystem::Hjd2400000);
        }
    }
    None
}

impl fmt::Display for TimeSystem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for TimeSystem {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().replace(['_', ' '], "-").as_str() {
            "hjd" | "jd" | "bjd" => Ok(TimeSystem::Hjd),
            "hjd-2450000" | "hjd2450000" | "jd-2450000" | "bjd-2450000" => Ok(TimeSystem::Hjd2450000),
            "hjd-2400000" | "hjd2400000" | "jd-2400000" | "rjd" => Ok(TimeSystem::Hjd2400000),
            "mjd" => Ok(TimeSystem::Mjd),
            other => Err(format!(
                "unknown time system `{other}` (expected hjd, hjd-2450000, hjd-2400000 or mjd)"
            )),
        }
    }
}

/// The season of an epoch: the calendar year (UTC, Gregorian) in which it was observed. The
/// ~8-minute heliocentric correction is ignored; bulge seasons run February to October, far from
/// the year boundary.
pub fn season_of(hjd2450000: f64) -> i32 {
    // JD 2450000.5 is 1995-10-10 00:00 UTC; days since 1970-01-01 = JD - 2440587.5.
    let days_since_epoch = (hjd2450000 + 2_450_000.0 - 2_440_587.5).floor() as i64;
    civil_year_from_days(days_since_epoch)
}

/// Howard Hinnant's `civil_from_days`, year part only.
fn civil_year_from_days(z: i64) -> i32 {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_the_three_systems() {
        assert_eq!(TimeSystem::detect(&[8168.83, 8400.1]), Ok(TimeSystem::Hjd2450000));
        assert_eq!(TimeSystem::detect(&[2458168.83]), Ok(TimeSystem::Hjd));
        assert_eq!(TimeSystem::detect(&[58168.83, 58169.0]), Ok(TimeSystem::Hjd2400000));
        assert!(TimeSystem::detect(&[8168.0, 58168.0]).is_err());
        assert!(TimeSystem::detect(&[1.0e9]).is_err());
        assert!(TimeSystem::detect(&[]).is_err());
    }

    #[test]
    fn offsets_agree_on_one_epoch() {
        let stored = 8168.83;
        for (s, v) in [
            (TimeSystem::Hjd, 2_458_168.83),
            (TimeSystem::Hjd2450000, 8168.83),
            (TimeSystem::Hjd2400000, 58_168.83),
            (TimeSystem::Mjd, 58_168.33),
        ] {
            assert!((v + s.offset_to_stored() - stored).abs() < 1e-6, "{s}");
            assert_eq!(s.name().parse::<TimeSystem>(), Ok(s));
        }
    }

    #[test]
    fn seasons_are_calendar_years() {
        assert_eq!(season_of(8168.83), 2018); // 2018-02-15
        assert_eq!(season_of(0.0), 1995);
        // 2018-01-01 00:00 UTC is JD 2458119.5; just before is 2017.
        assert_eq!(season_of(8119.49), 2017);
        assert_eq!(season_of(8119.51), 2018);
        assert_eq!(season_of(10_700.0), 2025);
    }

    #[test]
    fn a_header_that_names_its_system_is_believed() {
        assert_eq!(declared_time_system(b"# MJD flux err\n58000.1 1 2\n"), Some(TimeSystem::Mjd));
        assert_eq!(declared_time_system(b"#HJD-2450000 dflux\n8000.1 1 2\n"), Some(TimeSystem::Hjd2450000));
        assert_eq!(declared_time_system(b"time(HJD - 2400000),mag\n58000.1,1\n"), Some(TimeSystem::Hjd2400000));
        // pySIS writes a bare HJD over HJD - 2450000: not a declaration.
        assert_eq!(declared_time_system(b"# HJD  \\Delta_flux flux_err\n8168.8 1 2\n"), None);
        assert_eq!(declared_time_system(b"8168.8 1 2\n# MJD later\n"), None, "only lines before the data count");
    }
}
