//! Ingest end to end with the PostgreSQL ledger: the real KMTNet files and a simulated season,
//! re-ingest (no duplicates), a grown file (only new rows), malformed files (quarantined, named,
//! nothing lost), and the `lensnet ingest` command.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use lensnet::ledger::PgLedger;
use lensnet_stages::ingest::store::row_keys;
use lensnet_stages::ingest::{ingest_location, read_photometry, FileOutcome, IngestOptions, PartitionKey, PhotometryStore};
use lensnet_stages::Field;
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use sqlx::Row;

use crate::harness::TestDb;

pub fn shared_data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/kmtnet")
}

fn local_store(dir: &Path) -> PhotometryStore {
    let fs = LocalFileSystem::new_with_prefix(dir).expect("local store");
    PhotometryStore::new(Arc::new(fs), StorePath::from(""))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

async fn all_keys(store: &PhotometryStore) -> Vec<(String, String, u64)> {
    let mut keys = Vec::new();
    for p in store.partitions().await.unwrap() {
        keys.extend(row_keys(&store.read_partition(&p).await.unwrap()).unwrap());
    }
    keys
}

#[tokio::test]
async fn real_files_ingest_once_grow_and_quarantine_with_the_pg_ledger() {
    let db = TestDb::new().await;
    let ledger = PgLedger::new(db.pool.clone());
    let inbox = tempfile::tempdir().unwrap();
    let lake = tempfile::tempdir().unwrap();
    copy_dir(&shared_data(), inbox.path());
    let store = local_store(lake.path());
    let opts = IngestOptions::default();
    let input = inbox.path().to_str().unwrap();

    // Real files: every data line becomes a row, once.
    let data_lines: u64 = walk(inbox.path())
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap().lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#')).count() as u64)
        .sum();
    let first = ingest_location(input, &store, &ledger, &opts).await.unwrap();
    assert_eq!(first.files.len(), 11);
    assert_eq!(first.rows_added(), data_lines);
    assert_eq!(first.failed() + first.quarantined(), 0);
    let keys = all_keys(&store).await;
    assert_eq!(keys.len() as u64, data_lines);

    // Re-ingest: nothing added.
    let again = ingest_location(input, &store, &ledger, &opts).await.unwrap();
    assert_eq!(again.rows_added(), 0);
    assert!(again.files.iter().all(|f| f.outcome == FileOutcome::Unchanged));
    assert_eq!(all_keys(&store).await, keys);

    // A file that grew by two epochs adds exactly those.
    let grown = inbox.path().join("KB180003/KMTC14_I.pysis");
    let mut text = std::fs::read_to_string(&grown).unwrap();
    // These files carry five columns (HJD, Δflux, flux_err, mag, mag_err): append in kind.
    text.push_str("8211.50000    -1950.0000      120.0000   19.1290  0.040000\n");
    text.push_str("8211.60000    -1990.0000      121.0000   19.1070  0.040100\n");
    std::fs::write(&grown, text).unwrap();
    let appended = ingest_location(input, &store, &ledger, &opts).await.unwrap();
    assert_eq!(appended.rows_added(), 2, "{:?}", appended.files.iter().filter(|f| f.outcome != FileOutcome::Unchanged).collect::<Vec<_>>());
    assert_eq!(all_keys(&store).await.len() as u64, data_lines + 2);

    // A malformed file is quarantined, named with its line, and the rest goes on.
    std::fs::create_dir_all(inbox.path().join("BAD01")).unwrap();
    std::fs::write(inbox.path().join("BAD01/KMTS14_I.pysis"), "# HJD\n8200.1 1 2 20 0.1 4 800 1.2\n8200.2 oops\n").unwrap();
    std::fs::create_dir_all(inbox.path().join("NEW01")).unwrap();
    std::fs::write(inbox.path().join("NEW01/KMTA14_I.pysis"), "# HJD\n8200.1 1 2 20 0.1 4 800 1.2\n8200.2 3 2 20 0.1 4 800 1.2\n").unwrap();
    let mixed = ingest_location(input, &store, &ledger, &opts).await.unwrap();
    assert_eq!(mixed.quarantined(), 1);
    assert_eq!(mixed.rows_added(), 2, "the good new file still goes in");
    let row = sqlx::query("SELECT status, reason FROM ingested_files WHERE path LIKE '%BAD01/KMTS14_I.pysis'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(row.get::<String, _>("status"), "quarantined");
    let reason: String = row.get("reason");
    assert!(reason.contains("line 3") && reason.contains("KMTS14_I.pysis"), "{reason}");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM ingested_files WHERE status = 'ingested'").fetch_one(&db.pool).await.unwrap();
    assert_eq!(n, 12);
    assert_eq!(all_keys(&store).await.len() as u64, data_lines + 4, "nothing lost, nothing duplicated");

    // Read back as the next stage does: brightening positive on the real event.
    let stars = read_photometry(&store, 2018, Field(14), None).await.unwrap();
    let season_star = stars.iter().find(|s| s.star.0 == "BLG14-2018-season").expect("season star");
    let kmtc = season_star.curves.iter().find(|c| c.site.map(|s| s.code()) == Some("KMTC") && c.band.map(|b| b.code()) == Some("I")).unwrap();
    let peak = kmtc.flux.iter().cloned().fold(f64::MIN, f64::max);
    assert!((peak - 189_538.0).abs() < 1.0, "brightest epoch is +189538 after ingest, got {peak}");
    let parts = store.partitions().await.unwrap();
    assert!(parts.contains(&PartitionKey { season: 2018, field: Field(12), site: "KMTA".into() }));

    // polars reads the part files as they are: every row once, the documented columns, sorted.
    use polars::prelude::{ParquetReader, SerReader};
    let mut polars_rows = 0;
    for part in walk_ext(lake.path(), "parquet") {
        assert!(part.to_string_lossy().contains("/photometry/season="), "{}", part.display());
        let df = ParquetReader::new(std::fs::File::open(&part).unwrap()).finish().unwrap();
        let names: Vec<String> = df.get_column_names().iter().map(|n| n.to_string()).collect();
        assert_eq!(&names[..4], ["star", "band", "hjd", "flux"], "{}", part.display());
        let hjd: Vec<f64> = df.column("hjd").unwrap().f64().unwrap().into_no_null_iter().collect();
        let stars = df.column("star").unwrap().str().unwrap();
        let star: Vec<String> = (0..df.height()).map(|i| stars.get(i).unwrap_or_default().to_string()).collect();
        assert!((1..hjd.len()).all(|i| (&star[i - 1], hjd[i - 1]) <= (&star[i], hjd[i])), "sorted by star, hjd: {}", part.display());
        polars_rows += df.height() as u64;
    }
    assert_eq!(polars_rows, data_lines + 4);
}

fn walk_ext(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk_ext(&p, ext));
        } else if p.extension().is_some_and(|x| x == ext) {
            out.push(p);
        }
    }
    out
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if p.extension().is_some_and(|x| x == "pysis") {
            out.push(p);
        }
    }
    out
}

#[tokio::test]
async fn lensnet_ingest_command_reports_and_is_idempotent() {
    let db = TestDb::new().await;
    let Some(url) = db.url() else { return };
    let dir = tempfile::tempdir().unwrap();
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_lensnet"))
            .args(["ingest", "--input", shared_data().join("KB180003").to_str().unwrap()])
            .current_dir(dir.path())
            .env("DATABASE_URL", &url)
            .env("LENSNET_LOG", "warn")
            .output()
            .unwrap()
    };
    let first = run();
    let out = String::from_utf8_lossy(&first.stdout).to_string();
    assert!(first.status.success(), "{out}{}", String::from_utf8_lossy(&first.stderr));
    assert!(out.contains("6 file(s): 702 rows added, 0 unchanged, 0 quarantined, 0 failed"), "{out}");
    let second = String::from_utf8_lossy(&run().stdout).to_string();
    assert!(second.contains("6 file(s): 0 rows added, 6 unchanged"), "{second}");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM ingested_files").fetch_one(&db.pool).await.unwrap();
    assert_eq!(n, 6);
}
