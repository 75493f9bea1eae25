//! S3 for real: the default `lensnet` binary ingests, runs a field and replays a season on an
//! `s3://` store served by moto in server mode (from PyPI; scripts/setup puts it in `.moto/`),
//! started on a free port by this test, and ends with the tables of the same commands on a
//! local folder. In the middle of the replay the S3 endpoint restarts: every open connection is
//! cut and new ones are refused for three seconds, as while a server restarts (the endpoint is
//! a proxy in front of moto, whose state lives in its process); the store's retries ride it out.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lensnet_stages::simulate::{write_season, SimConfig};
use lensnet_stages::Field;

use crate::harness::TestDb;
use crate::orchestration::{event_rich, tables};
use crate::harness::root;


fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// moto's S3 server, killed when dropped.
struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    fn start() -> Option<Moto> {
        let bin = [root().join(".moto/bin/moto_server"), PathBuf::from("moto_server")]
            .into_iter()
            .find(|b| Command::new(b).arg("--help").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success()));
        let Some(bin) = bin else {
            assert!(std::env::var_os("CI").is_none(), "CI needs moto (scripts/setup installs it into .moto/)");
            eprintln!("s3: moto_server not found; the S3 test is skipped");
            return None;
        };
        let port = free_port();
        let child = Command::new(bin).args(["-H", "127.0.0.1", "-p", &port.to_string()]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(60), "moto did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(Moto { child, port })
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP endpoint in front of moto that can "restart": cut every connection and refuse new
/// ones for a while.
struct Endpoint {
    addr: SocketAddr,
    generation: Arc<AtomicU64>,
    accepted: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
    restart: tokio::sync::mpsc::Sender<Duration>,
}

impl Endpoint {
    async fn start(backend: u16) -> Endpoint {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let generation = Arc::new(AtomicU64::new(0));
        let accepted = Arc::new(AtomicU64::new(0));
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Duration>(4);
        let (g, a) = (generation.clone(), accepted.clone());
        let task = tokio::spawn(async move {
            let mut listener = Some(listener);
            let mut conns: Vec<tokio::task::JoinHandle<()>> = Vec::new();
            loop {
                let Some(l) = listener.as_ref() else { break };
                tokio::select! {
                    acc = l.accept() => {
                        let Ok((mut inbound, _)) = acc else { continue };
                        a.fetch_add(1, Ordering::SeqCst);
                        conns.retain(|c| !c.is_finished());
                        conns.push(tokio::spawn(async move {
                            if let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", backend)).await {
                                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                            }
                        }));
                    }
                    down = rx.recv() => {
                        let Some(down) = down else { break };
                        // The restart: connections cut, the port closed, then open again.
                        for c in conns.drain(..) {
                            c.abort();
                        }
                        drop(listener.take());
                        g.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(down).await;
                        listener = Some(tokio::net::TcpListener::bind(addr).await.expect("the endpoint's port again"));
                    }
                }
            }
        });
        Endpoint { addr, generation, accepted, task, restart: tx }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lensnet(url: &str, store: &str, data: &Path, s3: Option<SocketAddr>, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lensnet"));
    c.args(args)
        .current_dir(data)
        .env_remove("LENSNET_CONFIG")
        .env("LENSNET_LOG", "warn")
        .env("DATABASE_URL", url)
        .env("LENSNET__PATHS__DATA_DIR", data)
        .env("LENSNET__STORE__URL", store)
        .env_remove("AWS_PROFILE");
    if let Some(a) = s3 {
        c.env("AWS_ENDPOINT", format!("http://{a}"))
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_ACCESS_KEY_ID", "lensnet-test")
            .env("AWS_SECRET_ACCESS_KEY", "lensnet-test-secret")
            .env("AWS_REGION", "us-east-1");
    }
    c
}

fn ok(o: Output, what: &str) -> String {
    assert!(o.status.success(), "{what} failed:\n{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_a_run_and_a_replay_on_s3_survive_a_server_restart_and_equal_a_local_store() {
    let Some(moto) = Moto::start() else { return };
    let endpoint = Endpoint::start(moto.port).await;
    // The bucket (moto accepts an unsigned create).
    let resp = reqwest::Client::new().put(format!("http://127.0.0.1:{}/lensnet-test", moto.port)).send().await.unwrap();
    assert!(resp.status().is_success(), "create bucket: {}", resp.status());
    let s3_db = TestDb::new().await;
    let local_db = TestDb::new().await;
    let (Some(s3_url), Some(local_url)) = (s3_db.url(), local_db.url()) else {
        eprintln!("s3: needs the harness's local cluster (DATABASE_URL is set); skipped");
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let inbox = work.path().join("inbox");
    let cfg = SimConfig { fields: vec![Field(14)], stars: 30, seed: 41, mix: event_rich(), ..Default::default() };
    write_season(&cfg, &inbox).unwrap();
    let as_of = crate::orchestration::candidate_time(&cfg, Field(14));
    let local_store = format!("file://{}", work.path().join("lake").display());
    let s3_store = "s3://lensnet-test/lake";
    let (d1, d2) = (work.path().join("s3-data"), work.path().join("local-data"));
    std::fs::create_dir_all(&d1).unwrap();
    std::fs::create_dir_all(&d2).unwrap();
    let inbox_s = inbox.to_str().unwrap().to_string();
    let as_of_s = format!("{as_of}");
    let steps: Vec<Vec<&str>> = vec![
        vec!["ingest", "--input", &inbox_s],
        vec!["run", "--field", "BLG14", "--as-of", &as_of_s],
        vec!["replay", "--season", "2025", "--fields", "BLG14", "--step", "4d"],
    ];
    for (k, args) in steps.iter().enumerate() {
        ok(lensnet(&local_url, &local_store, &d2, None, args).output().unwrap(), &format!("local {args:?}"));
        let mut cmd = lensnet(&s3_url, s3_store, &d1, Some(endpoint.addr), args);
        // object_store says when it backs off and retries.
        cmd.env("LENSNET_LOG", "warn,object_store=info");
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        if k == 2 {
            // The replay is under way (it read the season and writes each step's outputs):
            // restart the endpoint.
            let before = endpoint.accepted.load(Ordering::SeqCst);
            let started = Instant::now();
            while endpoint.accepted.load(Ordering::SeqCst) == before && started.elapsed() < Duration::from_secs(120) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tokio::time::sleep(Duration::from_millis(1500)).await;
            assert!(child.try_wait().unwrap().is_none(), "the replay is still running when the server restarts");
            endpoint.restart.send(Duration::from_secs(3)).await.unwrap();
        }
        let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap()).await.unwrap();
        let log = String::from_utf8_lossy(&out.stderr).into_owned();
        ok(out, &format!("s3 {args:?}"));
        if k == 2 {
            assert!(log.contains("backing off"), "the replay met the restart and retried:\n{log}");
        }
    }
    assert_eq!(endpoint.generation.load(Ordering::SeqCst), 1, "the endpoint restarted once");
    assert_eq!(tables(&s3_db.pool).await, tables(&local_db.pool).await, "the same candidates, fits and verdicts on S3 as on a folder");
    let verdicts: i64 = sqlx::query_scalar("SELECT count(*) FROM verdicts").fetch_one(&s3_db.pool).await.unwrap();
    assert!(verdicts > 0);
    // The photometry and the stage outputs are in the bucket.
    let listing = reqwest::Client::new().get(format!("http://127.0.0.1:{}/lensnet-test?list-type=2&prefix=lake/", moto.port)).send().await.unwrap().text().await.unwrap();
    assert!(listing.contains("lake/photometry/"), "{}", &listing[..listing.len().min(2000)]);
    // And the store check finds nothing to repair.
    ok(lensnet(&s3_url, s3_store, &d1, Some(endpoint.addr), &["store", "check"]).output().unwrap(), "s3 store check");
}
