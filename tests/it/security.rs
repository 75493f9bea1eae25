//! Security and crash safety of the local cluster and the roles, tried as a hostile local user
//! would: no password means no login, other users cannot reach the socket, a kill during the
//! first creation does not brick the folder, concurrent first starts both succeed, odd folder
//! names work, and the read-only role cannot take the pipeline's advisory locks.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use sqlx::Connection;

use crate::harness::TestDb;

fn lensnet_cmd(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lensnet"));
    c.args(args).current_dir(dir).env_remove("DATABASE_URL").env_remove("LENSNET_CONFIG").env("LENSNET_LOG", "warn");
    c
}

fn lensnet(dir: &Path, args: &[&str]) -> Output {
    lensnet_cmd(dir, args).output().expect("lensnet runs")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let o = lensnet(dir, args);
    assert!(o.status.success(), "lensnet {args:?} failed:\n{}", text(&o));
    text(&o)
}

/// A folder on tmpfs that the `postgres` user can enter (tempfile makes 0700 folders).
fn workdir(name: &str) -> tempfile::TempDir {
    let d = tempfile::Builder::new().prefix(name).tempdir_in(crate::harness::tmpfs_dir()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

/// Stops the folder's cluster when the test ends, however it ends.
struct Stop<'a>(&'a Path);
impl Drop for Stop<'_> {
    fn drop(&mut self) {
        let _ = lensnet(self.0, &["db", "stop"]);
    }
}

fn psql(url_or_host: &[&str], sql: &str, as_nobody: bool) -> Output {
    let mut c = if as_nobody {
        let mut c = Command::new("runuser");
        c.args(["-u", "nobody", "--", "psql"]);
        c
    } else {
        Command::new("psql")
    };
    c.args(url_or_host).args(["-X", "-A", "-t", "-w", "-c", sql]).env_remove("PGPASSWORD").stdin(Stdio::null());
    c.output().expect("psql runs")
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

#[test]
fn the_local_cluster_wants_a_password_and_is_closed_to_other_users() {
    let dir = workdir("lensnet-sec-");
    let d = dir.path();
    let _stop = Stop(d);
    ok(d, &["db", "start"]);
    let pg = d.join(".lensnet/pg");
    let sock = pg.join("run");
    let sock = sock.to_str().unwrap();

    // No password, no login (as the superuser and as the reader).
    for user in ["postgres", "lensnet_reader"] {
        let o = psql(&["-h", sock, "-U", user, "-d", "postgres"], "SELECT 1", false);
        assert!(!o.status.success(), "{user} logged in without a password: {}", text(&o));
    }
    // The hostile case of the report: another OS user reaching the socket as the superuser.
    if is_root() {
        let o = psql(&["-h", sock, "-U", "postgres", "-d", "lensnet"], "COPY (SELECT 1) TO PROGRAM 'id'", true);
        assert!(!o.status.success(), "nobody reached the cluster: {}", text(&o));
    }
    // With the URL (password from the owner-only secret file), the owner gets in.
    let url = ok(d, &["db", "url"]).trim().to_string();
    let o = psql(&[url.as_str()], "SHOW listen_addresses", false);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "", "no TCP listener");
    // The coordinators' URL logs in as the read-only role.
    let reader = ok(d, &["db", "url", "--reader"]).trim().to_string();
    let o = psql(&[reader.as_str()], "SELECT current_user", false);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "lensnet_reader");
    let hba = std::fs::read_to_string(pg.join("data/pg_hba.conf")).unwrap();
    let live: Vec<&str> = hba.lines().filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#')).collect();
    assert!(!live.is_empty() && live.iter().all(|l| l.ends_with("scram-sha-256")), "{live:?}");
    use std::os::unix::fs::PermissionsExt;
    for (p, want) in [(pg.clone(), 0o700), (pg.join("run"), 0o700), (pg.join("secret"), 0o600), (pg.join("reader.secret"), 0o600)] {
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, want, "{} has mode {mode:o}", p.display());
    }
}

#[test]
fn a_kill_during_the_first_creation_never_bricks_the_folder() {
    // Kill `db start` at several moments of the first creation (initdb, configuration, start);
    // the next start must succeed every time and the cluster must want a password.
    for delay_ms in [100u64, 400, 800, 1500] {
        let dir = workdir("lensnet-kill-");
        let d = dir.path();
        let _stop = Stop(d);
        let mut child: Child = lensnet_cmd(d, &["db", "start"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        let out = ok(d, &["db", "start"]);
        assert!(out.contains("started") || out.contains("running"), "{out}");
        let url = ok(d, &["db", "url"]).trim().to_string();
        assert!(url.contains(":") && url.contains("@localhost"), "{url}");
        ok(d, &["db", "migrate"]);
        let sock = d.join(".lensnet/pg/run");
        let o = psql(&["-h", sock.to_str().unwrap(), "-U", "postgres", "-d", "postgres"], "SELECT 1", false);
        assert!(!o.status.success(), "after a kill at {delay_ms} ms the cluster lets anyone in");
    }
}

/// The children of process `pid` named `name` (from /proc; Linux only).
fn children_named(pid: u32, name: &str) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0 };
    entries
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            // "pid (comm) state ppid ...": comm may hold spaces, so split after the last ')'.
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { return false };
            let ppid = stat[close + 1..].split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok());
            &stat[open + 1..close] == name && ppid == Some(pid)
        })
        .count()
}

#[test]
fn a_kill_the_moment_a_server_command_starts_never_starts_two_servers() {
    // The kills at fixed delays above rarely land in the few milliseconds between `db start`
    // spawning initdb or pg_ctl and that child's first message. There, an orphan whose output
    // went to our pipe died of SIGPIPE at its first message and released the lock while the
    // server it had forked was not yet up, so the next start launched a second server, which
    // failed on the first one's lock file. Kill exactly there: at initdb, at pg_ctl start, and
    // at the first psql that sets up the roles.
    for (program, nth) in [("initdb", 1), ("pg_ctl", 1), ("psql", 1)] {
        let dir = workdir("lensnet-kill2-");
        let d = dir.path();
        let _stop = Stop(d);
        let mut child: Child = lensnet_cmd(d, &["db", "start"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        // Wait for the nth command of that name to appear.
        let started = std::time::Instant::now();
        let mut seen = 0;
        let mut was_there = false;
        while started.elapsed() < Duration::from_secs(60) {
            let there = children_named(child.id(), program) > 0;
            if there && !was_there {
                seen += 1;
            }
            was_there = there;
            if seen >= nth || child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let _ = child.kill();
        let _ = child.wait();
        let out = ok(d, &["db", "start"]);
        assert!(out.contains("started") || out.contains("running"), "{out}");
        ok(d, &["db", "migrate"]);
        let log = std::fs::read_to_string(d.join(".lensnet/pg/log/postgresql.log")).unwrap_or_default();
        assert!(!log.contains("already exists"), "a second server was started after a kill at {program} #{nth}:\n{log}");
    }
}

#[test]
fn two_first_starts_at_once_both_succeed() {
    let dir = workdir("lensnet-race-");
    let d = dir.path();
    let _stop = Stop(d);
    let a = lensnet_cmd(d, &["db", "start"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let b = lensnet_cmd(d, &["db", "start"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    for c in [a, b] {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "a concurrent first start failed:\n{}", text(&o));
    }
    ok(d, &["db", "migrate"]);
}

#[test]
fn a_folder_with_quotes_and_url_characters_works_and_injects_nothing() {
    let base = workdir("lensnet-odd-");
    let d = base.path().join("it's #1 %41 & more");
    std::fs::create_dir(&d).unwrap();
    let _stop = Stop(&d);
    ok(&d, &["db", "start"]);
    ok(&d, &["db", "migrate"]);
    assert!(ok(&d, &["db", "status"]).contains("6 of 6 applied"));
    let conf = std::fs::read_to_string(d.join(".lensnet/pg/data/postgresql.conf")).unwrap();
    assert!(conf.contains("it''s #1 %41 & more"), "the quote is doubled in postgresql.conf");
}

#[tokio::test]
async fn the_reader_cannot_take_the_pipelines_advisory_locks() {
    let db = TestDb::new().await;
    let mut conn = db.reader().await;
    let key = lensnet::fieldrun::lock_key("BLG14".parse().unwrap());
    for sql in [
        "SELECT pg_advisory_lock($1)",
        "SELECT pg_try_advisory_lock($1)",
        "SELECT pg_advisory_lock_shared($1)",
        "SELECT pg_try_advisory_lock_shared($1)",
        "SELECT pg_advisory_xact_lock($1)",
    ] {
        let err = sqlx::query(sql).bind(key).execute(&mut conn).await.expect_err(sql);
        assert!(err.to_string().contains("permission denied"), "{sql}: {err}");
    }
    for sql in ["SELECT pg_advisory_lock(1, 2)", "SELECT pg_try_advisory_lock(1, 2)"] {
        let err = sqlx::query(sql).execute(&mut conn).await.expect_err(sql);
        assert!(err.to_string().contains("permission denied"), "{sql}: {err}");
    }
    conn.close().await.ok();
    // The pipeline's own role still can.
    let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(key).fetch_one(&db.pool).await.unwrap();
    assert!(got);
}
