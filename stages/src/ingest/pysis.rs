//! KMTNet pySIS light curves (`KMTC14_I.pysis`, `KB210006_KMTA01_I.pysis`, `.pysis5`,
//! `.pysis.dat`): the layout detected from the content (a header, the column count, commas, an
//! image name first), site/field/band from the file name, star from the folder. Δflux is brightening-NEGATIVE in these files; the sign is derived
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

/// The layout of a pySIS text, detected from its content (the file is named when it cannot be):
/// - a header line (`#` or not) that names a time and a flux column gives the columns, with
///   commas or blanks between them;
/// - `.pysis5` (pySIS 5): the image name first, then HJD, Δflux, error, eight more columns, the
///   magnitude in column 12 and its error in 13 (recognised by a first token that is not a
///   number);
/// - otherwise the column count of the first data line: 8 full (HJD, Δflux, flux_err, mag,
///   mag_err, fwhm, sky, secz); 7 the `.pysis.dat` order (HJD, mag, mag_err, Δflux, flux_err,
///   fwhm, sky); 6 without mag/mag_err, as in the V-band files; 5 without fwhm/sky/secz; 3 time,
///   Δflux, error. Commas instead of blanks are recognised too.
pub fn layout(text: &[u8], file: &str) -> Result<Layout, ParseError> {
    Ok(layout_and_header(text, file)?.0)
}

/// [`layout`], and the 0-based index of a header line without `#` (the scan skips it).
fn layout_and_header(text: &[u8], file: &str) -> Result<(Layout, Option<usize>), ParseError> {
    use Quantity::*;
    let with = |columns: Vec<Quantity>, comma: bool| Layout { columns, delimiter: comma.then_some(b','), allow_extra: false };
    for (i, raw) in text.split(|&b| b == b'\n').enumerate().take(200) {
        let line = raw.trim_ascii();
        if line.is_empty() {
            continue;
        }
        let comma = line.contains(&b',');
        let split = |l: &[u8]| -> Vec<String> {
            let t = String::from_utf8_lossy(l).to_string();
            if comma { t.split(',').map(|x| x.trim().to_string()).collect() } else { t.split_whitespace().map(str::to_string).collect() }
        };
        let (is_comment, body) = match line.strip_prefix(b"#") {
            Some(h) => (true, h.trim_ascii()),
            None => (false, line),
        };
        let tokens = split(body);
        let numeric = |t: &str| crate::ingest::text::parse_number(t.as_bytes()).is_some();
        // A header: names a time column and a flux column.
        let names: Vec<Quantity> = tokens.iter().map(|t| quantity_of(t)).collect();
        if names.first() == Some(&Time) && names.contains(&Flux) && !tokens.iter().any(|t| numeric(t)) {
            return Ok((with(names, comma), (!is_comment).then_some(i)));
        }
        if is_comment || tokens.is_empty() {
            // A comment, or a commented-out epoch (`#subkmtc...fits 10346.88 ...`): look on.
            if is_comment && tokens.first().is_some_and(|t| is_image_name(t)) && tokens.len() >= 13 {
                return Ok((pysis5_layout(tokens.len()), None));
            }
            continue;
        }
        if is_image_name(&tokens[0]) && tokens.len() >= 13 {
            return Ok((pysis5_layout(tokens.len()), None));
        }
        if !numeric(&tokens[0]) {
            // A header that names no time and flux column, or text where data should be.
            return Err(ParseError::Invalid {
                file: file.to_string(),
                line: i as u64 + 1,
                reason: format!(
                    "cannot tell the layout: `{}` is neither a header naming HJD and Δflux nor a number",
                    String::from_utf8_lossy(&line[..line.len().min(60)])
                ),
            });
        }
        let cols = match tokens.len() {
            8 => vec![Time, Flux, FluxErr, Mag, MagErr, Fwhm, Sky, Airmass],
            7 => vec![Time, Mag, MagErr, Flux, FluxErr, Fwhm, Sky],
            6 => vec![Time, Flux, FluxErr, Fwhm, Sky, Airmass],
            5 => vec![Time, Flux, FluxErr, Mag, MagErr],
            3 => vec![Time, Flux, FluxErr],
            n => return Err(ParseError::ColumnCount { file: file.to_string(), line: i as u64 + 1, expected: 8, found: n }),
        };
        return Ok((with(cols, comma), None));
    }
    // Header only or empty: any layout works, nothing will be parsed.
    Ok((Layout::whitespace(vec![Time, Flux, FluxErr, Mag, MagErr, Fwhm, Sky, Airmass]), None))
}

/// An image file name as pySIS 5 writes it first on each line (`subkmtcBLG19I2024..._T.fits`).
fn is_image_name(t: &str) -> bool {
    let t = t.to_ascii_lowercase();
    t.ends_with(".fits") || t.ends_with(".fit") || t.ends_with(".fits.fz")
}

/// pySIS 5: image, HJD, Δflux, error, columns 5-11 (not used), mag (12), mag_err (13), and any
/// later columns ignored.
fn pysis5_layout(n: usize) -> Layout {
    use Quantity::*;
    let mut columns = vec![Ignore, Time, Flux, FluxErr];
    columns.extend(std::iter::repeat_n(Ignore, 7));
    columns.extend([Mag, MagErr]);
    columns.extend(std::iter::repeat_n(Ignore, n.saturating_sub(13)));
    Layout { columns, delimiter: None, allow_extra: true }
}

/// The file name without folders and without `.gz` and the format extension.
pub fn stem(path: &str) -> &str {
    let name = path.rsplit('/').next().unwrap_or(path);
    let name = name.strip_suffix(".gz").unwrap_or(name);
    let name = name.strip_suffix(".pysis.dat").unwrap_or(name);
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
    let s = kmt_part(stem);
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

/// The name from its `KMT` on, upper case: files in the wild carry the event's name first
/// (`KB210006_KMTA01_I`, `KB240697-KMTC19_I`).
fn kmt_part(stem: &str) -> String {
    let s = stem.to_ascii_uppercase();
    match s.find("KMT") {
        Some(i) if i == 0 || !s.as_bytes()[i - 1].is_ascii_alphanumeric() => s[i..].to_string(),
        _ => s,
    }
}

/// Which part of a KMTNet-like name (`KMTC14_I`) cannot be read, and why.
fn name_problem(stem: &str) -> (Option<&'static str>, String) {
    let s = kmt_part(stem);
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
    let (layout, bare_header) = layout_and_header(text, file)?;
    // A header line without `#` (a comma-separated export's): skipped on the first read like a
    // comment, and counted, so that a grown file's line numbers stay right.
    let (mut start, mut first_line, mut header_lines) = (start, first_line, 0u64);
    if let (0, Some(h)) = (start, bare_header) {
        for _ in 0..=h {
            match memchr::memchr(b'\n', &text[start..]) {
                Some(i) => {
                    start += i + 1;
                    first_line += 1;
                    header_lines += 1;
                }
                None => break,
            }
        }
    }
    let mut s = scan(text, start, first_line, &layout, file, accept_tail)?;
    s.lines += header_lines;
    s.skipped += header_lines;
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

    const REAL_DEV: &str = "/work/shared/data/real-dev/inbox";

    /// The (hjd, flux) of a parse, for comparing layouts of the same photometry.
    fn epochs(text: &[u8], path: &str) -> Vec<(f64, f64, f64)> {
        let (_, obs) = parse(text, 0, 1, path, &SourceOverrides::default(), None, true).unwrap_or_else(|e| panic!("{path}: {e}"));
        obs.hjd.iter().zip(&obs.flux).zip(&obs.mag).map(|((t, f), m)| (*t, *f, *m)).collect()
    }

    #[test]
    fn the_kmtnet_layouts_found_in_the_wild_read_without_a_sidecar() {
        let text = std::fs::read_to_string(format!("{REAL_DEV}/KB210006_BLG01/KB210006_KMTC01_I.pysis")).unwrap();
        let reference = epochs(text.as_bytes(), "KB210006_BLG01/KB210006_KMTC01_I.pysis");
        assert!(reference.len() > 2000);
        // The event's name before KMT in the file name; the field from it.
        let meta = kmtnet_meta("KB210006_BLG01/KB210006_KMTC01_I.pysis", &SourceOverrides::default()).unwrap();
        assert_eq!((meta.site.as_str(), meta.field, meta.star.0.as_str()), ("KMTC", Field(1), "KB210006_BLG01"));
        let rows: Vec<Vec<&str>> = text.lines().filter(|l| !l.starts_with('#')).map(|l| l.split_whitespace().collect()).collect();
        // Comma-separated, with a header without `#`.
        let csv = "HJD,Delta_flux,flux_err,mag,mag_err,fwhm,sky,secz\n".to_string() + &rows.iter().map(|r| r.join(",")).collect::<Vec<_>>().join("\n") + "\n";
        assert_eq!(epochs(csv.as_bytes(), "KB210006_BLG01/KB210006_KMTC01_I.pysis"), reference, "comma-separated");
        // Comma-separated without a header.
        let bare = rows.iter().map(|r| r.join(", ")).collect::<Vec<_>>().join("\n") + "\n";
        assert_eq!(epochs(bare.as_bytes(), "KB210006_BLG01/KB210006_KMTC01_I.pysis"), reference, "comma-separated, no header");
        // Seven columns: HJD mag mag_err Δflux flux_err fwhm sky (`.pysis.dat`).
        let dat = rows.iter().map(|r| [r[0], r[3], r[4], r[1], r[2], r[5], r[6]].join(" ")).collect::<Vec<_>>().join("\n") + "\n";
        assert_eq!(epochs(dat.as_bytes(), "KB210006_BLG01/KB210006_KMTC01_I.pysis.dat"), reference, "seven columns");
        assert_eq!(crate::ingest::Format::Auto.resolve("x/KMTC01_I.pysis.dat", false), crate::ingest::Format::Pysis);
        // pySIS 5: image name first, magnitude in column 12; a commented-out first epoch.
        let p5 = std::fs::read(format!("{REAL_DEV}/KB240697_BLG19/KB240697-KMTC19_I.pysis5")).unwrap();
        let e5 = epochs(&p5, "KB240697_BLG19/KB240697-KMTC19_I.pysis5");
        let data: Vec<&str> = std::str::from_utf8(&p5).unwrap().lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).collect();
        assert_eq!(e5.len(), data.len());
        let f: Vec<&str> = data[0].split_whitespace().collect();
        assert_eq!(e5[0].0, f[1].parse::<f64>().unwrap());
        assert_eq!(e5[0].2, f[11].parse::<f64>().unwrap(), "the magnitude is column 12");
        // Brightening is positive once stored: the brightest magnitude has the largest flux.
        let brightest = e5.iter().filter(|e| e.2.is_finite()).min_by(|a, b| a.2.total_cmp(&b.2)).unwrap();
        let top = e5.iter().map(|e| e.1).fold(f64::MIN, f64::max);
        assert!(brightest.1 > 0.5 * top, "{brightest:?} vs {top}");
        // Text where the data should be names the file and line.
        let e = layout(b"hello world\n1 2 3\n", "KMTC01_I.pysis").unwrap_err();
        assert!(e.to_string().contains("line 1 of KMTC01_I.pysis") && e.to_string().contains("cannot tell the layout"), "{e}");
    }

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
