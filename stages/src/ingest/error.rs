//! Errors of the ingest stage: one enum for parsing (with file and line), one for the stage as a
//! whole (a variant per foreign error), each telling whether a retry can help.

use crate::ingest::ledger::LedgerError;

/// Why one line of a text photometry file could not be read. The `Display` form is the message
/// recorded in the ledger and in the quarantine note, e.g.
/// `cannot parse line 17 of KMTC14_I.pysis: expected 8 columns, found 5`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParseError {
    /// A data line whose column count differs from the header's.
    #[error("cannot parse line {line} of {file}: expected {expected} columns, found {found}")]
    ColumnCount { file: String, line: u64, expected: usize, found: usize },
    /// A token that is neither a number nor a known placeholder.
    #[error("cannot parse line {line} of {file}: column {column} ({name}) is not a number: `{token}`")]
    NotANumber { file: String, line: u64, column: usize, name: &'static str, token: String },
    /// The time column is missing on a data line: the epoch cannot be placed, so the file is
    /// quarantined rather than the row dropped.
    #[error("cannot parse line {line} of {file}: time is missing")]
    MissingTime { file: String, line: u64 },
    /// A line that is not valid text (binary garbage, a truncated gzip member).
    #[error("cannot parse line {line} of {file}: {reason}")]
    Invalid { file: String, line: u64, reason: String },
    /// A value no photometry can hold (an infinite or absurd flux, a negative error).
    #[error("cannot parse line {line} of {file}: implausible {quantity} {value} ({why})")]
    Implausible { file: String, line: u64, quantity: &'static str, value: String, why: String },
    /// An input too large to take whole (a decompression bomb, a runaway file).
    #[error("{file} is too large: {reason}")]
    TooLarge { file: String, reason: String },
    /// Times whose range matches none of the known systems.
    #[error("cannot detect the time system of {file}: {reason}")]
    TimeSystem { file: String, reason: String },
    /// Site, field, band or star could not be derived from the name and were not given.
    #[error("cannot tell the {what} of {file}: {reason}")]
    Metadata { file: String, what: &'static str, reason: String },
    /// A generic-column mapping (flags or `NAME.columns.toml`) that cannot work.
    #[error("bad column mapping for {file}: {reason}")]
    Mapping { file: String, reason: String },
}

impl ParseError {
    /// A parse error is a property of the bytes: retrying the same bytes cannot help.
    pub fn is_retryable(&self) -> bool {
        false
    }

    /// The 1-based line number the error points at, if it points at one.
    pub fn line(&self) -> Option<u64> {
        match self {
            ParseError::ColumnCount { line, .. }
            | ParseError::NotANumber { line, .. }
            | ParseError::MissingTime { line, .. }
            | ParseError::Invalid { line, .. }
            | ParseError::Implausible { line, .. } => Some(*line),
            _ => None,
        }
    }
}

/// Failures of the ingest stage's I/O shell.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error("object store: {0}")]
    ObjectStore(#[from] object_store::Error),
    #[error("object store path: {0}")]
    Path(#[from] object_store::path::Error),
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("manifest json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("column mapping toml: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("ledger: {0}")]
    Ledger(#[from] LedgerError),
    #[error("cannot open store `{location}`: {reason}")]
    StoreUrl { location: String, reason: String },
    /// A manifest or part file that does not say what the reader expects.
    #[error("corrupt photometry object {path}: {reason}")]
    Corrupt { path: String, reason: String },
}

impl IngestError {
    /// Whether running the same step again may succeed (network, store or database hiccups).
    pub fn is_retryable(&self) -> bool {
        match self {
            IngestError::ObjectStore(e) => !matches!(
                e,
                object_store::Error::NotFound { .. }
                    | object_store::Error::InvalidPath { .. }
                    | object_store::Error::NotSupported { .. }
                    | object_store::Error::NotImplemented { .. }
                    | object_store::Error::UnknownConfigurationKey { .. }
            ),
            IngestError::Io(_) => true,
            IngestError::Ledger(e) => e.is_retryable(),
            IngestError::Parse(_)
            | IngestError::Path(_)
            | IngestError::Parquet(_)
            | IngestError::Arrow(_)
            | IngestError::Json(_)
            | IngestError::Toml(_)
            | IngestError::StoreUrl { .. }
            | IngestError::Corrupt { .. } => false,
        }
    }
}
