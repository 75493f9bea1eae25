//! One field run end to end: the DAG (ingest -> alertfinder -> score -> publish) built from the
//! configuration, the audit trail in PostgreSQL (`runs`, `stage_attempts` through
//! [`PgAttemptLog`]), and a PostgreSQL advisory lock per field so that two runs of one field
//! never overlap, even from two `serve` processes on two machines.
//!
//! Run ids are deterministic for (kind, field, season, as_of, replay, model, configuration), so
//! running the same field at the same as-of time again resumes that run: stages whose outputs
//! exist and whose photometry did not change are skipped.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lensnet_stages::alertfinder::diagnosis::DIAGNOSIS_NAMES;
use lensnet_stages::alertfinder::stage::{candidates_path, read_candidate_rows, AlertFinderStage, CandidateRecord};
use lensnet_stages::ingest::ledger::FileLedger;
use lensnet_stages::ingest::stage::{CompactStage, IngestStage};
use lensnet_stages::ingest::{CompactionPolicy, IngestOptions};
use lensnet_stages::score::stage::{read_verdicts, verdicts_path, ScoreStage};
use lensnet_stages::score::Scorer;
use lensnet_stages::{Dataset, Field, PhotometryCache, RunCtx, Stage, StageError, StageReport};
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt};
use sha2::{Digest, Sha256};
use sqlx::postgres::PgPool;
use sqlx::Row;
use tracing::info;
use uuid::Uuid;

use crate::dag::{build_dag, Dag, DagErrors};
use crate::publish::{self, AttemptEnd, AttemptStart, CandidateRow, FitRow, PublishBatch, RetryPolicy as DbRetry, RunRecord, Status, VerdictRow};
use crate::runner::{run_dag, AttemptLog, RetryPolicy, RunOutcome, StageOutcome};

/// "Now" as HJD - 2450000 (JD of the system clock; the heliocentric correction, at most ~8
/// minutes, does not matter for a watermark).
pub fn now_hjd() -> f64 {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
    secs / 86_400.0 + 2_440_587.5 - 2_450_000.0
}

/// What makes a run the same run: a re-run with the same identity resumes it. The photometry it
/// reads is not part of the id: it is checked at each stage (`Stage::input_digest`), so a step
/// whose data grew is recomputed in place and one whose data did not is skipped.
#[derive(Debug, Clone, Copy)]
pub struct RunIdentity<'a> {
    pub kind: &'a str,
    pub field: Field,
    pub season: i32,
    pub as_of: f64,
    pub replay_id: Option<Uuid>,
    pub model_sha256: &'a str,
    /// The configuration's hash (thresholds and everything else that shapes results).
    pub config_hash: &'a str,
}

/// A deterministic run id from its [`RunIdentity`].
pub fn run_id(id: &RunIdentity<'_>) -> Uuid {
    uuid_of(&format!(
        "{}|{}|{}|{:.5}|{}|{}|{}",
        id.kind,
        id.field,
        id.season,
        id.as_of,
        id.replay_id.map(|u| u.to_string()).unwrap_or_default(),
        id.model_sha256,
        id.config_hash
    ))
}

/// A well-formed UUID (RFC 4122 variant, version 8: custom) from the sha256 of `key`.
pub fn uuid_of(key: &str) -> Uuid {
    let h = Sha256::digest(key.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    Uuid::from_bytes(b)
}

fn run_uuid(ctx: &RunCtx) -> Result<Uuid, String> {
    Uuid::parse_str(&ctx.run_id).map_err(|e| format!("run id {} is not a UUID: {e}", ctx.run_id))
}

/// [`AttemptLog`] on `stage_attempts`; output objects are checked on the run's store.
pub struct PgAttemptLog {
    pub pool: PgPool,
    pub config_hash: String,
}

#[async_trait]
impl AttemptLog for PgAttemptLog {
    async fn succeeded_before(&self, ctx: &RunCtx, stage: &'static str) -> Result<Option<StageReport>, String> {
        let run = run_uuid(ctx)?;
        let row = sqlx::query(
            "SELECT rows_in, rows_out, inputs, outputs FROM stage_attempts \
             WHERE run_id = $1 AND stage = $2 AND field = $3 AND status = 'succeeded' ORDER BY attempt DESC LIMIT 1",
        )
        .bind(run)
        .bind(stage)
        .bind(ctx.field.to_string())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| e.to_string())?;
        let Some(row) = row else { return Ok(None) };
        let mut outputs: serde_json::Value = row.try_get("outputs").map_err(|e| e.to_string())?;
        let details = match outputs.as_object_mut().and_then(|m| m.remove("details")) {
            Some(serde_json::Value::Object(d)) => d,
            _ => serde_json::Map::new(),
        };
        Ok(Some(StageReport {
            rows_in: row.try_get::<Option<i64>, _>("rows_in").map_err(|e| e.to_string())?.unwrap_or(0).max(0) as u64,
            rows_out: row.try_get::<Option<i64>, _>("rows_out").map_err(|e| e.to_string())?.unwrap_or(0).max(0) as u64,
            inputs: row.try_get("inputs").map_err(|e| e.to_string())?,
            outputs,
            details,
        }))
    }

    async fn outputs_exist(&self, ctx: &RunCtx, report: &StageReport) -> Result<bool, String> {
        let Some(objects) = report.outputs.get("objects").and_then(|o| o.as_array()) else { return Ok(false) };
        for o in objects {
            let Some(key) = o.as_str() else { return Ok(false) };
            match ctx.store.head(&StorePath::from(key)).await {
                Ok(_) => {}
                Err(object_store::Error::NotFound { .. }) => return Ok(false),
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(true)
    }

    async fn attempts_so_far(&self, ctx: &RunCtx, stage: &'static str) -> Result<u32, String> {
        let n = publish::next_attempt(&self.pool, run_uuid(ctx)?, stage, &ctx.field.to_string()).await.map_err(|e| e.to_string())?;
        Ok((n - 1).max(0) as u32)
    }

    async fn begin(&self, ctx: &RunCtx, stage: &'static str, attempt: u32) -> Result<(), String> {
        let a = AttemptStart {
            run_id: run_uuid(ctx)?,
            stage: stage.to_string(),
            field: ctx.field.to_string(),
            attempt: attempt as i32,
            inputs: serde_json::json!({ "as_of": ctx.as_of, "season": ctx.season }),
            config_hash: self.config_hash.clone(),
        };
        publish::begin_attempt(&self.pool, &a, &DbRetry::default()).await.map_err(|e| e.to_string())
    }

    async fn finish(&self, ctx: &RunCtx, stage: &'static str, attempt: u32, elapsed: Duration, result: &Result<StageReport, StageError>) -> Result<(), String> {
        let end = match result {
            Ok(report) => AttemptEnd::from_report(report, Some(elapsed)),
            Err(e) => AttemptEnd::failed(e.to_string(), e.is_retryable(), Some(elapsed)),
        };
        publish::finish_attempt(&self.pool, run_uuid(ctx)?, stage, &ctx.field.to_string(), attempt as i32, &end, &DbRetry::default())
            .await
            .map_err(|e| e.to_string())
    }
}

/// The `publish` stage: the run's candidates, fits and verdicts into PostgreSQL in one
/// transaction, idempotent by key.
pub struct PublishStage {
    pub pool: PgPool,
    pub model_sha256: String,
    pub replay_id: Option<Uuid>,
}

fn permanent(message: String) -> StageError {
    StageError::Permanent { stage: "publish", message }
}

/// The rows that publish writes for one candidate record (candidates with status `candidate`).
pub fn candidate_rows(r: &CandidateRecord) -> (CandidateRow, Vec<FitRow>) {
    let finite = |x: f64| x.is_finite().then_some(x);
    let diagnosis: serde_json::Map<String, serde_json::Value> = DIAGNOSIS_NAMES
        .iter()
        .zip(&r.diagnosis)
        .map(|(n, v)| (n.to_string(), if v.is_finite() { serde_json::json!(v) } else { serde_json::Value::Null }))
        .collect();
    let result: serde_json::Value = serde_json::from_str(&r.result_json).unwrap_or(serde_json::Value::Null);
    let mut site_fluxes = serde_json::Map::new();
    if let (Some(f0), Some(f1)) = (result.pointer("/grid/f0").and_then(|v| v.as_array()), result.pointer("/grid/f1").and_then(|v| v.as_array())) {
        for (i, site) in ["KMTA", "KMTC", "KMTS"].iter().enumerate() {
            if let (Some(a), Some(b)) = (f0.get(i), f1.get(i)) {
                site_fluxes.insert(site.to_string(), serde_json::json!({ "f0": a, "f1": b }));
            }
        }
    }
    let cand = CandidateRow {
        candidate_id: r.candidate_id.clone(),
        star_id: r.star.clone(),
        field: r.field.clone(),
        as_of_hjd: r.as_of,
        sites: r.sites.clone(),
        n_points: r.n_valid as i32,
        n_high: r.n_high as i32,
        dchi2_broken: if r.bl_delta_chi2.is_finite() { r.bl_delta_chi2 } else { 0.0 },
        t_rise: finite(r.bl_t_rise),
        diagnosis: serde_json::Value::Object(diagnosis),
    };
    let mut fits = vec![FitRow {
        candidate_id: r.candidate_id.clone(),
        kind: "broken_line".into(),
        dchi2: cand.dchi2_broken,
        t0: None,
        teff: None,
        regime: None,
        t_rise: finite(r.bl_t_rise),
        slope: finite(r.bl_slope),
        site_fluxes: serde_json::json!({}),
        params: result.get("broken_line").cloned().unwrap_or(serde_json::Value::Null),
    }];
    if r.grid_t0.is_finite() && r.grid_teff.is_finite() && r.grid_delta_chi2.is_finite() {
        fits.push(FitRow {
            candidate_id: r.candidate_id.clone(),
            kind: "pspl_grid".into(),
            dchi2: r.grid_delta_chi2,
            t0: Some(r.grid_t0),
            teff: Some(r.grid_teff),
            regime: Some(r.grid_regime as i16),
            t_rise: None,
            slope: None,
            site_fluxes: serde_json::Value::Object(site_fluxes),
            params: result.get("grid").cloned().unwrap_or(serde_json::Value::Null),
        });
    }
    (cand, fits)
}

#[async_trait]
impl Stage for PublishStage {
    fn name(&self) -> &'static str {
        "publish"
    }
    fn reads(&self) -> &'static [Dataset] {
        &[Dataset::Candidates, Dataset::Verdicts]
    }
    fn writes(&self) -> &'static [Dataset] {
        &[Dataset::Published]
    }
    async fn run(&self, ctx: &RunCtx) -> Result<StageReport, StageError> {
        let as_of = ctx.as_of.ok_or_else(|| permanent("a publish run needs its as-of time".into()))?;
        let run_id = run_uuid(ctx).map_err(permanent)?;
        let (records, stored_rows) = read_candidate_rows(ctx.store.clone(), &ctx.root, ctx.season, ctx.field, as_of).await?;
        let verdicts = read_verdicts(ctx.store.as_ref(), &ctx.root, ctx.season, ctx.field, as_of, &self.model_sha256).await?;
        let mut batch = PublishBatch { run_id, replay_id: self.replay_id, field: ctx.field.to_string(), ..Default::default() };
        let mut evidence = std::collections::HashMap::new();
        for r in records.iter().filter(|r| r.status == "candidate") {
            let (c, f) = candidate_rows(r);
            evidence.insert(c.candidate_id.clone(), c.diagnosis.clone());
            batch.candidates.push(c);
            batch.fits.extend(f);
        }
        for v in &verdicts.rows {
            batch.verdicts.push(VerdictRow {
                candidate_id: v.candidate_id.clone(),
                model_sha256: verdicts.model_sha256.clone(),
                p_yes: v.probs.yes.clamp(0.0, 1.0),
                p_maybe: v.probs.maybe.clamp(0.0, 1.0),
                p_no: v.probs.no.clamp(0.0, 1.0),
                binary_score: v.probs.binary.clamp(0.0, 1.0),
                verdict: v.verdict.clone(),
                threshold_purity: verdicts.threshold_purity as f32,
                threshold_recall: verdicts.threshold_recall as f32,
                evidence: {
                    let mut e = evidence.get(&v.candidate_id).cloned().unwrap_or(serde_json::Value::Null);
                    if let (false, serde_json::Value::Object(m)) = (v.note.is_empty(), &mut e) {
                        m.insert("verdict_note".into(), v.note.clone().into());
                    }
                    e
                },
            });
        }
        let out = publish::publish(&self.pool, &batch, &DbRetry::default()).await.map_err(|e| {
            let message = e.to_string();
            if e.is_retryable() { StageError::Transient { stage: "publish", message } } else { permanent(message) }
        })?;
        let failed = stored_rows.saturating_sub(records.len() as u64);
        Ok(StageReport {
            rows_in: (batch.candidates.len() + batch.verdicts.len()) as u64,
            rows_out: out.candidates + out.fits + out.verdicts,
            inputs: serde_json::json!({
                "candidates": candidates_path(&ctx.root, ctx.season, ctx.field, as_of).to_string(),
                "verdicts": verdicts_path(&ctx.root, ctx.season, ctx.field, as_of, &self.model_sha256).to_string(),
            }),
            // Rows in PostgreSQL: nothing on the store to re-check; publishing again is a no-op.
            outputs: serde_json::json!({ "objects": [], "candidates": out.candidates, "fits": out.fits, "verdicts": out.verdicts }),
            details: serde_json::Map::from_iter([
                ("failed_stars".to_string(), serde_json::json!(failed)),
                ("model_sha256".to_string(), serde_json::json!(self.model_sha256)),
            ]),
        })
    }
}

/// Which stages a field run has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// ingest -> alertfinder -> score -> publish (scheduled and one-off runs).
    Live,
    /// alertfinder -> score -> publish over photometry already ingested (replay steps).
    Reprocess,
}

/// What a field runner shares across runs: the database, the store, one scorer.
#[derive(Clone)]
pub struct FieldRunner {
    pub pool: PgPool,
    pub store: Arc<dyn ObjectStore>,
    pub root: StorePath,
    pub scorer: Arc<Scorer>,
    pub ledger: Arc<dyn FileLedger>,
    pub inbox: String,
    pub ingest: IngestOptions,
    pub config_hash: String,
    pub retry: RetryPolicy,
    /// Serialises the ingest of concurrent field runs of this process.
    pub ingest_lock: Arc<tokio::sync::Mutex<()>>,
    /// Sessions (detached from the pool) that held a field's run lock and released it, kept for
    /// that field's next run.
    pub lock_sessions: Arc<std::sync::Mutex<std::collections::HashMap<Field, sqlx::PgConnection>>>,
    /// The model's preprocessing statistics (`ScoreStage::stats_of`), parsed once.
    pub score_stats: lensnet_stages::preprocess::PreprocessStats,
    /// AlertFinder parameters by field (`[alertfinder]` in the configuration).
    pub alert_thresholds: lensnet_stages::alertfinder::stage::FieldThresholds,
    /// Alert webhooks: after a live run (lock released), the field's new "yes" alerts are sent.
    pub notifier: Option<Arc<crate::notify::Notifier>>,
    /// Streaming: the photometry a stage holds at once (bytes), and the largest field-season (rows)
    /// that a replay holds in memory instead of streaming (`[stream]`).
    pub stream_budget_bytes: usize,
    pub replay_whole_field_max_rows: u64,
}

/// The result of one field run.
#[derive(Debug, Clone)]
pub struct FieldRun {
    pub run_id: Uuid,
    pub field: Field,
    pub as_of: f64,
    pub outcome: RunOutcome,
    /// What the alert webhooks did after the run (None: no notifier, or a kind that does not
    /// notify).
    pub notified: Option<crate::notify::Delivered>,
}

impl FieldRun {
    /// The report of `stage` when it ran in this invocation.
    pub fn report(&self, stage: &str) -> Option<&StageReport> {
        self.outcome.stages.iter().find(|(n, _)| *n == stage).and_then(|(_, o)| match o {
            StageOutcome::Succeeded { report, .. } => Some(report),
            _ => None,
        })
    }
}

/// Why a field run could not start or did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum FieldRunError {
    #[error("another run of field {0} holds its lock; not started")]
    Busy(Field),
    #[error("invalid DAG: {0}")]
    Dag(#[from] DagErrors),
    #[error(transparent)]
    Stage(#[from] StageError),
    #[error(transparent)]
    Publish(#[from] publish::PublishError),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("object store: {0}")]
    Store(#[from] lensnet_stages::store::StoreError),
    #[error("alert webhooks: {0}")]
    Notify(String),
}

/// The advisory-lock key of a field (stable across processes and machines).
pub fn lock_key(field: Field) -> i64 {
    let h = Sha256::digest(format!("lensnet field run {field}").as_bytes());
    i64::from_be_bytes(h[..8].try_into().expect("8 bytes"))
}

impl FieldRunner {
    /// What a live run reads its photometry through: nothing held, streamed.
    pub fn live_cache(&self) -> PhotometryCache {
        PhotometryCache::streaming(self.stream_budget_bytes)
    }

    pub fn model_sha256(&self) -> &str {
        &self.scorer.model().sha256
    }

    /// The DAG of a plan; `cache` is shared by alertfinder and score.
    pub fn dag(&self, plan: Plan, cache: &PhotometryCache, replay_id: Option<Uuid>) -> Result<Dag, FieldRunError> {
        let mut stages: Vec<Arc<dyn Stage>> = Vec::new();
        if plan == Plan::Live {
            stages.push(Arc::new(IngestStage {
                inbox: self.inbox.clone(),
                ledger: self.ledger.clone(),
                options: self.ingest.clone(),
                serial: self.ingest_lock.clone(),
            }));
        }
        stages.push(Arc::new(AlertFinderStage { thresholds: self.alert_thresholds.clone(), cache: Some(cache.clone()) }));
        stages.push(Arc::new(ScoreStage { scorer: self.scorer.clone(), stats: self.score_stats.clone(), cache: cache.clone() }));
        stages.push(Arc::new(PublishStage { pool: self.pool.clone(), model_sha256: self.model_sha256().to_string(), replay_id }));
        if plan == Plan::Live {
            // The night's parts are merged after its alerts are out (ingest only writes them).
            stages.push(Arc::new(CompactStage { ledger: self.ledger.clone(), policy: CompactionPolicy::default(), serial: self.ingest_lock.clone() }));
        }
        let external: &[Dataset] = if plan == Plan::Live { &[Dataset::RawFiles] } else { &[Dataset::Photometry] };
        Ok(build_dag(stages, external)?)
    }

    /// Run one field at `as_of` under the field's advisory lock. `cache` may be shared across
    /// runs when the photometry does not change between them (replay); a live run gets a new one.
    pub async fn run(
        &self,
        kind: &str,
        plan: Plan,
        field: Field,
        season: i32,
        as_of: f64,
        replay_id: Option<Uuid>,
        cache: &PhotometryCache,
    ) -> Result<FieldRun, FieldRunError> {
        // The lock lives in its own session, detached from the pool: if this future is dropped
        // half-way (shutdown), the connection closes and the server releases the lock, instead
        // of a pooled connection carrying it into an unrelated later run. A session whose lock
        // was released is kept for the field's next run (a replay makes hundreds, and each new
        // session costs a password handshake).
        let kept = self.lock_sessions.lock().expect("lock sessions").remove(&field);
        let key = lock_key(field);
        let (mut lock, got) = match kept {
            Some(mut c) => match sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)").bind(key).fetch_one(&mut c).await {
                Ok(got) => (c, got),
                // A kept session that went away (server restart): a new one.
                Err(_) => {
                    let mut c = self.pool.acquire().await?.detach();
                    let got = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(key).fetch_one(&mut c).await?;
                    (c, got)
                }
            },
            None => {
                let mut c = self.pool.acquire().await?.detach();
                let got = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(key).fetch_one(&mut c).await?;
                (c, got)
            }
        };
        if !got {
            self.lock_sessions.lock().expect("lock sessions").insert(field, lock);
            return Err(FieldRunError::Busy(field));
        }
        let mut result: Result<FieldRun, FieldRunError> = async {
            // We hold the field's lock: any run of it still marked running belongs to a process
            // that died (killed, machine lost); say so instead of leaving it running for ever.
            publish::abandon_running(&self.pool, publish::DeadRuns::Field(&field.to_string())).await?;
            let dag = self.dag(plan, cache, replay_id)?;
            let run_id = run_id(&RunIdentity {
                kind,
                field,
                season,
                as_of,
                replay_id,
                model_sha256: self.model_sha256(),
                config_hash: &self.config_hash,
            });
            let record = RunRecord {
                run_id,
                kind: kind.to_string(),
                field: Some(field.to_string()),
                as_of_hjd: Some(as_of),
                replay_id,
                config_hash: self.config_hash.clone(),
                model_sha256: Some(self.model_sha256().to_string()),
            };
            publish::begin_run(&self.pool, &record, &DbRetry::default()).await?;
            let ctx = RunCtx { run_id: run_id.to_string(), field, season, as_of: Some(as_of), store: self.store.clone(), root: self.root.clone() };
            let log = PgAttemptLog { pool: self.pool.clone(), config_hash: self.config_hash.clone() };
            let outcome = run_dag(&dag, &ctx, &log, &self.retry).await;
            let (status, error) = if outcome.succeeded() { (Status::Succeeded, None) } else { (Status::Failed, outcome.first_error()) };
            publish::finish_run(&self.pool, run_id, status, error.as_deref(), &DbRetry::default()).await?;
            info!(%run_id, %field, as_of, kind, succeeded = outcome.succeeded(), "field run finished");
            Ok(FieldRun { run_id, field, as_of, outcome, notified: None })
        }
        .await;
        match sqlx::query_scalar::<_, bool>("SELECT pg_advisory_unlock($1)").bind(key).fetch_one(&mut lock).await {
            Ok(true) => {
                self.lock_sessions.lock().expect("lock sessions").insert(field, lock);
            }
            _ => {
                let _ = sqlx::Connection::close(lock).await;
            }
        }
        // After the run, outside its lock: a slow or failing receiver delays nothing but this
        // call's return, and never changes the run's outcome.
        if let (Ok(run), Some(n)) = (&mut result, &self.notifier) {
            if n.notifies(kind) {
                run.notified = Some(n.after_run(&field.to_string()).await).filter(|_| n.has_receivers());
            }
        }
        result
    }
}

/// The ingest options of scheduled runs: no compaction in the ingest stage (the live plan's
/// `compact` stage runs it after publish).
pub fn ingest_options(format: lensnet_stages::ingest::Format) -> IngestOptions {
    IngestOptions { format, compaction: None, ..Default::default() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_id_changes_with_everything_that_shapes_its_results() {
        let base = RunIdentity { kind: "replay", field: Field(14), season: 2025, as_of: 10_800.0, replay_id: None, model_sha256: "m", config_hash: "c" };
        let id = run_id(&base);
        assert_eq!(id, run_id(&base.clone()), "deterministic");
        let changed = [
            RunIdentity { season: 2024, ..base },
            RunIdentity { config_hash: "thresholds changed", ..base },
            RunIdentity { model_sha256: "m2", ..base },
            RunIdentity { as_of: 10_801.0, ..base },
            RunIdentity { field: Field(2), ..base },
            RunIdentity { kind: "run", ..base },
            RunIdentity { replay_id: Some(Uuid::nil()), ..base },
        ];
        for c in changed {
            assert_ne!(run_id(&c), id, "{c:?}");
        }
    }
}
