//! Schema and roles: migrations apply once and only once; the reader role reads but never writes.

use sqlx::{Connection, Row};

use crate::harness::TestDb;

const TABLES: [&str; 6] = ["runs", "stage_attempts", "ingested_files", "candidates", "fits", "verdicts"];

async fn schema_fingerprint(pool: &sqlx::PgPool) -> Vec<(String, String, String)> {
    sqlx::query(
        "SELECT table_name::text, column_name::text, data_type::text FROM information_schema.columns \
         WHERE table_schema = 'public' ORDER BY table_name, ordinal_position",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

#[tokio::test]
async fn migrations_create_every_table_and_a_second_run_changes_nothing() {
    let db = TestDb::empty().await;
    assert_eq!(lensnet::db::migrate(&db.pool).await.unwrap(), lensnet::db::MIGRATOR.iter().count());
    let first = schema_fingerprint(&db.pool).await;
    for t in TABLES {
        assert!(first.iter().any(|(table, _, _)| table == t), "table {t} missing");
    }
    assert_eq!(lensnet::db::migrate(&db.pool).await.unwrap(), 0, "second migrate applies nothing");
    assert_eq!(schema_fingerprint(&db.pool).await, first);
}

#[tokio::test]
async fn primary_keys_make_writes_idempotent() {
    let db = TestDb::new().await;
    let run = uuid::Uuid::new_v4();
    for _ in 0..2 {
        sqlx::query("INSERT INTO runs (run_id, kind, field, config_hash) VALUES ($1, 'run', 'BLG14', 'h') ON CONFLICT DO NOTHING")
            .bind(run)
            .execute(&db.pool)
            .await
            .unwrap();
    }
    let dup = sqlx::query("INSERT INTO runs (run_id, kind, config_hash) VALUES ($1, 'run', 'h')").bind(run).execute(&db.pool).await;
    assert!(dup.is_err(), "a second row with the same key is refused");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM runs").fetch_one(&db.pool).await.unwrap();
    assert_eq!(n, 1);
    let bad = sqlx::query("INSERT INTO runs (run_id, kind, config_hash, status) VALUES ($1, 'run', 'h', 'exploded')")
        .bind(uuid::Uuid::new_v4())
        .execute(&db.pool)
        .await;
    assert!(bad.is_err(), "status is constrained");
}

#[tokio::test]
async fn reader_role_can_select_but_not_insert() {
    let db = TestDb::new().await;
    sqlx::query("INSERT INTO runs (run_id, kind, config_hash) VALUES ($1, 'run', 'h')")
        .bind(uuid::Uuid::new_v4())
        .execute(&db.pool)
        .await
        .unwrap();

    let mut conn = db.reader().await;
    let who: String = sqlx::query_scalar("SELECT current_user::text").fetch_one(&mut conn).await.unwrap();
    assert_eq!(who, "lensnet_reader");
    for t in TABLES {
        let q = format!("SELECT count(*) FROM {t}");
        sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(q)).fetch_one(&mut conn).await.unwrap_or_else(|e| panic!("select {t}: {e}"));
    }
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM runs").fetch_one(&mut conn).await.unwrap();
    assert_eq!(n, 1);
    let err = sqlx::query("INSERT INTO runs (run_id, kind, config_hash) VALUES ($1, 'run', 'h')")
        .bind(uuid::Uuid::new_v4())
        .execute(&mut conn)
        .await
        .expect_err("reader must not insert");
    assert!(err.to_string().contains("permission denied"), "{err}");
    let err = sqlx::query("DELETE FROM runs").execute(&mut conn).await.expect_err("reader must not delete");
    assert!(err.to_string().contains("permission denied"), "{err}");
    conn.close().await.ok();
}
