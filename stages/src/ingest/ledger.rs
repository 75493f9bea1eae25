//! The file ledger: one row per input file that ingest has looked at, so that a re-ingest adds
//! nothing, a grown file adds only its new lines and a bad file is never silently forgotten.
//! The trait lives here; the PostgreSQL implementation lives in `pipeline/`.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// What happened to a file the last time ingest looked at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileStatus {
    /// Every complete line up to `ingested_bytes` is in the store (visible through the manifests).
    Ingested,
    /// A malformed line: the file was copied to `quarantine/` and nothing new from it was written.
    Quarantined,
    /// The already-ingested prefix changed (the file was rewritten, not appended to): copied to
    /// `quarantine/`, nothing written; an operator decides.
    Conflict,
}

impl FileStatus {
    /// The text stored in the ledger's `status` column.
    pub fn as_str(self) -> &'static str {
        match self {
            FileStatus::Ingested => "ingested",
            FileStatus::Quarantined => "quarantined",
            FileStatus::Conflict => "conflict",
        }
    }

    pub fn parse(s: &str) -> Option<FileStatus> {
        match s {
            "ingested" => Some(FileStatus::Ingested),
            "quarantined" => Some(FileStatus::Quarantined),
            "conflict" => Some(FileStatus::Conflict),
            _ => None,
        }
    }
}

/// One ledger row. Sizes and hashes are over the file's *text* (after gunzip for `.gz`).
///
/// Growth detection: the next run accepts the file as grown when its first `ingested_bytes`
/// bytes still hash to `sha256`; it then parses only the bytes after that offset, numbering
/// lines from `lines + 1`. `seen_sha256` (the hash of all bytes seen last time) makes an
/// unchanged file, including an unchanged quarantined one, a no-op.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// Key: the input's location as given (absolute local path or `s3://…` URL).
    pub path: String,
    /// Length in bytes of the text seen at the last look.
    pub size_bytes: u64,
    /// Hex sha256 of the text's first `ingested_bytes` bytes.
    pub sha256: String,
    /// Hex sha256 of all the text seen at the last look.
    pub seen_sha256: String,
    /// Length of the prefix made of complete lines that is in the store.
    pub ingested_bytes: u64,
    /// Lines (of any kind) inside that prefix.
    pub lines: u64,
    /// Data rows written from this file, over all runs.
    pub rows: u64,
    /// Blank and comment lines inside the prefix (commented-out epochs included): read, counted,
    /// not stored.
    pub skipped_lines: u64,
    /// The last line inside the prefix, for operators comparing a grown file by eye.
    pub last_line: String,
    pub status: FileStatus,
    /// Why the file is quarantined or in conflict, or which line was deferred (`None` if clean).
    pub reason: Option<String>,
    /// Reader that parsed it: `pysis`, `diapl`, `ogle` or `columns`.
    pub format: String,
    pub star: Option<String>,
    /// Field name (`BLG14`).
    pub field: Option<String>,
    /// Site code (`KMTC`, or a survey name for non-KMTNet inputs).
    pub site: Option<String>,
    pub band: Option<String>,
    /// +1 if the file's Δflux is brightening-positive, -1 if it was negated on the way in;
    /// fixed at the first ingest that had data so that later appends keep the same sign. Always
    /// ±1; it, `time_system`, `baseline_flux` and `mag_zp` mean something only once `rows > 0`.
    pub flux_sign: i8,
    /// The time system detected at the first ingest (`hjd`, `hjd-2450000`, `hjd-2400000`, …).
    pub time_system: String,
    /// Baseline (total) flux on the `mag_zp` scale, if the file had magnitudes.
    pub baseline_flux: Option<f64>,
    /// Magnitude zero point fitted or assumed for that baseline.
    pub mag_zp: Option<f64>,
}

/// Text for a ledger or audit row: PostgreSQL's text and jsonb cannot hold NUL, and a file with a
/// NUL byte must still be quarantined (its reason quotes the line), so NUL becomes a visible `\0`.
pub fn db_text(s: &str) -> String {
    s.replace('\0', "\\0")
}

/// The store's writer lock, released when dropped (for a database lock: its session closes,
/// so a killed writer's lock goes with it).
pub struct WriterLock(#[allow(dead_code)] Option<Box<dyn std::any::Any + Send + Sync>>);

impl WriterLock {
    /// A lock that holds `guard` until dropped.
    pub fn holding(guard: Box<dyn std::any::Any + Send + Sync>) -> WriterLock {
        WriterLock(Some(guard))
    }
}

impl std::fmt::Debug for WriterLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WriterLock")
    }
}

/// Storage of [`LedgerEntry`] rows. `record` is an upsert keyed by `path`.
#[async_trait]
pub trait FileLedger: Send + Sync {
    async fn lookup(&self, path: &str) -> Result<Option<LedgerEntry>, LedgerError>;
    async fn record(&self, entry: &LedgerEntry) -> Result<(), LedgerError>;
    /// Waits for, then holds, the exclusive writer lock of the store named `store`: one writer
    /// at a time across processes and hosts (ingest holds it from its first staged part to its
    /// last compaction; `store repair` too).
    async fn lock_writer(&self, store: &str) -> Result<WriterLock, LedgerError>;
    /// Another input (not `except`) whose ingested text is exactly these bytes (`sha256` over
    /// `len` bytes): a file moved to another folder, or a `.gz` copy beside the original.
    async fn find_content(&self, sha256: &str, len: u64, except: &str) -> Result<Option<String>, LedgerError>;
}

/// A ledger backend failure, shaped so that a database-backed implementation in another crate
/// can build it without this crate knowing the database client.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LedgerError {
    /// The backend could not be reached or the statement failed for a transient reason.
    #[error("ledger backend unavailable: {0}")]
    Unavailable(String),
    /// The backend refused the row or returned one that cannot be decoded.
    #[error("ledger row for {path} is invalid: {reason}")]
    Invalid { path: String, reason: String },
}

impl LedgerError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, LedgerError::Unavailable(_))
    }
}

/// In-memory ledger for unit tests and for `--dry-run` style tools.
#[derive(Debug, Default)]
pub struct MemoryLedger {
    rows: Mutex<HashMap<String, LedgerEntry>>,
    writer: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl MemoryLedger {
    pub fn new() -> Self {
        Self::default()
    }

    /// All rows, sorted by path (tests compare them).
    pub fn entries(&self) -> Vec<LedgerEntry> {
        let rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<LedgerEntry> = rows.values().cloned().collect();
        v.sort_by(|a, b| a.path.cmp(&b.path));
        v
    }
}

#[async_trait]
impl FileLedger for MemoryLedger {
    async fn lookup(&self, path: &str) -> Result<Option<LedgerEntry>, LedgerError> {
        let rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        Ok(rows.get(path).cloned())
    }

    async fn record(&self, entry: &LedgerEntry) -> Result<(), LedgerError> {
        let mut rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        rows.insert(entry.path.clone(), entry.clone());
        Ok(())
    }

    async fn find_content(&self, sha256: &str, len: u64, except: &str) -> Result<Option<String>, LedgerError> {
        let rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        let mut hits: Vec<&String> = rows
            .values()
            .filter(|e| e.path != except && e.status == FileStatus::Ingested && e.rows > 0 && e.sha256 == sha256 && e.ingested_bytes == len)
            .map(|e| &e.path)
            .collect();
        hits.sort();
        Ok(hits.first().map(|p| p.to_string()))
    }

    /// One writer at a time among the users of this ledger (one process).
    async fn lock_writer(&self, _store: &str) -> Result<WriterLock, LedgerError> {
        Ok(WriterLock::holding(Box::new(self.writer.clone().lock_owned().await)))
    }
}
