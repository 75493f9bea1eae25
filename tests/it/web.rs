//! The coordinators' pages as a person uses them: `lensnet web`'s server on a free port over a
//! real database holding a replayed season, requests over real HTTP (the alert lists, a star
//! page with its figure, the runs, /healthz, /metrics), logins, vetting with and without the
//! right role and CSRF token, the database roles' privileges, the vetted export scored back to
//! the stored verdict, the alert webhooks against receivers the test starts, and headless
//! Chromium opening the pages and saving screenshots.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::post;
use lensnet::config::{NotifySettings, Secret, WebSettings};
use lensnet::fieldrun::Plan;
use lensnet::notify::Notifier;
use lensnet::replay::{replay, ReplayOptions};
use lensnet::web::auth::{add_user, Role};
use lensnet::web::{serve, WebState};
use lensnet_stages::ingest::PhotometryStore;
use lensnet_stages::simulate::{write_season, SimConfig};
use lensnet_stages::{Field, PhotometryCache};
use sqlx::Row;

use crate::harness::TestDb;
use crate::orchestration::{candidate_time, event_rich, runner, scorer, Setup};

fn settings() -> WebSettings {
    WebSettings {
        bind: "127.0.0.1:0".parse().unwrap(),
        base_url: "http://lensnet.test".into(),
        secure_cookies: true,
        session: Duration::from_secs(3600),
        page_size: 5,
        login_attempts_per_minute: 5,
    }
}

/// The server, stopped when dropped.
struct Web {
    base: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Web {
    async fn start(db: &TestDb, s: &Setup) -> Web {
        let reader = db.role_pool(lensnet::db::READER_ROLE).await;
        let vetter = db.role_pool(lensnet::db::VETTER_ROLE).await;
        let photometry = PhotometryStore::new(s.runner.store.clone(), s.runner.root.clone());
        let state = Arc::new(WebState::new(reader, vetter, db.pool.clone(), photometry, settings()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(state, listener, async move {
            let _ = rx.await;
        }));
        Web { base: format!("http://{addr}"), stop: Some(tx), task: Some(task) }
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap().unwrap();
        }
    }
}

impl Drop for Web {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// (status, body) of a GET.
async fn get(c: &reqwest::Client, url: &str, cookie: Option<&str>) -> (u16, String) {
    let mut r = c.get(url);
    if let Some(k) = cookie {
        r = r.header("cookie", k);
    }
    let resp = r.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let i = text.find(start)? + start.len();
    let j = text[i..].find(end)? + i;
    Some(&text[i..j])
}

/// A session cookie: log in through the form (GET for the CSRF token and cookie, then POST).
async fn login(c: &reqwest::Client, base: &str, user: &str, password: &str) -> (u16, Option<String>) {
    let resp = c.get(format!("{base}/login")).send().await.unwrap();
    let set = resp.headers().get("set-cookie").unwrap().to_str().unwrap().to_string();
    let csrf_cookie = set.split(';').next().unwrap().to_string();
    let body = resp.text().await.unwrap();
    let token = between(&body, "name=\"csrf\" value=\"", "\"").unwrap().to_string();
    let resp = c
        .post(format!("{base}/login"))
        .header("cookie", &csrf_cookie)
        .form(&[("user", user), ("password", password), ("csrf", &token)])
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let session = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("lensnet_session="))
        .map(|v| v.split(';').next().unwrap().to_string());
    (status, session)
}

/// A replayed season of BLG14 (ingested by a live run, then replayed in 3-day steps).
async fn replayed(db: &TestDb, inbox: &Path) -> Setup {
    let cfg = SimConfig { fields: vec![Field(14)], stars: 40, seed: 21, mix: event_rich(), ..Default::default() };
    write_season(&cfg, inbox).unwrap();
    let s = runner(&db.pool, inbox);
    let first = s.runner.run("run", Plan::Live, Field(14), 2025, 10_700.0, None, &PhotometryCache::new()).await.unwrap();
    assert!(first.outcome.succeeded());
    let opts = ReplayOptions { season: 2025, fields: vec![Field(14)], step_days: 3.0, kind: "replay" };
    let r = replay(&s.runner, &opts, &|_, _, _| {}).await.unwrap();
    assert_eq!(r.fields[0].failed_steps, 0);
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pages_show_a_replayed_season_and_only_a_vetter_with_the_forms_token_can_label() {
    let db = TestDb::new().await;
    let inbox = tempfile::tempdir().unwrap();
    let s = replayed(&db, inbox.path()).await;
    let yes: Vec<String> = sqlx::query_scalar("SELECT star_id FROM newest_yes_alerts ORDER BY as_of_hjd DESC, field, star_id").fetch_all(&db.pool).await.unwrap();
    let maybe: Vec<String> = sqlx::query_scalar("SELECT star_id FROM needs_human ORDER BY as_of_hjd DESC, field, star_id").fetch_all(&db.pool).await.unwrap();
    assert!(!yes.is_empty(), "the replay has yes alerts to show");
    let web = Web::start(&db, &s).await;
    let c = client();
    let base = web.base.clone();

    // The alert list: the newest yes alerts first (a page of 5), then the maybe queue.
    let (st, page) = get(&c, &format!("{base}/"), None).await;
    assert_eq!(st, 200, "{page}");
    let yes_part = between(&page, "id=\"yes\"", "id=\"maybe\"").unwrap();
    let shown: Vec<&str> = yes.iter().take(5).map(|s| s.as_str()).collect();
    for star in &shown {
        assert!(yes_part.contains(&format!(">{star}</a>")), "{star} is on the first page");
        assert!(yes_part.contains(&format!("/thumb/BLG14/{star}?as_of=")), "with its thumbnail");
    }
    if let Some(star) = yes.get(5) {
        assert!(!yes_part.contains(&format!(">{star}</a>")), "the sixth is on the next page");
        assert!(yes_part.contains("page=1\">older</a>"));
        let (_, next) = get(&c, &format!("{base}/?page=1"), None).await;
        assert!(between(&next, "id=\"yes\"", "id=\"maybe\"").unwrap().contains(&format!(">{star}</a>")));
    }
    let maybe_part = &page[page.find("id=\"maybe\"").unwrap()..];
    for star in maybe.iter().take(5) {
        assert!(maybe_part.contains(&format!(">{star}</a>")), "{star} is in the maybe queue");
    }
    // Filters: by field and by time.
    let (st, other) = get(&c, &format!("{base}/?field=BLG02"), None).await;
    assert_eq!(st, 200);
    assert!(!other.contains(&format!(">{}</a>", yes[0])), "no BLG14 star under BLG02");
    let newest: f64 = sqlx::query_scalar("SELECT max(as_of_hjd) FROM newest_yes_alerts").fetch_one(&db.pool).await.unwrap();
    let (_, later) = get(&c, &format!("{base}/?from={}", newest + 1.0), None).await;
    assert!(between(&later, "id=\"yes\"", "id=\"maybe\"").unwrap().contains("none"));
    assert_eq!(get(&c, &format!("{base}/?field=NOPE"), None).await.0, 404);
    assert_eq!(get(&c, &format!("{base}/?from=yesterday"), None).await.0, 400);

    // A star page: its verdict history, diagnosis, figure and thumbnail.
    let star = &yes[0];
    let (st, sp) = get(&c, &format!("{base}/star/BLG14/{star}"), None).await;
    assert_eq!(st, 200, "{sp}");
    let verdicts: i64 = sqlx::query_scalar("SELECT count(*) FROM star_verdict_history WHERE star_id = $1").bind(star).fetch_one(&db.pool).await.unwrap();
    assert_eq!(sp.matches("as of then</a>").count() as i64, verdicts, "one row per verdict");
    assert!(sp.contains("Diagnosis") && sp.contains("bl_delta_chi2") && sp.contains("polyline"), "diagnosis values and the score history");
    assert!(sp.contains("Log in</a> as a vetter"), "anonymous users are told how to vet");
    let png = c.get(format!("{base}/star/BLG14/{star}/lc.png")).send().await.unwrap();
    assert_eq!(png.status(), 200);
    assert_eq!(png.headers()["content-type"], "image/png");
    assert!(png.bytes().await.unwrap().starts_with(b"\x89PNG"));
    let (st, svg) = get(&c, &format!("{base}/star/BLG14/{star}/lc.svg?y=mag"), None).await;
    assert!(st == 200 && svg.starts_with("<svg") || st == 404, "magnitudes, or a clear 404 when the files carry none");
    let (st, svg) = get(&c, &format!("{base}/star/BLG14/{star}/lc.svg"), None).await;
    assert!(st == 200 && svg.contains("point-lens grid"), "the fits are drawn");
    let (st, thumb) = get(&c, &format!("{base}/thumb/BLG14/{star}"), None).await;
    assert!(st == 200 && thumb.matches("h0").count() > 50);
    // Hostile input is data, never SQL or markup.
    let evil = "x'; DROP TABLE candidates; --<script>";
    let (st, body) = get(&c, &format!("{base}/star/BLG14/{}", lensnet::web::html::enc(evil)), None).await;
    assert_eq!(st, 404);
    assert!(!body.contains("<script>") && body.contains("&lt;script&gt;"));
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM candidates").fetch_one(&db.pool).await.unwrap();
    assert!(n > 0, "candidates is still there");

    // Runs and their audit trail.
    let run_id: uuid::Uuid = sqlx::query_scalar("SELECT run_id FROM runs WHERE kind = 'replay' ORDER BY started_at DESC LIMIT 1").fetch_one(&db.pool).await.unwrap();
    let (st, runs) = get(&c, &format!("{base}/runs?kind=replay"), None).await;
    assert!(st == 200 && runs.contains(&format!("/run/{run_id}")));
    let (st, run) = get(&c, &format!("{base}/run/{run_id}"), None).await;
    assert_eq!(st, 200);
    for stage in ["alertfinder", "score", "publish"] {
        assert!(run.contains(&format!("<td>{stage}</td>")), "{stage} attempt listed");
    }
    assert_eq!(get(&c, &format!("{base}/run/not-a-uuid"), None).await.0, 404);
    assert_eq!(get(&c, &format!("{base}/healthz"), None).await, (200, "ok\n".to_string()));
    let (st, metrics) = get(&c, &format!("{base}/metrics"), None).await;
    let replays: i64 = sqlx::query_scalar("SELECT count(*) FROM runs WHERE kind = 'replay' AND status = 'succeeded'").fetch_one(&db.pool).await.unwrap();
    assert_eq!(st, 200);
    assert!(metrics.contains(&format!("lensnet_runs{{kind=\"replay\",status=\"succeeded\"}} {replays}\n")), "{metrics}");
    assert!(metrics.contains(&format!("lensnet_alert_stars{{list=\"yes\"}} {}\n", yes.len())));
    assert!(metrics.contains("lensnet_stage_duration_seconds_total{stage=\"alertfinder\",status=\"succeeded\"}"));

    // Accounts and logins.
    add_user(&db.pool, "ann", Role::Vetter, "ann's long password", false).await.unwrap();
    add_user(&db.pool, "rob", Role::Reader, "rob's long password", false).await.unwrap();
    assert!(add_user(&db.pool, "ann", Role::Vetter, "another password", false).await.is_err(), "no silent overwrite");
    assert!(add_user(&db.pool, "eve", Role::Vetter, "short", false).await.is_err());
    let hash: String = sqlx::query_scalar("SELECT password_hash FROM web_users WHERE name = 'ann'").fetch_one(&db.pool).await.unwrap();
    assert!(hash.starts_with("$argon2id$") && !hash.contains("ann's long password"));
    assert_eq!(login(&c, &base, "ann", "wrong password!").await, (401, None));
    let no_token = c.post(format!("{base}/login")).form(&[("user", "ann"), ("password", "ann's long password")]).send().await.unwrap();
    assert_eq!(no_token.status(), 403, "a login without its CSRF token is refused");
    let (st, rob) = login(&c, &base, "rob", "rob's long password").await;
    assert_eq!(st, 303);
    let rob = rob.unwrap();
    let (st, ann) = login(&c, &base, "ann", "ann's long password").await;
    assert_eq!(st, 303);
    let ann = ann.unwrap();

    let candidate: String = sqlx::query_scalar("SELECT candidate_id FROM candidates WHERE star_id = $1 ORDER BY as_of_hjd DESC LIMIT 1").bind(star).fetch_one(&db.pool).await.unwrap();
    let vet = |cookie: String, token: Option<String>| {
        let c = c.clone();
        let url = format!("{base}/star/BLG14/{star}/vet");
        let candidate = candidate.clone();
        async move {
            let mut form = vec![("candidate_id", candidate), ("label", "no".to_string()), ("reason", "variable".to_string()), ("comment", "<b>outbursts before</b>".to_string())];
            if let Some(t) = token {
                form.push(("csrf", t));
            }
            c.post(url).header("cookie", cookie).form(&form).send().await.unwrap().status().as_u16()
        }
    };
    // A reader's page has no form, and a reader's POST is refused even with a token.
    let (_, rob_page) = get(&c, &format!("{base}/star/BLG14/{star}"), Some(&rob)).await;
    assert!(!rob_page.contains("save label") && rob_page.contains("reader's"));
    let rob_token = between(&rob_page, "name=\"csrf\" value=\"", "\"").map(String::from);
    assert_eq!(vet(rob.clone(), rob_token).await, 403, "a reader cannot vet");
    assert_eq!(vet(String::new(), None).await, 403, "nobody logged in cannot vet");
    let (_, ann_page) = get(&c, &format!("{base}/star/BLG14/{star}"), Some(&ann)).await;
    assert!(ann_page.contains("save label"));
    let token = between(&ann_page[ann_page.find("save label").unwrap() - 400..], "name=\"csrf\" value=\"", "\"").unwrap().to_string();
    assert_eq!(vet(ann.clone(), None).await, 403, "a vetter without the CSRF token is refused");
    assert_eq!(vet(ann.clone(), Some("0".repeat(64))).await, 403, "or with a wrong one");
    let count = || async { sqlx::query_scalar::<_, i64>("SELECT count(*) FROM vetting").fetch_one(&db.pool).await.unwrap() };
    assert_eq!(count().await, 0);
    assert_eq!(vet(ann.clone(), Some(token.clone())).await, 303);
    let row = sqlx::query("SELECT vetter, label, reason, comment, model_verdict, candidate_id FROM vetting").fetch_one(&db.pool).await.unwrap();
    assert_eq!(row.get::<String, _>("vetter"), "ann");
    assert_eq!(row.get::<String, _>("label"), "no");
    assert_eq!(row.get::<String, _>("candidate_id"), candidate);
    let (_, after) = get(&c, &format!("{base}/star/BLG14/{star}"), None).await;
    assert!(after.contains("&lt;b&gt;outbursts before&lt;/b&gt;") && after.contains("<td>ann</td>"), "the vetting history, escaped");
    let model_said: Option<String> = row.get("model_verdict");
    if model_said.as_deref() == Some("yes") {
        let kind: String = sqlx::query_scalar("SELECT kind FROM vetting_disagreements WHERE candidate_id = $1").bind(&candidate).fetch_one(&db.pool).await.unwrap();
        assert_eq!(kind, "false_alarm");
    }
    // Logging out ends the session.
    let out = c.post(format!("{base}/logout")).header("cookie", &ann).form(&[("csrf", token.as_str())]).send().await.unwrap();
    assert_eq!(out.status(), 303);
    assert_eq!(vet(ann.clone(), Some(token)).await, 403);
    // Failed logins are limited: five a minute per address (one was ann's typo above), then
    // even the right password waits.
    for _ in 0..4 {
        assert_eq!(login(&c, &base, "mallory", "not the password").await.0, 401);
    }
    assert_eq!(login(&c, &base, "mallory", "not the password").await.0, 429);
    assert_eq!(login(&c, &base, "ann", "ann's long password").await.0, 429, "the address is limited for any name");

    // The database roles hold the line below the pages.
    let reader = db.role_pool(lensnet::db::READER_ROLE).await;
    let vetter = db.role_pool(lensnet::db::VETTER_ROLE).await;
    assert!(sqlx::query("SELECT * FROM web_users").fetch_all(&reader).await.is_err(), "readers never see password hashes");
    assert!(sqlx::query("INSERT INTO vetting (candidate_id, field, star_id, vetter, label) VALUES ($1, 'BLG14', $2, 'x', 'yes')").bind(&candidate).bind(star).execute(&reader).await.is_err(), "readers cannot vet");
    assert!(sqlx::query_scalar::<_, i64>("SELECT count(*) FROM vetting").fetch_one(&reader).await.is_ok(), "readers read the labels");
    for q in ["SELECT count(*) FROM vetting", "SELECT count(*) FROM candidates", "SELECT count(*) FROM web_users"] {
        assert!(sqlx::query(q).fetch_all(&vetter).await.is_err(), "the vetters' role cannot read: {q}");
    }
    assert!(sqlx::query("UPDATE vetting SET label = 'yes'").execute(&vetter).await.is_err(), "nor change labels");
    assert!(sqlx::query("DELETE FROM vetting").execute(&vetter).await.is_err(), "nor delete them");

    // Vetting feeds training: the export prepares the candidate exactly as the score stage did.
    let out = tempfile::tempdir().unwrap();
    let stats = lensnet_stages::score::stage::ScoreStage::stats_of(&scorer()).unwrap();
    let photometry = PhotometryStore::new(s.runner.store.clone(), s.runner.root.clone());
    let summary = lensnet::vetting::export_vetted(&db.pool, &photometry, &stats, out.path()).await.unwrap();
    assert_eq!(summary.rows, 1);
    assert_eq!(summary.by_label.get("no"), Some(&1));
    let (seq, diag, labels) = read_tensors(&out.path().join("tensors.parquet"));
    assert_eq!(labels, vec!["no".to_string()]);
    let probs = scorer().score(&seq, &diag, 1).unwrap();
    let stored: f32 = sqlx::query_scalar("SELECT binary_score FROM verdicts WHERE candidate_id = $1 AND model_sha256 = $2")
        .bind(&candidate)
        .bind(&scorer().model().sha256)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!((probs[0].binary - stored).abs() < 1e-4, "the exported tensors score as the stored verdict: {} vs {stored}", probs[0].binary);

    screenshots(&base, star).await;
    web.stop().await;
}

/// seq, diag and labels of an exported tensors file.
fn read_tensors(path: &Path) -> (Vec<f32>, Vec<f32>, Vec<String>) {
    use arrow::array::{Array, FixedSizeListArray, Float32Array, StringArray};
    let file = std::fs::File::open(path).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap().build().unwrap();
    let (mut seq, mut diag, mut labels) = (Vec::new(), Vec::new(), Vec::new());
    for b in reader {
        let b = b.unwrap();
        for (name, out) in [("seq", &mut seq), ("diag", &mut diag)] {
            let l = b.column_by_name(name).unwrap().as_any().downcast_ref::<FixedSizeListArray>().unwrap();
            out.extend_from_slice(l.values().as_any().downcast_ref::<Float32Array>().unwrap().values());
        }
        let l = b.column_by_name("label").unwrap().as_any().downcast_ref::<StringArray>().unwrap();
        labels.extend((0..l.len()).map(|i| l.value(i).to_string()));
    }
    (seq, diag, labels)
}

/// Headless Chromium opens the alert list and a star page and saves screenshots (into
/// LENSNET_TEST_FIGURES when set). Under CI the browser must be there (scripts/setup installs
/// it); elsewhere a missing browser skips this part with a note.
async fn screenshots(base: &str, star: &str) {
    let Some(chromium) = ["chromium", "chromium-browser"].into_iter().find(|b| std::process::Command::new(b).arg("--version").output().is_ok_and(|o| o.status.success())) else {
        assert!(std::env::var_os("CI").is_none(), "CI needs headless Chromium for the page test (scripts/setup installs it)");
        eprintln!("web: chromium not found; screenshots skipped");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let keep = std::env::var_os("LENSNET_TEST_FIGURES").map(std::path::PathBuf::from);
    for (name, url, height) in [("web-alerts.png", format!("{base}/"), 1000), ("web-star.png", format!("{base}/star/BLG14/{star}"), 1700)] {
        let out = keep.clone().unwrap_or_else(|| dir.path().to_path_buf()).join(name);
        let profile = tempfile::tempdir().unwrap();
        let url2 = url.clone();
        let out2 = out.clone();
        let chromium = chromium.to_string();
        let status = tokio::task::spawn_blocking(move || {
            std::process::Command::new(chromium)
                .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run", "--disable-extensions"])
                .arg(format!("--user-data-dir={}", profile.path().display()))
                .arg(format!("--window-size=1400,{height}"))
                .arg(format!("--screenshot={}", out2.display()))
                .arg(&url2)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
        })
        .await
        .unwrap()
        .unwrap();
        assert!(status.success(), "chromium opened {url}");
        let png = std::fs::read(&out).unwrap();
        assert!(png.starts_with(b"\x89PNG") && png.len() > 20_000, "{name}: {} bytes", png.len());
    }
}

/// A webhook receiver started by the test: answers `status` and keeps what it got.
async fn receiver(status: u16) -> (String, Arc<Mutex<Vec<serde_json::Value>>>, tokio::task::JoinHandle<()>) {
    let got: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let g = got.clone();
    let app = axum::Router::new().route(
        "/hook/secret-token",
        post(move |axum::Json(v): axum::Json<serde_json::Value>| {
            let g = g.clone();
            async move {
                g.lock().unwrap().push(v);
                axum::http::StatusCode::from_u16(status).unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (format!("http://{addr}/hook/secret-token"), got, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_yes_alert_is_posted_once_per_star_and_model_and_a_failing_receiver_never_fails_a_run() {
    let db = TestDb::new().await;
    let inbox = tempfile::tempdir().unwrap();
    let cfg = SimConfig { fields: vec![Field(14)], stars: 40, seed: 21, mix: event_rich(), ..Default::default() };
    write_season(&cfg, inbox.path()).unwrap();
    let (good, got, good_task) = receiver(200).await;
    let (broken, got_broken, broken_task) = receiver(500).await;
    // A receiver that is not there at all: a port that was free a moment ago.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/hook", l.local_addr().unwrap())
    };
    let mut s = runner(&db.pool, inbox.path());
    let settings = NotifySettings {
        webhooks: [&good, &broken, &dead].iter().map(|u| Secret::new(u.as_str())).collect(),
        timeout: Duration::from_secs(2),
        attempts_per_run: 2,
        max_attempts: 3,
        max_age_hours: 48,
        on_replay: false,
    };
    s.runner.notifier = Some(Arc::new(Notifier::new(db.pool.clone(), settings, "http://lensnet.test".into()).unwrap()));
    // Live runs over the days around a clear event, until some star is called "yes".
    let t = candidate_time(&cfg, Field(14));
    let mut runs = 0;
    for d in 0..12 {
        let r = s.runner.run("run", Plan::Live, Field(14), 2025, t + d as f64, None, &PhotometryCache::new()).await.unwrap();
        assert!(r.outcome.succeeded(), "the receivers never fail a run: {:?}", r.outcome);
        runs += 1;
        let yes: i64 = sqlx::query_scalar("SELECT count(*) FROM verdicts WHERE verdict = 'yes'").fetch_one(&db.pool).await.unwrap();
        if yes > 0 && d >= 2 {
            break;
        }
    }
    let alerts: Vec<(String, String)> =
        sqlx::query_as("SELECT DISTINCT c.star_id, v.model_sha256 FROM verdicts v JOIN candidates c USING (candidate_id) WHERE v.verdict = 'yes' ORDER BY 1").fetch_all(&db.pool).await.unwrap();
    assert!(!alerts.is_empty(), "the event became a yes alert within {runs} runs");
    // One message per (star, model) at the working receiver, whatever the number of runs.
    let messages = got.lock().unwrap().clone();
    let mut per_star: HashMap<String, usize> = HashMap::new();
    for m in &messages {
        *per_star.entry(m["alert"]["star_id"].as_str().unwrap().to_string()).or_default() += 1;
        let star = m["alert"]["star_id"].as_str().unwrap();
        assert!(m["text"].as_str().unwrap().contains(star), "Slack-compatible text names the star");
        assert_eq!(m["alert"]["url"].as_str().unwrap(), format!("http://lensnet.test/star/BLG14/{star}"));
        assert!(m["alert"]["binary_score"].as_f64().unwrap() >= 0.0 && m["alert"]["candidate_id"].is_string());
    }
    assert_eq!(per_star.len(), alerts.len(), "{per_star:?} vs {alerts:?}");
    assert!(per_star.values().all(|&n| n == 1), "once per star and model: {per_star:?}");
    // The failing receivers: tried, never more than max_attempts, logged without the secret.
    let logged = sqlx::query("SELECT target, status, attempt, http_status, error FROM webhook_deliveries").fetch_all(&db.pool).await.unwrap();
    assert!(logged.iter().all(|r| !r.get::<String, _>("target").contains("secret-token")), "the URL's secret is not stored");
    let delivered = logged.iter().filter(|r| r.get::<String, _>("status") == "delivered").count();
    assert_eq!(delivered, alerts.len());
    let to_500 = logged.iter().filter(|r| r.get::<Option<i32>, _>("http_status") == Some(500)).count();
    assert!(to_500 >= alerts.len() && to_500 <= 3 * alerts.len(), "{to_500} tries of the receiver answering 500");
    assert_eq!(got_broken.lock().unwrap().len(), to_500, "each logged try reached it");
    let refused: Vec<_> = logged.iter().filter(|r| r.get::<Option<i32>, _>("http_status").is_none()).collect();
    assert!(!refused.is_empty() && refused.len() <= 3 * alerts.len());
    assert!(refused.iter().all(|r| r.get::<Option<String>, _>("error").unwrap().starts_with("cannot connect")), "the error says why");
    // Running again sends nothing new.
    let before = got.lock().unwrap().len();
    let again = s.runner.run("run", Plan::Live, Field(14), 2025, t + (runs - 1) as f64, None, &PhotometryCache::new()).await.unwrap();
    assert!(again.outcome.succeeded());
    assert_eq!(got.lock().unwrap().len(), before);
    let attempts_max: i32 = sqlx::query_scalar("SELECT max(attempt) FROM webhook_deliveries").fetch_one(&db.pool).await.unwrap();
    assert!(attempts_max <= 3, "max_attempts holds across runs");
    // A replay of the season does not page anyone.
    let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM alert_notifications").fetch_one(&db.pool).await.unwrap();
    let opts = ReplayOptions { season: 2025, fields: vec![Field(14)], step_days: 10.0, kind: "replay" };
    replay(&s.runner, &opts, &|_, _, _| {}).await.unwrap();
    assert_eq!(sqlx::query_scalar::<_, i64>("SELECT count(*) FROM alert_notifications").fetch_one(&db.pool).await.unwrap(), queued);
    good_task.abort();
    broken_task.abort();
}

/// With DATABASE_URL (an external server), the pages' pools take their roles with SET ROLE at
/// connect: the reader reads and cannot write, the vetter adds labels and cannot read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_database_url_the_role_pools_hold_the_roles_privileges() {
    let db = TestDb::new().await;
    let Some(url) = db.url() else { return };
    let cfg = lensnet::config::Config::load(&lensnet::config::Sources { file: None, env: vec![("DATABASE_URL".into(), url)] }).unwrap();
    let reader = lensnet::db::role_pool(&cfg, lensnet::db::READER_ROLE, 2).await.unwrap();
    let vetter = lensnet::db::role_pool(&cfg, lensnet::db::VETTER_ROLE, 2).await.unwrap();
    for (pool, role) in [(&reader, "lensnet_reader"), (&vetter, "lensnet_vetter")] {
        let who: String = sqlx::query_scalar("SELECT current_user::text").fetch_one(pool).await.unwrap();
        assert_eq!(who, role);
    }
    assert!(sqlx::query_scalar::<_, i64>("SELECT count(*) FROM candidates").fetch_one(&reader).await.is_ok());
    assert!(sqlx::query("DELETE FROM candidates").execute(&reader).await.is_err());
    assert!(sqlx::query("SELECT * FROM web_users").fetch_all(&reader).await.is_err());
    assert!(sqlx::query("SELECT count(*) FROM vetting").fetch_all(&vetter).await.is_err());
}
