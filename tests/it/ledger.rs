//! The ingest ledger on PostgreSQL round-trips every field and upserts by path.

use lensnet::ledger::PgLedger;
use lensnet_stages::ingest::ledger::{FileLedger, FileStatus, LedgerEntry};

use crate::harness::TestDb;

fn entry(path: &str) -> LedgerEntry {
    LedgerEntry {
        path: path.into(),
        size_bytes: 10_013,
        sha256: "a".repeat(64),
        seen_sha256: "b".repeat(64),
        ingested_bytes: 10_000,
        lines: 170,
        rows: 169,
        skipped_lines: 1,
        last_line: "8210.12345 1.0 2.0 20.0 0.1 4.0 800 1.2".into(),
        status: FileStatus::Ingested,
        reason: None,
        format: "pysis".into(),
        star: Some("KB180003".into()),
        field: Some("BLG14".into()),
        site: Some("KMTC".into()),
        band: Some("I".into()),
        flux_sign: -1,
        time_system: "hjd-2450000".into(),
        baseline_flux: Some(1234.5),
        mag_zp: Some(28.0),
    }
}

#[tokio::test]
async fn pg_ledger_round_trips_and_upserts() {
    let db = TestDb::new().await;
    let ledger = PgLedger::new(db.pool.clone());
    assert_eq!(ledger.lookup("/x/KMTC14_I.pysis").await.unwrap(), None);
    let mut e = entry("/x/KMTC14_I.pysis");
    ledger.record(&e).await.unwrap();
    assert_eq!(ledger.lookup(&e.path).await.unwrap(), Some(e.clone()));
    e.status = FileStatus::Quarantined;
    e.reason = Some("cannot parse line 17 of KMTC14_I.pysis: expected 8 columns, found 5".into());
    e.rows = 200;
    ledger.record(&e).await.unwrap();
    assert_eq!(ledger.lookup(&e.path).await.unwrap(), Some(e.clone()));
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM ingested_files").fetch_one(&db.pool).await.unwrap();
    assert_eq!(n, 1, "record is an upsert keyed by path");
}
