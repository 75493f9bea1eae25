//! A local PostgreSQL cluster that lensnet starts itself when `DATABASE_URL` is unset: initdb +
//! pg_ctl from the system's PostgreSQL, unix socket only (no TCP port, so no port clash), run as
//! the unprivileged `postgres` user when we are root (PostgreSQL refuses to run as root).
//!
//! Everything here is synchronous (std::process) so that the test harness can start one cluster
//! for a whole test binary, outside any async runtime, through the same code as `lensnet db start`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The socket "port": only names the socket file (`.s.PGSQL.5432`) inside our own socket folder.
pub const SOCKET_PORT: u16 = 5432;
/// The superuser that initdb creates.
pub const SUPERUSER: &str = "postgres";

#[derive(Debug, thiserror::Error)]
pub enum LocalPgError {
    #[error(
        "cannot find the PostgreSQL server binaries (initdb, pg_ctl): {detail}; install them \
         (Debian/Ubuntu: `apt-get install postgresql`, or run `scripts/setup`) or set DATABASE_URL \
         to an existing server"
    )]
    MissingBinaries { detail: String },
    #[error("running as root but there is no unprivileged `postgres` user to run the server: create one (`useradd -r postgres`) or set DATABASE_URL")]
    NoPostgresUser,
    #[error("{what} failed with {status}: {stderr}")]
    CommandFailed { what: String, status: String, stderr: String },
    #[error("cannot prepare cluster folder {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("PostgreSQL at {dir} did not accept connections within {secs} s; see its log {log}")]
    NotReady { dir: PathBuf, secs: u64, log: PathBuf },
}

impl LocalPgError {
    /// Only a slow start-up may go away on retry; missing binaries or users do not.
    pub fn is_retryable(&self) -> bool {
        matches!(self, LocalPgError::NotReady { .. })
    }
}

/// State of a local cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterState {
    /// No cluster has been created in the folder.
    Absent,
    /// The cluster exists and is not running.
    Stopped,
    /// The server is running.
    Running,
}

/// A local cluster rooted at `root`: `root/data` (PGDATA), `root/run` (socket), `root/log`.
#[derive(Debug, Clone)]
pub struct LocalPg {
    root: PathBuf,
    bindir: PathBuf,
    /// fsync off and other durability shortcuts, for throwaway test clusters only.
    throwaway: bool,
}

/// uid and gid of the user that runs the server when we are root.
#[derive(Debug, Clone, Copy)]
struct RunAs {
    uid: u32,
    gid: u32,
}

impl LocalPg {
    /// A cluster under `root`. Finds the server binaries (`pg_config --bindir`, then the Debian
    /// layout `/usr/lib/postgresql/*/bin`, then PATH).
    pub fn new(root: impl Into<PathBuf>, throwaway: bool) -> Result<LocalPg, LocalPgError> {
        let bindir = find_bindir()?;
        Ok(LocalPg { root: root.into(), bindir, throwaway })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    pub fn socket_dir(&self) -> PathBuf {
        self.root.join("run")
    }

    pub fn log_file(&self) -> PathBuf {
        self.root.join("log").join("postgresql.log")
    }

    /// URL of database `db` on this cluster as the superuser (unix socket, trust auth).
    pub fn url(&self, db: &str) -> String {
        self.url_as(SUPERUSER, db)
    }

    /// URL of database `db` as `user` (e.g. the read-only `lensnet_reader`).
    pub fn url_as(&self, user: &str, db: &str) -> String {
        format!(
            "postgres://{user}@localhost:{SOCKET_PORT}/{db}?host={}",
            self.socket_dir().display()
        )
    }

    pub fn state(&self) -> Result<ClusterState, LocalPgError> {
        if !self.data_dir().join("PG_VERSION").exists() {
            return Ok(ClusterState::Absent);
        }
        let out = self.pg_cmd("pg_ctl", &["status", "-D", &path_str(&self.data_dir())])?;
        // pg_ctl status: 0 running, 3 not running, 4 no accessible data directory.
        Ok(if out.status.success() { ClusterState::Running } else { ClusterState::Stopped })
    }

    /// Create the cluster if needed and start it; a no-op when it already runs.
    pub fn start(&self) -> Result<(), LocalPgError> {
        match self.state()? {
            ClusterState::Running => return Ok(()),
            ClusterState::Absent => self.init()?,
            ClusterState::Stopped => {}
        }
        self.prepare_dirs()?;
        let data = path_str(&self.data_dir());
        let log = path_str(&self.log_file());
        // A stale postmaster.pid from a killed server would block the start; pg_ctl handles it
        // when the pid is gone. -w waits until the server accepts connections.
        let out = self.pg_cmd("pg_ctl", &["start", "-w", "-t", "60", "-D", &data, "-l", &log])?;
        if !out.status.success() {
            return Err(failed("pg_ctl start", &out, Some(&self.log_file())));
        }
        self.wait_ready(Duration::from_secs(60))
    }

    /// Stop the server (fast shutdown); a no-op when it is not running.
    pub fn stop(&self) -> Result<(), LocalPgError> {
        if self.state()? != ClusterState::Running {
            return Ok(());
        }
        let data = path_str(&self.data_dir());
        let out = self.pg_cmd("pg_ctl", &["stop", "-w", "-m", "fast", "-D", &data])?;
        if !out.status.success() {
            return Err(failed("pg_ctl stop", &out, None));
        }
        Ok(())
    }

    /// Create database `name` if it does not exist (psql over the socket).
    pub fn ensure_database(&self, name: &str) -> Result<(), LocalPgError> {
        let exists = self.psql("postgres", &format!("SELECT 1 FROM pg_database WHERE datname = '{name}'"))?;
        if exists.trim() == "1" {
            return Ok(());
        }
        match self.psql("postgres", &format!("CREATE DATABASE \"{name}\"")) {
            Ok(_) => Ok(()),
            // Two processes racing to create it: the loser finds it there.
            Err(LocalPgError::CommandFailed { stderr, .. }) if stderr.contains("already exists") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Run one SQL statement with psql as the superuser and return its unaligned output.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, LocalPgError> {
        let sock = path_str(&self.socket_dir());
        let port = SOCKET_PORT.to_string();
        let out = self.pg_cmd(
            "psql",
            &["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", &sock, "-p", &port, "-U", SUPERUSER, "-d", db, "-c", sql],
        )?;
        if !out.status.success() {
            return Err(failed("psql", &out, None));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn init(&self) -> Result<(), LocalPgError> {
        self.prepare_dirs()?;
        let data = path_str(&self.data_dir());
        let out = self.pg_cmd(
            "initdb",
            &["-D", &data, "-U", SUPERUSER, "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-instructions"],
        )?;
        if !out.status.success() {
            return Err(failed("initdb", &out, None));
        }
        let mut conf = format!(
            "\n# lensnet: unix socket only, in our own folder, so no port can clash\n\
             listen_addresses = ''\n\
             unix_socket_directories = '{}'\n\
             port = {SOCKET_PORT}\n\
             max_connections = 200\n",
            self.socket_dir().display()
        );
        if self.throwaway {
            conf.push_str("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n");
        }
        let conf_path = self.data_dir().join("postgresql.conf");
        let mut text = fs::read_to_string(&conf_path).map_err(|e| io_err(&conf_path, e))?;
        text.push_str(&conf);
        fs::write(&conf_path, text).map_err(|e| io_err(&conf_path, e))?;
        Ok(())
    }

    fn prepare_dirs(&self) -> Result<(), LocalPgError> {
        for d in [self.root.clone(), self.socket_dir(), self.root.join("log")] {
            fs::create_dir_all(&d).map_err(|e| io_err(&d, e))?;
        }
        if let Some(run_as) = run_as()? {
            for d in [self.root.clone(), self.socket_dir(), self.root.join("log")] {
                chown(&d, run_as)?;
            }
            if self.data_dir().exists() {
                chown(&self.data_dir(), run_as)?;
            }
            // The server user must be able to reach its folder through our parents.
            let mut p = self.root.parent();
            while let Some(dir) = p {
                if let Ok(meta) = fs::metadata(dir) {
                    if meta.permissions().mode() & 0o001 == 0 {
                        return Err(LocalPgError::Io {
                            path: dir.to_path_buf(),
                            source: std::io::Error::other(
                                "the `postgres` user cannot enter this folder; set database.local_dir to a folder it can reach (e.g. under /var/tmp or /dev/shm)",
                            ),
                        });
                    }
                }
                p = dir.parent();
            }
        }
        Ok(())
    }

    fn wait_ready(&self, timeout: Duration) -> Result<(), LocalPgError> {
        let started = Instant::now();
        let sock = path_str(&self.socket_dir());
        let port = SOCKET_PORT.to_string();
        loop {
            let out = self.pg_cmd("pg_isready", &["-h", &sock, "-p", &port, "-U", SUPERUSER, "-d", "postgres"])?;
            if out.status.success() {
                return Ok(());
            }
            if started.elapsed() > timeout {
                return Err(LocalPgError::NotReady {
                    dir: self.data_dir(),
                    secs: timeout.as_secs(),
                    log: self.log_file(),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn pg_cmd(&self, program: &str, args: &[&str]) -> Result<Output, LocalPgError> {
        let exe = self.bindir.join(program);
        let mut cmd = Command::new(&exe);
        cmd.args(args).env("LC_ALL", "C").env("PGTZ", "UTC");
        cmd.current_dir(&self.root.parent().filter(|p| p.exists()).unwrap_or(Path::new("/")));
        if let Some(run_as) = run_as()? {
            cmd.uid(run_as.uid).gid(run_as.gid).env("HOME", "/tmp").current_dir("/");
        }
        cmd.output().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => LocalPgError::MissingBinaries { detail: format!("{} not found", exe.display()) },
            _ => LocalPgError::CommandFailed { what: exe.display().to_string(), status: "not started".into(), stderr: e.to_string() },
        })
    }
}

fn geteuid() -> u32 {
    extern "C" {
        fn geteuid() -> u32;
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { geteuid() }
}

/// When we are root, the unprivileged user that runs the server.
fn run_as() -> Result<Option<RunAs>, LocalPgError> {
    if geteuid() != 0 {
        return Ok(None);
    }
    let passwd = fs::read_to_string("/etc/passwd").map_err(|e| io_err(Path::new("/etc/passwd"), e))?;
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() >= 4 && f[0] == SUPERUSER {
            if let (Ok(uid), Ok(gid)) = (f[2].parse(), f[3].parse()) {
                return Ok(Some(RunAs { uid, gid }));
            }
        }
    }
    Err(LocalPgError::NoPostgresUser)
}

fn chown(path: &Path, who: RunAs) -> Result<(), LocalPgError> {
    std::os::unix::fs::chown(path, Some(who.uid), Some(who.gid)).map_err(|e| io_err(path, e))
}

fn find_bindir() -> Result<PathBuf, LocalPgError> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        if out.status.success() {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if dir.join("initdb").exists() && dir.join("pg_ctl").exists() {
                return Ok(dir);
            }
        }
    }
    // Debian installs the server outside PATH; take the newest major version.
    let mut candidates: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    candidates.sort();
    if let Some((_, bin)) = candidates.pop() {
        return Ok(bin);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("initdb").exists() && dir.join("pg_ctl").exists() {
                return Ok(dir);
            }
        }
    }
    Err(LocalPgError::MissingBinaries {
        detail: "not found via pg_config, /usr/lib/postgresql/*/bin or PATH".into(),
    })
}

fn failed(what: &str, out: &Output, log: Option<&Path>) -> LocalPgError {
    let mut stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if stderr.is_empty() {
        stderr = String::from_utf8_lossy(&out.stdout).trim().to_string();
    }
    if let Some(log) = log {
        if let Ok(text) = fs::read_to_string(log) {
            let tail: Vec<&str> = text.lines().rev().take(5).collect();
            stderr.push_str(&format!(" (log {}: {})", log.display(), tail.into_iter().rev().collect::<Vec<_>>().join(" | ")));
        }
    }
    LocalPgError::CommandFailed { what: what.into(), status: out.status.to_string(), stderr }
}

fn io_err(path: &Path, source: std::io::Error) -> LocalPgError {
    LocalPgError::Io { path: path.to_path_buf(), source }
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}
