//! `lensnet run --field BLG14 [--as-of TIME]`: one DAG run for one field (ingest of new inbox
//! files, alertfinder, score, publish) under the field's lock.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use lensnet::config::Config;
use lensnet::fieldrun::{now_hjd, FieldRun, FieldRunError, Plan};
use lensnet::runner::StageOutcome;
use lensnet::{app, db};
use lensnet_stages::ingest::season_of;
use lensnet_stages::Field;

use crate::cli::RunArgs;

/// Exit status when another run of the field holds its lock (EX_TEMPFAIL).
pub const EXIT_BUSY: u8 = 75;

pub async fn run(cfg: Config, args: RunArgs) -> anyhow::Result<ExitCode> {
    let field: Field = args.field.parse().map_err(|e: String| anyhow::anyhow!(e)).context("--field")?;
    let as_of = args.as_of.unwrap_or_else(now_hjd);
    let season = args.season.unwrap_or_else(|| season_of(as_of));
    let pool = db::open(&cfg).await?;
    let scorer = Arc::new(app::scorer(&cfg, None).context("loading the model")?);
    let runner = app::field_runner(&cfg, pool, scorer).context("setting up the field runner")?;
    match runner.run("run", Plan::Live, field, season, as_of, None, &runner.live_cache()).await {
        Ok(run) => {
            print_run(&run);
            lensnet::print_peak_rss();
            Ok(if run.outcome.succeeded() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Err(FieldRunError::Busy(f)) => {
            eprintln!("another run of {f} is in progress; nothing was done");
            Ok(ExitCode::from(EXIT_BUSY))
        }
        Err(e) => Err(e.into()),
    }
}

/// One line per stage.
pub fn print_run(run: &FieldRun) {
    println!("run {} field {} as of {:.5}", run.run_id, run.field, run.as_of);
    for (name, o) in &run.outcome.stages {
        let line = match o {
            StageOutcome::Succeeded { attempts, report } => {
                format!("ok       in {} out {} ({} attempt(s))", report.rows_in, report.rows_out, attempts)
            }
            StageOutcome::UpToDate => "up to date (an earlier attempt of this run)".to_string(),
            StageOutcome::Failed { attempts, error, retryable } => {
                format!("FAILED   after {attempts} attempt(s){}: {error}", if *retryable { " (transient)" } else { "" })
            }
            StageOutcome::Blocked { by } => format!("blocked  by {by}"),
        };
        println!("  {name:<12} {line}");
    }
    println!("{}", summary_line(run));
}

/// One line a person reads: what the run found.
pub fn summary_line(run: &FieldRun) -> String {
    let n = |stage: &str, f: &dyn Fn(&lensnet_stages::StageReport) -> u64| run.report(stage).map(f);
    let stars = n("alertfinder", &|r| r.rows_in);
    let candidates = n("alertfinder", &|r| r.rows_out);
    let detail = |k: &str| run.report("score").and_then(|r| r.details.get(k)).and_then(|v| v.as_u64());
    let ingested = n("ingest", &|r| r.rows_out);
    let mut parts = Vec::new();
    if let Some(rows) = ingested {
        parts.push(format!("{rows} new epochs ingested"));
    }
    match (stars, candidates) {
        (Some(s), Some(c)) => parts.push(format!("{s} stars searched, {c} candidate(s)")),
        _ => parts.push("search up to date".to_string()),
    }
    if let (Some(y), Some(m)) = (detail("yes"), detail("maybe")) {
        parts.push(format!("{y} yes, {m} maybe"));
    }
    if let Some(d) = &run.notified {
        parts.push(format!("webhooks: {} new alert(s), {} delivered, {} failed", d.queued, d.delivered, d.failed));
    }
    let status = if run.outcome.succeeded() { "done" } else { "FAILED" };
    format!("{status}: {} as of {:.2}: {}", run.field, run.as_of, parts.join("; "))
}
