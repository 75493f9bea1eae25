//! `lensnet ingest`: survey files into the photometry dataset, with the file ledger in
//! PostgreSQL. Bad files are quarantined and named; the rest of the batch goes on.

use std::process::ExitCode;

use anyhow::Context;
use lensnet::config::Config;
use lensnet::ledger::PgLedger;
use lensnet::{app, db, publish};
use lensnet_stages::ingest::ledger::FileLedger;
use lensnet_stages::ingest::{ingest_location_locked, CompactionPolicy, FileOutcome, Format, IngestOptions};

use crate::cli::IngestArgs;

pub async fn run(cfg: Config, args: IngestArgs) -> anyhow::Result<ExitCode> {
    let format: Format = args.format.parse().map_err(|e: String| anyhow::anyhow!(e))?;
    let (opened, photometry) = app::photometry(&cfg).context("opening the object store")?;
    let pool = db::open(&cfg).await?;
    let ledger = PgLedger::new(pool.clone());
    let opts = IngestOptions { format, compaction: Some(CompactionPolicy::default()), ..Default::default() };
    // The store's writer lock first: then every other ingest run still marked running belongs
    // to a process that died, and ours is recorded only once it can go ahead.
    let writer = ledger.lock_writer(&photometry.identity()).await?;
    publish::abandon_running(&pool, publish::DeadRuns::Ingests).await?;
    // The audit trail: a standalone ingest is a run of kind `ingest` with one attempt.
    let run_id = uuid::Uuid::new_v4();
    let retry = publish::RetryPolicy::default();
    let record = publish::RunRecord {
        run_id,
        kind: "ingest".into(),
        field: None,
        as_of_hjd: None,
        replay_id: None,
        config_hash: cfg.hash.clone(),
        model_sha256: None,
    };
    publish::begin_run(&pool, &record, &retry).await?;
    let start = publish::AttemptStart {
        run_id,
        stage: "ingest".into(),
        field: String::new(),
        attempt: 1,
        inputs: serde_json::json!({ "input": args.input, "format": args.format }),
        config_hash: cfg.hash.clone(),
    };
    publish::begin_attempt(&pool, &start, &retry).await?;
    let started = std::time::Instant::now();
    let result = ingest_location_locked(&args.input, &photometry, &ledger, &opts, &writer).await;
    let end = match &result {
        Ok(r) => {
            let mut end = publish::AttemptEnd::from_report(
                &lensnet_stages::StageReport {
                    rows_in: r.files.len() as u64,
                    rows_out: r.rows_added(),
                    inputs: serde_json::Value::Null,
                    outputs: serde_json::json!({
                        "objects": [],
                        "files": r.files.len(),
                        "quarantined": r.quarantined(),
                        "failed": r.failed(),
                        "skipped_entries": r.skipped_entries,
                        "compactions": r.compactions.len(),
                        "orphans_removed": r.orphans_removed,
                    }),
                    details: serde_json::Map::new(),
                },
                Some(started.elapsed()),
            );
            if r.failed() > 0 {
                end.status = publish::Status::Failed;
                end.error = Some(format!("{} file(s) failed; the next ingest retries them", r.failed()));
                end.retryable = Some(true);
            }
            end
        }
        Err(e) => publish::AttemptEnd::failed(e.to_string(), e.is_retryable(), Some(started.elapsed())),
    };
    publish::finish_attempt(&pool, run_id, "ingest", "", 1, &end, &retry).await?;
    publish::finish_run(&pool, run_id, end.status, end.error.as_deref(), &retry).await?;
    drop(writer);
    let report = result.with_context(|| format!("ingesting {}", args.input))?;

    for e in &report.skipped_entries {
        println!("skipped      {e}");
    }
    let mut unchanged = 0;
    for f in &report.files {
        match &f.outcome {
            FileOutcome::Unchanged => unchanged += 1,
            FileOutcome::Ingested { rows, skipped, deferred_line } => {
                let deferred = deferred_line.map(|l| format!(", line {l} unterminated: waits for the next run")).unwrap_or_default();
                println!("ingested     {:>7} rows  {} ({skipped} blank/comment lines){deferred}", rows, f.path);
            }
            FileOutcome::Quarantined { reason, copy } => println!("quarantined  {}: {reason} (copy: {copy})", f.path),
            FileOutcome::Conflict { reason, copy } => println!("conflict     {}: {reason} (copy: {copy})", f.path),
            FileOutcome::Failed { error, retryable } => {
                println!("failed       {}: {error}{}", f.path, if *retryable { " (will be retried)" } else { "" })
            }
        }
    }
    println!(
        "{} file(s): {} rows added, {} unchanged, {} quarantined, {} failed, {} entr(y/ies) skipped; {} partition(s) compacted, {} orphan part(s) removed; store {}",
        report.files.len(),
        report.rows_added(),
        unchanged,
        report.quarantined(),
        report.failed(),
        report.skipped_entries.len(),
        report.compactions.len(),
        report.orphans_removed,
        opened.location
    );
    Ok(if report.failed() > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}
