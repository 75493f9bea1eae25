//! Survey vocabulary (sites, bands, fields, star ids) and the in-memory light-curve types that
//! the simulator produces, ingest reads into, and alertfinder/preprocess consume.
//!
//! Conventions (documented in ARCHITECTURE.md, relied on everywhere):
//! - time is HJD - 2450000 in days (f64);
//! - `flux` is the difference flux with **brightening positive** (pySIS files store the opposite
//!   sign; readers and writers convert at the file boundary);
//! - a missing value is `f64::NAN` (never a sentinel such as -99 or -1).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A KMTNet telescope site.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Site {
    /// Siding Spring Observatory, Australia.
    Kmta = 0,
    /// Cerro Tololo Inter-American Observatory, Chile.
    Kmtc = 1,
    /// South African Astronomical Observatory.
    Kmts = 2,
}

impl Site {
    pub const ALL: [Site; 3] = [Site::Kmta, Site::Kmtc, Site::Kmts];

    /// The code used in file names and partitions (`KMTA`, `KMTC`, `KMTS`).
    pub fn code(self) -> &'static str {
        match self {
            Site::Kmta => "KMTA",
            Site::Kmtc => "KMTC",
            Site::Kmts => "KMTS",
        }
    }

    /// East longitude of the telescope in degrees.
    pub fn longitude_deg(self) -> f64 {
        match self {
            Site::Kmta => 149.0661,
            Site::Kmtc => -70.8065,
            Site::Kmts => 20.8107,
        }
    }

    /// Geodetic latitude of the telescope in degrees.
    pub fn latitude_deg(self) -> f64 {
        match self {
            Site::Kmta => -31.2733,
            Site::Kmtc => -30.1691,
            Site::Kmts => -32.3783,
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn from_index(i: usize) -> Option<Site> {
        Site::ALL.get(i).copied()
    }
}

impl fmt::Display for Site {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl FromStr for Site {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "KMTA" | "A" => Ok(Site::Kmta),
            "KMTC" | "C" => Ok(Site::Kmtc),
            "KMTS" | "S" => Ok(Site::Kmts),
            other => Err(format!("unknown site `{other}` (expected KMTA, KMTC or KMTS)")),
        }
    }
}

/// Photometric band.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Band {
    I,
    V,
}

impl Band {
    pub fn code(self) -> &'static str {
        match self {
            Band::I => "I",
            Band::V => "V",
        }
    }
}

impl fmt::Display for Band {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl FromStr for Band {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "I" | "i" => Ok(Band::I),
            "V" | "v" => Ok(Band::V),
            other => Err(format!("unknown band `{other}` (expected I or V)")),
        }
    }
}

/// A KMTNet bulge field, stored as its number (BLG14 -> 14).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Field(pub u8);

impl Field {
    /// The field's name, `BLG14`.
    pub fn name(self) -> String {
        format!("BLG{:02}", self.0)
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BLG{:02}", self.0)
    }
}

impl FromStr for Field {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let digits = t
            .strip_prefix("BLG")
            .or_else(|| t.strip_prefix("blg"))
            .unwrap_or(t);
        match digits.parse::<u8>() {
            // KMTNet's bulge fields are numbered BLG01 .. BLG43; anything above is a typo or a foreign name.
            Ok(n) if (1..=43).contains(&n) => Ok(Field(n)),
            _ => Err(format!("invalid field `{s}` (expected a name such as BLG14)")),
        }
    }
}

impl TryFrom<String> for Field {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Field> for String {
    fn from(f: Field) -> String {
        f.name()
    }
}

/// A star's identifier within the survey, e.g. `BLG14.0001234` or a folder name such as `KB180003`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StarId(pub String);

impl fmt::Display for StarId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The photometry of one star at one site in one band, columns of equal length sorted by time.
/// Missing values are NaN.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SiteCurve {
    pub site: Option<Site>,
    pub band: Option<Band>,
    /// HJD - 2450000 (days).
    pub hjd: Vec<f64>,
    /// Difference flux, brightening positive (instrumental units of the pySIS reduction).
    pub flux: Vec<f64>,
    pub flux_err: Vec<f64>,
    pub mag: Vec<f64>,
    pub mag_err: Vec<f64>,
    /// Seeing FWHM in pixels.
    pub fwhm: Vec<f64>,
    /// Sky background in counts.
    pub sky: Vec<f64>,
    /// Airmass (sec z).
    pub airmass: Vec<f64>,
}

impl SiteCurve {
    pub fn new(site: Site, band: Band) -> Self {
        SiteCurve {
            site: Some(site),
            band: Some(band),
            ..Default::default()
        }
    }

    pub fn len(&self) -> usize {
        self.hjd.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hjd.is_empty()
    }
}

/// All photometry of one star: one `SiteCurve` per (site, band).
#[derive(Debug, Clone, PartialEq)]
pub struct StarCurves {
    pub star: StarId,
    pub field: Field,
    pub curves: Vec<SiteCurve>,
}

/// A zero-copy view of one star's photometry merged over sites (one band), sorted by time, as
/// the numeric cores want it. `site[i]` is `Site::index()`.
#[derive(Debug, Clone, Copy)]
pub struct LightCurve<'a> {
    pub time: &'a [f64],
    pub flux: &'a [f64],
    pub err: &'a [f64],
    pub site: &'a [u8],
    pub fwhm: &'a [f64],
    pub sky: &'a [f64],
}

impl<'a> LightCurve<'a> {
    pub fn len(&self) -> usize {
        self.time.len()
    }

    pub fn is_empty(&self) -> bool {
        self.time.is_empty()
    }
}

/// Owned, merged columns behind a [`LightCurve`] view (used where data is not already Arrow).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MergedCurve {
    pub time: Vec<f64>,
    pub flux: Vec<f64>,
    pub err: Vec<f64>,
    pub site: Vec<u8>,
    pub fwhm: Vec<f64>,
    pub sky: Vec<f64>,
}

impl MergedCurve {
    /// Merge the curves of one band over sites, sorted by time (stable for equal times).
    pub fn from_star(star: &StarCurves, band: Band) -> MergedCurve {
        let mut rows: Vec<(f64, f64, f64, u8, f64, f64)> = Vec::new();
        for c in star.curves.iter().filter(|c| c.band == Some(band)) {
            let s = c.site.map(|s| s as u8).unwrap_or(u8::MAX);
            for i in 0..c.len() {
                rows.push((c.hjd[i], c.flux[i], c.flux_err[i], s, c.fwhm[i], c.sky[i]));
            }
        }
        rows.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut m = MergedCurve::default();
        for r in rows {
            m.time.push(r.0);
            m.flux.push(r.1);
            m.err.push(r.2);
            m.site.push(r.3);
            m.fwhm.push(r.4);
            m.sky.push(r.5);
        }
        m
    }

    pub fn view(&self) -> LightCurve<'_> {
        LightCurve {
            time: &self.time,
            flux: &self.flux,
            err: &self.err,
            site: &self.site,
            fwhm: &self.fwhm,
            sky: &self.sky,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_parses_and_prints() {
        assert_eq!("BLG14".parse::<Field>().unwrap(), Field(14));
        assert_eq!("blg02".parse::<Field>().unwrap().name(), "BLG02");
        assert_eq!("3".parse::<Field>().unwrap(), Field(3));
        assert!("BLGxx".parse::<Field>().is_err());
        assert!("BLG00".parse::<Field>().is_err());
    }

    #[test]
    fn site_round_trips() {
        for s in Site::ALL {
            assert_eq!(s.code().parse::<Site>().unwrap(), s);
            assert_eq!(Site::from_index(s.index()), Some(s));
        }
        assert!("KMTX".parse::<Site>().is_err());
    }

    #[test]
    fn merged_curve_is_time_sorted_over_sites() {
        let mut a = SiteCurve::new(Site::Kmta, Band::I);
        let mut c = SiteCurve::new(Site::Kmtc, Band::I);
        for (curve, times) in [(&mut a, [1.0, 3.0]), (&mut c, [2.0, 0.5])] {
            for t in times {
                curve.hjd.push(t);
                curve.flux.push(t * 10.0);
                curve.flux_err.push(1.0);
                curve.mag.push(f64::NAN);
                curve.mag_err.push(f64::NAN);
                curve.fwhm.push(4.0);
                curve.sky.push(800.0);
                curve.airmass.push(1.2);
            }
        }
        let star = StarCurves { star: StarId("x".into()), field: Field(14), curves: vec![a, c] };
        let m = MergedCurve::from_star(&star, Band::I);
        assert_eq!(m.time, vec![0.5, 1.0, 2.0, 3.0]);
        assert_eq!(m.site, vec![1, 0, 1, 0]);
        assert_eq!(m.flux, vec![5.0, 10.0, 20.0, 30.0]);
    }
}
