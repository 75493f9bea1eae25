//! The `Stage` trait: one DAG node that declares the datasets it reads and writes and knows
//! nothing of cron, retries or SQL. The pipeline derives the DAG order from these declarations.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use object_store::path::Path as StorePath;
use object_store::ObjectStore;
use serde::{Deserialize, Serialize};

use crate::photometry::Field;

/// A dataset passed between stages, named by its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Dataset {
    /// Raw survey files waiting in the inbox (produced outside the DAG).
    RawFiles,
    /// Ingested photometry, Parquet partitioned by season/field/site.
    Photometry,
    /// AlertFinder candidates with their fits and diagnosis parameters.
    Candidates,
    /// Preprocessed fixed-length tensors for the model.
    Tensors,
    /// Model probabilities and verdicts.
    Verdicts,
    /// Rows in PostgreSQL for follow-up coordinators.
    Published,
    /// How the photometry's rows are split into parts (compaction rewrites the same rows into
    /// fewer, larger parts; no stage reads it, it only orders compaction after the alerts).
    PhotometryLayout,
}

impl Dataset {
    pub fn name(self) -> &'static str {
        match self {
            Dataset::RawFiles => "raw_files",
            Dataset::Photometry => "photometry",
            Dataset::Candidates => "candidates",
            Dataset::Tensors => "tensors",
            Dataset::Verdicts => "verdicts",
            Dataset::Published => "published",
            Dataset::PhotometryLayout => "photometry_layout",
        }
    }
}

impl fmt::Display for Dataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a stage failure means for the runner.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// A failure that may go away on retry (network, object store, database connection).
    #[error("transient failure in stage {stage}: {message}")]
    Transient { stage: &'static str, message: String },
    /// A failure that a retry cannot fix (bad configuration, corrupt input, a bug).
    #[error("stage {stage} failed: {message}")]
    Permanent { stage: &'static str, message: String },
}

impl StageError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, StageError::Transient { .. })
    }

    /// `Transient` when a retry can help (`retryable`), else `Permanent`.
    pub fn of(stage: &'static str, retryable: bool, message: String) -> Self {
        if retryable { StageError::Transient { stage, message } } else { StageError::Permanent { stage, message } }
    }
}

/// What one stage attempt sees: which field and time it works on, and where datasets live.
/// Datasets are located by convention under `root` (`photometry/season=../field=..`, ...), so
/// the runner passes no data between stages: each stage reads what it declared.
#[derive(Clone)]
pub struct RunCtx {
    /// The run's id (a UUID string); deterministic for a (field, as_of) so a re-run resumes.
    pub run_id: String,
    pub field: Field,
    /// Observing season (calendar year).
    pub season: i32,
    /// "Now" as HJD - 2450000: only data taken before it may be used (None = everything).
    pub as_of: Option<f64>,
    pub store: Arc<dyn ObjectStore>,
    /// Prefix of all datasets in `store`.
    pub root: StorePath,
}

impl fmt::Debug for RunCtx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunCtx")
            .field("run_id", &self.run_id)
            .field("field", &self.field)
            .field("season", &self.season)
            .field("as_of", &self.as_of)
            .field("root", &self.root)
            .finish()
    }
}

/// The bytes of a dataset object written by the stage `producer`. A missing object is a
/// permanent error that says to run `producer` first; any other store failure is transient.
pub async fn read_object(store: &dyn ObjectStore, path: &StorePath, producer: &'static str) -> Result<bytes::Bytes, StageError> {
    use object_store::ObjectStoreExt;
    let transient = |e: object_store::Error| StageError::Transient { stage: producer, message: format!("cannot read {path}: {e}") };
    let result = store.get(path).await.map_err(|e| match e {
        object_store::Error::NotFound { .. } => {
            StageError::Permanent { stage: producer, message: format!("{path} does not exist: run {producer} first") }
        }
        e => transient(e),
    })?;
    result.bytes().await.map_err(transient)
}

/// What a stage attempt reports for its audit row.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StageReport {
    pub rows_in: u64,
    pub rows_out: u64,
    /// Objects or keys read (JSON for the audit row).
    pub inputs: serde_json::Value,
    /// Objects or keys written.
    pub outputs: serde_json::Value,
    /// Stage-specific facts for the audit row (execution provider, model sha256, ...).
    pub details: serde_json::Map<String, serde_json::Value>,
}

/// One DAG node. Implementations keep their numeric core in plain functions over slices.
#[async_trait]
pub trait Stage: Send + Sync {
    /// One string everywhere: config key, tracing span, audit row.
    fn name(&self) -> &'static str;
    /// Datasets this stage needs.
    fn reads(&self) -> &'static [Dataset];
    /// Datasets this stage produces.
    fn writes(&self) -> &'static [Dataset];
    /// Do the work for `ctx.field`; must be safe to repeat (idempotent outputs).
    async fn run(&self, ctx: &RunCtx) -> Result<StageReport, StageError>;
    /// A digest of the data this stage would read for `ctx` that does not come from an upstream
    /// stage of the run (photometry ingested outside it). The runner records it with each
    /// successful attempt and runs the stage again when it changed, so a step computed on
    /// incomplete data is recomputed once the rest arrives. `None`: nothing to compare.
    async fn input_digest(&self, _ctx: &RunCtx) -> Result<Option<String>, StageError> {
        Ok(None)
    }
}

/// Give the allocator's free pages back to the system. glibc's malloc keeps the pages its arenas
/// freed, and a field run's buckets free and allocate tens of MB each: without this, a run's
/// resident memory grows with the number of buckets it has worked through (`lensnet bench
/// field`), not with what it holds. A no-op where the allocator is not glibc's.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the kernel; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}
