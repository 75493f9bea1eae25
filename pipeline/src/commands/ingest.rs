//! `lensnet ingest`: survey files into the photometry dataset, with the file ledger in
//! PostgreSQL. Bad files are quarantined and named; the rest of the batch goes on.

use std::process::ExitCode;

use anyhow::Context;
use lensnet::config::Config;
use lensnet::ledger::PgLedger;
use lensnet::{app, db};
use lensnet_stages::ingest::{ingest_location, CompactionPolicy, FileOutcome, Format, IngestOptions};

use crate::cli::IngestArgs;

pub async fn run(cfg: Config, args: IngestArgs) -> anyhow::Result<ExitCode> {
    let format: Format = args.format.parse().map_err(|e: String| anyhow::anyhow!(e))?;
    let (opened, photometry) = app::photometry(&cfg).context("opening the object store")?;
    let pool = db::open(&cfg).await?;
    let ledger = PgLedger::new(pool);
    let opts = IngestOptions { format, compaction: Some(CompactionPolicy::default()), ..Default::default() };
    let report = ingest_location(&args.input, &photometry, &ledger, &opts)
        .await
        .with_context(|| format!("ingesting {}", args.input))?;

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
        "{} file(s): {} rows added, {} unchanged, {} quarantined, {} failed; {} partition(s) compacted; store {}",
        report.files.len(),
        report.rows_added(),
        unchanged,
        report.quarantined(),
        report.failed(),
        report.compactions.len(),
        opened.location
    );
    Ok(if report.failed() > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}
