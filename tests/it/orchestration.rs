//! Orchestration end to end on simulated seasons: field runs through the whole DAG (ingest ->
//! alertfinder -> score -> publish) with their audit rows, resuming a run killed half-way, the
//! per-field lock, replay with its summary against the truth, and `lensnet serve` stopping on
//! SIGTERM.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use lensnet::fieldrun::{ingest_options, lock_key, FieldRunError, FieldRunner, Plan};
use lensnet::ledger::PgLedger;
use lensnet::replay::{against_truth, replay, ReplayOptions};
use lensnet::runner::{RetryPolicy, StageOutcome};
use lensnet_stages::ingest::Format;
use lensnet_stages::score::{find_model, ScoreOptions, Scorer};
use lensnet_stages::simulate::{write_season, ClassMix, Label, Season, SimConfig};
use lensnet_stages::alertfinder::stage::AlertFinderStage;
use lensnet_stages::alertfinder::{scan_star_with, NightBuffers, Scratch, StarHistory, Status};
use lensnet_stages::photometry::{Band, MergedCurve};
use lensnet_stages::{Field, PhotometryCache};
use object_store::local::LocalFileSystem;
use object_store::ObjectStore;
use sqlx::postgres::PgPool;
use sqlx::Row;

use crate::harness::TestDb;

/// One scorer per test binary: ONNX Runtime allows one environment per process anyway.
pub(crate) fn scorer() -> Arc<Scorer> {
    static SCORER: std::sync::OnceLock<Arc<Scorer>> = std::sync::OnceLock::new();
    SCORER
        .get_or_init(|| {
            let model = find_model(None).expect("a committed model");
            Arc::new(Scorer::new(&ScoreOptions { batch_size: 64, intra_threads: Some(1), ..ScoreOptions::cpu(model) }).expect("scorer (run scripts/setup)"))
        })
        .clone()
}

pub(crate) fn event_rich() -> ClassMix {
    ClassMix { microlensing: 0.6, constant: 0.2, variable: 0.1, cataclysmic: 0.05, flare: 0.0, asteroid: 0.05, artefact: 0.0 }
}

pub(crate) struct Setup {
    pub(crate) runner: FieldRunner,
    pub(crate) _lake: tempfile::TempDir,
}

pub(crate) fn runner(pool: &PgPool, inbox: &Path) -> Setup {
    let lake = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new_with_prefix(lake.path()).unwrap());
    let runner = FieldRunner {
        pool: pool.clone(),
        store,
        root: "".into(),
        scorer: scorer(),
        ledger: Arc::new(PgLedger::new(pool.clone())),
        inbox: inbox.display().to_string(),
        ingest: ingest_options(Format::Auto),
        config_hash: "test".into(),
        retry: RetryPolicy { max_attempts: 2, base_delay: Duration::from_millis(10), max_delay: Duration::from_millis(20) },
        ingest_lock: Default::default(),
        lock_sessions: Default::default(),
        score_stats: lensnet_stages::score::stage::ScoreStage::stats_of(&scorer()).unwrap(),
        alert_thresholds: Default::default(),
        notifier: None,
        stream_budget_bytes: 256 << 20,
        replay_whole_field_max_rows: 20_000_000,
    };
    Setup { runner, _lake: lake }
}

/// Stars of `field` that AlertFinder's core flags at `as_of` (no watermark), by star id.
fn core_candidates(season: &Season, field: Field, stars: u64, as_of: f64) -> Vec<String> {
    let p = AlertFinderStage::default().thresholds.for_field(field).clone();
    let mut scratch = Scratch::default();
    (0..stars)
        .map(|i| season.star(field, i).unwrap())
        .filter(|s| {
            // As the stage: the star's history is its nights before the search window (one
            // simulated season: no earlier seasons).
            let m = MergedCurve::from_star(&s.curves, Band::I);
            let mut h = StarHistory::default();
            h.absorb(&m.view(), as_of - p.window_days, &mut NightBuffers::default());
            scan_star_with(&m.view(), as_of, f64::NEG_INFINITY, &p, Some(&h), &mut scratch).status == Status::Candidate
        })
        .map(|s| s.truth.star_id.0)
        .collect()
}

/// An as-of time (whole day) at which AlertFinder flags some clear event of `field`: the run
/// then has candidates to score and publish.
pub(crate) fn candidate_time(cfg: &SimConfig, field: Field) -> f64 {
    let season = Season::new(cfg).unwrap();
    let p = AlertFinderStage::default().thresholds.for_field(field).clone();
    let mut scratch = Scratch::default();
    for i in 0..cfg.stars {
        let s = season.star(field, i).unwrap();
        if s.truth.label != Label::Yes || !s.truth.t0.is_finite() {
            continue;
        }
        let m = MergedCurve::from_star(&s.curves, Band::I);
        for d in -20..=3 {
            let t = s.truth.t0.floor() + d as f64;
            let mut h = StarHistory::default();
            h.absorb(&m.view(), t - p.window_days, &mut NightBuffers::default());
            if scan_star_with(&m.view(), t, f64::NEG_INFINITY, &p, Some(&h), &mut scratch).status == Status::Candidate {
                return t;
            }
        }
    }
    panic!("no clear event of {field} is ever a candidate in this simulated season");
}

/// Rows of the result tables, without timestamps, for comparing two databases.
pub(crate) async fn tables(pool: &PgPool) -> Vec<String> {
    let mut out = Vec::new();
    for q in [
        "SELECT candidate_id || '|' || star_id || '|' || n_high || '|' || round(dchi2_broken::numeric, 6) FROM candidates ORDER BY 1",
        "SELECT candidate_id || '|' || kind || '|' || round(dchi2::numeric, 6) FROM fits ORDER BY 1",
        "SELECT candidate_id || '|' || verdict || '|' || round(binary_score::numeric, 5) || '|' || coalesce(first_flagged_hjd::text, '-') FROM verdicts ORDER BY 1",
    ] {
        for r in sqlx::query(q).fetch_all(pool).await.unwrap() {
            out.push(r.get::<String, _>(0));
        }
    }
    out
}

async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_field_runs_write_verdicts_with_their_audit_and_a_rerun_changes_nothing() {
    let db = TestDb::new().await;
    let inbox = tempfile::tempdir().unwrap();
    let cfg = SimConfig { fields: vec![Field(2), Field(14)], stars: 24, seed: 5, mix: event_rich(), ..Default::default() };
    write_season(&cfg, inbox.path()).unwrap();
    let s = runner(&db.pool, inbox.path());
    for field in [Field(2), Field(14)] {
        let as_of = candidate_time(&cfg, field);
        assert!(as_of.is_finite(), "{field} has a clear event");
        let run = s.runner.run("run", Plan::Live, field, 2025, as_of, None, &PhotometryCache::new()).await.unwrap();
        assert!(run.outcome.succeeded(), "{field}: {:?}", run.outcome);
        let names: Vec<_> = run.outcome.stages.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["ingest", "alertfinder", "score", "publish", "compact"]);
        // Ingest took only this field's files, and wrote them without compacting (each file's
        // rows its own parts); the run compacted them after its publish.
        assert!(run.report("ingest").unwrap().rows_out > 0);
        assert_eq!(run.report("ingest").unwrap().details["compactions"], 0, "ingest leaves compaction to the compact stage");
        let compact = run.report("compact").unwrap();
        assert!(compact.details["compactions"].as_u64().unwrap() > 0, "the night's parts were merged after publish: {compact:?}");
        let photometry = lensnet_stages::ingest::PhotometryStore::new(s.runner.store.clone(), s.runner.root.clone());
        let policy = lensnet_stages::ingest::CompactionPolicy::default();
        for key in photometry.field_partitions(2025, field).await.unwrap() {
            let h = photometry.inspect(&key, &policy).await.unwrap();
            assert!(h.is_clean(), "{key}: {h:?}");
        }
        let fields: Vec<String> = sqlx::query_scalar("SELECT DISTINCT field FROM ingested_files ORDER BY 1").fetch_all(&db.pool).await.unwrap();
        let expected: Vec<String> = if field == Field(2) { vec!["BLG02".into()] } else { vec!["BLG02".into(), "BLG14".into()] };
        assert_eq!(fields, expected);
        let attempts: i64 = sqlx::query_scalar("SELECT count(*) FROM stage_attempts WHERE run_id = $1 AND status = 'succeeded'")
            .bind(run.run_id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(attempts, 5, "one audit row per stage");
    }
    let fields_with_verdicts = count(&db.pool, "SELECT count(DISTINCT c.field) FROM verdicts v JOIN candidates c USING (candidate_id)").await;
    assert_eq!(fields_with_verdicts, 2, "both fields published verdicts");
    assert_eq!(count(&db.pool, "SELECT count(*) FROM candidates c WHERE NOT EXISTS (SELECT 1 FROM verdicts v WHERE v.candidate_id = c.candidate_id)").await, 0);
    let provider: String = sqlx::query_scalar("SELECT execution_provider FROM stage_attempts WHERE stage = 'score' LIMIT 1").fetch_one(&db.pool).await.unwrap();
    assert_eq!(provider, "cpu");
    assert_eq!(count(&db.pool, "SELECT count(*) FROM runs WHERE status <> 'succeeded'").await, 0);

    // The same run again: every stage is up to date and no row is added.
    let before = tables(&db.pool).await;
    let as_of = candidate_time(&cfg, Field(14));
    let again = s.runner.run("run", Plan::Live, Field(14), 2025, as_of, None, &PhotometryCache::new()).await.unwrap();
    assert!(again.outcome.stages.iter().all(|(_, o)| *o == StageOutcome::UpToDate), "{:?}", again.outcome);
    assert_eq!(tables(&db.pool).await, before);
}

/// A live run as `lensnet run` makes it (streamed): its compaction, after publish, rewrites
/// parts that the alertfinder read, and the same run again must still find every stage up to
/// date (the alertfinder's input digest counts rows, not parts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_live_run_compacts_after_publish_and_the_same_run_again_is_up_to_date() {
    let db = TestDb::new().await;
    let inbox = tempfile::tempdir().unwrap();
    let cfg = SimConfig { fields: vec![Field(14)], stars: 24, seed: 5, mix: event_rich(), ..Default::default() };
    write_season(&cfg, inbox.path()).unwrap();
    let s = runner(&db.pool, inbox.path());
    let as_of = candidate_time(&cfg, Field(14));
    let run = s.runner.run("run", Plan::Live, Field(14), 2025, as_of, None, &s.runner.live_cache()).await.unwrap();
    assert!(run.outcome.succeeded(), "{:?}", run.outcome);
    let compact = run.report("compact").unwrap();
    assert!(compact.details["compactions"].as_u64().unwrap() > 0, "{compact:?}");
    assert!(count(&db.pool, "SELECT count(*) FROM candidates").await > 0, "the run found the event");
    let before = tables(&db.pool).await;
    let again = s.runner.run("run", Plan::Live, Field(14), 2025, as_of, None, &s.runner.live_cache()).await.unwrap();
    assert!(again.outcome.stages.iter().all(|(_, o)| *o == StageOutcome::UpToDate), "{:?}", again.outcome);
    assert_eq!(tables(&db.pool).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_mid_stage_and_started_again_ends_like_an_uninterrupted_one() {
    let inbox = tempfile::tempdir().unwrap();
    let cfg = SimConfig { fields: vec![Field(14)], stars: 30, seed: 8, mix: event_rich(), ..Default::default() };
    write_season(&cfg, inbox.path()).unwrap();
    let as_of = candidate_time(&cfg, Field(14));

    let clean_db = TestDb::new().await;
    let clean = runner(&clean_db.pool, inbox.path());
    let run = clean.runner.run("run", Plan::Live, Field(14), 2025, as_of, None, &PhotometryCache::new()).await.unwrap();
    assert!(run.outcome.succeeded());
    let expected = tables(&clean_db.pool).await;
    assert!(expected.iter().any(|r| r.contains('|')), "the uninterrupted run published rows");

    let db = TestDb::new().await;
    let s = runner(&db.pool, inbox.path());
    let r = s.runner.clone();
    let task = tokio::spawn(async move { r.run("run", Plan::Live, Field(14), 2025, as_of, None, &PhotometryCache::new()).await });
    // Kill it as soon as the alertfinder has finished: score or publish is under way.
    let mut waited = 0;
    loop {
        let done = count(&db.pool, "SELECT count(*) FROM stage_attempts WHERE stage = 'alertfinder' AND status = 'succeeded'").await;
        if done > 0 || task.is_finished() || waited > 6000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        waited += 1;
    }
    task.abort();
    let _ = task.await;
    // The killed run's lock goes with its session; the server may take a moment to notice.
    let mut resumed = None;
    for _ in 0..100 {
        match s.runner.run("run", Plan::Live, Field(14), 2025, as_of, None, &PhotometryCache::new()).await {
            Err(FieldRunError::Busy(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
            other => {
                resumed = Some(other.unwrap());
                break;
            }
        }
    }
    let resumed = resumed.expect("the lock of the killed run is released");
    assert!(resumed.outcome.succeeded(), "{:?}", resumed.outcome);
    assert_eq!(tables(&db.pool).await, expected);
    assert_eq!(count(&db.pool, "SELECT count(*) FROM runs WHERE status = 'succeeded'").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_field_locked_by_another_run_is_not_run_twice() {
    let db = TestDb::new().await;
    let inbox = tempfile::tempdir().unwrap();
    let s = runner(&db.pool, inbox.path());
    // Another process (here: another session) holds the field's lock.
    let mut other = db.pool.acquire().await.unwrap().detach();
    let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(lock_key(Field(14))).fetch_one(&mut other).await.unwrap();
    assert!(got);
    let r = s.runner.run("run", Plan::Live, Field(14), 2025, 10_800.0, None, &PhotometryCache::new()).await;
    assert!(matches!(r, Err(FieldRunError::Busy(Field(14)))), "{r:?}");
    assert_eq!(count(&db.pool, "SELECT count(*) FROM runs").await, 0, "nothing was started");
    // Another field is not blocked.
    let r = s.runner.run("run", Plan::Live, Field(2), 2025, 10_800.0, None, &PhotometryCache::new()).await.unwrap();
    assert!(r.outcome.succeeded(), "{:?}", r.outcome);
    // Once the other session lets go, the field runs.
    let _: bool = sqlx::query_scalar("SELECT pg_advisory_unlock($1)").bind(lock_key(Field(14))).fetch_one(&mut other).await.unwrap();
    sqlx::Connection::close(other).await.unwrap();
    let r = s.runner.run("run", Plan::Live, Field(14), 2025, 10_800.0, None, &PhotometryCache::new()).await.unwrap();
    assert!(r.outcome.succeeded());

    // Two at once: exactly one of them runs, or they ran one after the other; never together.
    let (c1, c2) = (PhotometryCache::new(), PhotometryCache::new());
    let (a, b) = tokio::join!(
        s.runner.run("run", Plan::Live, Field(14), 2025, 10_801.0, None, &c1),
        s.runner.run("run", Plan::Live, Field(14), 2025, 10_802.0, None, &c2)
    );
    let busy = [&a, &b].iter().filter(|r| matches!(r, Err(FieldRunError::Busy(_)))).count();
    let ran = [&a, &b].iter().filter(|r| matches!(r, Ok(x) if x.outcome.succeeded())).count();
    assert_eq!(busy + ran, 2, "{a:?} {b:?}");
    assert!(ran >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_flags_events_and_reports_days_before_peak() {
    let db = TestDb::new().await;
    let inbox = tempfile::tempdir().unwrap();
    let cfg = SimConfig { fields: vec![Field(14)], stars: 40, seed: 21, mix: event_rich(), ..Default::default() };
    let summary = write_season(&cfg, inbox.path()).unwrap();
    let truth = lensnet_stages::simulate::read_truth(&summary.truth_path).unwrap();
    let s = runner(&db.pool, inbox.path());
    // Ingest once through a live run far in the past: it finds nothing to search but loads all.
    let first = s.runner.run("run", Plan::Live, Field(14), 2025, 10_700.0, None, &PhotometryCache::new()).await.unwrap();
    assert!(first.outcome.succeeded(), "{:?}", first.outcome);
    assert!(first.report("ingest").unwrap().rows_out > 0);

    let opts = ReplayOptions { season: 2025, fields: vec![Field(14)], step_days: 3.0, kind: "replay" };
    let result = replay(&s.runner, &opts, &|_, _, _| {}).await.unwrap();
    assert_eq!(result.fields[0].failed_steps, 0);
    assert!(result.fields[0].steps > 60, "a season of 3-day steps");
    let t = against_truth(&result.stars, &truth, &[Field(14)]);
    assert!(t.events >= 5, "{t:?}");
    assert!(t.events_candidates >= 3, "AlertFinder finds clear events during the replay: {t:?}");
    // The watermark hides nothing: every star that the core flags at a step's as-of time, given
    // all the data, was a candidate of the replay at that step.
    let season = Season::new(&cfg).unwrap();
    let mut checked = 0;
    let mut as_of = result.fields[0].first_as_of;
    while as_of <= result.fields[0].last_as_of {
        for star in core_candidates(&season, Field(14), cfg.stars, as_of) {
            let hit: i64 = sqlx::query_scalar("SELECT count(*) FROM candidates WHERE star_id = $1 AND as_of_hjd = $2")
                .bind(&star)
                .bind(as_of)
                .fetch_one(&db.pool)
                .await
                .unwrap();
            assert_eq!(hit, 1, "{star} is a candidate at {as_of} but the replay missed it");
            checked += 1;
        }
        as_of += 3.0 * 8.0;
    }
    assert!(checked > 0, "the check looked at some candidates");
    // Every candidate of every step has this model's verdict, tagged with the replay.
    let untagged = count(&db.pool, "SELECT count(*) FROM candidates c LEFT JOIN verdicts v USING (candidate_id) WHERE c.as_of_hjd > 10700.5 AND (v.replay_id IS NULL)").await;
    assert_eq!(untagged, 0);
    // A star's first "yes" is never after a later "yes" of the same star (time runs forward).
    for h in result.stars.iter().filter(|h| h.first_yes.is_some()) {
        assert!(h.first_candidate <= h.first_yes.unwrap());
        assert!(h.first_kept.unwrap() <= h.first_yes.unwrap());
    }
    if scorer().model().kind == "trained" {
        assert!(t.events_kept * 2 >= t.events_candidates, "the trained model keeps at least half of the clear events that AlertFinder found: {t:?}");
        assert!(t.flagged_before_peak >= 1, "{t:?}");
        assert!(t.median_lead_days.is_some());
    }
    // Replaying again adds nothing.
    let n = count(&db.pool, "SELECT count(*) FROM verdicts").await;
    let again = replay(&s.runner, &opts, &|_, _, _| {}).await.unwrap();
    assert_eq!(again.replay_id, result.replay_id);
    assert_eq!(count(&db.pool, "SELECT count(*) FROM verdicts").await, n);
}

#[test]
fn serve_runs_on_its_schedule_and_stops_cleanly_on_sigterm() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(TestDb::new());
    let Some(url) = db.url() else {
        eprintln!("skipped: needs the harness's local cluster (DATABASE_URL is set)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_lensnet"))
        .arg("serve")
        .current_dir(dir.path())
        .env("DATABASE_URL", &url)
        .env("LENSNET__SCHEDULE__CRON", "*/2 * * * * *")
        .env("LENSNET__SCHEDULE__FIELDS", "BLG14,BLG02")
        .env("LENSNET_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut runs = 0;
    for _ in 0..300 {
        runs = rt.block_on(count(&db.pool, "SELECT count(*) FROM runs WHERE kind = 'serve' AND status = 'succeeded'"));
        if runs >= 4 || child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(child.try_wait().unwrap().is_none(), "serve exited early");
    let kill = std::process::Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    assert!(kill.success());
    let mut status = None;
    for _ in 0..300 {
        if let Some(s) = child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut log = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut log);
    }
    let status = status.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("serve did not stop within 30 s of SIGTERM:\n{log}")
    });
    assert!(status.success(), "serve exit {status:?}:\n{log}");
    assert!(runs >= 4, "at least two ticks for each of two fields ran: {runs}\n{log}");
    assert!(log.contains("shutdown requested"), "{log}");
    let running = rt.block_on(count(&db.pool, "SELECT count(*) FROM runs WHERE status = 'running'"));
    assert_eq!(running, 0, "no run left marked running:\n{log}");
}


/// Moves every other star folder of `from` into `to`, taking every other one of `first` (star ids)
/// first, so that both halves hold some of them.
fn split_stars(from: &Path, to: &Path, first: &[String]) {
    let mut stars: Vec<_> = std::fs::read_dir(from).unwrap().flatten().filter(|e| e.path().is_dir()).map(|e| e.path()).collect();
    stars.sort_by_key(|p| (!first.iter().any(|f| p.file_name().unwrap().to_str() == Some(f)), p.clone()));
    for (i, p) in stars.iter().enumerate() {
        if i % 2 == 1 {
            std::fs::rename(p, to.join(p.file_name().unwrap())).unwrap();
        }
    }
}

async fn ingest_dir(s: &Setup, dir: &Path) {
    let photometry = lensnet_stages::ingest::PhotometryStore::new(s.runner.store.clone(), s.runner.root.clone());
    let r = lensnet_stages::ingest::ingest_location(dir.to_str().unwrap(), &photometry, s.runner.ledger.as_ref(), &ingest_options(Format::Auto))
        .await
        .unwrap();
    assert_eq!(r.failed() + r.quarantined(), 0, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_over_incomplete_data_is_recomputed_when_the_rest_arrives() {
    let all = tempfile::tempdir().unwrap();
    let cfg = SimConfig { fields: vec![Field(14)], stars: 24, seed: 21, mix: event_rich(), ..Default::default() };
    write_season(&cfg, all.path()).unwrap();
    let opts = ReplayOptions { season: 2025, fields: vec![Field(14)], step_days: 3.0, kind: "replay" };

    // Reference: everything ingested, then one replay.
    let ref_db = TestDb::new().await;
    let reference = runner(&ref_db.pool, all.path());
    ingest_dir(&reference, all.path()).await;
    replay(&reference.runner, &opts, &|_, _, _| {}).await.unwrap();
    let expected = tables(&ref_db.pool).await;
    let ref_stars = count(&ref_db.pool, "SELECT count(DISTINCT star_id) FROM candidates").await;
    let candidates: Vec<String> = sqlx::query_scalar("SELECT DISTINCT star_id FROM candidates").fetch_all(&ref_db.pool).await.unwrap();
    assert!(candidates.len() >= 2, "{candidates:?}");
    let second_half = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(second_half.path().join("BLG14")).unwrap();
    split_stars(&all.path().join("BLG14"), &second_half.path().join("BLG14"), &candidates);

    // Half the stars, a replay, then the rest and the same replay again.
    let db = TestDb::new().await;
    let s = runner(&db.pool, all.path());
    ingest_dir(&s, all.path()).await;
    replay(&s.runner, &opts, &|_, _, _| {}).await.unwrap();
    let half_stars = count(&db.pool, "SELECT count(DISTINCT star_id) FROM candidates").await;
    assert!(half_stars < ref_stars, "half the stars give fewer candidates ({half_stars} vs {ref_stars})");
    ingest_dir(&s, second_half.path()).await;
    replay(&s.runner, &opts, &|_, _, _| {}).await.unwrap();
    assert_eq!(tables(&db.pool).await, expected, "the steps whose photometry grew were recomputed");

    // Nothing new: a third replay skips every step's stages.
    let attempts = count(&db.pool, "SELECT count(*) FROM stage_attempts").await;
    replay(&s.runner, &opts, &|_, _, _| {}).await.unwrap();
    assert_eq!(count(&db.pool, "SELECT count(*) FROM stage_attempts").await, attempts, "no stage ran again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_left_running_by_a_dead_process_is_marked_abandoned() {
    let db = TestDb::new().await;
    let inbox = tempfile::tempdir().unwrap();
    let s = runner(&db.pool, inbox.path());
    let dead = uuid::Uuid::new_v4();
    sqlx::query("INSERT INTO runs (run_id, kind, field, config_hash) VALUES ($1, 'run', 'BLG14', 'h')").bind(dead).execute(&db.pool).await.unwrap();
    sqlx::query("INSERT INTO stage_attempts (run_id, stage, field, attempt, config_hash) VALUES ($1, 'alertfinder', 'BLG14', 1, 'h')")
        .bind(dead)
        .execute(&db.pool)
        .await
        .unwrap();
    let r = s.runner.run("run", Plan::Live, Field(14), 2025, 10_800.0, None, &PhotometryCache::new()).await.unwrap();
    assert!(r.outcome.succeeded());
    let run: String = sqlx::query_scalar("SELECT status FROM runs WHERE run_id = $1").bind(dead).fetch_one(&db.pool).await.unwrap();
    let attempt: String = sqlx::query_scalar("SELECT status FROM stage_attempts WHERE run_id = $1").bind(dead).fetch_one(&db.pool).await.unwrap();
    assert_eq!((run.as_str(), attempt.as_str()), ("abandoned", "abandoned"));
    assert_eq!(count(&db.pool, "SELECT count(*) FROM stage_attempts WHERE status = 'running'").await, 0);
}

/// Streaming does not change results: a replay that holds the field-season in memory and one
/// that streams it (as live runs and replays of large fields do) write the same candidates,
/// fits and verdicts, a prime and a sub-prime field (streamed in batches of a star or two).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_replay_writes_the_candidates_and_verdicts_of_a_whole_field_one() {
    let all = tempfile::tempdir().unwrap();
    let cfg = SimConfig { fields: vec![Field(2), Field(14)], stars: 24, seed: 23, mix: event_rich(), ..Default::default() };
    write_season(&cfg, all.path()).unwrap();
    let opts = ReplayOptions { season: 2025, fields: vec![Field(2), Field(14)], step_days: 2.0, kind: "replay" };
    let mut results = Vec::new();
    for whole_field_max_rows in [u64::MAX, 0] {
        let db = TestDb::new().await;
        let mut s = runner(&db.pool, all.path());
        s.runner.replay_whole_field_max_rows = whole_field_max_rows;
        if whole_field_max_rows == 0 {
            // A budget of a few hundred rows: the alertfinder searches and score scores a star
            // or two per batch, so the batching is what is compared.
            s.runner.stream_budget_bytes = 64 << 10;
        }
        ingest_dir(&s, all.path()).await;
        let r = replay(&s.runner, &opts, &|_, _, _| {}).await.unwrap();
        assert!(r.fields.iter().all(|f| f.failed_steps == 0 && f.stars == 24), "{:?}", r.fields);
        let verdicts = count(&db.pool, "SELECT count(*) FROM verdicts").await;
        results.push((tables(&db.pool).await, verdicts));
    }
    assert!(results[0].1 > 10, "the season has verdicts to compare: {}", results[0].1);
    let only = |a: &Vec<String>, b: &Vec<String>| a.iter().filter(|x| !b.contains(x)).cloned().collect::<Vec<_>>();
    assert!(results[0].0 == results[1].0, "streamed and whole-field replays differ: whole-field only {:?}, streamed only {:?}", only(&results[0].0, &results[1].0), only(&results[1].0, &results[0].0));
}

