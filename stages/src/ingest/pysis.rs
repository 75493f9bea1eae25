//! KMTNet pySIS light curves (`KMTC14_I.pysis`): columns from the `#` header (8, 6 or 5 of
//! HJD-2450000, Δflux, flux_err, mag, mag_err, fwhm, sky, secz), site/field/band from the file
//! name, star from the folder. Δflux is brightening-NEGATIVE in these files; the sign is derived
//! from the mag column where there is one, else this convention is assumed.

use crate::ingest::error::ParseError;
use crate::ingest::ledger::LedgerEntry;
use crate::ingest::normalize::{normalize, Observations, SourceMeta, SourceOverrides, ValueKind};
use crate::ingest::text::{scan, Layout, Quantity, Scan};
use crate::photometry::{Band, Field, Site, StarId};

/// pySIS writes brightening as negative Δflux (checked on the real files: the brightest epoch of
/// the BLG14 2018 season has Δflux -189,538 at mag 14.80).
pub const PYSIS_DEFAULT_SIGN: i8 = -1;

/// Maps a header name to a quantity; unknown names are kept as ignored columns so that the
/// column count still has to match.
fn quantity_of(name: &str) -> Quantity {
    let n = name.trim_start_matches('\\').to_ascii_lowercase();
    match n.as_str() {
        "hjd" | "hjd-2450000" | "jd" | "bjd" | "time" | "date" => Quantity::Time,
        "delta_flux" | "deltaflux" | "dflux" | "diff_flux" | "flux" => Quantity::Flux,
        "flux_err" | "fluxerr" | "dflux_err" | "err" | "error" => Quantity::FluxErr,
        "mag" | "magnitude" => Quantity::Mag,
        "mag_err" | "magerr" | "emag" => Quantity::MagErr,
        "fwhm" | "seeing" => Quantity::Fwhm,
        "sky" | "background" => Quantity::Sky,
        "secz" | "airmass" | "sec_z" => Quantity::Airmass,
        _ => Quantity::Ignore,
    }
}

/// The layout of a pySIS text: from its first `#` line when that names a time column, otherwise
/// from the column count of the first data line (8: full; 6: no mag/mag_err, as in the V-band
/// files; 5: no fwhm/sky/secz; 3: time, Δflux, error).
pub fn layout(text: &[u8], file: &str) -> Result<Layout, ParseError> {
    use Quantity::*;
    for (i, raw) in text.split(|&b| b == b'\n').enumerate().take(200) {
        let line = raw.trim_ascii();
        if line.is_empty() {
            continue;
        }
        if let Some(h) = line.strip_prefix(b"#") {
            let names: Vec<Quantity> = String::from_utf8_lossy(h).split_whitespace().map(quantity_of).collect();
            if names.first() == Some(&Time) && names.contains(&Flux) {
                return Ok(Layout::whitespace(names));
            }
            continue;
        }
        let n = line.split(|b| b.is_ascii_whitespace()).filter(|t| !t.is_empty()).count();
        let cols = match n {
            8 => vec![Time, Flux, FluxErr, Mag, MagErr, Fwhm, Sky, Airmass],
            6 => vec![Time, Flux, FluxErr, Fwhm, Sky, Airmass],
            5 => vec![Time, Flux, FluxErr, Mag, MagErr],
            3 => vec![Time, Flux, FluxErr],
            _ => {
                return Err(ParseError::ColumnCount { file: file.to_string(), line: i as u64 + 1, expected: 8, found: n })
            }
        };
        return Ok(Layout::whitespace(cols));
    }
    // Header only or empty: any layout works, nothing will be parsed.
    Ok(Layout::whitespace(vec![Time, Flux, FluxErr, Mag, MagErr, Fwhm, Sky, Airmass]))
}

/// The file name without folders and without `.gz` and the format extension.
pub fn stem(path: &str) -> &str {
    let name = path.rsplit('/').next().unwrap_or(path);
    let name = name.strip_suffix(".gz").unwrap_or(name);
    match name.rfind('.') {
        Some(i) if i > 0 => &name[..i],
        _ => name,
    }
}

/// The folder holding the file (`KB180003/KMTC14_I.pysis` -> `KB180003`).
pub fn parent_folder(path: &str) -> Option<&str> {
    let mut parts = path.rsplit('/');
    parts.next()?;
    parts.next().filter(|p| !p.is_empty() && *p != "." && *p != "..")
}

/// Site, field and band from a KMTNet name such as `KMTC14_I` (also `KMTC_BLG14_I`, `KMTC14-I`).
pub fn kmtnet_name(stem: &str) -> Option<(Site, Field, Band)> {
    let s = stem.to_ascii_uppercase();
    let rest = s.strip_prefix("KMT")?;
    let site: Site = rest.get(..1)?.parse().ok()?;
    let rest = rest[1..].trim_start_matches(['_', '-']);
    let rest = rest.strip_prefix("BLG").unwrap_or(rest);
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let field: Field = digits.parse().ok()?;
    let rest = rest[digits.len()..].trim_start_matches(['_', '-', '.']);
    let band: Band = rest.get(..1)?.parse().ok()?;
    rest.get(1..).filter(|r| r.is_empty())?;
    Some((site, field, band))
}

/// Which part of a KMTNet-like name (`KMTC14_I`) cannot be read, and why.
fn name_problem(stem: &str) -> (Option<&'static str>, String) {
    let s = stem.to_ascii_uppercase();
    let Some(rest) = s.strip_prefix("KMT") else {
        return (None, String::new());
    };
    let Some(site) = rest.get(..1) else { return (Some("site"), format!("`{stem}` has no site letter after KMT")) };
    if site.parse::<Site>().is_err() {
        return (Some("site"), format!("`{site}` in `{stem}` is not a KMTNet site (A, C or S)"));
    }
    let rest = rest[1..].trim_start_matches(['_', '-']);
    let rest = rest.strip_prefix("BLG").unwrap_or(rest);
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    if digits.parse::<Field>().is_err() {
        return (Some("field"), format!("`{digits}` in `{stem}` is not a KMTNet field (BLG01 .. BLG43)"));
    }
    let rest = rest[digits.len()..].trim_start_matches(['_', '-', '.']);
    match rest.get(..1).map(|b| b.parse::<Band>()) {
        Some(Ok(_)) if rest.len() == 1 => (None, String::new()),
        _ => (Some("band"), format!("`{rest}` in `{stem}` is not a band (I or V)")),
    }
}

/// Star, field, site and band of a KMTNet file (pySIS or DIAPL), overrides first.
pub fn kmtnet_meta(path: &str, o: &SourceOverrides) -> Result<SourceMeta, ParseError> {
    let file = path.rsplit('/').next().unwrap_or(path);
    let parsed = kmtnet_name(stem(path));
    let (bad_part, why) = name_problem(stem(path));
    let meta_err = |what: &'static str| {
        // Name the part of the name that is wrong when it is not the one asked for first.
        let (what, reason) = match bad_part {
            Some(part) => (part, format!("{why}, and no override was given")),
            None => (what, "the file name is not like KMTC14_I.pysis and no override was given".to_string()),
        };
        ParseError::Metadata { file: file.to_string(), what, reason }
    };
    let site = match (&o.site, parsed) {
        (Some(s), _) => s.clone(),
        (None, Some((s, _, _))) => s.code().to_string(),
        (None, None) => return Err(meta_err("site")),
    };
    let field = o.field.or(parsed.map(|p| p.1)).ok_or_else(|| meta_err("field"))?;
    let band = o.band.or(parsed.map(|p| p.2)).ok_or_else(|| meta_err("band"))?;
    let star = match (&o.star, parent_folder(path)) {
        (Some(s), _) => s.clone(),
        (None, Some(folder)) => StarId(folder.to_string()),
        (None, None) => {
            return Err(ParseError::Metadata {
                file: file.to_string(),
                what: "star",
                reason: "the file is not in a per-star folder and no star was given".into(),
            })
        }
    };
    Ok(SourceMeta { star, field, site, band })
}

/// Parses a pySIS text from byte `start` (line `first_line`), see [`crate::ingest::text::scan`]
/// for the line policy, and normalizes it.
pub fn parse(
    text: &[u8],
    start: usize,
    first_line: u64,
    path: &str,
    overrides: &SourceOverrides,
    prior: Option<&LedgerEntry>,
    accept_tail: bool,
) -> Result<(Scan, Observations), ParseError> {
    let file = path.rsplit('/').next().unwrap_or(path);
    let meta = kmtnet_meta(path, overrides)?;
    let layout = layout(text, file)?;
    let s = scan(text, start, first_line, &layout, file, accept_tail)?;
    let obs = normalize(
        &s,
        ValueKind::DeltaFlux { default_sign: PYSIS_DEFAULT_SIGN },
        meta,
        prior,
        crate::ingest::time::declared_time_system(text),
        overrides.flux_sign,
        file,
    )?;
    Ok((s, obs))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ingest::normalize::SignSource;

    #[test]
    fn a_bad_file_name_names_the_part_that_is_wrong() {
        let o = SourceOverrides::default();
        for (name, what, needle) in [
            ("S/KMTC99_I.pysis", "field", "`99` in `KMTC99_I` is not a KMTNet field"),
            ("S/KMTX14_I.pysis", "site", "`X` in `KMTX14_I` is not a KMTNet site"),
            ("S/KMTC14_R.pysis", "band", "`R` in `KMTC14_R` is not a band"),
        ] {
            let e = kmtnet_meta(name, &o).unwrap_err();
            let ParseError::Metadata { what: w, reason, .. } = &e else { panic!("{e}") };
            assert_eq!(*w, what, "{e}");
            assert!(reason.contains(needle), "{e}");
        }
    }

    #[test]
    fn an_mjd_header_is_respected() {
        let text = b"# MJD dflux err mag merr fwhm sky secz\n58300.25 -10 5 19 0.1 4 1000 1.2\n58301.25 -12 5 19 0.1 4 1000 1.2\n";
        let (_, obs) = parse(text, 0, 1, "S/KMTC14_I.pysis", &SourceOverrides::default(), None, true).unwrap();
        assert_eq!(obs.time_system, crate::ingest::time::TimeSystem::Mjd);
        assert!((obs.hjd[0] - (58300.25 - 49_999.5)).abs() < 1e-9, "{}", obs.hjd[0]);
    }

    pub(crate) const DATA: &str = "/work/shared/data/kmtnet";

    pub(crate) fn real_files() -> Vec<String> {
        let mut v = Vec::new();
        for dir in ["KB180003", "BLG14-2018-season"] {
            let Ok(rd) = std::fs::read_dir(format!("{DATA}/{dir}")) else { continue };
            for e in rd.flatten() {
                let p = e.path().to_string_lossy().into_owned();
                if p.ends_with(".pysis") {
                    v.push(p);
                }
            }
        }
        v.sort();
        v
    }

    fn data_lines(text: &str) -> usize {
        text.lines().filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#')).count()
    }

    #[test]
    fn names_give_site_field_band() {
        assert_eq!(kmtnet_name("KMTC14_I"), Some((Site::Kmtc, Field(14), Band::I)));
        assert_eq!(kmtnet_name("KMTS_BLG03_V"), Some((Site::Kmts, Field(3), Band::V)));
        assert_eq!(kmtnet_name("KMTX14_I"), None);
        assert_eq!(kmtnet_name("KMTC14_IX"), None);
        assert_eq!(stem("a/KB180003/KMTC14_I.pysis.gz"), "KMTC14_I");
        assert_eq!(parent_folder("a/KB180003/KMTC14_I.pysis"), Some("KB180003"));
        assert_eq!(parent_folder("KMTC14_I.pysis"), None);
        let m = kmtnet_meta("x/KB180003/KMTA12_I.pysis", &SourceOverrides::default()).unwrap();
        assert_eq!((m.star.0.as_str(), m.field, m.site.as_str(), m.band), ("KB180003", Field(12), "KMTA", Band::I));
        let e = kmtnet_meta("lc.pysis", &SourceOverrides::default()).unwrap_err();
        assert!(e.to_string().starts_with("cannot tell the site of lc.pysis"), "{e}");
    }

    #[test]
    fn real_files_parse_with_every_data_line() {
        let files = real_files();
        assert_eq!(files.len(), 11, "the shared KMTNet files are missing: {files:?}");
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            let (s, obs) = parse(text.as_bytes(), 0, 1, &f, &SourceOverrides::default(), None, false).unwrap();
            assert_eq!(obs.len(), data_lines(&text), "{f}");
            assert_eq!(s.lines as usize, text.lines().count(), "{f}");
            assert_eq!(s.end, text.len());
            assert_eq!(s.deferred_line, None);
            assert_eq!(obs.time_system.name(), "hjd-2450000");
            assert!(obs.hjd.iter().all(|t| (8100.0..8500.0).contains(t)), "{f}");
            assert_eq!(obs.flux_sign, -1, "{f}: pySIS is brightening-negative");
            if f.contains("_V") {
                // No mag column: the documented convention is used.
                assert_eq!(obs.sign_source, SignSource::FormatDefault, "{f}");
                assert!(obs.mag.iter().all(|m| m.is_nan()));
            } else {
                assert!(matches!(obs.sign_source, SignSource::MagCorrelation { r } if r > 0.5), "{f}");
                assert!((obs.mag_zp - 28.0).abs() < 0.05, "{f}: zp {}", obs.mag_zp);
                assert!((500.0..5000.0).contains(&obs.baseline_flux), "{f}: {}", obs.baseline_flux);
            }
        }
    }

    #[test]
    fn brightest_epoch_is_positive_after_ingest() {
        let f = format!("{DATA}/BLG14-2018-season/KMTC14_I.pysis");
        let text = std::fs::read(&f).unwrap();
        let (_, obs) = parse(&text, 0, 1, &f, &SourceOverrides::default(), None, false).unwrap();
        let (i, max) = obs.flux.iter().enumerate().fold((0, f64::MIN), |a, (i, &v)| if v > a.1 { (i, v) } else { a });
        assert!((max - 189_538.0).abs() < 1.0, "brightest Δflux {max}");
        assert!((obs.mag[i] - 14.80).abs() < 0.01, "mag at peak {}", obs.mag[i]);
        assert_eq!(obs.meta.star.0, "BLG14-2018-season");
    }

    #[test]
    fn placeholders_in_real_file_are_nan() {
        let f = format!("{DATA}/BLG14-2018-season/KMTA14_I.pysis");
        let text = std::fs::read(&f).unwrap();
        let (_, obs) = parse(&text, 0, 1, &f, &SourceOverrides::default(), None, false).unwrap();
        // Line 66: mag and mag_err are `nan`; line 67: fwhm -1.00.
        let i66 = obs.line.iter().position(|&l| l == 66).unwrap();
        assert!(obs.mag[i66].is_nan() && obs.mag_err[i66].is_nan());
        assert!((obs.fwhm[i66] - 10.58).abs() < 1e-9);
        let i67 = obs.line.iter().position(|&l| l == 67).unwrap();
        assert!(obs.fwhm[i67].is_nan());
        assert!((obs.mag[i67] - 19.0302).abs() < 1e-9);
        assert!(obs.fwhm.iter().all(|v| v.is_nan() || *v > 0.0));
    }

    #[test]
    fn crlf_and_headerless_copies_parse_the_same() {
        let f = format!("{DATA}/KB180003/KMTC14_I.pysis");
        let text = std::fs::read_to_string(&f).unwrap();
        let (_, a) = parse(text.as_bytes(), 0, 1, &f, &SourceOverrides::default(), None, false).unwrap();
        let crlf = text.replace('\n', "\r\n");
        let (_, b) = parse(crlf.as_bytes(), 0, 1, &f, &SourceOverrides::default(), None, false).unwrap();
        // NaN != NaN, so compare the fully finite columns and the row identity.
        assert_eq!((&a.hjd, &a.flux, &a.mag, &a.line), (&b.hjd, &b.flux, &b.mag, &b.line));
        let headerless: String = text.lines().skip(1).map(|l| format!("{l}\n")).collect();
        let (_, c) = parse(headerless.as_bytes(), 0, 1, &f, &SourceOverrides::default(), None, false).unwrap();
        assert_eq!(a.flux, c.flux);
    }

    #[test]
    fn malformed_line_reports_exact_message() {
        let f = format!("{DATA}/BLG14-2018-season/KMTC14_I.pysis");
        let text = std::fs::read_to_string(&f).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        lines[16] = "8171.2 1 2 3 4";
        let bad = lines.join("\n") + "\n";
        let e = parse(bad.as_bytes(), 0, 1, &f, &SourceOverrides::default(), None, false).unwrap_err();
        assert_eq!(e.to_string(), "cannot parse line 17 of KMTC14_I.pysis: expected 8 columns, found 5");
    }
}
