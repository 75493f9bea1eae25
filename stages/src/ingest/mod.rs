//! Ingest stage: survey photometry files into partitioned Parquet on an object store (issue 4).
//!
//! Readers: [`pysis`] (KMTNet pySIS), [`diapl`] (KMTNet DIAPL), [`ogle`] (OGLE EWS `phot.dat`),
//! [`columns`] (any column file with a mapping), all over one byte scanner ([`text`]) and one
//! normalization ([`normalize`]: time system, brightening-positive flux, baseline). Storage and
//! reading: [`store`] (schema, layout, manifests, compaction). Driver: [`run`]. Bookkeeping:
//! [`ledger`]. Throughput: [`bench`].

pub mod bench;
pub mod columns;
pub mod diapl;
pub mod error;
pub mod ledger;
pub mod normalize;
pub mod ogle;
pub mod pysis;
pub mod run;
pub mod stage;
pub mod store;
pub mod text;
pub mod time;

use std::fmt;
use std::str::FromStr;

pub use columns::ColumnsSpec;
pub use error::{IngestError, ParseError};
pub use ledger::{FileLedger, FileStatus, LedgerEntry, LedgerError, MemoryLedger};
pub use normalize::{Observations, SourceOverrides, MAG_ZP};
pub use run::{compact_field, compact_locked, ingest_bytes, ingest_location, ingest_location_locked, FileOutcome, FileReport, IngestOptions, IngestReport};
pub use store::{bucket_of, buckets_for, part_name, photometry_schema, read_photometry, read_star, read_stars, CompactionPolicy, Layout, NewRowCounts, NewRows, PartCodec, PartInfo, PartitionKey, PhotometryStore};
pub use time::{season_of, TimeSystem};

/// Input format (`--format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// From the file name: `.pysis`, `.diapl`, `phot.dat`/`.dat` (OGLE), else columns when a
    /// mapping exists.
    #[default]
    Auto,
    Pysis,
    Diapl,
    Ogle,
    Columns,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Auto => "auto",
            Format::Pysis => "pysis",
            Format::Diapl => "diapl",
            Format::Ogle => "ogle",
            Format::Columns => "columns",
        }
    }

    /// The concrete format of `path`; `Auto` resolves by name, falling back to columns when a
    /// mapping is available and to pySIS otherwise.
    pub fn resolve(self, path: &str, has_mapping: bool) -> Format {
        if self != Format::Auto {
            return self;
        }
        let n = path.strip_suffix(".gz").unwrap_or(path);
        if has_mapping && !n.ends_with(".pysis") && !n.ends_with(".diapl") {
            Format::Columns
        } else if n.ends_with(".diapl") {
            Format::Diapl
        } else if n.ends_with(".dat") && !n.ends_with(".pysis.dat") {
            Format::Ogle
        } else {
            Format::Pysis
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Format::Auto),
            "pysis" => Ok(Format::Pysis),
            "diapl" => Ok(Format::Diapl),
            "ogle" => Ok(Format::Ogle),
            "columns" => Ok(Format::Columns),
            other => Err(format!("unknown format `{other}` (expected auto, pysis, diapl, ogle or columns)")),
        }
    }
}

/// Parses `text[start..]` in `format` (already resolved) and normalizes it.
#[allow(clippy::too_many_arguments)]
pub fn parse_any(
    format: Format,
    text: &[u8],
    start: usize,
    first_line: u64,
    path: &str,
    overrides: &SourceOverrides,
    mapping: Option<&ColumnsSpec>,
    prior: Option<&LedgerEntry>,
    accept_tail: bool,
) -> Result<(text::Scan, Observations), ParseError> {
    match format.resolve(path, mapping.is_some()) {
        Format::Auto | Format::Pysis => pysis::parse(text, start, first_line, path, overrides, prior, accept_tail),
        Format::Diapl => diapl::parse(text, start, first_line, path, overrides, prior, accept_tail),
        Format::Ogle => ogle::parse(text, start, first_line, path, overrides, prior, accept_tail),
        Format::Columns => match mapping {
            Some(m) => columns::parse(text, start, first_line, path, overrides, m, prior, accept_tail),
            None => Err(ParseError::Mapping {
                file: path.rsplit('/').next().unwrap_or(path).to_string(),
                reason: "format columns needs a mapping (flags or NAME.columns.toml)".into(),
            }),
        },
    }
}
