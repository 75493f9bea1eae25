//! A local PostgreSQL cluster that lensnet starts itself when `DATABASE_URL` is unset: initdb +
//! pg_ctl from the system's PostgreSQL, unix socket only (no TCP port, so no port clash), run as
//! the unprivileged `postgres` user when we are root (PostgreSQL refuses to run as root).
//!
//! Security: every role logs in with a password (SCRAM-SHA-256, on the socket too); the
//! superuser's and the reader's secrets are generated at creation and kept in `secret` and
//! `reader.secret`, readable by their owner only; the cluster's folders and its socket are not
//! open to other users (0700). Creation survives being killed at any moment: the cluster is
//! built in `data.init` and renamed to `data` once complete (a half-made `data.init` is removed
//! and redone), and concurrent starts are serialised by an exclusive lock on `lock`.
//!
//! Everything here is synchronous (std::process) so that the test harness can start one cluster
//! for a whole test binary, outside any async runtime, through the same code as `lensnet db start`.

use std::fs;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
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
    #[error("cannot use {path} for the local cluster: {reason}")]
    BadPath { path: PathBuf, reason: String },
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

    /// The superuser's password (hex), mode 0600.
    pub fn secret_file(&self) -> PathBuf {
        self.root.join("secret")
    }

    /// The read-only role's password (hex), mode 0600.
    pub fn reader_secret_file(&self) -> PathBuf {
        self.root.join("reader.secret")
    }

    /// The vetters' role's password (hex), mode 0600; made on first use.
    pub fn vetter_secret_file(&self) -> PathBuf {
        self.root.join("vetter.secret")
    }

    fn init_dir(&self) -> PathBuf {
        self.root.join("data.init")
    }

    /// The superuser's password, once the cluster exists.
    pub fn password(&self) -> Result<String, LocalPgError> {
        read_secret(&self.secret_file())
    }

    /// The password of the read-only role `lensnet_reader`, once the cluster exists.
    pub fn reader_password(&self) -> Result<String, LocalPgError> {
        read_secret(&self.reader_secret_file())
    }

    /// The password of the vetters' role `lensnet_vetter`, once `ensure_login_roles` ran.
    pub fn vetter_password(&self) -> Result<String, LocalPgError> {
        read_secret(&self.vetter_secret_file())
    }

    /// URL of database `db` as the vetters' role `lensnet_vetter` (it may only add vetting rows).
    pub fn vetter_url(&self, db: &str) -> String {
        self.url_with(VETTER, self.vetter_password().ok().as_deref(), db)
    }

    /// URL of database `db` on this cluster as the superuser (unix socket, password auth).
    pub fn url(&self, db: &str) -> String {
        self.url_with(SUPERUSER, self.password().ok().as_deref(), db)
    }

    /// URL of database `db` as the read-only role `lensnet_reader`.
    pub fn reader_url(&self, db: &str) -> String {
        self.url_with(READER, self.reader_password().ok().as_deref(), db)
    }

    /// URL of database `db` as `user` with `password` (percent-encoded where needed, so that a
    /// socket folder with `#`, `%`, `&` or spaces still works).
    pub fn url_with(&self, user: &str, password: Option<&str>, db: &str) -> String {
        let auth = match password {
            Some(p) => format!("{}:{}", pct(user, false), pct(p, false)),
            None => pct(user, false),
        };
        format!("postgres://{auth}@localhost:{SOCKET_PORT}/{}?host={}", pct(db, false), pct(&path_str(&self.socket_dir()), true))
    }

    pub fn state(&self) -> Result<ClusterState, LocalPgError> {
        if !self.data_dir().join("PG_VERSION").exists() {
            return Ok(ClusterState::Absent);
        }
        let out = self.pg_cmd("pg_ctl", &["status", "-D", &path_str(&self.data_dir())])?;
        // pg_ctl status: 0 running, 3 not running, 4 no accessible data directory.
        Ok(if out.status.success() { ClusterState::Running } else { ClusterState::Stopped })
    }

    /// Create the cluster if needed and start it; a no-op when it already runs. Concurrent
    /// callers (two processes' first start) are serialised by the cluster's lock file.
    pub fn start(&self) -> Result<(), LocalPgError> {
        let lock = self.lock()?;
        match self.state()? {
            ClusterState::Running => {
                // A server started outside our lock (by hand, say) may still be starting up.
                self.wait_ready(Duration::from_secs(60))?;
                if !self.secret_file().exists() {
                    self.upgrade_legacy(&lock)?;
                }
                return Ok(());
            }
            ClusterState::Absent => self.init(&lock)?,
            ClusterState::Stopped => {}
        }
        self.start_server(&lock)?;
        if !self.secret_file().exists() {
            self.upgrade_legacy(&lock)?;
        }
        self.ensure_login_roles()
    }

    /// An exclusive lock on `root/lock`, held while the cluster is created, started or stopped.
    fn lock(&self) -> Result<fs::File, LocalPgError> {
        check_path(&self.root)?;
        create_private_dir(&self.root)?;
        let path = self.root.join("lock");
        let f = fs::OpenOptions::new().create(true).truncate(false).write(true).mode(0o600).open(&path).map_err(|e| io_err(&path, e))?;
        f.lock().map_err(|e| io_err(&path, e))?;
        Ok(f)
    }

    fn start_server(&self, lock: &fs::File) -> Result<(), LocalPgError> {
        self.prepare_dirs()?;
        let data = path_str(&self.data_dir());
        let log = path_str(&self.log_file());
        // A stale postmaster.pid from a killed server would block the start; pg_ctl handles it
        // when the pid is gone. -w waits until the server accepts connections.
        let out = self.pg_cmd_locked("pg_ctl", &["start", "-w", "-t", "60", "-D", &data, "-l", &log], lock)?;
        if !out.status.success() {
            return Err(failed("pg_ctl start", &out, Some(&self.log_file())));
        }
        self.wait_ready(Duration::from_secs(60))
    }

    /// Stop the server (fast shutdown); a no-op when it is not running.
    pub fn stop(&self) -> Result<(), LocalPgError> {
        let lock = self.lock()?;
        if self.state()? != ClusterState::Running {
            return Ok(());
        }
        let data = path_str(&self.data_dir());
        let out = self.pg_cmd_locked("pg_ctl", &["stop", "-w", "-m", "fast", "-D", &data], &lock)?;
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
        let password = self.password().ok();
        self.psql_with(db, sql, password.as_deref())
    }

    fn psql_with(&self, db: &str, sql: &str, password: Option<&str>) -> Result<String, LocalPgError> {
        let sock = path_str(&self.socket_dir());
        let port = SOCKET_PORT.to_string();
        let args = ["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", &sock, "-p", &port, "-U", SUPERUSER, "-d", db, "-c", sql];
        // A server that was killed while being created recovers at its next start, and may
        // still say "the database system is starting up" for a moment after pg_ctl returned.
        let started = std::time::Instant::now();
        loop {
            let out = self.pg_cmd_full("psql", &args, password.map(|p| ("PGPASSWORD", p)), None, None)?;
            if out.status.success() {
                return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
            }
            let starting = String::from_utf8_lossy(&out.stderr).contains("the database system is starting up");
            if !starting || started.elapsed() > std::time::Duration::from_secs(60) {
                return Err(failed("psql", &out, None));
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    /// Creates the cluster in `data.init` and renames it to `data` once it is complete, so a
    /// kill at any point leaves either no cluster (redone by the next start) or a whole one. The
    /// secrets are written before the rename.
    fn init(&self, lock: &fs::File) -> Result<(), LocalPgError> {
        self.prepare_dirs()?;
        let tmp = self.init_dir();
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(|e| io_err(&tmp, e))?;
        }
        let password = new_secret()?;
        let reader = new_secret()?;
        // initdb reads the superuser's password from a file the server user can read; it is
        // removed straight after.
        let pwfile = self.root.join("pwfile.init");
        write_private(&pwfile, &password)?;
        if let Some(run_as) = run_as()? {
            chown(&pwfile, run_as)?;
        }
        let out = self.pg_cmd_locked(
            "initdb",
            &[
                "-D",
                &path_str(&tmp),
                "-U",
                SUPERUSER,
                "--auth-local=scram-sha-256",
                "--auth-host=scram-sha-256",
                &format!("--pwfile={}", path_str(&pwfile)),
                "--encoding=UTF8",
                "--locale=C",
                "--no-instructions",
            ],
            lock,
        );
        let _ = fs::remove_file(&pwfile);
        let out = out?;
        if !out.status.success() {
            return Err(failed("initdb", &out, None));
        }
        let conf_path = tmp.join("postgresql.conf");
        let mut text = fs::read_to_string(&conf_path).map_err(|e| io_err(&conf_path, e))?;
        text.push_str(&self.conf_lines());
        fs::write(&conf_path, text).map_err(|e| io_err(&conf_path, e))?;
        write_private(&self.secret_file(), &password)?;
        write_private(&self.reader_secret_file(), &reader)?;
        let data = self.data_dir();
        fs::rename(&tmp, &data).map_err(|e| io_err(&data, e))?;
        Ok(())
    }

    /// Our settings for postgresql.conf: no TCP listener, the socket in our own folder and
    /// open to its owner only; the folder is quoted as a configuration string.
    fn conf_lines(&self) -> String {
        let mut conf = format!(
            "\n# lensnet: unix socket only, in our own folder, so no port can clash; owner only\n\
             listen_addresses = ''\n\
             unix_socket_directories = '{}'\n\
             unix_socket_permissions = 0700\n\
             password_encryption = 'scram-sha-256'\n\
             port = {SOCKET_PORT}\n\
             max_connections = 200\n",
            conf_quote(&path_str(&self.socket_dir()))
        );
        if self.throwaway {
            conf.push_str("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n");
        }
        conf
    }

    /// A cluster made before passwords (trust authentication): give the superuser a password,
    /// switch every pg_hba line to SCRAM, close TCP and the socket, and reload. The server runs.
    fn upgrade_legacy(&self, lock: &fs::File) -> Result<(), LocalPgError> {
        let password = new_secret()?;
        self.psql_with("postgres", &format!("ALTER ROLE {SUPERUSER} PASSWORD '{password}'"), None)?;
        write_private(&self.secret_file(), &password)?;
        if !self.reader_secret_file().exists() {
            write_private(&self.reader_secret_file(), &new_secret()?)?;
        }
        let hba = self.data_dir().join("pg_hba.conf");
        let text = "# lensnet: every connection authenticates with a password\n\
                    local all all scram-sha-256\n\
                    host all all 127.0.0.1/32 scram-sha-256\n\
                    host all all ::1/128 scram-sha-256\n";
        fs::write(&hba, text).map_err(|e| io_err(&hba, e))?;
        let conf_path = self.data_dir().join("postgresql.conf");
        let mut conf = fs::read_to_string(&conf_path).map_err(|e| io_err(&conf_path, e))?;
        conf.push_str(&self.conf_lines());
        fs::write(&conf_path, conf).map_err(|e| io_err(&conf_path, e))?;
        // listen_addresses and the socket's mode need a restart, the rest a reload.
        let data = path_str(&self.data_dir());
        let out = self.pg_cmd_locked("pg_ctl", &["stop", "-w", "-m", "fast", "-D", &data], lock)?;
        if !out.status.success() {
            return Err(failed("pg_ctl stop", &out, None));
        }
        self.start_server(lock)?;
        self.ensure_login_roles()
    }

    /// The read-only and the vetters' roles exist and log in with the passwords in
    /// `reader.secret` and `vetter.secret` (a missing secret file is made first: the vetters'
    /// is, in a cluster made before that role). The cluster runs.
    pub fn ensure_login_roles(&self) -> Result<(), LocalPgError> {
        for (role, file) in [(READER, self.reader_secret_file()), (VETTER, self.vetter_secret_file())] {
            if !file.exists() {
                write_private(&file, &new_secret()?)?;
            }
            let password = read_secret(&file)?;
            self.psql(
                "postgres",
                &format!(
                    "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') THEN CREATE ROLE {role} LOGIN; END IF; \
                     EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$; \
                     ALTER ROLE {role} LOGIN PASSWORD '{password}'"
                ),
            )?;
        }
        Ok(())
    }

    fn prepare_dirs(&self) -> Result<(), LocalPgError> {
        for d in [self.root.clone(), self.socket_dir(), self.root.join("log")] {
            create_private_dir(&d)?;
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
        self.pg_cmd_full(program, args, None, None, None)
    }

    /// A command that holds the cluster's lock for as long as it lives: the lock file is its
    /// standard input, so if we are killed, a second start waits for an orphaned initdb or
    /// pg_ctl to finish before it looks at (and redoes) what they left.
    ///
    /// Its standard output and error go to files, not to pipes: were we killed, a pipe's reading
    /// end would close with us and the orphan's next message (pg_ctl writes "waiting for server
    /// to start" straight after it forks the server) would kill it with SIGPIPE, releasing the
    /// lock before the server it forked has written its pid file. A second start would then see
    /// no server and start another one, which fails on the first one's lock file.
    fn pg_cmd_locked(&self, program: &str, args: &[&str], lock: &fs::File) -> Result<Output, LocalPgError> {
        let stdin = lock.try_clone().map_err(|e| io_err(&self.root.join("lock"), e))?;
        let dir = self.root.join("log");
        create_private_dir(&dir)?;
        // Only the lock's holder writes these files, so truncating them here is safe.
        let open = |name: String| {
            let path = dir.join(name);
            fs::OpenOptions::new().create(true).truncate(true).read(true).write(true).mode(0o600).open(&path).map(|f| (f, path.clone())).map_err(|e| io_err(&path, e))
        };
        let (out, out_path) = open(format!("{program}.stdout"))?;
        let (err, err_path) = open(format!("{program}.stderr"))?;
        let mut output = self.pg_cmd_full(program, args, None, Some(stdin), Some((out, err)))?;
        output.stdout = fs::read(&out_path).map_err(|e| io_err(&out_path, e))?;
        output.stderr = fs::read(&err_path).map_err(|e| io_err(&err_path, e))?;
        Ok(output)
    }

    /// Runs `program` from the server's binaries and waits for it. With `files`, its standard
    /// output and error go there (and the returned `Output` has them empty); without, they are
    /// captured through pipes.
    fn pg_cmd_full(
        &self,
        program: &str,
        args: &[&str],
        env: Option<(&str, &str)>,
        stdin: Option<fs::File>,
        files: Option<(fs::File, fs::File)>,
    ) -> Result<Output, LocalPgError> {
        let exe = self.bindir.join(program);
        let mut cmd = Command::new(&exe);
        cmd.args(args).env("LC_ALL", "C").env("PGTZ", "UTC").env_remove("PGPASSWORD");
        if let Some((k, v)) = env {
            cmd.env(k, v);
        }
        cmd.stdin(stdin.map(std::process::Stdio::from).unwrap_or_else(std::process::Stdio::null));
        cmd.current_dir(&self.root.parent().filter(|p| p.exists()).unwrap_or(Path::new("/")));
        if let Some(run_as) = run_as()? {
            cmd.uid(run_as.uid).gid(run_as.gid).env("HOME", "/tmp").current_dir("/");
        }
        let result = match files {
            Some((out, err)) => {
                cmd.stdout(out).stderr(err);
                cmd.status().map(|status| Output { status, stdout: Vec::new(), stderr: Vec::new() })
            }
            None => cmd.output(),
        };
        result.map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => LocalPgError::MissingBinaries { detail: format!("{} not found", exe.display()) },
            _ => LocalPgError::CommandFailed { what: exe.display().to_string(), status: "not started".into(), stderr: e.to_string() },
        })
    }
}

/// The read-only role (same name as `db::READER_ROLE`).
const READER: &str = "lensnet_reader";
/// The vetters' role (same name as `db::VETTER_ROLE`).
const VETTER: &str = "lensnet_vetter";

/// 32 random bytes from the kernel, as hex.
fn new_secret() -> Result<String, LocalPgError> {
    use std::io::Read;
    let mut b = [0u8; 32];
    let path = Path::new("/dev/urandom");
    fs::File::open(path).and_then(|mut f| f.read_exact(&mut b)).map_err(|e| io_err(path, e))?;
    Ok(hex::encode(b))
}

/// Writes `text` to `path` with mode 0600, atomically (a temporary file renamed over it).
fn write_private(path: &Path, text: &str) -> Result<(), LocalPgError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new().create_new(true).write(true).mode(0o600).open(&tmp).map_err(|e| io_err(&tmp, e))?;
    f.write_all(text.as_bytes()).and_then(|_| f.sync_all()).map_err(|e| io_err(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| io_err(path, e))
}

fn read_secret(path: &Path) -> Result<String, LocalPgError> {
    Ok(fs::read_to_string(path).map_err(|e| io_err(path, e))?.trim().to_string())
}

/// Creates `dir` (and its parents) and makes it 0700: not readable or writable by others.
fn create_private_dir(dir: &Path) -> Result<(), LocalPgError> {
    fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| io_err(dir, e))
}

/// A cluster folder must be UTF-8 and free of control characters (they cannot be
/// written into postgresql.conf or a URL safely).
fn check_path(p: &Path) -> Result<(), LocalPgError> {
    let s = p.to_str().ok_or_else(|| LocalPgError::BadPath { path: p.to_path_buf(), reason: "the path is not UTF-8".into() })?;
    if s.chars().any(char::is_control) {
        return Err(LocalPgError::BadPath { path: p.to_path_buf(), reason: "the path holds a control character (newline, tab, ...)".into() });
    }
    // The socket path (folder + `/.s.PGSQL.5432`) must fit in sun_path (108 bytes).
    if s.len() + "/run/.s.PGSQL.5432".len() > 107 {
        return Err(LocalPgError::BadPath { path: p.to_path_buf(), reason: "the path is too long for a unix socket (at most 89 bytes); set database.local_dir to a shorter folder".into() });
    }
    Ok(())
}

/// A postgresql.conf string value: single quotes doubled.
fn conf_quote(s: &str) -> String {
    s.replace('\'', "''")
}

/// Percent-encodes everything but unreserved characters (and `/` when `keep_slash`).
fn pct(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
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
