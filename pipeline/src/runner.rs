//! Runs a validated DAG for one field: each stage attempt gets an audit row, transient failures
//! retry with backoff, a failed stage stops its dependants (not other fields), and a re-run of the
//! same run id resumes from the first stage whose outputs are missing or stale.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use lensnet_stages::{RunCtx, StageError, StageReport};
use tracing::{info, warn};

use crate::dag::Dag;

/// Retry policy for transient stage failures.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { max_attempts: 3, base_delay: Duration::from_millis(500), max_delay: Duration::from_secs(30) }
    }
}

impl RetryPolicy {
    /// Exponential backoff: base, 2·base, 4·base, ... capped at max_delay.
    pub fn delay(&self, failed_attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(failed_attempt.saturating_sub(1));
        self.base_delay.saturating_mul(factor).min(self.max_delay)
    }
}

/// What happened to one stage in a run.
#[derive(Debug, Clone, PartialEq)]
pub enum StageOutcome {
    Succeeded { attempts: u32, report: StageReport },
    /// A previous attempt of this run succeeded, its outputs still exist and nothing upstream ran
    /// again: nothing to do.
    UpToDate,
    Failed { attempts: u32, error: String, retryable: bool },
    /// Not run because a stage it depends on failed.
    Blocked { by: &'static str },
}

impl StageOutcome {
    pub fn is_failure(&self) -> bool {
        matches!(self, StageOutcome::Failed { .. } | StageOutcome::Blocked { .. })
    }
}

/// The result of a DAG run: one outcome per stage, in DAG order.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub stages: Vec<(&'static str, StageOutcome)>,
}

impl RunOutcome {
    pub fn succeeded(&self) -> bool {
        !self.stages.iter().any(|(_, o)| o.is_failure())
    }

    /// The first failure's message, for the run's row.
    pub fn first_error(&self) -> Option<String> {
        self.stages.iter().find_map(|(name, o)| match o {
            StageOutcome::Failed { error, .. } => Some(format!("stage {name}: {error}")),
            _ => None,
        })
    }
}

/// Where stage attempts are recorded (PostgreSQL's `stage_attempts` in production).
#[async_trait]
pub trait AttemptLog: Send + Sync {
    /// A previous successful attempt of `stage` in this run, with its report, if any.
    async fn succeeded_before(&self, ctx: &RunCtx, stage: &'static str) -> Result<Option<StageReport>, String>;
    /// Whether every output object that `report` lists still exists.
    async fn outputs_exist(&self, ctx: &RunCtx, report: &StageReport) -> Result<bool, String>;
    /// Attempts of `stage` already recorded in this run (attempt numbers continue across
    /// invocations of the same run, so audit keys never collide).
    async fn attempts_so_far(&self, ctx: &RunCtx, stage: &'static str) -> Result<u32, String>;
    async fn begin(&self, ctx: &RunCtx, stage: &'static str, attempt: u32) -> Result<(), String>;
    async fn finish(
        &self,
        ctx: &RunCtx,
        stage: &'static str,
        attempt: u32,
        elapsed: Duration,
        result: &Result<StageReport, StageError>,
    ) -> Result<(), String>;
}

/// The key of a stage's input digest (`Stage::input_digest`) in its report's `outputs`.
pub const INPUT_DIGEST: &str = "input_digest";

/// Kept in the report's `outputs` (the audit row stores them when the attempt ends).
fn record_digest(report: &mut StageReport, digest: &str) {
    if !report.outputs.is_object() {
        let previous = std::mem::take(&mut report.outputs);
        report.outputs = serde_json::json!({});
        if !previous.is_null() {
            report.outputs["value"] = previous;
        }
    }
    report.outputs[INPUT_DIGEST] = serde_json::json!(digest);
}

/// Run every stage of `dag` for `ctx.field`, in order.
pub async fn run_dag(dag: &Dag, ctx: &RunCtx, log: &dyn AttemptLog, retry: &RetryPolicy) -> RunOutcome {
    let mut outcomes: Vec<(&'static str, StageOutcome)> = Vec::with_capacity(dag.stages().len());
    // Stages that did work in this invocation: their dependants' earlier outputs are stale.
    let mut ran: BTreeSet<usize> = BTreeSet::new();
    for (i, stage) in dag.stages().iter().enumerate() {
        let name = stage.name();
        if let Some(&blocker) = dag.upstream(i).iter().find(|&&u| outcomes[u].1.is_failure()) {
            let by = outcomes[blocker].0;
            warn!(field = %ctx.field, stage = name, blocked_by = by, "stage not run: a stage it needs failed");
            outcomes.push((name, StageOutcome::Blocked { by }));
            continue;
        }
        let upstream_ran = dag.upstream(i).iter().any(|u| ran.contains(u));
        // What the stage reads from outside the run (photometry); a change makes an earlier
        // success stale. A digest that cannot be computed is left to the stage's run to report.
        let digest = match stage.input_digest(ctx).await {
            Ok(d) => d,
            Err(e) => {
                warn!(field = %ctx.field, stage = name, error = %e, "cannot compute the stage's input digest");
                None
            }
        };
        if !upstream_ran {
            match log.succeeded_before(ctx, name).await {
                Ok(Some(report)) if digest.is_some() && report.outputs.get(INPUT_DIGEST).and_then(|v| v.as_str()) != digest.as_deref() => {
                    info!(field = %ctx.field, stage = name, "the stage's inputs changed since its last success, running again");
                }
                Ok(Some(report)) => match log.outputs_exist(ctx, &report).await {
                    Ok(true) => {
                        info!(field = %ctx.field, stage = name, "stage up to date, skipped");
                        outcomes.push((name, StageOutcome::UpToDate));
                        continue;
                    }
                    Ok(false) => info!(field = %ctx.field, stage = name, "outputs of an earlier attempt are missing, running again"),
                    Err(e) => warn!(field = %ctx.field, stage = name, error = %e, "cannot check earlier outputs, running again"),
                },
                Ok(None) => {}
                Err(e) => warn!(field = %ctx.field, stage = name, error = %e, "cannot read earlier attempts, running"),
            }
        }
        let first_attempt = 1 + log.attempts_so_far(ctx, name).await.unwrap_or_else(|e| {
            warn!(field = %ctx.field, stage = name, error = %e, "cannot count earlier attempts");
            0
        });
        let mut attempt = first_attempt;
        let outcome = loop {
            if let Err(e) = log.begin(ctx, name, attempt).await {
                break StageOutcome::Failed { attempts: attempt - first_attempt + 1, error: format!("cannot record the attempt: {e}"), retryable: true };
            }
            let started = Instant::now();
            let mut result = stage.run(ctx).await;
            if let (Ok(report), Some(d)) = (&mut result, &digest) {
                record_digest(report, d);
            }
            // The process's peak so far (it only grows): the first stage whose figure is the
            // run's peak is the one that reached it (`lensnet bench field` prints it per stage).
            if let (Ok(report), Some(mb)) = (&mut result, crate::peak_rss_mb()) {
                report.details.insert("process_peak_rss_mb".to_string(), serde_json::json!(mb.round() as u64));
            }
            let elapsed = started.elapsed();
            if let Err(e) = log.finish(ctx, name, attempt, elapsed, &result).await {
                warn!(field = %ctx.field, stage = name, error = %e, "cannot record the attempt's end");
            }
            let tries = attempt - first_attempt + 1;
            match result {
                Ok(report) => {
                    info!(field = %ctx.field, stage = name, attempt, rows_in = report.rows_in, rows_out = report.rows_out,
                          ms = elapsed.as_millis() as u64, "stage finished");
                    break StageOutcome::Succeeded { attempts: tries, report };
                }
                Err(e) if e.is_retryable() && tries < retry.max_attempts => {
                    let delay = retry.delay(tries);
                    warn!(field = %ctx.field, stage = name, attempt, error = %e, retry_in_ms = delay.as_millis() as u64, "stage failed, retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(e) => {
                    warn!(field = %ctx.field, stage = name, attempt, error = %e, "stage failed");
                    break StageOutcome::Failed { attempts: tries, error: e.to_string(), retryable: e.is_retryable() };
                }
            }
        };
        if matches!(outcome, StageOutcome::Succeeded { .. }) {
            ran.insert(i);
        }
        outcomes.push((name, outcome));
    }
    RunOutcome { stages: outcomes }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dag::build_dag;
    use lensnet_stages::{Dataset, Field, Stage};
    use object_store::memory::InMemory;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::{Arc, Mutex};

    /// A stage that fails `fail_times` times (transiently or not) and then succeeds.
    struct Flaky {
        name: &'static str,
        reads: &'static [Dataset],
        writes: &'static [Dataset],
        fail_times: u32,
        transient: bool,
        calls: AtomicU32,
    }

    #[async_trait]
    impl Stage for Flaky {
        fn name(&self) -> &'static str {
            self.name
        }
        fn reads(&self) -> &'static [Dataset] {
            self.reads
        }
        fn writes(&self) -> &'static [Dataset] {
            self.writes
        }
        async fn run(&self, _ctx: &RunCtx) -> Result<StageReport, StageError> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            if n < self.fail_times {
                let message = format!("failure {}", n + 1);
                return Err(if self.transient {
                    StageError::Transient { stage: self.name, message }
                } else {
                    StageError::Permanent { stage: self.name, message }
                });
            }
            Ok(StageReport { rows_out: 1, ..Default::default() })
        }
    }

    fn flaky(name: &'static str, reads: &'static [Dataset], writes: &'static [Dataset], fail_times: u32, transient: bool) -> Arc<Flaky> {
        Arc::new(Flaky { name, reads, writes, fail_times, transient, calls: AtomicU32::new(0) })
    }

    /// An in-memory attempt log (the PostgreSQL one is tested in tests/it).
    #[derive(Default)]
    struct MemLog {
        rows: Mutex<Vec<(&'static str, u32, bool)>>,
    }

    #[async_trait]
    impl AttemptLog for MemLog {
        async fn succeeded_before(&self, _ctx: &RunCtx, stage: &'static str) -> Result<Option<StageReport>, String> {
            let rows = self.rows.lock().unwrap();
            Ok(rows.iter().any(|(s, _, ok)| *s == stage && *ok).then(StageReport::default))
        }
        async fn outputs_exist(&self, _ctx: &RunCtx, _report: &StageReport) -> Result<bool, String> {
            Ok(true)
        }
        async fn attempts_so_far(&self, _ctx: &RunCtx, stage: &'static str) -> Result<u32, String> {
            Ok(self.rows.lock().unwrap().iter().filter(|(s, _, _)| *s == stage).count() as u32)
        }
        async fn begin(&self, _ctx: &RunCtx, stage: &'static str, attempt: u32) -> Result<(), String> {
            let rows = self.rows.lock().unwrap();
            assert!(!rows.iter().any(|(s, a, _)| *s == stage && *a == attempt), "attempt {attempt} of {stage} recorded twice");
            Ok(())
        }
        async fn finish(&self, _ctx: &RunCtx, stage: &'static str, attempt: u32, _e: Duration, r: &Result<StageReport, StageError>) -> Result<(), String> {
            self.rows.lock().unwrap().push((stage, attempt, r.is_ok()));
            Ok(())
        }
    }

    fn ctx() -> RunCtx {
        RunCtx {
            run_id: "r".into(),
            field: Field(14),
            season: 2025,
            as_of: None,
            store: Arc::new(InMemory::new()),
            root: object_store::path::Path::from("root"),
        }
    }

    const FAST: RetryPolicy = RetryPolicy { max_attempts: 3, base_delay: Duration::from_millis(1), max_delay: Duration::from_millis(2) };

    use Dataset::*;

    #[tokio::test]
    async fn transient_failures_retry_and_permanent_ones_block_only_dependants() {
        let a = flaky("ingest", &[RawFiles], &[Photometry], 2, true);
        let b = flaky("alertfinder", &[Photometry], &[Candidates], 1, false);
        let c = flaky("score", &[Candidates], &[Verdicts], 0, false);
        let d = flaky("side", &[Photometry], &[Tensors], 0, false);
        let dag = build_dag(vec![a.clone(), b.clone(), c.clone(), d.clone()], &[RawFiles]).unwrap();
        let log = MemLog::default();
        let out = run_dag(&dag, &ctx(), &log, &FAST).await;
        assert!(matches!(out.stages[0].1, StageOutcome::Succeeded { attempts: 3, .. }), "{:?}", out.stages[0]);
        assert!(matches!(&out.stages[1].1, StageOutcome::Failed { attempts: 1, retryable: false, .. }));
        assert_eq!(out.stages[2].1, StageOutcome::Blocked { by: "alertfinder" });
        assert!(matches!(out.stages[3].1, StageOutcome::Succeeded { .. }), "an independent branch still runs");
        assert_eq!(c.calls.load(Ordering::SeqCst), 0);
        assert!(!out.succeeded());
        assert_eq!(out.first_error().unwrap(), "stage alertfinder: stage alertfinder failed: failure 1");

        // Re-run: ingest and side are up to date; alertfinder now succeeds; score runs.
        let out = run_dag(&dag, &ctx(), &log, &FAST).await;
        assert_eq!(out.stages[0].1, StageOutcome::UpToDate);
        assert!(matches!(out.stages[1].1, StageOutcome::Succeeded { .. }));
        assert!(matches!(out.stages[2].1, StageOutcome::Succeeded { .. }));
        assert_eq!(out.stages[3].1, StageOutcome::UpToDate);
        assert_eq!(a.calls.load(Ordering::SeqCst), 3, "ingest not run again");
        assert!(out.succeeded());
    }

    #[tokio::test]
    async fn retries_stop_at_the_limit() {
        let a = flaky("ingest", &[RawFiles], &[Photometry], 10, true);
        let dag = build_dag(vec![a.clone()], &[RawFiles]).unwrap();
        let out = run_dag(&dag, &ctx(), &MemLog::default(), &FAST).await;
        assert!(matches!(out.stages[0].1, StageOutcome::Failed { attempts: 3, retryable: true, .. }));
        assert_eq!(a.calls.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let p = RetryPolicy { max_attempts: 9, base_delay: Duration::from_millis(100), max_delay: Duration::from_millis(500) };
        let d: Vec<u64> = (1..=5).map(|k| p.delay(k).as_millis() as u64).collect();
        assert_eq!(d, vec![100, 200, 400, 500, 500]);
    }
}
