//! Ingest stage: survey photometry files into partitioned Parquet on an object store (issue 4).

pub mod error;
pub mod ledger;
pub mod normalize;
pub mod pysis;
pub mod text;
pub mod time;

pub use error::{IngestError, ParseError};
pub use ledger::{FileLedger, FileStatus, LedgerEntry, LedgerError, MemoryLedger};
