//! `lensnet store {check,repair}`: crash debris on the photometry store. A writer killed at the
//! wrong moment, or a database outage in the middle of an ingest, can leave part objects that no
//! manifest lists (a glob read sees their rows twice), and a partition whose small parts were
//! never compacted; a part deleted by hand or by a faulty tool leaves a manifest that lists a
//! missing object. `check` reports them; `repair` fixes them under the store's writer lock.

use std::process::ExitCode;

use anyhow::Context;
use lensnet::config::Config;
use lensnet::ledger::PgLedger;
use lensnet::{app, db};
use lensnet_stages::ingest::ledger::FileLedger;
use lensnet_stages::ingest::CompactionPolicy;

use crate::cli::StoreCommand;

pub async fn run(cfg: Config, cmd: StoreCommand) -> anyhow::Result<ExitCode> {
    let (opened, photometry) = app::photometry(&cfg).context("opening the object store")?;
    let policy = CompactionPolicy::default();
    if matches!(cmd, StoreCommand::Migrate) {
        let pool = db::open(&cfg).await?;
        let _writer = PgLedger::new(pool).lock_writer(&photometry.identity()).await?;
        let mut seen = std::collections::BTreeSet::new();
        for k in photometry.partitions().await? {
            if !seen.insert((k.season, k.field)) {
                continue;
            }
            if let Some((rows, buckets)) = photometry.migrate_field(k.season, k.field).await? {
                println!("season {} {}: {rows} rows rewritten into {buckets} bucket(s)", k.season, k.field);
            }
        }
        println!("{} field-season(s) checked; store {}", seen.len(), opened.location);
        return Ok(ExitCode::SUCCESS);
    }
    let repair = matches!(cmd, StoreCommand::Repair);
    // Repair changes the store: it waits for any running writer and keeps others out.
    let _writer = if repair {
        let pool = db::open(&cfg).await?;
        Some(PgLedger::new(pool).lock_writer(&photometry.identity()).await?)
    } else {
        None
    };
    let mut problems = 0usize;
    let keys = photometry.partitions().await?;
    for key in &keys {
        let h = photometry.inspect(key, &policy).await?;
        let dir = photometry.partition_dir(key);
        if h.is_clean() {
            continue;
        }
        problems += 1;
        if !h.orphans.is_empty() {
            println!("{dir}: {} orphan part(s) that no manifest lists: {}", h.orphans.len(), h.orphans.join(", "));
        }
        if !h.lost.is_empty() {
            let rows: u64 = h.lost.iter().map(|p| p.rows).sum();
            println!("{dir}: {} listed part(s) missing from the store ({rows} rows)", h.lost.len());
        }
        if h.needs_compaction {
            println!("{dir}: {} parts, small ones not yet compacted", h.parts);
        }
        if repair {
            let removed = photometry.remove_orphans(key).await?;
            let lost = photometry.drop_lost(key).await?;
            let compacted = photometry.compact(key, &policy).await?;
            println!(
                "  repaired: {removed} orphan(s) deleted, {} lost part(s) dropped from the manifest{}",
                lost.len(),
                compacted.map(|c| format!(", {} parts merged into {}", c.merged_parts, c.new_parts.len())).unwrap_or_default()
            );
            if !lost.is_empty() {
                println!(
                    "  the rows of the dropped parts are gone: ingest the files of {dir} again from their originals (their ledger rows in ingested_files say what was read)"
                );
            }
        }
    }
    println!("{} partition(s) checked, {problems} with problems; store {}", keys.len(), opened.location);
    Ok(if problems > 0 && !repair { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}
