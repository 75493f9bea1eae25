//! The one fast scanner behind every text reader (pySIS, DIAPL, OGLE, generic columns): bytes in,
//! columns of f64 out, no per-field allocation. Format modules only decide the column layout.

use crate::ingest::error::ParseError;

/// What an input column holds. The discriminant indexes [`Table::cols`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Quantity {
    Time = 0,
    /// Difference flux in the file's own sign convention.
    Flux = 1,
    FluxErr = 2,
    Mag = 3,
    MagErr = 4,
    Fwhm = 5,
    Sky = 6,
    Airmass = 7,
    /// A per-epoch quality flag (DIAPL); kept only to filter on, never stored.
    Quality = 8,
    /// A column the layout skips.
    Ignore = 9,
}

/// Number of stored quantities (all but `Ignore`).
pub const N_QUANTITIES: usize = 9;

impl Quantity {
    pub fn name(self) -> &'static str {
        match self {
            Quantity::Time => "time",
            Quantity::Flux => "flux",
            Quantity::FluxErr => "flux_err",
            Quantity::Mag => "mag",
            Quantity::MagErr => "mag_err",
            Quantity::Fwhm => "fwhm",
            Quantity::Sky => "sky",
            Quantity::Airmass => "airmass",
            Quantity::Quality => "quality",
            Quantity::Ignore => "ignored",
        }
    }

    /// Turns the sentinels of this quantity into NaN. `Time` is handled by the caller because a
    /// missing time is an error, not a missing value.
    #[inline]
    fn clean(self, v: f64) -> f64 {
        let missing = match self {
            Quantity::Time | Quantity::Quality | Quantity::Ignore => false,
            Quantity::Flux => !v.is_finite(),
            // Errors are never negative: -1, -99 and friends mean "unknown".
            Quantity::FluxErr | Quantity::MagErr => !(v.is_finite() && v >= 0.0),
            // pySIS writes `nan`, other pipelines -99, 99 or 99.999 for a failed magnitude.
            Quantity::Mag => !(v.is_finite() && v > -99.0 && v < 99.0),
            // fwhm -1.00 is pySIS's "not measured"; an airmass below 1 cannot happen but 0/-1
            // are the usual placeholders, so only non-positive values are dropped.
            Quantity::Fwhm | Quantity::Airmass => !(v.is_finite() && v > 0.0),
            Quantity::Sky => !(v.is_finite() && v > -99.0),
        };
        if missing {
            f64::NAN
        } else {
            v
        }
    }
}

/// How the columns of a data line map to quantities.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    pub columns: Vec<Quantity>,
    /// `None`: runs of blanks and tabs; `Some(b',')`: CSV-like (blanks around fields trimmed).
    pub delimiter: Option<u8>,
    /// Accept lines with more columns than `columns` (the extras are ignored). Off for the fixed
    /// survey formats, where an extra column means the file is not what we think it is.
    pub allow_extra: bool,
}

impl Layout {
    pub fn whitespace(columns: Vec<Quantity>) -> Layout {
        Layout { columns, delimiter: None, allow_extra: false }
    }

    pub fn has(&self, q: Quantity) -> bool {
        self.columns.contains(&q)
    }
}

/// Parsed columns, one `Vec` per quantity (empty for quantities the layout lacks) and the source
/// line of every row.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Table {
    pub cols: [Vec<f64>; N_QUANTITIES],
    pub present: [bool; N_QUANTITIES],
    pub line: Vec<u32>,
}

impl Table {
    pub fn len(&self) -> usize {
        self.line.len()
    }

    pub fn is_empty(&self) -> bool {
        self.line.is_empty()
    }

    pub fn col(&self, q: Quantity) -> Option<&[f64]> {
        let i = q as usize;
        (i < N_QUANTITIES && self.present[i]).then(|| self.cols[i].as_slice())
    }

    /// The column, or NaN for every row when the layout lacked it.
    pub fn col_or_nan(&self, q: Quantity) -> Vec<f64> {
        match self.col(q) {
            Some(c) => c.to_vec(),
            None => vec![f64::NAN; self.len()],
        }
    }
}

/// The outcome of scanning a byte range of a file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scan {
    pub table: Table,
    /// Absolute offset just past the last consumed line (the next scan starts here).
    pub end: usize,
    /// Lines consumed (data, blank, comment).
    pub lines: u64,
    /// Blank and comment lines among them (they carry no data; counted, not stored).
    pub skipped: u64,
    /// The last consumed line, without its line end.
    pub last_line: Option<String>,
    /// Line number of a final line without a line end that was left for the next run (a file
    /// still being written). `None` when the text ended with a line end or the tail was accepted.
    pub deferred_line: Option<u64>,
}

/// Scans `text[start..]`, whose first line has number `first_line` (1-based), with `layout`.
///
/// Policy ("nothing lost"):
/// - blank lines and lines starting with `#` (after leading blanks) are skipped and counted;
/// - a final line without a line end is deferred (not consumed, reported in `deferred_line`) so
///   that a file caught while being appended to is re-read complete next time; with
///   `accept_tail` it is parsed like any other line (for files known to be complete);
/// - any other line that does not parse fails the whole scan with its line number: the caller
///   quarantines the file rather than guessing which rows are right.
pub fn scan(
    text: &[u8],
    start: usize,
    first_line: u64,
    layout: &Layout,
    file: &str,
    accept_tail: bool,
) -> Result<Scan, ParseError> {
    let ncols = layout.columns.len();
    let mut out = Scan { end: start.min(text.len()), ..Default::default() };
    for q in &layout.columns {
        if *q != Quantity::Ignore {
            out.table.present[*q as usize] = true;
        }
    }
    // Rough row estimate (pySIS lines are ~70 bytes) saves reallocations on big files.
    let estimate = text.len().saturating_sub(start) / 64;
    for i in 0..N_QUANTITIES {
        if out.table.present[i] {
            out.table.cols[i].reserve(estimate);
        }
    }
    out.table.line.reserve(estimate);

    let mut pos = out.end;
    let mut line_no = first_line;
    let mut last: Option<(usize, usize)> = None;
    while pos < text.len() {
        let rest = &text[pos..];
        let (line_end, next, terminated) = match memchr::memchr(b'\n', rest) {
            Some(i) => (pos + i, pos + i + 1, true),
            None => (text.len(), text.len(), false),
        };
        let mut line = &text[pos..line_end];
        if let [head @ .., b'\r'] = line {
            line = head;
        }
        if !terminated && !accept_tail {
            out.deferred_line = Some(line_no);
            break;
        }
        let trimmed = line.trim_ascii();
        if trimmed.is_empty() || trimmed[0] == b'#' {
            out.skipped += 1;
        } else {
            let mut vals = [f64::NAN; N_QUANTITIES];
            let mut found = 0usize;
            let mut bad: Option<(usize, &[u8])> = None;
            for tok in Tokens::new(trimmed, layout.delimiter) {
                if found < ncols {
                    let q = layout.columns[found];
                    if q != Quantity::Ignore {
                        match parse_number(tok) {
                            Some(v) => vals[q as usize] = q.clean(v),
                            None => {
                                if bad.is_none() {
                                    bad = Some((found, tok));
                                }
                            }
                        }
                    }
                }
                found += 1;
            }
            if found != ncols && !(layout.allow_extra && found > ncols) {
                return Err(ParseError::ColumnCount {
                    file: file.to_string(),
                    line: line_no,
                    expected: ncols,
                    found,
                });
            }
            if let Some((col, tok)) = bad {
                return Err(ParseError::NotANumber {
                    file: file.to_string(),
                    line: line_no,
                    column: col + 1,
                    name: layout.columns[col].name(),
                    token: String::from_utf8_lossy(&tok[..tok.len().min(40)]).into_owned(),
                });
            }
            if !vals[Quantity::Time as usize].is_finite() {
                return Err(ParseError::MissingTime { file: file.to_string(), line: line_no });
            }
            for (i, v) in vals.iter().enumerate() {
                if out.table.present[i] {
                    out.table.cols[i].push(*v);
                }
            }
            out.table.line.push(u32::try_from(line_no).unwrap_or(u32::MAX));
        }
        last = Some((pos, line_end));
        out.lines += 1;
        line_no += 1;
        pos = next;
        out.end = next;
    }
    if let Some((a, b)) = last {
        let mut l = &text[a..b];
        if let [head @ .., b'\r'] = l {
            l = head;
        }
        out.last_line = Some(String::from_utf8_lossy(l).into_owned());
    }
    Ok(out)
}

/// Parses a number or a known placeholder (`nan`, `___`, `NA`, `null`, `--`) as NaN. `None` for
/// anything else.
#[inline]
pub fn parse_number(tok: &[u8]) -> Option<f64> {
    if let Ok(v) = lexical_core::parse::<f64>(tok) {
        return Some(v);
    }
    if tok.iter().all(|&b| b == b'_') || tok.iter().all(|&b| b == b'-') {
        return Some(f64::NAN);
    }
    let t = tok.strip_prefix(b"-").or_else(|| tok.strip_prefix(b"+")).unwrap_or(tok);
    const PLACEHOLDERS: [&[u8]; 6] = [b"nan", b"na", b"n/a", b"null", b"none", b"inf"];
    if PLACEHOLDERS.iter().any(|p| t.eq_ignore_ascii_case(p)) || t.eq_ignore_ascii_case(b"infinity") {
        return Some(f64::NAN);
    }
    None
}

/// Splits a trimmed line into fields without allocating.
struct Tokens<'a> {
    rest: &'a [u8],
    delimiter: Option<u8>,
    done: bool,
}

impl<'a> Tokens<'a> {
    fn new(line: &'a [u8], delimiter: Option<u8>) -> Self {
        Tokens { rest: line, delimiter, done: line.is_empty() }
    }
}

impl<'a> Iterator for Tokens<'a> {
    type Item = &'a [u8];

    #[inline]
    fn next(&mut self) -> Option<&'a [u8]> {
        if self.done {
            return None;
        }
        match self.delimiter {
            None => {
                let s = self.rest;
                let start = s.iter().position(|b| !b.is_ascii_whitespace())?;
                let s = &s[start..];
                let len = s.iter().position(|b| b.is_ascii_whitespace()).unwrap_or(s.len());
                self.rest = &s[len..];
                if self.rest.is_empty() {
                    self.done = true;
                }
                Some(&s[..len])
            }
            Some(d) => {
                let s = self.rest;
                match memchr::memchr(d, s) {
                    Some(i) => {
                        self.rest = &s[i + 1..];
                        Some(s[..i].trim_ascii())
                    }
                    None => {
                        self.done = true;
                        Some(s.trim_ascii())
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pysis8() -> Layout {
        use Quantity::*;
        Layout::whitespace(vec![Time, Flux, FluxErr, Mag, MagErr, Fwhm, Sky, Airmass])
    }

    #[test]
    fn placeholders_become_nan() {
        for t in ["nan", "NaN", "-nan", "___", "_", "NA", "null", "--"] {
            assert!(parse_number(t.as_bytes()).is_some_and(f64::is_nan), "{t}");
        }
        assert_eq!(parse_number(b"-766.0498"), Some(-766.0498));
        assert_eq!(parse_number(b"1e3"), Some(1000.0));
        assert_eq!(parse_number(b"abc"), None);
        assert_eq!(parse_number(b"1.2.3"), None);
    }

    #[test]
    fn sentinels_are_cleaned_per_quantity() {
        let text = b"8209.1 -99 -1 -99 nan -1.00 -99 0\n";
        let s = scan(text, 0, 1, &pysis8(), "x.pysis", false).unwrap();
        let t = &s.table;
        assert_eq!(t.col(Quantity::Flux).unwrap(), &[-99.0]); // a real Δflux can be -99
        for q in [Quantity::FluxErr, Quantity::Mag, Quantity::MagErr, Quantity::Fwhm, Quantity::Sky, Quantity::Airmass] {
            assert!(t.col(q).unwrap()[0].is_nan(), "{}", q.name());
        }
    }

    #[test]
    fn crlf_blank_and_comment_lines() {
        let text = b"# HJD x\r\n\r\n8171.2 1 2 3 4 5 6 7\r\n  # note\r\n8171.3 1 2 3 4 5 6 7\r\n";
        let s = scan(text, 0, 1, &pysis8(), "x.pysis", false).unwrap();
        assert_eq!(s.table.line, vec![3, 5]);
        assert_eq!(s.lines, 5);
        assert_eq!(s.skipped, 3);
        assert_eq!(s.end, text.len());
        assert_eq!(s.last_line.as_deref(), Some("8171.3 1 2 3 4 5 6 7"));
        assert_eq!(s.table.col(Quantity::Airmass).unwrap(), &[7.0, 7.0]);
    }

    #[test]
    fn wrong_column_count_names_file_and_line() {
        let mut text = String::from("# HJD  \\Delta_flux flux_err  mag  mag_err  fwhm  sky  secz\n");
        for _ in 0..15 {
            text.push_str("8171.2 1 2 3 4 5 6 7\n");
        }
        text.push_str("8171.2 1 2 3 4\n");
        let e = scan(text.as_bytes(), 0, 1, &pysis8(), "KMTC14_I.pysis", false).unwrap_err();
        assert_eq!(e.to_string(), "cannot parse line 17 of KMTC14_I.pysis: expected 8 columns, found 5");
        assert_eq!(e.line(), Some(17));
    }

    #[test]
    fn garbage_token_names_the_column() {
        let e = scan(b"8171.2 1 2 x3 4 5 6 7\n", 0, 1, &pysis8(), "a.pysis", false).unwrap_err();
        assert_eq!(e.to_string(), "cannot parse line 1 of a.pysis: column 4 (mag) is not a number: `x3`");
        let e = scan(b"nan 1 2 3 4 5 6 7\n", 0, 1, &pysis8(), "a.pysis", false).unwrap_err();
        assert_eq!(e.to_string(), "cannot parse line 1 of a.pysis: time is missing");
    }

    #[test]
    fn unterminated_tail_is_deferred_unless_accepted() {
        let text = b"8171.2 1 2 3 4 5 6 7\n8171.3 1 2 3";
        let s = scan(text, 0, 1, &pysis8(), "a.pysis", false).unwrap();
        assert_eq!(s.table.len(), 1);
        assert_eq!(s.deferred_line, Some(2));
        assert_eq!(s.end, 21);
        let e = scan(text, 0, 1, &pysis8(), "a.pysis", true).unwrap_err();
        assert_eq!(e.line(), Some(2));
        // Resuming at `end` with the completed line picks it up with the right number.
        let grown = b"8171.2 1 2 3 4 5 6 7\n8171.3 1 2 3 4 5 6 7\n";
        let s2 = scan(grown, s.end, 2, &pysis8(), "a.pysis", false).unwrap();
        assert_eq!(s2.table.line, vec![2]);
    }

    #[test]
    fn comma_delimited_with_extras() {
        use Quantity::*;
        let layout = Layout { columns: vec![Time, Mag, MagErr], delimiter: Some(b','), allow_extra: true };
        let s = scan(b"58000.5, 17.2 ,0.01,extra,stuff\n", 0, 1, &layout, "z.csv", false).unwrap();
        assert_eq!(s.table.col(Mag).unwrap(), &[17.2]);
    }

    proptest! {
        #[test]
        fn never_panics_on_any_line(line in proptest::collection::vec(any::<u8>(), 0..120)) {
            let _ = scan(&line, 0, 1, &pysis8(), "p.pysis", false);
            let _ = scan(&line, 0, 1, &pysis8(), "p.pysis", true);
        }

        #[test]
        fn numeric_lines_round_trip(vals in proptest::collection::vec(-1.0e6f64..1.0e6, 8)) {
            let line: Vec<String> = vals.iter().map(|v| format!("{v}")).collect();
            let text = format!("{}\n", line.join(" "));
            let s = scan(text.as_bytes(), 0, 1, &pysis8(), "p.pysis", false).unwrap();
            prop_assert_eq!(s.table.len(), 1);
            prop_assert_eq!(s.table.col(Quantity::Time).unwrap()[0], vals[0]);
            prop_assert_eq!(s.table.col(Quantity::Flux).unwrap()[0], vals[1]);
        }
    }
}
