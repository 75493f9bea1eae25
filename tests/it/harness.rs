//! Test harness: one real PostgreSQL per test run, started through the same code as
//! `lensnet db start` (a throwaway cluster on tmpfs), unless DATABASE_URL is set; each test gets
//! its own database. No mocks of the database.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use lensnet::localpg::LocalPg;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection};

/// The server all tests of this run use.
pub struct Server {
    /// Connection options of the maintenance database (`postgres`) as a superuser.
    pub admin: PgConnectOptions,
    /// The local cluster, when the harness started one.
    pub local: Option<LocalPg>,
}

static SERVER: OnceLock<Server> = OnceLock::new();
static NEXT_DB: AtomicUsize = AtomicUsize::new(0);

/// The shared server, started on first use.
pub fn server() -> &'static Server {
    SERVER.get_or_init(|| {
        if let Ok(url) = std::env::var("DATABASE_URL") {
            let admin = PgConnectOptions::from_str(&url).expect("DATABASE_URL parses");
            return Server { admin, local: None };
        }
        let root = tmpfs_dir().join(format!("lensnet-it-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let pg = LocalPg::new(&root, true).expect("PostgreSQL server binaries (run scripts/setup)");
        pg.start().expect("local PostgreSQL starts");
        stop_when_we_exit(&pg);
        let admin = PgConnectOptions::from_str(&pg.url("postgres")).expect("local URL parses");
        Server { admin, local: Some(pg) }
    })
}

/// /dev/shm when it exists (initdb is several times faster on tmpfs), else the temp folder.
pub fn tmpfs_dir() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() }
}

/// A watcher process stops the cluster and removes its folder once this test binary exits,
/// however it exits (statics have no destructors).
fn stop_when_we_exit(pg: &LocalPg) {
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; \
         kill -INT $(head -1 '{data}/postmaster.pid' 2>/dev/null) 2>/dev/null; \
         for i in 1 2 3 4 5 6 7 8 9 10; do [ -e '{data}/postmaster.pid' ] || break; sleep 0.5; done; \
         rm -rf '{root}'",
        pid = std::process::id(),
        data = pg.data_dir().display(),
        root = pg.root().display()
    );
    let _ = Command::new("sh").arg("-c").arg(script).stdin(std::process::Stdio::null()).spawn();
}

/// A fresh database of the test run, migrated.
pub struct TestDb {
    pub name: String,
    pub opts: PgConnectOptions,
    pub pool: PgPool,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let db = TestDb::empty().await;
        lensnet::db::migrate(&db.pool).await.expect("migrations apply");
        db
    }

    /// A fresh database without the schema.
    pub async fn empty() -> TestDb {
        let server = tokio::task::spawn_blocking(server).await.expect("server start");
        let name = format!("it_{}_{}", std::process::id(), NEXT_DB.fetch_add(1, Ordering::SeqCst));
        let mut admin = server.admin.clone().database("postgres").connect().await.expect("admin connection");
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE \"{name}\""))).execute(&mut admin).await.expect("create test database");
        admin.close().await.ok();
        let opts = server.admin.clone().database(&name);
        let pool = PgPoolOptions::new().max_connections(4).connect_with(opts.clone()).await.expect("test pool");
        TestDb { name, opts, pool }
    }

    /// A URL of this database for child processes (local cluster only).
    pub fn url(&self) -> Option<String> {
        server().local.as_ref().map(|pg| pg.url(&self.name))
    }

    /// A connection as `lensnet_reader`: logged in with its own password on the local cluster,
    /// or, on an external server, through SET ROLE, which checks the same privileges.
    pub async fn reader(&self) -> sqlx::PgConnection {
        match &server().local {
            Some(pg) => {
                let password = pg.reader_password().expect("the local cluster has a reader secret");
                self.opts.clone().username(lensnet::db::READER_ROLE).password(&password).connect().await.expect("reader logs in")
            }
            None => {
                let mut c = self.opts.clone().connect().await.expect("connection");
                sqlx::query("SET ROLE lensnet_reader").execute(&mut c).await.expect("set role");
                c
            }
        }
    }
}

impl TestDb {
    /// A pool as `role` (`lensnet_reader` or `lensnet_vetter`): its own login on the local
    /// cluster, SET ROLE on an external server.
    pub async fn role_pool(&self, role: &'static str) -> PgPool {
        match &server().local {
            Some(pg) => {
                let password = if role == lensnet::db::VETTER_ROLE { pg.vetter_password() } else { pg.reader_password() }.expect("the local cluster has the role's secret");
                PgPoolOptions::new().max_connections(3).connect_with(self.opts.clone().username(role).password(&password)).await.expect("role logs in")
            }
            None => {
                let set: &'static str = if role == lensnet::db::VETTER_ROLE { "SET ROLE lensnet_vetter" } else { "SET ROLE lensnet_reader" };
                PgPoolOptions::new()
                    .max_connections(3)
                    .after_connect(move |c, _| Box::pin(async move { sqlx::query(set).execute(c).await.map(|_| ()) }))
                    .connect_with(self.opts.clone())
                    .await
                    .expect("pool with SET ROLE")
            }
        }
    }
}

/// The repository's root (the integration tests belong to the `lensnet` package in pipeline/).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Files under `dir` (recursively) whose extension is `ext`.
pub fn walk_ext(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk_ext(&p, ext));
        } else if p.extension().is_some_and(|x| x == ext) {
            out.push(p);
        }
    }
    out
}
