//! publish: idempotent bulk writes, model versions side by side, first-flagged times, a
//! connection killed half-way (nothing half-written, the retry completes), permanent failures,
//! the audit trail, and the coordinators' views read as lensnet_reader.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lensnet::publish::{
    begin_attempt, begin_run, candidate_id, finish_attempt, finish_run, next_attempt, publish, publish_with_hook, queries,
    AttemptEnd, AttemptStart, CandidateRow, FitRow, PublishBatch, PublishError, RetryPolicy, RunRecord, Status, VerdictRow,
};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use uuid::Uuid;

use crate::harness::TestDb;
use crate::harness::root;

const MODEL_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const MODEL_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const FIELD: &str = "BLG14";

fn fast_retry() -> RetryPolicy {
    RetryPolicy { max_attempts: 5, initial_backoff: Duration::from_millis(20), max_backoff: Duration::from_millis(200) }
}

/// One observed star at one time: (star, as_of, verdict, pspl t0).
type Obs<'a> = (&'a str, f64, &'a str, Option<f64>);

fn batch(run_id: Uuid, model: &str, obs: &[Obs<'_>]) -> PublishBatch {
    let mut b = PublishBatch { run_id, replay_id: None, field: FIELD.into(), ..Default::default() };
    for &(star, as_of, verdict, t0) in obs {
        let id = candidate_id(FIELD, star, as_of);
        b.candidates.push(CandidateRow {
            candidate_id: id.clone(),
            star_id: star.into(),
            field: FIELD.into(),
            as_of_hjd: as_of,
            sites: vec!["KMTA".into(), "KMTC".into(), "KMTS".into()],
            n_points: 300,
            n_high: 12,
            dchi2_broken: 250.0,
            t_rise: Some(as_of - 3.0),
            diagnosis: serde_json::json!({"bl_delta_chi2": 250.0, "grid_log10_teff": 0.8}),
        });
        b.fits.push(FitRow {
            candidate_id: id.clone(),
            kind: "broken_line".into(),
            dchi2: 250.0,
            t0: None,
            teff: None,
            regime: None,
            t_rise: Some(as_of - 3.0),
            slope: Some(12.5),
            site_fluxes: serde_json::json!({}),
            params: serde_json::json!({}),
        });
        if let Some(t0) = t0 {
            b.fits.push(FitRow {
                candidate_id: id.clone(),
                kind: "pspl_grid".into(),
                dchi2: 300.0,
                t0: Some(t0),
                teff: Some(6.3),
                regime: Some(2),
                t_rise: None,
                slope: None,
                site_fluxes: serde_json::json!({"KMTC": {"f0": 1000.0, "f1": 250.0}}),
                params: serde_json::json!({"teff": 6.3}),
            });
        }
        let binary = match verdict {
            "yes" => 0.95,
            "maybe" => 0.7,
            _ => 0.1,
        };
        b.verdicts.push(VerdictRow {
            candidate_id: id,
            model_sha256: model.into(),
            p_yes: binary * 0.8,
            p_maybe: binary * 0.2,
            p_no: 1.0 - binary,
            binary_score: binary,
            verdict: verdict.into(),
            threshold_purity: 0.9,
            threshold_recall: 0.5,
            evidence: serde_json::json!({"bl_delta_chi2": 250.0}),
        });
    }
    b
}

async fn start_run(pool: &PgPool) -> Uuid {
    let run_id = Uuid::new_v4();
    let run = RunRecord {
        run_id,
        kind: "run".into(),
        field: Some(FIELD.into()),
        as_of_hjd: Some(9800.0),
        replay_id: None,
        config_hash: "cfg".into(),
        model_sha256: Some(MODEL_A.into()),
    };
    begin_run(pool, &run, &fast_retry()).await.unwrap();
    run_id
}

/// Every row of the three tables as JSON text, in key order.
async fn snapshot(pool: &PgPool) -> Vec<String> {
    let mut out = Vec::new();
    for q in [
        "SELECT row_to_json(t)::text FROM (SELECT * FROM candidates ORDER BY candidate_id) t",
        "SELECT row_to_json(t)::text FROM (SELECT * FROM fits ORDER BY candidate_id, kind) t",
        "SELECT row_to_json(t)::text FROM (SELECT * FROM verdicts ORDER BY candidate_id, model_sha256) t",
    ] {
        out.extend(sqlx::query_scalar::<_, String>(q).fetch_all(pool).await.unwrap());
    }
    out
}

async fn count(conn: &mut PgConnection, table: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}"))).fetch_one(conn).await.unwrap()
}

#[tokio::test]
async fn publishing_a_run_twice_changes_nothing() {
    let db = TestDb::new().await;
    let run = start_run(&db.pool).await;
    let b = batch(run, MODEL_A, &[("S1", 9800.0, "yes", Some(9810.0)), ("S2", 9800.0, "maybe", None), ("S3", 9800.0, "no", None)]);
    let first = publish(&db.pool, &b, &fast_retry()).await.unwrap();
    assert_eq!((first.candidates, first.fits, first.verdicts, first.attempts), (3, 4, 3, 1));
    let before = snapshot(&db.pool).await;
    assert_eq!(before.len(), 10);

    let again = publish(&db.pool, &b, &fast_retry()).await.unwrap();
    assert_eq!((again.candidates, again.fits, again.verdicts), (0, 0, 0), "nothing new the second time");
    assert_eq!(snapshot(&db.pool).await, before, "every row unchanged, timestamps included");

    let (sites, first_run): (Vec<String>, Option<Uuid>) =
        sqlx::query_as("SELECT sites, first_run_id FROM candidates WHERE star_id = 'S1'").fetch_one(&db.pool).await.unwrap();
    assert_eq!(sites, ["KMTA", "KMTC", "KMTS"]);
    assert_eq!(first_run, Some(run));
}

#[tokio::test]
async fn a_new_model_version_adds_verdicts_and_keeps_the_old_ones() {
    let db = TestDb::new().await;
    let run_a = start_run(&db.pool).await;
    let obs: [Obs<'_>; 2] = [("S1", 9800.0, "yes", None), ("S2", 9800.0, "no", None)];
    publish(&db.pool, &batch(run_a, MODEL_A, &obs), &fast_retry()).await.unwrap();
    let old: Vec<String> = sqlx::query_scalar("SELECT row_to_json(v)::text FROM verdicts v WHERE model_sha256 = $1 ORDER BY candidate_id")
        .bind(MODEL_A)
        .fetch_all(&db.pool)
        .await
        .unwrap();

    // Model B sees the same candidates differently.
    let run_b = start_run(&db.pool).await;
    let out = publish(&db.pool, &batch(run_b, MODEL_B, &[("S1", 9800.0, "maybe", None), ("S2", 9800.0, "yes", None)]), &fast_retry())
        .await
        .unwrap();
    assert_eq!((out.candidates, out.verdicts), (0, 2), "candidates exist; two verdicts of the new model");

    let rows: Vec<(String, String, String)> =
        sqlx::query_as("SELECT c.star_id, v.model_sha256, v.verdict FROM verdicts v JOIN candidates c USING (candidate_id) ORDER BY 1, 2")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let want = [("S1", MODEL_A, "yes"), ("S1", MODEL_B, "maybe"), ("S2", MODEL_A, "no"), ("S2", MODEL_B, "yes")];
    assert_eq!(rows.len(), 4);
    for (got, want) in rows.iter().zip(want) {
        assert_eq!((got.0.as_str(), got.1.as_str(), got.2.as_str()), want);
    }
    let still: Vec<String> = sqlx::query_scalar("SELECT row_to_json(v)::text FROM verdicts v WHERE model_sha256 = $1 ORDER BY candidate_id")
        .bind(MODEL_A)
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(still, old, "model A's rows untouched");
}

#[tokio::test]
async fn first_flagged_is_the_earliest_yes_of_the_star_for_that_model() {
    let db = TestDb::new().await;
    let run1 = start_run(&db.pool).await;
    // One batch with two candidates of the same star, and a later run.
    publish(&db.pool, &batch(run1, MODEL_A, &[("S1", 9800.0, "maybe", None), ("S1", 9801.0, "yes", None)]), &fast_retry()).await.unwrap();
    let run2 = start_run(&db.pool).await;
    publish(&db.pool, &batch(run2, MODEL_A, &[("S1", 9802.0, "yes", None), ("S1", 9803.0, "no", None)]), &fast_retry()).await.unwrap();
    let run3 = start_run(&db.pool).await;
    publish(&db.pool, &batch(run3, MODEL_B, &[("S1", 9803.0, "yes", None)]), &fast_retry()).await.unwrap();

    let rows: Vec<(f64, String, Option<f64>)> = sqlx::query_as(
        "SELECT c.as_of_hjd, v.model_sha256, v.first_flagged_hjd FROM verdicts v JOIN candidates c USING (candidate_id) ORDER BY 2, 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let got: Vec<(f64, &str, Option<f64>)> = rows.iter().map(|(a, m, f)| (*a, m.as_str(), *f)).collect();
    assert_eq!(
        got,
        [
            (9800.0, MODEL_A, None), // not flagged yet at that time
            (9801.0, MODEL_A, Some(9801.0)),
            (9802.0, MODEL_A, Some(9801.0)),
            (9803.0, MODEL_A, Some(9801.0)), // a later "no" still records when the star was first flagged
            (9803.0, MODEL_B, Some(9803.0)), // each model has its own first flag
        ]
    );
}

#[tokio::test]
async fn a_connection_killed_mid_publish_leaves_nothing_half_written_and_the_retry_completes() {
    let db = TestDb::new().await;
    let run = start_run(&db.pool).await;
    let b = batch(run, MODEL_A, &[("S1", 9800.0, "yes", Some(9805.0)), ("S2", 9800.0, "no", None)]);

    // The hook reports each attempt once its candidates are inserted (uncommitted), then waits.
    let (reached_tx, mut reached) = tokio::sync::mpsc::unbounded_channel::<u32>();
    let go = Arc::new(tokio::sync::Semaphore::new(0));
    let pool = db.pool.clone();
    let go_hook = go.clone();
    let task = tokio::spawn(async move {
        publish_with_hook(&pool, &b, &fast_retry(), move |attempt| {
            let reached_tx = reached_tx.clone();
            let go = go_hook.clone();
            async move {
                let _ = reached_tx.send(attempt);
                if let Ok(permit) = go.acquire().await {
                    permit.forget();
                }
            }
        })
        .await
    });

    let mut admin = db.opts.clone().connect().await.unwrap();
    assert_eq!(reached.recv().await, Some(1));
    // The publishing backend sits idle inside its transaction, candidates written but invisible.
    let pids: Vec<i32> = sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE datname = $1 AND state = 'idle in transaction'")
        .bind(&db.name)
        .fetch_all(&mut admin)
        .await
        .unwrap();
    assert_eq!(pids.len(), 1, "one open publish transaction");
    assert_eq!(count(&mut admin, "candidates").await, 0);
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)").bind(pids[0]).fetch_one(&mut admin).await.unwrap();
    assert!(killed);
    // Wait until the backend is gone, so that the next statement of attempt 1 meets a dead connection.
    for _ in 0..1000 {
        let alive: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)")
            .bind(pids[0])
            .fetch_one(&mut admin)
            .await
            .unwrap();
        if !alive {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    go.add_permits(1);

    // Attempt 1 failed and rolled back; attempt 2 has re-inserted its candidates, uncommitted.
    assert_eq!(reached.recv().await, Some(2));
    for t in ["candidates", "fits", "verdicts"] {
        assert_eq!(count(&mut admin, t).await, 0, "{t}: nothing of the killed attempt is visible");
    }
    go.add_permits(1);

    let out = task.await.unwrap().expect("the retry completes");
    assert_eq!(out.attempts, 2);
    assert_eq!((out.candidates, out.fits, out.verdicts), (2, 3, 2));
    assert_eq!(count(&mut admin, "candidates").await, 2);
    assert_eq!(count(&mut admin, "fits").await, 3);
    assert_eq!(count(&mut admin, "verdicts").await, 2);
    admin.close().await.ok();
}

#[tokio::test]
async fn a_permanent_failure_is_clear_and_leaves_no_rows() {
    let db = TestDb::new().await;
    let run = start_run(&db.pool).await;
    let mut b = batch(run, MODEL_A, &[("S1", 9800.0, "yes", None), ("S2", 9800.0, "no", None)]);
    b.verdicts[1].p_yes = 2.0; // violates the CHECK constraint: only the last statement fails
    let err = publish(&db.pool, &b, &fast_retry()).await.unwrap_err();
    assert!(!err.is_retryable(), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(&run.to_string()) && msg.contains("nothing of it was written") && msg.contains("1 attempt"), "{msg}");
    let mut conn = db.opts.clone().connect().await.unwrap();
    for t in ["candidates", "fits", "verdicts"] {
        assert_eq!(count(&mut conn, t).await, 0, "{t} has no half-written rows");
    }

    // A run that was never begun is a foreign-key failure, also permanent.
    let orphan = batch(Uuid::new_v4(), MODEL_A, &[("S9", 9800.0, "yes", None)]);
    let err = publish(&db.pool, &orphan, &fast_retry()).await.unwrap_err();
    assert!(matches!(err, PublishError::Database { attempts: 1, .. }) && !err.is_retryable(), "{err}");
}

#[tokio::test]
async fn runs_and_stage_attempts_are_recorded_idempotently() {
    let db = TestDb::new().await;
    let p = fast_retry();
    let run_id = Uuid::new_v4();
    let run = RunRecord {
        run_id,
        kind: "run".into(),
        field: Some(FIELD.into()),
        as_of_hjd: Some(9800.5),
        replay_id: None,
        config_hash: "cfg".into(),
        model_sha256: None,
    };
    begin_run(&db.pool, &run, &p).await.unwrap();
    begin_run(&db.pool, &run, &p).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM runs").fetch_one(&db.pool).await.unwrap();
    assert_eq!(n, 1);

    assert_eq!(next_attempt(&db.pool, run_id, "score", FIELD).await.unwrap(), 1);
    let start = AttemptStart {
        run_id,
        stage: "score".into(),
        field: FIELD.into(),
        attempt: 1,
        inputs: serde_json::json!({"tensors": "tensors/BLG14/part-0.parquet"}),
        config_hash: "cfg".into(),
    };
    begin_attempt(&db.pool, &start, &p).await.unwrap();
    begin_attempt(&db.pool, &start, &p).await.unwrap();
    finish_attempt(&db.pool, run_id, "score", FIELD, 1, &AttemptEnd::failed("connection reset", true, Some(Duration::from_millis(5))), &p)
        .await
        .unwrap();
    assert_eq!(next_attempt(&db.pool, run_id, "score", FIELD).await.unwrap(), 2);

    let report = lensnet_stages::StageReport {
        rows_in: 10,
        rows_out: 10,
        inputs: serde_json::json!({}),
        outputs: serde_json::json!({"verdicts": 10}),
        details: serde_json::json!({"execution_provider": "cpu", "runtime_version": "1.31.1", "model_sha256": MODEL_A})
            .as_object()
            .cloned()
            .unwrap(),
    };
    begin_attempt(&db.pool, &AttemptStart { attempt: 2, ..start.clone() }, &p).await.unwrap();
    let end = AttemptEnd::from_report(&report, Some(Duration::from_millis(42)));
    finish_attempt(&db.pool, run_id, "score", FIELD, 2, &end, &p).await.unwrap();
    let once: String =
        sqlx::query_scalar("SELECT row_to_json(a)::text FROM stage_attempts a WHERE attempt = 2").fetch_one(&db.pool).await.unwrap();
    finish_attempt(&db.pool, run_id, "score", FIELD, 2, &end, &p).await.unwrap();
    let twice: String =
        sqlx::query_scalar("SELECT row_to_json(a)::text FROM stage_attempts a WHERE attempt = 2").fetch_one(&db.pool).await.unwrap();
    assert_eq!(once, twice, "finishing again changes nothing");

    let rows: Vec<(i32, String, Option<String>, Option<bool>, Option<String>, Option<String>, Option<i64>, Option<i64>)> = sqlx::query_as(
        "SELECT attempt, status, error, retryable, execution_provider, model_sha256, rows_out, duration_ms FROM stage_attempts ORDER BY attempt",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!((rows[0].1.as_str(), rows[0].2.as_deref(), rows[0].3), ("failed", Some("connection reset"), Some(true)));
    assert_eq!((rows[1].1.as_str(), rows[1].4.as_deref(), rows[1].5.as_deref()), ("succeeded", Some("cpu"), Some(MODEL_A)));
    assert_eq!((rows[1].6, rows[1].7), (Some(10), Some(42)));
    let details: serde_json::Value =
        sqlx::query_scalar("SELECT outputs -> 'details' FROM stage_attempts WHERE attempt = 2").fetch_one(&db.pool).await.unwrap();
    assert_eq!(details["runtime_version"], "1.31.1");

    finish_run(&db.pool, run_id, Status::Succeeded, None, &p).await.unwrap();
    let a: String = sqlx::query_scalar("SELECT row_to_json(r)::text FROM runs r").fetch_one(&db.pool).await.unwrap();
    finish_run(&db.pool, run_id, Status::Succeeded, None, &p).await.unwrap();
    let b: String = sqlx::query_scalar("SELECT row_to_json(r)::text FROM runs r").fetch_one(&db.pool).await.unwrap();
    assert_eq!(a, b);
    assert!(a.contains("\"succeeded\""), "{a}");
    // Beginning a succeeded run again does not reopen it.
    begin_run(&db.pool, &run, &p).await.unwrap();
    let status: String = sqlx::query_scalar("SELECT status FROM runs").fetch_one(&db.pool).await.unwrap();
    assert_eq!(status, "succeeded");

    let err = finish_run(&db.pool, Uuid::new_v4(), Status::Failed, Some("x"), &p).await.unwrap_err();
    assert!(matches!(err, PublishError::UnknownRun { .. }), "{err}");
    let err = begin_attempt(&db.pool, &AttemptStart { run_id: Uuid::new_v4(), ..start }, &p).await.unwrap_err();
    assert!(matches!(err, PublishError::UnknownRun { .. }), "{err}");
}

async fn reader(db: &TestDb) -> PgConnection {
    db.reader().await
}

#[tokio::test]
async fn coordinators_read_the_views_as_lensnet_reader() {
    let db = TestDb::new().await;
    let run1 = start_run(&db.pool).await;
    // S1: yes at 9800 with the peak (pspl t0) still ahead at 9810 → flagged before peak.
    // S2: maybe now → needs a human. S3: yes only after its peak (t0 9790). S4: no.
    publish(
        &db.pool,
        &batch(run1, MODEL_A, &[("S1", 9800.0, "yes", Some(9810.0)), ("S2", 9800.0, "maybe", None), ("S3", 9800.0, "yes", Some(9790.0)), ("S4", 9800.0, "no", None)]),
        &fast_retry(),
    )
    .await
    .unwrap();
    let run2 = start_run(&db.pool).await;
    publish(&db.pool, &batch(run2, MODEL_A, &[("S1", 9802.0, "yes", Some(9811.0)), ("S3", 9802.0, "maybe", None)]), &fast_retry())
        .await
        .unwrap();
    let run3 = start_run(&db.pool).await;
    publish(&db.pool, &batch(run3, MODEL_B, &[("S1", 9802.0, "maybe", None)]), &fast_retry()).await.unwrap();

    let mut conn = reader(&db).await;
    let newest: Vec<(String, f64, String)> =
        sqlx::query_as("SELECT star_id, as_of_hjd, model_sha256 FROM newest_yes_alerts WHERE field = $1 ORDER BY star_id")
            .bind(FIELD)
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(newest, [("S1".to_string(), 9802.0, MODEL_A.to_string()), ("S3".to_string(), 9800.0, MODEL_A.to_string())]);

    let human: Vec<(String, f64, String)> =
        sqlx::query_as("SELECT star_id, as_of_hjd, model_sha256 FROM needs_human ORDER BY star_id").fetch_all(&mut conn).await.unwrap();
    // S1's newest verdict is model B's "maybe" (written last); S3's newest candidate is a maybe.
    assert_eq!(
        human,
        [("S1".into(), 9802.0, MODEL_B.into()), ("S2".into(), 9800.0, MODEL_A.into()), ("S3".into(), 9802.0, MODEL_A.into())]
    );

    let history: Vec<(f64, String, String)> =
        sqlx::query_as("SELECT as_of_hjd, model_sha256, verdict FROM star_verdict_history WHERE star_id = 'S1' ORDER BY model_sha256, as_of_hjd")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(
        history,
        [(9800.0, MODEL_A.into(), "yes".into()), (9802.0, MODEL_A.into(), "yes".into()), (9802.0, MODEL_B.into(), "maybe".into())]
    );

    let early: Vec<(String, String, f64, f64, f64)> =
        sqlx::query_as("SELECT star_id, model_sha256, first_flagged_hjd, peak_hjd, lead_days FROM flagged_before_peak ORDER BY star_id")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    // S1 by model A: first yes 9800, latest pspl t0 9811. S3's peak preceded its flag; model B never said yes.
    assert_eq!(early, [("S1".into(), MODEL_A.into(), 9800.0, 9811.0, 11.0)]);

    // The example queries of sql/ run as the reader too.
    let top: Vec<(String, String, String, f64, f32, f32, Option<f64>, String)> =
        sqlx::query_as(queries::NEWEST_YES_ALERTS_FOR_FIELD).bind(FIELD).bind(1i64).fetch_all(&mut conn).await.unwrap();
    assert_eq!(top.len(), 1);
    assert_eq!(top[0].1, "S1");
    let hist: Vec<(String, String, f64, String, String, String, f32, Option<f64>, Option<Uuid>)> =
        sqlx::query_as(queries::STAR_HISTORY).bind("S1").fetch_all(&mut conn).await.unwrap();
    assert_eq!(hist.len(), 3);

    let err = sqlx::query("DELETE FROM verdicts").execute(&mut conn).await.expect_err("reader must not delete");
    assert!(err.to_string().contains("permission denied"), "{err}");
    conn.close().await.ok();
}


const VIEWS_MIGRATION: &str = "migrations/20261125000002_views.sql";
/// sql/view_*.sql files whose views a later migration creates.
const LATER_VIEWS: [&str; 1] = ["view_vetting_disagreements.sql"];
const VIEWS_HEADER: &str = "\
-- Views for follow-up coordinators, readable by lensnet_reader. GENERATED from sql/view_*.sql
-- (each view is the exact text of its file, in file-name order) by tests/it/publish.rs:
-- `LENSNET_BLESS=1 cargo test -p lensnet --test it publish::migration_views_match_sql_files`
-- rewrites it. Edit sql/, not this file; once applied somewhere, a change needs a new migration.

";

#[test]
fn migration_views_match_sql_files() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("sql"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("view_") && n.ends_with(".sql")))
        .collect();
    files.sort();
    // Views added after the first schema live in their own migrations (an applied migration
    // never changes): each such file's text appears verbatim in exactly one later migration.
    let later: Vec<PathBuf> = files.iter().filter(|f| LATER_VIEWS.iter().any(|n| f.ends_with(n))).cloned().collect();
    files.retain(|f| !later.contains(f));
    assert_eq!(files.len(), 4, "four coordinator views in the first views migration");
    assert_eq!(later.len(), LATER_VIEWS.len(), "every later view has its file");
    let migrations: Vec<String> = std::fs::read_dir(root().join("migrations"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    for f in &later {
        let text = std::fs::read_to_string(f).unwrap();
        let n = migrations.iter().filter(|m| m.contains(&text)).count();
        assert_eq!(n, 1, "{} appears verbatim in exactly one migration", f.display());
        let stem = f.file_stem().and_then(|s| s.to_str()).unwrap().trim_start_matches("view_").to_string();
        assert!(migrations.iter().any(|m| m.contains(&format!("GRANT SELECT ON {stem} TO lensnet_reader"))), "{stem} is readable by coordinators");
    }
    let mut want = VIEWS_HEADER.to_string();
    let mut names = Vec::new();
    for f in &files {
        want.push_str(&std::fs::read_to_string(f).unwrap());
        want.push('\n');
        let stem = f.file_stem().and_then(|s| s.to_str()).unwrap();
        names.push(stem.trim_start_matches("view_").to_string());
    }
    want.push_str(&format!("GRANT SELECT ON {} TO lensnet_reader;\n", names.join(", ")));
    let path = root().join(VIEWS_MIGRATION);
    if std::env::var_os("LENSNET_BLESS").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    let got = std::fs::read_to_string(&path).unwrap();
    assert!(got == want, "{VIEWS_MIGRATION} differs from sql/view_*.sql: regenerate it with LENSNET_BLESS=1 (see its header)");
    for n in &names {
        assert!(got.contains(&format!("CREATE OR REPLACE VIEW {n} AS")), "view {n} is named after its file");
    }
}
