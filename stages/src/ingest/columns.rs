//! Generic column files (MOA, Gaia, ZTF, … exports): which column is time, value (mag, flux or
//! Δflux), error and optional extras is given by flags or by a sidecar `NAME.columns.toml`:
//!
//! ```toml
//! time = 1                 # 1-based column numbers
//! time_system = "mjd"      # hjd | hjd-2450000 | hjd-2400000 | mjd; detected when absent
//! value = 2
//! kind = "mag"             # mag | flux | dflux
//! error = 3
//! fwhm = 4                 # optional: mag, mag_err (for dflux files), fwhm, sky, airmass, quality
//! delimiter = ","          # default: blanks and tabs
//! skip_lines = 1           # header lines that do not start with '#'
//! flux_sign = 1            # dflux without magnitudes: +1 brightening positive as written
//! star = "ZTF18abc"        # default: the folder, else the file stem
//! field = "BLG14"          # required
//! site = "ZTF"             # default: "EXT"
//! band = "I"               # default: I
//! ```

use serde::Deserialize;

use crate::ingest::error::ParseError;
use crate::ingest::ledger::LedgerEntry;
use crate::ingest::normalize::{normalize, Observations, SourceMeta, SourceOverrides, ValueKind};
use crate::ingest::pysis::{parent_folder, stem};
use crate::ingest::text::{scan, Layout, Quantity, Scan};
use crate::ingest::time::TimeSystem;
use crate::photometry::{Band, Field, StarId};

/// What the value column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueColumn {
    Mag,
    Flux,
    Dflux,
}

/// A column mapping (see the module docs for the TOML form).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnsSpec {
    /// 1-based column of the time.
    pub time: usize,
    /// Time system; detected from the values when absent (MJD must be named).
    pub time_system: Option<String>,
    /// 1-based column of the value.
    pub value: usize,
    pub kind: ValueColumn,
    /// 1-based column of the value's error.
    pub error: Option<usize>,
    /// Magnitude columns of a Δflux file (used to derive the sign).
    pub mag: Option<usize>,
    pub mag_err: Option<usize>,
    pub fwhm: Option<usize>,
    pub sky: Option<usize>,
    pub airmass: Option<usize>,
    pub quality: Option<usize>,
    /// Field delimiter (one character, e.g. ","); blanks and tabs when absent.
    pub delimiter: Option<String>,
    /// Header lines to skip that do not start with `#`.
    #[serde(default)]
    pub skip_lines: usize,
    pub flux_sign: Option<i8>,
    pub star: Option<String>,
    pub field: Option<String>,
    pub site: Option<String>,
    pub band: Option<String>,
}

impl ColumnsSpec {
    pub fn from_toml(s: &str) -> Result<ColumnsSpec, toml::de::Error> {
        toml::from_str(s)
    }

    /// The scanner layout, or why the mapping cannot work.
    pub fn layout(&self, file: &str) -> Result<Layout, ParseError> {
        let bad = |reason: String| ParseError::Mapping { file: file.to_string(), reason };
        let (v, e) = match self.kind {
            ValueColumn::Mag => (Quantity::Mag, Quantity::MagErr),
            ValueColumn::Flux | ValueColumn::Dflux => (Quantity::Flux, Quantity::FluxErr),
        };
        let mut map: Vec<(usize, Quantity)> = vec![(self.time, Quantity::Time), (self.value, v)];
        for (c, q) in [
            (self.error, e),
            (self.mag, Quantity::Mag),
            (self.mag_err, Quantity::MagErr),
            (self.fwhm, Quantity::Fwhm),
            (self.sky, Quantity::Sky),
            (self.airmass, Quantity::Airmass),
            (self.quality, Quantity::Quality),
        ] {
            if let Some(c) = c {
                map.push((c, q));
            }
        }
        let n = map.iter().map(|m| m.0).max().unwrap_or(0);
        let mut columns = vec![Quantity::Ignore; n];
        for (c, q) in map {
            if c == 0 {
                return Err(bad(format!("column numbers start at 1 ({} is 0)", q.name())));
            }
            if columns[c - 1] != Quantity::Ignore {
                return Err(bad(format!("column {c} is mapped twice")));
            }
            if columns.contains(&q) {
                return Err(bad(format!("{} is mapped twice", q.name())));
            }
            columns[c - 1] = q;
        }
        let delimiter = match self.delimiter.as_deref() {
            None | Some("") | Some(" ") | Some("whitespace") => None,
            Some("\\t") | Some("\t") | Some("tab") => Some(b'\t'),
            Some(d) if d.len() == 1 => Some(d.as_bytes()[0]),
            Some(d) => return Err(bad(format!("delimiter `{d}` is not one character"))),
        };
        Ok(Layout { columns, delimiter, allow_extra: true })
    }
}

/// Parses a generic column file with `spec`.
#[allow(clippy::too_many_arguments)]
pub fn parse(
    text: &[u8],
    start: usize,
    first_line: u64,
    path: &str,
    overrides: &SourceOverrides,
    spec: &ColumnsSpec,
    prior: Option<&LedgerEntry>,
    accept_tail: bool,
) -> Result<(Scan, Observations), ParseError> {
    let file = path.rsplit('/').next().unwrap_or(path);
    let layout = spec.layout(file)?;
    let meta_err = |what: &'static str, reason: String| ParseError::Metadata { file: file.to_string(), what, reason };
    let field: Field = match (&overrides.field, &spec.field) {
        (Some(f), _) => *f,
        (None, Some(f)) => f.parse().map_err(|e: String| meta_err("field", e))?,
        (None, None) => return Err(meta_err("field", "give `field` in the column mapping or as a flag".into())),
    };
    let band: Band = match (&overrides.band, &spec.band) {
        (Some(b), _) => *b,
        (None, Some(b)) => b.parse().map_err(|e: String| meta_err("band", e))?,
        (None, None) => Band::I,
    };
    let star = overrides
        .star
        .clone()
        .or_else(|| spec.star.clone().map(StarId))
        .or_else(|| parent_folder(path).map(|p| StarId(p.to_string())))
        .unwrap_or_else(|| StarId(stem(path).to_string()));
    let site = overrides.site.clone().or_else(|| spec.site.clone()).unwrap_or_else(|| "EXT".to_string());
    let ts = match &spec.time_system {
        Some(s) => Some(s.parse::<TimeSystem>().map_err(|reason| ParseError::Mapping { file: file.to_string(), reason })?),
        None => crate::ingest::time::declared_time_system(text),
    };
    // Skip the non-`#` header lines on the first read only; a grown file resumes past them.
    let (mut start, mut first_line) = (start, first_line);
    if start == 0 {
        for _ in 0..spec.skip_lines {
            match memchr::memchr(b'\n', &text[start..]) {
                Some(i) => {
                    start += i + 1;
                    first_line += 1;
                }
                None => break,
            }
        }
    }
    let s = scan(text, start, first_line, &layout, file, accept_tail)?;
    let kind = match spec.kind {
        ValueColumn::Mag => ValueKind::Mag,
        ValueColumn::Flux => ValueKind::Flux,
        ValueColumn::Dflux => ValueKind::DeltaFlux { default_sign: 1 },
    };
    let meta = SourceMeta { star, field, site, band };
    let obs = normalize(&s, kind, meta, prior, ts, overrides.flux_sign.or(spec.flux_sign), file)?;
    Ok((s, obs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(toml: &str) -> ColumnsSpec {
        ColumnsSpec::from_toml(toml).unwrap()
    }

    #[test]
    fn ztf_like_csv_with_mjd_and_mags() {
        let s = spec("time = 1\ntime_system = \"mjd\"\nvalue = 2\nkind = \"mag\"\nerror = 3\ndelimiter = \",\"\nskip_lines = 1\nfield = \"BLG14\"\nsite = \"ZTF\"\n");
        let text = b"mjd,mag,magerr,filter\n58300.5,18.0,0.05,zr\n58301.5,17.0,0.02,zr\n58302.5,18.0,0.05,zr\n";
        let (sc, obs) = parse(text, 0, 1, "ztf/ZTF18abc/lc.csv", &SourceOverrides::default(), &s, None, false).unwrap();
        assert_eq!(sc.table.line, vec![2, 3, 4]);
        assert_eq!(obs.meta.star.0, "ZTF18abc");
        assert_eq!(obs.meta.site, "ZTF");
        assert!((obs.hjd[0] - 8301.0).abs() < 1e-9); // MJD 58300.5 = JD 2458301.0
        // Baseline is the median (mag 18): the 17th-mag epoch is a positive excursion.
        assert!(obs.flux[0].abs() < 1e-6 && obs.flux[1] > 0.0);
        assert!((obs.baseline_flux - 10f64.powf(-0.4 * (18.0 - 28.0))).abs() < 1e-6);
    }

    #[test]
    fn bad_mappings_are_named() {
        let e = spec("time = 1\nvalue = 1\nkind = \"flux\"\nfield = \"BLG01\"\n").layout("x.txt").unwrap_err();
        assert_eq!(e.to_string(), "bad column mapping for x.txt: column 1 is mapped twice");
        assert!(ColumnsSpec::from_toml("time = 1\nvalue = 2\nkind = \"mag\"\nbogus = 3\n").is_err());
        let s = spec("time = 1\nvalue = 2\nkind = \"flux\"\n");
        let e = parse(b"8000 1\n", 0, 1, "x.txt", &SourceOverrides::default(), &s, None, false).unwrap_err();
        assert!(e.to_string().contains("cannot tell the field of x.txt"), "{e}");
    }
}
