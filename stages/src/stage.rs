//! The `Stage` trait: one DAG node that declares the datasets it reads and writes and knows
//! nothing of cron, retries or SQL. The pipeline derives the DAG order from these declarations.

use std::fmt;

use serde::{Deserialize, Serialize};

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
}

/// One DAG node. Implementations keep their numeric core in plain functions over slices.
pub trait Stage: Send + Sync {
    /// One string everywhere: config key, tracing span, audit row.
    fn name(&self) -> &'static str;
    /// Datasets this stage needs.
    fn reads(&self) -> &'static [Dataset];
    /// Datasets this stage produces.
    fn writes(&self) -> &'static [Dataset];
}
