//! The `ingest` stage: new files of the run's field from the inbox into the photometry dataset.
//! The ledger (PostgreSQL in production) makes it incremental: unchanged files add nothing and
//! grown files add only their new epochs, so running it on every field run is cheap and safe.

use std::sync::Arc;

use async_trait::async_trait;

use super::ledger::FileLedger;
use super::run::{compact_field, ingest_location, FileOutcome, IngestOptions};
use super::store::{CompactionPolicy, PhotometryStore};
use crate::stage::{Dataset, RunCtx, Stage, StageError, StageReport};

pub const STAGE: &str = "ingest";

/// The stage: `inbox` is a folder or object store URL.
#[derive(Clone)]
pub struct IngestStage {
    pub inbox: String,
    pub ledger: Arc<dyn FileLedger>,
    pub options: IngestOptions,
    /// Held while ingesting: the photometry store assumes one writer at a time (see
    /// `ingest::store`), and runs of different fields in one process share the inbox.
    pub serial: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for IngestStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngestStage").field("inbox", &self.inbox).field("options", &self.options).finish()
    }
}

#[async_trait]
impl Stage for IngestStage {
    fn name(&self) -> &'static str {
        STAGE
    }
    fn reads(&self) -> &'static [Dataset] {
        &[Dataset::RawFiles]
    }
    fn writes(&self) -> &'static [Dataset] {
        &[Dataset::Photometry]
    }
    async fn run(&self, ctx: &RunCtx) -> Result<StageReport, StageError> {
        if !self.inbox.contains("://") && !std::path::Path::new(&self.inbox).exists() {
            // An inbox that was never created holds no files: nothing to ingest is not a failure.
            tracing::info!(field = %ctx.field, inbox = %self.inbox, "inbox does not exist; nothing to ingest");
            return Ok(StageReport { inputs: serde_json::json!({ "inbox": self.inbox }), outputs: serde_json::json!({ "objects": [] }), ..Default::default() });
        }
        let out = PhotometryStore::new(ctx.store.clone(), ctx.root.clone());
        let opts = IngestOptions { only_field: Some(ctx.field), ..self.options.clone() };
        let _one_writer = self.serial.lock().await;
        let report = ingest_location(&self.inbox, &out, self.ledger.as_ref(), &opts)
            .await
            .map_err(|e| StageError::of(STAGE, e.is_retryable(), format!("ingesting {}: {e}", self.inbox)))?;
        let retryable: Vec<String> = report
            .files
            .iter()
            .filter_map(|f| match &f.outcome {
                FileOutcome::Failed { error, retryable: true } => Some(format!("{}: {error}", f.path)),
                _ => None,
            })
            .collect();
        if !retryable.is_empty() {
            // Whatever was written stays (the ledger records it); the retry picks up the rest.
            return Err(StageError::Transient { stage: STAGE, message: format!("{} file(s) failed: {}", retryable.len(), retryable.join("; ")) });
        }
        let quarantined: Vec<serde_json::Value> = report
            .files
            .iter()
            .filter_map(|f| match &f.outcome {
                FileOutcome::Quarantined { reason, .. } | FileOutcome::Conflict { reason, .. } => Some(serde_json::json!({ "file": f.path, "reason": reason })),
                FileOutcome::Failed { error, retryable: false } => Some(serde_json::json!({ "file": f.path, "reason": error })),
                _ => None,
            })
            .collect();
        let ingested = report.count(|o| matches!(o, FileOutcome::Ingested { .. }));
        Ok(StageReport {
            rows_in: report.files.len() as u64,
            rows_out: report.rows_added(),
            inputs: serde_json::json!({ "inbox": self.inbox, "files": report.files.len() }),
            // Photometry is append-only and tracked by the ledger: no object to re-check.
            outputs: serde_json::json!({ "objects": [] }),
            details: serde_json::Map::from_iter([
                ("files_ingested".to_string(), serde_json::json!(ingested)),
                ("quarantined".to_string(), serde_json::Value::Array(quarantined)),
                ("compactions".to_string(), serde_json::json!(report.compactions.len())),
            ]),
        })
    }
}

pub const COMPACT_STAGE: &str = "compact";

/// The `compact` stage of a live run: after the run's alerts are published, the run's field's
/// small parts (the night's, written by `ingest` without compaction) are merged as the policy
/// says, and debris is removed. Off the alerts' critical path: a night's alerts wait for its
/// rows to be written, not for them to be rewritten. Compaction changes only how the rows are
/// split into parts, never which rows are stored, so a run killed during it leaves the same
/// tables, and the next run (or `lensnet store repair`) finishes the job.
#[derive(Clone)]
pub struct CompactStage {
    pub ledger: Arc<dyn FileLedger>,
    pub policy: CompactionPolicy,
    /// The ingest stage's lock: one writer at a time in the process.
    pub serial: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for CompactStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompactStage").field("policy", &self.policy).finish()
    }
}

#[async_trait]
impl Stage for CompactStage {
    fn name(&self) -> &'static str {
        COMPACT_STAGE
    }
    /// After publish: the alerts first.
    fn reads(&self) -> &'static [Dataset] {
        &[Dataset::Photometry, Dataset::Published]
    }
    fn writes(&self) -> &'static [Dataset] {
        &[Dataset::PhotometryLayout]
    }
    async fn run(&self, ctx: &RunCtx) -> Result<StageReport, StageError> {
        let out = PhotometryStore::new(ctx.store.clone(), ctx.root.clone());
        let _one_writer = self.serial.lock().await;
        let (compactions, orphans) = compact_field(&out, self.ledger.as_ref(), &self.policy, Some(ctx.field))
            .await
            .map_err(|e| StageError::of(COMPACT_STAGE, e.is_retryable(), format!("compacting field {}: {e}", ctx.field)))?;
        let rewritten: u64 = compactions.iter().map(|c| c.rows).sum();
        Ok(StageReport {
            rows_in: rewritten,
            rows_out: rewritten,
            inputs: serde_json::json!({ "field": ctx.field.to_string() }),
            // The same rows in other parts: nothing for a re-run to re-check.
            outputs: serde_json::json!({ "objects": [] }),
            details: serde_json::Map::from_iter([
                ("compactions".to_string(), serde_json::json!(compactions.len())),
                ("parts_merged".to_string(), serde_json::json!(compactions.iter().map(|c| c.merged_parts).sum::<usize>())),
                ("rows_rewritten".to_string(), serde_json::json!(rewritten)),
                ("orphans_removed".to_string(), serde_json::json!(orphans)),
            ]),
        })
    }
}
