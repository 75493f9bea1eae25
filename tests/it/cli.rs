//! The `lensnet` binary as a user runs it: help texts, configuration checks, the local database
//! commands, and argument errors.

use std::path::Path;
use std::process::{Command, Output};

fn lensnet(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lensnet"))
        .args(args)
        .current_dir(dir)
        .env_remove("DATABASE_URL")
        .env_remove("LENSNET_CONFIG")
        .env("LENSNET_LOG", "warn")
        .output()
        .expect("lensnet runs")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn help_lists_the_subcommand_contract() {
    let dir = tempfile::tempdir().unwrap();
    let out = lensnet(dir.path(), &["--help"]);
    assert!(out.status.success());
    let help = text(&out);
    for sub in ["demo", "simulate", "ingest", "run", "serve", "replay", "db", "bench", "config", "web", "user", "plot", "evaluate"] {
        assert!(help.contains(&format!("\n  {sub} ")), "--help lacks {sub}:\n{help}");
        let sub_help = lensnet(dir.path(), &[sub, "--help"]);
        assert!(sub_help.status.success(), "{sub} --help fails");
        assert!(text(&sub_help).lines().next().is_some_and(|l| l.len() > 20), "{sub} --help has no description");
    }
    let db_help = text(&lensnet(dir.path(), &["db", "--help"]));
    for sub in ["start", "stop", "status", "url", "migrate"] {
        assert!(db_help.contains(&format!("\n  {sub} ")), "db --help lacks {sub}");
    }
}

#[test]
fn config_check_reports_every_problem_with_its_source() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("lensnet.toml"), "[store]\nurll = 1\n[score]\nbatch_size = 0\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lensnet"))
        .args(["config", "check"])
        .current_dir(dir.path())
        .env("LENSNET__SCHEDULE__MAX_PARALLEL", "0")
        .env("LENSNET__NOPE__X", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let t = text(&out);
    assert!(t.contains("4 configuration problem(s)"), "{t}");
    for needle in ["`store.urll`: unknown key", "`score.batch_size`", "`schedule.max_parallel`", "environment LENSNET__NOPE__X"] {
        assert!(t.contains(needle), "missing {needle}:\n{t}");
    }
    let ok = lensnet(tempfile::tempdir().unwrap().path(), &["config", "check"]);
    assert!(ok.status.success(), "{}", text(&ok));
}

#[test]
fn bad_arguments_are_named_and_fail() {
    let dir = tempfile::tempdir().unwrap();
    let out = lensnet(dir.path(), &["replay", "--season", "2019", "--fields", "BLG1000"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("invalid field `BLG1000`"), "{}", text(&out));
    let out = lensnet(dir.path(), &["replay", "--season", "2019", "--fields", "BLG01", "--step", "1w"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("unknown unit"), "{}", text(&out));
    let out = lensnet(dir.path(), &["run", "--field", "nope"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("--field"), "{}", text(&out));
    // Fields that KMTNet does not have, and as-of times that are not times, are refused before
    // anything runs (they panicked, or were recorded as succeeded runs).
    let out = lensnet(dir.path(), &["run", "--field", "BLG99"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("invalid field `BLG99`"), "{}", text(&out));
    for t in ["inf", "-inf", "NaN", "1e300", "-1e300", "soon"] {
        let out = lensnet(dir.path(), &["run", "--field", "BLG14", &format!("--as-of={t}")]);
        assert_eq!(out.status.code(), Some(2), "--as-of {t}: {}", text(&out));
        assert!(text(&out).contains("--as-of") && text(&out).contains(t), "--as-of {t}: {}", text(&out));
        assert!(!text(&out).contains("panicked"), "{}", text(&out));
    }
}

#[test]
fn db_start_migrate_stop_on_a_fresh_folder() {
    let dir = tempfile::tempdir_in(crate::harness::tmpfs_dir()).unwrap();
    let d = dir.path();
    let step = |args: &[&str]| {
        let o = lensnet(d, args);
        assert!(o.status.success(), "lensnet {args:?} failed:\n{}", text(&o));
        text(&o)
    };
    assert!(step(&["db", "start"]).contains("created and started"));
    assert!(step(&["db", "start"]).contains("already running"), "starting twice is harmless");
    assert!(step(&["db", "migrate"]).contains("6 migration(s) applied now"));
    assert!(step(&["db", "migrate"]).starts_with("0 migration(s) applied now"), "a second migrate changes nothing");
    let url = step(&["db", "url"]).trim().to_string();
    assert!(url.starts_with("postgres://") && url.contains("host="), "{url}");
    let tables = Command::new("psql").args([url.as_str(), "-X", "-A", "-t", "-c", "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables WHERE schemaname = 'public'"]).output();
    if let Ok(o) = tables {
        if o.status.success() {
            assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "_sqlx_migrations,alert_notifications,candidates,fits,ingested_files,replay_jobs,replay_shards,runs,stage_attempts,verdicts,vetting,web_users,webhook_deliveries");
        }
    }
    assert!(step(&["db", "status"]).contains("Running"));
    assert!(step(&["db", "stop"]).contains("stopped"));
    assert!(step(&["db", "stop"]).contains("was not running"));
}

/// A GET over a plain TCP connection: (status line, body).
fn http_get(addr: &str, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(addr).expect("the server accepts connections");
    write!(c, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    c.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (head.lines().next().unwrap_or("").to_string(), body.to_string())
}

#[test]
fn web_and_user_add_work_on_a_fresh_folder_and_the_server_stops_on_sigterm() {
    use std::io::{BufRead, Write};
    let dir = tempfile::tempdir_in(crate::harness::tmpfs_dir()).unwrap();
    let d = dir.path();
    // The account: the password from standard input.
    let mut add = Command::new(env!("CARGO_BIN_EXE_lensnet"))
        .args(["user", "add", "ann", "--role", "vetter", "--password-stdin"])
        .current_dir(d)
        .env_remove("DATABASE_URL")
        .env_remove("LENSNET_CONFIG")
        .env("LENSNET_LOG", "warn")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    add.stdin.take().unwrap().write_all(b"a long enough password\n").unwrap();
    let out = add.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("user ann (vetter) added"));
    let listed = text(&lensnet(d, &["user", "list"]));
    assert!(listed.contains("ann") && listed.contains("vetter") && !listed.contains("argon2"), "{listed}");
    let short = lensnet(d, &["user", "add", "bob", "--password-stdin"]);
    assert!(!short.status.success() && text(&short).contains("at least 10 characters"), "an empty password is refused: {}", text(&short));

    let mut web = Command::new(env!("CARGO_BIN_EXE_lensnet"))
        .args(["web", "--bind", "127.0.0.1:0"])
        .current_dir(d)
        .env_remove("DATABASE_URL")
        .env_remove("LENSNET_CONFIG")
        .env("LENSNET_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(web.stdout.take().unwrap()).lines();
    let first = lines.next().expect("a first line").unwrap();
    let addr = first.split("http://").nth(1).and_then(|r| r.split('/').next()).unwrap_or_else(|| panic!("no address in {first}")).to_string();
    let (status, body) = http_get(&addr, "/healthz");
    assert!(status.contains("200"), "{status}");
    assert_eq!(body, "ok\n");
    let (status, body) = http_get(&addr, "/");
    assert!(status.contains("200") && body.contains("\"yes\" alerts"), "{status}");
    let (status, _) = http_get(&addr, "/metrics");
    assert!(status.contains("200"));
    assert!(Command::new("kill").args(["-TERM", &web.id().to_string()]).status().unwrap().success());
    let code = web.wait().unwrap();
    assert!(code.success(), "stops cleanly on SIGTERM: {code:?}");
    assert!(lines.any(|l| l.is_ok_and(|l| l.contains("stopped"))));
    assert!(text(&lensnet(d, &["db", "stop"])).contains("stopped"));
}

#[test]
fn bench_score_measures_the_configured_model() {
    // `--config` names the model that `bench score` times (it used to time the default model
    // whatever the configuration said).
    let dir = tempfile::tempdir().unwrap();
    let model = crate::harness::root().join("models/lensnet-standin.onnx");
    let config = dir.path().join("bench.toml");
    std::fs::write(&config, format!("[score]\nmodel = {:?}\n", model.display().to_string())).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lensnet"))
        .args(["bench", "score", "--scale", "0.1", "--config"])
        .arg(&config)
        .current_dir(crate::harness::root())
        .env_remove("LENSNET_CONFIG")
        .env("LENSNET_LOG", "warn")
        .output()
        .unwrap();
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    let first = t.lines().find(|l| l.starts_with("score:")).unwrap_or_default();
    assert!(first.ends_with(&format!("model {}", model.display())), "{t}");
    assert!(t.contains("sequences/s"), "{t}");
}
