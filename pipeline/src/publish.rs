//! publish: writes one field run's candidates, fits and verdicts to PostgreSQL in one transaction
//! with bulk (UNNEST) inserts, and keeps the audit trail (`runs`, `stage_attempts`).
//!
//! Every write is idempotent by key: candidates by `candidate_id` (and `(field, star_id,
//! as_of_hjd)`), fits by `(candidate_id, kind)`, verdicts by `(candidate_id, model_sha256)`, all
//! with `ON CONFLICT DO UPDATE .. WHERE .. IS DISTINCT FROM ..`: re-publishing a run changes
//! nothing, a step recomputed because more photometry arrived replaces its stale rows, and a new
//! model version adds verdict rows without touching older ones. Transient database failures (lost connection,
//! serialization conflict, admin shutdown) are retried with exponential backoff; the transaction
//! means a failed attempt leaves no rows behind.

use std::future::Future;
use std::time::Duration;

use lensnet_stages::StageReport;
use sqlx::postgres::PgPool;
use sqlx::{Postgres, Transaction};
use tracing::{info, warn};
use uuid::Uuid;

use crate::db::is_transient;

/// An AlertFinder candidate (`candidates` table).
#[derive(Debug, Clone, PartialEq)]
pub struct CandidateRow {
    /// Deterministic id; see [`candidate_id`].
    pub candidate_id: String,
    pub star_id: String,
    pub field: String,
    /// Data up to this HJD - 2450000 was used.
    pub as_of_hjd: f64,
    /// Sites with data (`KMTA`, `KMTC`, `KMTS`).
    pub sites: Vec<String>,
    pub n_points: i32,
    pub n_high: i32,
    pub dchi2_broken: f64,
    pub t_rise: Option<f64>,
    /// Diagnosis parameters by name (a JSON object).
    pub diagnosis: serde_json::Value,
}

/// A fit of a candidate (`fits` table); `kind` is `broken_line` or `pspl_grid`.
#[derive(Debug, Clone, PartialEq)]
pub struct FitRow {
    pub candidate_id: String,
    pub kind: String,
    pub dchi2: f64,
    pub t0: Option<f64>,
    pub teff: Option<f64>,
    pub regime: Option<i16>,
    pub t_rise: Option<f64>,
    pub slope: Option<f64>,
    /// Per-site fluxes, e.g. `{"KMTC": {"f0": .., "f1": ..}}`.
    pub site_fluxes: serde_json::Value,
    pub params: serde_json::Value,
}

/// A model's verdict on a candidate (`verdicts` table). `first_flagged_hjd` is computed on
/// insert (see [`publish`]); the run and replay ids come from the [`PublishBatch`].
#[derive(Debug, Clone, PartialEq)]
pub struct VerdictRow {
    pub candidate_id: String,
    /// The model version: sha256 of the ONNX file.
    pub model_sha256: String,
    pub p_yes: f32,
    pub p_maybe: f32,
    pub p_no: f32,
    pub binary_score: f32,
    /// `yes`, `maybe` or `no` (lensnet_stages::score::Class::as_str).
    pub verdict: String,
    pub threshold_purity: f32,
    pub threshold_recall: f32,
    /// Diagnosis parameters as JSON, for the coordinator reading the alert.
    pub evidence: serde_json::Value,
}

/// Everything one field run publishes, written in one transaction.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PublishBatch {
    pub run_id: Uuid,
    pub replay_id: Option<Uuid>,
    pub field: String,
    pub candidates: Vec<CandidateRow>,
    pub fits: Vec<FitRow>,
    pub verdicts: Vec<VerdictRow>,
}

/// Rows that one publish inserted (0 for rows that were there already).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PublishOutcome {
    pub candidates: u64,
    pub fits: u64,
    pub verdicts: u64,
    /// Transaction attempts made (1 when nothing had to be retried).
    pub attempts: u32,
}

/// How transient database failures are retried.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1).
    pub max_attempts: u32,
    /// Wait before the second attempt; doubles each time up to `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { max_attempts: 5, initial_backoff: Duration::from_millis(200), max_backoff: Duration::from_secs(5) }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("invalid publish batch for run {run_id} (field {field}): {message}")]
    Invalid { run_id: Uuid, field: String, message: String },
    #[error("{what} failed after {attempts} attempt(s); nothing of it was written: {source}")]
    Database {
        what: String,
        attempts: u32,
        #[source]
        source: sqlx::Error,
    },
    #[error("run {run_id} is not in the runs table (begin_run first)")]
    UnknownRun { run_id: Uuid },
    #[error("stage attempt {stage}/{field}#{attempt} of run {run_id} is not in stage_attempts (begin_attempt first)")]
    UnknownAttempt { run_id: Uuid, stage: String, field: String, attempt: i32 },
}

impl PublishError {
    /// A lost connection or a conflict may clear later (after our own retries ran out); bad rows,
    /// constraint violations and missing runs will not.
    pub fn is_retryable(&self) -> bool {
        match self {
            PublishError::Database { source, .. } => is_transient(source),
            PublishError::Invalid { .. } | PublishError::UnknownRun { .. } | PublishError::UnknownAttempt { .. } => false,
        }
    }
}

/// The id of a candidate: field, star and as-of time, so that re-running a field at the same
/// time gives the same id (`BLG14:BLG14-K-0042:9876.54321`).
pub fn candidate_id(field: &str, star_id: &str, as_of_hjd: f64) -> String {
    format!("{field}:{star_id}:{as_of_hjd:.5}")
}

/// Run `op` until it succeeds, fails permanently or runs out of attempts. Each call of `op`
/// must be a whole transaction (or one statement), so that a failed attempt wrote nothing.
async fn with_retry<T, F, Fut>(policy: &RetryPolicy, what: &str, mut op: F) -> Result<(T, u32), PublishError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    let max = policy.max_attempts.max(1);
    let mut backoff = policy.initial_backoff;
    let mut attempt = 1;
    loop {
        match op().await {
            Ok(v) => return Ok((v, attempt)),
            Err(e) if is_transient(&e) && attempt < max => {
                warn!(what, attempt, max_attempts = max, backoff_ms = backoff.as_millis() as u64, error = %e, "transient database failure; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(policy.max_backoff);
                attempt += 1;
            }
            Err(source) => return Err(PublishError::Database { what: what.to_string(), attempts: attempt, source }),
        }
    }
}

/// Check that every fit and verdict refers to a candidate of the batch and that every candidate
/// belongs to the batch's field: a dangling row would fail on a foreign key after retries, or,
/// worse, attach to another field's candidate.
fn validate(batch: &PublishBatch) -> Result<(), PublishError> {
    let bad = |message: String| PublishError::Invalid { run_id: batch.run_id, field: batch.field.clone(), message };
    let ids: std::collections::HashSet<&str> = batch.candidates.iter().map(|c| c.candidate_id.as_str()).collect();
    if let Some(c) = batch.candidates.iter().find(|c| c.field != batch.field) {
        return Err(bad(format!("candidate {} is in field {}", c.candidate_id, c.field)));
    }
    if let Some(c) = batch.candidates.iter().find(|c| c.sites.iter().any(|s| s.contains(',') || s.is_empty())) {
        return Err(bad(format!("candidate {} has an empty site name or one with a comma: {:?}", c.candidate_id, c.sites)));
    }
    if let Some(f) = batch.fits.iter().find(|f| !ids.contains(f.candidate_id.as_str())) {
        return Err(bad(format!("fit {} refers to candidate {} that is not in the batch", f.kind, f.candidate_id)));
    }
    if let Some(v) = batch.verdicts.iter().find(|v| !ids.contains(v.candidate_id.as_str())) {
        return Err(bad(format!("verdict of model {} refers to candidate {} that is not in the batch", v.model_sha256, v.candidate_id)));
    }
    Ok(())
}

const INSERT_CANDIDATES: &str = "\
INSERT INTO candidates (candidate_id, star_id, field, as_of_hjd, sites, n_points, n_high, dchi2_broken, t_rise, first_run_id, diagnosis)
SELECT c.id, c.star, c.field, c.as_of, CASE WHEN c.sites = '' THEN '{}'::text[] ELSE string_to_array(c.sites, ',') END,
       c.n_points, c.n_high, c.dchi2, c.t_rise, $10, c.diagnosis::jsonb
FROM UNNEST($1::text[], $2::text[], $3::text[], $4::float8[], $5::text[], $6::int4[], $7::int4[], $8::float8[], $9::float8[], $11::text[])
     AS c(id, star, field, as_of, sites, n_points, n_high, dchi2, t_rise, diagnosis)
ON CONFLICT (candidate_id) DO UPDATE SET sites = EXCLUDED.sites, n_points = EXCLUDED.n_points, n_high = EXCLUDED.n_high,
    dchi2_broken = EXCLUDED.dchi2_broken, t_rise = EXCLUDED.t_rise, diagnosis = EXCLUDED.diagnosis
WHERE (candidates.sites, candidates.n_points, candidates.n_high, candidates.dchi2_broken, candidates.t_rise, candidates.diagnosis)
      IS DISTINCT FROM (EXCLUDED.sites, EXCLUDED.n_points, EXCLUDED.n_high, EXCLUDED.dchi2_broken, EXCLUDED.t_rise, EXCLUDED.diagnosis)";

const INSERT_FITS: &str = "\
INSERT INTO fits (candidate_id, kind, dchi2, t0, teff, regime, t_rise, slope, site_fluxes, params)
SELECT f.id, f.kind, f.dchi2, f.t0, f.teff, f.regime, f.t_rise, f.slope, f.site_fluxes::jsonb, f.params::jsonb
FROM UNNEST($1::text[], $2::text[], $3::float8[], $4::float8[], $5::float8[], $6::int2[], $7::float8[], $8::float8[], $9::text[], $10::text[])
     AS f(id, kind, dchi2, t0, teff, regime, t_rise, slope, site_fluxes, params)
ON CONFLICT (candidate_id, kind) DO UPDATE SET dchi2 = EXCLUDED.dchi2, t0 = EXCLUDED.t0, teff = EXCLUDED.teff,
    regime = EXCLUDED.regime, t_rise = EXCLUDED.t_rise, slope = EXCLUDED.slope, site_fluxes = EXCLUDED.site_fluxes,
    params = EXCLUDED.params
WHERE (fits.dchi2, fits.t0, fits.teff, fits.regime, fits.t_rise, fits.slope, fits.site_fluxes, fits.params)
      IS DISTINCT FROM (EXCLUDED.dchi2, EXCLUDED.t0, EXCLUDED.teff, EXCLUDED.regime, EXCLUDED.t_rise, EXCLUDED.slope,
                        EXCLUDED.site_fluxes, EXCLUDED.params)";

// first_flagged_hjd: the earliest as_of at which this star (field, star_id) got a "yes" from this
// model, among verdicts already stored and those of this batch, counting only as-of times not
// after this candidate's own (a replay must not see its future). NULL until the first "yes".
const INSERT_VERDICTS: &str = "\
WITH v AS (
    SELECT * FROM UNNEST($1::text[], $2::text[], $3::float4[], $4::float4[], $5::float4[], $6::float4[], $7::text[], $8::float4[], $9::float4[], $10::text[])
         AS v(id, model, p_yes, p_maybe, p_no, binary_score, verdict, t_purity, t_recall, evidence)
), vc AS (
    SELECT v.*, c.star_id, c.field, c.as_of_hjd FROM v JOIN candidates c ON c.candidate_id = v.id
), yes AS (
    SELECT c.star_id, c.field, o.model_sha256 AS model, c.as_of_hjd
    FROM verdicts o JOIN candidates c ON c.candidate_id = o.candidate_id
    WHERE o.verdict = 'yes' AND o.model_sha256 IN (SELECT DISTINCT model FROM v)
      AND (c.field, c.star_id) IN (SELECT field, star_id FROM vc)
    UNION ALL
    SELECT star_id, field, model, as_of_hjd FROM vc WHERE verdict = 'yes'
)
INSERT INTO verdicts (candidate_id, model_sha256, run_id, replay_id, p_yes, p_maybe, p_no, binary_score, verdict,
                      threshold_purity, threshold_recall, first_flagged_hjd, evidence)
SELECT vc.id, vc.model, $11, $12, vc.p_yes, vc.p_maybe, vc.p_no, vc.binary_score, vc.verdict, vc.t_purity, vc.t_recall,
       (SELECT min(y.as_of_hjd) FROM yes y
        WHERE y.star_id = vc.star_id AND y.field = vc.field AND y.model = vc.model AND y.as_of_hjd <= vc.as_of_hjd),
       vc.evidence::jsonb
FROM vc
ON CONFLICT (candidate_id, model_sha256) DO UPDATE SET run_id = EXCLUDED.run_id, p_yes = EXCLUDED.p_yes,
    p_maybe = EXCLUDED.p_maybe, p_no = EXCLUDED.p_no, binary_score = EXCLUDED.binary_score, verdict = EXCLUDED.verdict,
    threshold_purity = EXCLUDED.threshold_purity, threshold_recall = EXCLUDED.threshold_recall,
    first_flagged_hjd = EXCLUDED.first_flagged_hjd, evidence = EXCLUDED.evidence
WHERE (verdicts.p_yes, verdicts.p_maybe, verdicts.p_no, verdicts.binary_score, verdicts.verdict, verdicts.threshold_purity,
       verdicts.threshold_recall, verdicts.first_flagged_hjd, verdicts.evidence)
      IS DISTINCT FROM (EXCLUDED.p_yes, EXCLUDED.p_maybe, EXCLUDED.p_no, EXCLUDED.binary_score, EXCLUDED.verdict,
                        EXCLUDED.threshold_purity, EXCLUDED.threshold_recall, EXCLUDED.first_flagged_hjd, EXCLUDED.evidence)";

/// Publish one field run in one transaction (retried on transient failures): candidates, then
/// fits, then verdicts, each as one bulk `INSERT .. SELECT FROM UNNEST(..) ON CONFLICT DO
/// UPDATE` that only touches rows whose values differ (identical rows are left as they are). The run must exist (see [`begin_run`]).
pub async fn publish(pool: &PgPool, batch: &PublishBatch, policy: &RetryPolicy) -> Result<PublishOutcome, PublishError> {
    publish_with_hook(pool, batch, policy, |_| async {}).await
}

/// [`publish`] with a hook called inside each transaction attempt after the candidates are
/// inserted (attempt number given), for tests that interrupt a publish half-way.
pub async fn publish_with_hook<H, HF>(pool: &PgPool, batch: &PublishBatch, policy: &RetryPolicy, hook: H) -> Result<PublishOutcome, PublishError>
where
    H: Fn(u32) -> HF,
    HF: Future<Output = ()>,
{
    validate(batch)?;
    let what = format!("publishing run {} (field {})", batch.run_id, batch.field);
    let mut tries = 0u32;
    let hook = &hook;
    let (mut outcome, attempts) = with_retry(policy, &what, || {
        tries += 1;
        let attempt = tries;
        async move {
            let mut tx = pool.begin().await?;
            let out = write_batch(&mut tx, batch, || hook(attempt)).await?;
            tx.commit().await?;
            Ok(out)
        }
    })
    .await?;
    outcome.attempts = attempts;
    info!(
        run_id = %batch.run_id,
        field = %batch.field,
        candidates = outcome.candidates,
        fits = outcome.fits,
        verdicts = outcome.verdicts,
        attempts,
        "published"
    );
    Ok(outcome)
}

async fn write_batch<H, HF>(tx: &mut Transaction<'_, Postgres>, b: &PublishBatch, after_candidates: H) -> Result<PublishOutcome, sqlx::Error>
where
    H: FnOnce() -> HF,
    HF: Future<Output = ()>,
{
    let c = &b.candidates;
    let candidates = sqlx::query(INSERT_CANDIDATES)
        .bind(c.iter().map(|r| r.candidate_id.clone()).collect::<Vec<_>>())
        .bind(c.iter().map(|r| r.star_id.clone()).collect::<Vec<_>>())
        .bind(c.iter().map(|r| r.field.clone()).collect::<Vec<_>>())
        .bind(c.iter().map(|r| r.as_of_hjd).collect::<Vec<_>>())
        .bind(c.iter().map(|r| r.sites.join(",")).collect::<Vec<_>>())
        .bind(c.iter().map(|r| r.n_points).collect::<Vec<_>>())
        .bind(c.iter().map(|r| r.n_high).collect::<Vec<_>>())
        .bind(c.iter().map(|r| r.dchi2_broken).collect::<Vec<_>>())
        .bind(c.iter().map(|r| r.t_rise).collect::<Vec<_>>())
        .bind(b.run_id)
        .bind(c.iter().map(|r| r.diagnosis.to_string()).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await?
        .rows_affected();

    after_candidates().await;

    let f = &b.fits;
    let fits = sqlx::query(INSERT_FITS)
        .bind(f.iter().map(|r| r.candidate_id.clone()).collect::<Vec<_>>())
        .bind(f.iter().map(|r| r.kind.clone()).collect::<Vec<_>>())
        .bind(f.iter().map(|r| r.dchi2).collect::<Vec<_>>())
        .bind(f.iter().map(|r| r.t0).collect::<Vec<_>>())
        .bind(f.iter().map(|r| r.teff).collect::<Vec<_>>())
        .bind(f.iter().map(|r| r.regime).collect::<Vec<_>>())
        .bind(f.iter().map(|r| r.t_rise).collect::<Vec<_>>())
        .bind(f.iter().map(|r| r.slope).collect::<Vec<_>>())
        .bind(f.iter().map(|r| r.site_fluxes.to_string()).collect::<Vec<_>>())
        .bind(f.iter().map(|r| r.params.to_string()).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await?
        .rows_affected();

    let v = &b.verdicts;
    // Not a prepared statement kept on the connection: its generic plan, made while the tables
    // were small, scans every earlier verdict once the season has grown (250 ms a step by the end
    // of a demo replay on a long-lived connection, 3 ms planned afresh).
    let verdicts = sqlx::query(INSERT_VERDICTS)
        .persistent(false)
        .bind(v.iter().map(|r| r.candidate_id.clone()).collect::<Vec<_>>())
        .bind(v.iter().map(|r| r.model_sha256.clone()).collect::<Vec<_>>())
        .bind(v.iter().map(|r| r.p_yes).collect::<Vec<_>>())
        .bind(v.iter().map(|r| r.p_maybe).collect::<Vec<_>>())
        .bind(v.iter().map(|r| r.p_no).collect::<Vec<_>>())
        .bind(v.iter().map(|r| r.binary_score).collect::<Vec<_>>())
        .bind(v.iter().map(|r| r.verdict.clone()).collect::<Vec<_>>())
        .bind(v.iter().map(|r| r.threshold_purity).collect::<Vec<_>>())
        .bind(v.iter().map(|r| r.threshold_recall).collect::<Vec<_>>())
        .bind(v.iter().map(|r| r.evidence.to_string()).collect::<Vec<_>>())
        .bind(b.run_id)
        .bind(b.replay_id)
        .execute(&mut **tx)
        .await?
        .rows_affected();

    Ok(PublishOutcome { candidates, fits, verdicts, attempts: 0 })
}

// ---------------------------------------------------------------------------------------------
// Audit: runs and stage attempts.

/// A DAG run as recorded in `runs`.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    pub run_id: Uuid,
    /// `run`, `replay`, `demo`, `ingest` or `serve`.
    pub kind: String,
    pub field: Option<String>,
    pub as_of_hjd: Option<f64>,
    pub replay_id: Option<Uuid>,
    pub config_hash: String,
    pub model_sha256: Option<String>,
}

/// Final state of a run or an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Succeeded,
    Failed,
    Abandoned,
    /// Attempts only: the stage had nothing to do.
    Skipped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Abandoned => "abandoned",
            Status::Skipped => "skipped",
        }
    }
}

/// Record the start of a run. Idempotent by `run_id`: beginning it again (a resume) keeps the
/// row and, if it had failed or been abandoned, marks it running again.
pub async fn begin_run(pool: &PgPool, run: &RunRecord, policy: &RetryPolicy) -> Result<(), PublishError> {
    let what = format!("recording the start of run {}", run.run_id);
    with_retry(policy, &what, || {
        sqlx::query(
            "INSERT INTO runs (run_id, kind, field, as_of_hjd, replay_id, config_hash, model_sha256) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (run_id) DO UPDATE SET status = 'running', finished_at = NULL, error = NULL \
             WHERE runs.status IN ('failed', 'abandoned')",
        )
        .bind(run.run_id)
        .bind(&run.kind)
        .bind(&run.field)
        .bind(run.as_of_hjd)
        .bind(run.replay_id)
        .bind(&run.config_hash)
        .bind(&run.model_sha256)
        .execute(pool)
    })
    .await?;
    Ok(())
}

/// Record the end of a run (`Skipped` is stored as `succeeded`). Finishing it again with the
/// same status changes nothing (the first `finished_at` is kept).
pub async fn finish_run(pool: &PgPool, run_id: Uuid, status: Status, error: Option<&str>, policy: &RetryPolicy) -> Result<(), PublishError> {
    let status = if status == Status::Skipped { Status::Succeeded } else { status };
    let what = format!("recording the end of run {run_id}");
    let (done, _) = with_retry(policy, &what, || {
        sqlx::query(
            "UPDATE runs SET status = $2, error = $3, \
             finished_at = CASE WHEN status = $2 AND finished_at IS NOT NULL THEN finished_at ELSE now() END \
             WHERE run_id = $1",
        )
        .bind(run_id)
        .bind(status.as_str())
        .bind(error)
        .execute(pool)
    })
    .await?;
    if done.rows_affected() == 0 {
        return Err(PublishError::UnknownRun { run_id });
    }
    Ok(())
}

/// The start of one stage attempt (`stage_attempts`, status `running`).
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptStart {
    pub run_id: Uuid,
    /// `Stage::name()`.
    pub stage: String,
    /// The field, or empty for stages that are not per field.
    pub field: String,
    /// 1 for the first attempt; see [`next_attempt`].
    pub attempt: i32,
    /// What the attempt reads (object keys, ...).
    pub inputs: serde_json::Value,
    pub config_hash: String,
}

/// The end of one stage attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptEnd {
    pub status: Status,
    pub rows_in: Option<i64>,
    pub rows_out: Option<i64>,
    pub outputs: serde_json::Value,
    /// Wall time; None = from the row's `started_at` to now.
    pub duration_ms: Option<i64>,
    pub error: Option<String>,
    /// Whether a retry could help (StageError::is_retryable); None when it succeeded.
    pub retryable: Option<bool>,
    pub model_sha256: Option<String>,
    pub execution_provider: Option<String>,
    pub runtime_version: Option<String>,
    /// Stage-specific details (StageReport::details), merged into `outputs` under `details`.
    pub details: serde_json::Map<String, serde_json::Value>,
}

impl AttemptEnd {
    /// A successful attempt from its report; the scorer's details (`model_sha256`,
    /// `execution_provider`, `runtime_version`) also fill their own columns.
    pub fn from_report(report: &StageReport, duration: Option<Duration>) -> AttemptEnd {
        let s = |k: &str| report.details.get(k).and_then(|v| v.as_str()).map(str::to_string);
        AttemptEnd {
            status: Status::Succeeded,
            rows_in: i64::try_from(report.rows_in).ok(),
            rows_out: i64::try_from(report.rows_out).ok(),
            outputs: report.outputs.clone(),
            duration_ms: duration.map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            error: None,
            retryable: None,
            model_sha256: s("model_sha256"),
            execution_provider: s("execution_provider"),
            runtime_version: s("runtime_version"),
            details: report.details.clone(),
        }
    }

    /// A failed attempt.
    pub fn failed(error: impl Into<String>, retryable: bool, duration: Option<Duration>) -> AttemptEnd {
        AttemptEnd {
            status: Status::Failed,
            rows_in: None,
            rows_out: None,
            outputs: serde_json::json!({}),
            duration_ms: duration.map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            error: Some(error.into()),
            retryable: Some(retryable),
            model_sha256: None,
            execution_provider: None,
            runtime_version: None,
            details: serde_json::Map::new(),
        }
    }
}

/// The attempt number that the next try of this stage should use (1 + the highest recorded).
pub async fn next_attempt(pool: &PgPool, run_id: Uuid, stage: &str, field: &str) -> Result<i32, PublishError> {
    let what = format!("reading attempts of {stage}/{field} in run {run_id}");
    let (n, _) = with_retry(&RetryPolicy::default(), &what, || {
        sqlx::query_scalar::<_, i32>("SELECT COALESCE(max(attempt), 0) + 1 FROM stage_attempts WHERE run_id = $1 AND stage = $2 AND field = $3")
            .bind(run_id)
            .bind(stage)
            .bind(field)
            .fetch_one(pool)
    })
    .await?;
    Ok(n)
}

/// Record the start of a stage attempt. Idempotent by `(run_id, stage, field, attempt)`.
pub async fn begin_attempt(pool: &PgPool, a: &AttemptStart, policy: &RetryPolicy) -> Result<(), PublishError> {
    let what = format!("recording the start of {}/{}#{} in run {}", a.stage, a.field, a.attempt, a.run_id);
    let (done, _) = with_retry(policy, &what, || {
        sqlx::query(
            "INSERT INTO stage_attempts (run_id, stage, field, attempt, inputs, config_hash) \
             SELECT $1, $2, $3, $4, $5::text::jsonb, $6 WHERE EXISTS (SELECT 1 FROM runs WHERE run_id = $1) \
             ON CONFLICT (run_id, stage, field, attempt) DO NOTHING",
        )
        .bind(a.run_id)
        .bind(&a.stage)
        .bind(&a.field)
        .bind(a.attempt)
        .bind(a.inputs.to_string())
        .bind(&a.config_hash)
        .execute(pool)
    })
    .await?;
    if done.rows_affected() == 0 {
        // Either already begun (fine) or the run is missing (a bug in the caller).
        let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM runs WHERE run_id = $1)")
            .bind(a.run_id)
            .fetch_one(pool)
            .await
            .map_err(|source| PublishError::Database { what, attempts: 1, source })?;
        if !exists {
            return Err(PublishError::UnknownRun { run_id: a.run_id });
        }
    }
    Ok(())
}

/// Record the end of a stage attempt. Finishing it again with the same values changes nothing
/// (the first `finished_at` and duration are kept).
pub async fn finish_attempt(pool: &PgPool, run_id: Uuid, stage: &str, field: &str, attempt: i32, end: &AttemptEnd, policy: &RetryPolicy) -> Result<(), PublishError> {
    let mut outputs = end.outputs.clone();
    if !end.details.is_empty() {
        if let serde_json::Value::Object(m) = &mut outputs {
            m.insert("details".into(), serde_json::Value::Object(end.details.clone()));
        } else {
            outputs = serde_json::json!({ "outputs": outputs, "details": end.details });
        }
    }
    let outputs = outputs.to_string();
    let what = format!("recording the end of {stage}/{field}#{attempt} in run {run_id}");
    let (done, _) = with_retry(policy, &what, || {
        sqlx::query(
            "UPDATE stage_attempts SET status = $5, rows_in = $6, rows_out = $7, outputs = $8::text::jsonb, \
               error = $9, retryable = $10, \
               model_sha256 = COALESCE($11, model_sha256), execution_provider = COALESCE($12, execution_provider), \
               runtime_version = COALESCE($13, runtime_version), \
               finished_at = CASE WHEN status = $5 AND finished_at IS NOT NULL THEN finished_at ELSE now() END, \
               duration_ms = CASE WHEN status = $5 AND duration_ms IS NOT NULL THEN duration_ms \
                             ELSE COALESCE($14, (extract(epoch FROM (now() - started_at)) * 1000)::bigint) END \
             WHERE run_id = $1 AND stage = $2 AND field = $3 AND attempt = $4",
        )
        .bind(run_id)
        .bind(stage)
        .bind(field)
        .bind(attempt)
        .bind(end.status.as_str())
        .bind(end.rows_in)
        .bind(end.rows_out)
        .bind(&outputs)
        .bind(&end.error)
        .bind(end.retryable)
        .bind(&end.model_sha256)
        .bind(&end.execution_provider)
        .bind(&end.runtime_version)
        .bind(end.duration_ms)
        .execute(pool)
    })
    .await?;
    if done.rows_affected() == 0 {
        return Err(PublishError::UnknownAttempt { run_id, stage: stage.into(), field: field.into(), attempt });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(id: &str, field: &str) -> CandidateRow {
        CandidateRow {
            candidate_id: id.into(),
            star_id: "S".into(),
            field: field.into(),
            as_of_hjd: 1.0,
            sites: vec!["KMTC".into()],
            n_points: 1,
            n_high: 1,
            dchi2_broken: 1.0,
            t_rise: None,
            diagnosis: serde_json::json!({}),
        }
    }

    #[test]
    fn batches_with_dangling_or_foreign_rows_are_refused() {
        let mut b = PublishBatch { field: "BLG14".into(), candidates: vec![cand("a", "BLG14")], ..Default::default() };
        assert!(validate(&b).is_ok());
        b.fits.push(FitRow {
            candidate_id: "zzz".into(),
            kind: "pspl_grid".into(),
            dchi2: 1.0,
            t0: None,
            teff: None,
            regime: None,
            t_rise: None,
            slope: None,
            site_fluxes: serde_json::json!({}),
            params: serde_json::json!({}),
        });
        let e = validate(&b).unwrap_err();
        assert!(e.to_string().contains("zzz") && !e.is_retryable(), "{e}");
        b.fits.clear();
        b.candidates.push(cand("b", "BLG02"));
        assert!(validate(&b).unwrap_err().to_string().contains("field BLG02"));
    }

    #[test]
    fn candidate_ids_are_deterministic() {
        assert_eq!(candidate_id("BLG14", "BLG14-K-7", 9876.543_21), "BLG14:BLG14-K-7:9876.54321");
        assert_eq!(candidate_id("BLG14", "BLG14-K-7", 9876.543_21), candidate_id("BLG14", "BLG14-K-7", 9876.543_210_000_1));
    }
}

/// The example queries of `sql/` (the views themselves are created by a migration).
pub mod queries {
    /// `$1` field, `$2` limit: the newest "yes" alerts of a field.
    pub const NEWEST_YES_ALERTS_FOR_FIELD: &str = include_str!("../../sql/query_newest_yes_alerts_for_field.sql");
    /// `$1` star_id: the star's verdicts across models and time.
    pub const STAR_HISTORY: &str = include_str!("../../sql/query_star_history.sql");
}

/// Whose runs [`abandon_running`] may mark: the caller holds the lock that every such run holds
/// while it lives, so any of them still `running` belongs to a dead process.
#[derive(Debug, Clone, Copy)]
pub enum DeadRuns<'a> {
    /// The runs of a field (the caller holds the field's lock).
    Field(&'a str),
    /// Standalone ingests, kind `ingest` (the caller holds the store's writer lock, which every
    /// standalone ingest takes before it records its run).
    Ingests,
}

/// Marks the runs of `scope` still `running`, and their attempts, as `abandoned`. Returns the
/// runs marked.
pub async fn abandon_running(pool: &PgPool, scope: DeadRuns<'_>) -> Result<u64, sqlx::Error> {
    // NULL: the standalone ingests; else the field.
    let field: Option<&str> = match scope {
        DeadRuns::Field(f) => Some(f),
        DeadRuns::Ingests => None,
    };
    // One statement, so one round trip at every field run (a replay makes hundreds).
    let (runs, attempts): (i64, i64) = sqlx::query_as(
        "WITH r AS ( \
             UPDATE runs SET status = 'abandoned', finished_at = now(), \
                 error = COALESCE(error, 'the process running this run stopped before it ended') \
             WHERE status = 'running' AND (CASE WHEN $1::text IS NULL THEN kind = 'ingest' ELSE field = $1 END) \
             RETURNING run_id), \
         a AS ( \
             UPDATE stage_attempts SET status = 'abandoned', finished_at = now(), \
                 error = COALESCE(error, 'the process running this attempt stopped before it ended') \
             WHERE status = 'running' AND run_id IN (SELECT run_id FROM r) \
             RETURNING 1) \
         SELECT (SELECT count(*) FROM r), (SELECT count(*) FROM a)",
    )
    .bind(field)
    .fetch_one(pool)
    .await?;
    let runs = runs as u64;
    if runs > 0 {
        info!(?scope, runs, attempts, "runs left running by a dead process marked abandoned");
    }
    Ok(runs)
}
