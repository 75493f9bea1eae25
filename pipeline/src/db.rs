//! Database access: finding the database (DATABASE_URL or the local cluster), connecting, and
//! applying the migrations in `migrations/`, which are embedded in the binary.

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::config::{Config, DatabaseSource};
use crate::localpg::{LocalPg, LocalPgError};

/// The schema migrations, embedded at build time.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// The read-only role for follow-up coordinators.
pub const READER_ROLE: &str = "lensnet_reader";

/// The vetters' role: it may add rows to `vetting` and nothing else.
pub const VETTER_ROLE: &str = "lensnet_vetter";

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error(transparent)]
    LocalPg(#[from] LocalPgError),
    #[error("invalid database URL (value not shown): {0}")]
    BadUrl(String),
    #[error("cannot connect to the database at {target}: {source}")]
    Connect { target: String, source: sqlx::Error },
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
}

impl DbError {
    /// Connection losses and timeouts may go away on retry; bad URLs and SQL errors do not.
    pub fn is_retryable(&self) -> bool {
        match self {
            DbError::LocalPg(e) => e.is_retryable(),
            DbError::Connect { .. } => true,
            DbError::Sqlx(e) => is_transient(e),
            DbError::BadUrl(_) | DbError::Migrate(_) => false,
        }
    }
}

/// Whether an sqlx error is worth a retry (connection trouble, serialization conflicts).
pub fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            // 40001 serialization_failure, 40P01 deadlock, 57P01 admin_shutdown, 08xxx connection.
            db.code().is_some_and(|c| c == "40001" || c == "40P01" || c == "57P01" || c.starts_with("08"))
        }
        _ => false,
    }
}

/// The local cluster described by the configuration, if the database is local.
pub fn local_cluster(cfg: &Config) -> Result<Option<(LocalPg, String)>, DbError> {
    match &cfg.database {
        DatabaseSource::Url(_) => Ok(None),
        DatabaseSource::Local { dir, name } => Ok(Some((LocalPg::new(dir.clone(), false)?, name.clone()))),
    }
}

/// The database URL: DATABASE_URL (or url_file) as given, else the local cluster's, which is
/// created and started on the way (same code as `lensnet db start`).
pub fn ensure_url(cfg: &Config) -> Result<String, DbError> {
    match &cfg.database {
        DatabaseSource::Url(s) => Ok(s.expose().to_string()),
        DatabaseSource::Local { .. } => {
            let (pg, name) = local_cluster(cfg)?.expect("local source has a cluster");
            pg.start()?;
            pg.ensure_database(&name)?;
            Ok(pg.url(&name))
        }
    }
}

/// Connect a pool to `url`.
pub async fn connect(url: &str, max_connections: u32, timeout: Duration) -> Result<PgPool, DbError> {
    let opts = PgConnectOptions::from_str(url).map_err(|e| DbError::BadUrl(redact(&e.to_string())))?;
    // Where we tried, without the password: the socket file or host:port.
    let target = match opts.get_socket() {
        Some(dir) => format!("{}/.s.PGSQL.{}", dir.display(), opts.get_port()),
        None => format!("{}:{}", opts.get_host(), opts.get_port()),
    };
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(timeout)
        .connect_with(opts)
        .await
        .map_err(|source| DbError::Connect { target, source })
}

/// Start (if local), connect and migrate: what every command that writes does first.
pub async fn open(cfg: &Config) -> Result<PgPool, DbError> {
    let owned = cfg.clone();
    let url = tokio::task::spawn_blocking(move || ensure_url(&owned))
        .await
        .map_err(|e| DbError::BadUrl(format!("database start-up task failed: {e}")))??;
    let pool = connect(&url, cfg.max_connections, Duration::from_secs(cfg.connect_timeout_s)).await?;
    migrate(&pool).await?;
    Ok(pool)
}

/// Like [`open`], but on database `name` of the same server (created when missing): for work
/// that must not touch the production tables (`lensnet evaluate`).
pub async fn open_named(cfg: &Config, name: &str) -> Result<PgPool, DbError> {
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') || name.is_empty() {
        return Err(DbError::BadUrl(format!("database name `{name}`: use letters, digits and _")));
    }
    match &cfg.database {
        DatabaseSource::Local { dir, .. } => {
            let mut local = cfg.clone();
            local.database = DatabaseSource::Local { dir: dir.clone(), name: name.to_string() };
            open(&local).await
        }
        DatabaseSource::Url(url) => {
            let admin = connect(url.expose(), 1, Duration::from_secs(cfg.connect_timeout_s)).await?;
            let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)").bind(name).fetch_one(&admin).await?;
            if !exists {
                let create = sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\""))).execute(&admin).await;
                if let Err(e) = create {
                    // Two evaluations racing: the loser finds it there.
                    if !e.to_string().contains("already exists") {
                        return Err(e.into());
                    }
                }
            }
            admin.close().await;
            let opts = PgConnectOptions::from_str(url.expose()).map_err(|e| DbError::BadUrl(redact(&e.to_string())))?.database(name);
            let target = format!("{}:{}/{name}", opts.get_host(), opts.get_port());
            let pool = PgPoolOptions::new()
                .max_connections(cfg.max_connections)
                .acquire_timeout(Duration::from_secs(cfg.connect_timeout_s))
                .connect_with(opts)
                .await
                .map_err(|source| DbError::Connect { target, source })?;
            migrate(&pool).await?;
            Ok(pool)
        }
    }
}

/// Apply pending migrations; returns how many were applied now.
pub async fn migrate(pool: &PgPool) -> Result<usize, DbError> {
    let before = applied_versions(pool).await?;
    MIGRATOR.run(pool).await?;
    let after = applied_versions(pool).await?;
    Ok(after.len().saturating_sub(before.len()))
}

/// Versions of the migrations already applied (empty on a fresh database).
pub async fn applied_versions(pool: &PgPool) -> Result<Vec<i64>, DbError> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('public._sqlx_migrations') IS NOT NULL").fetch_one(pool).await?;
    if !exists {
        return Ok(Vec::new());
    }
    Ok(sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version").fetch_all(pool).await?)
}

/// Remove anything that looks like a password from a message.
fn redact(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    for word in msg.split(' ') {
        if word.contains("://") && word.contains('@') {
            out.push_str("<url>");
        } else {
            out.push_str(word);
        }
        out.push(' ');
    }
    out.trim_end().to_string()
}

/// A pool connected as one of the project's roles (`lensnet_reader`, `lensnet_vetter`): with its
/// own login and password on the local cluster; on an external server (DATABASE_URL) through
/// the URL's account and `SET ROLE` at connect, which checks the same privileges (the URL's role
/// must be a member of it, as the superuser or the owner that ran the migrations is). The
/// schema must be migrated already ([`open`]).
pub async fn role_pool(cfg: &Config, role: &'static str, max_connections: u32) -> Result<PgPool, DbError> {
    let timeout = Duration::from_secs(cfg.connect_timeout_s);
    match &cfg.database {
        DatabaseSource::Local { .. } => {
            let (pg, name) = local_cluster(cfg)?.expect("local source has a cluster");
            let pg2 = pg.clone();
            tokio::task::spawn_blocking(move || pg2.ensure_login_roles())
                .await
                .map_err(|e| DbError::BadUrl(format!("role set-up task failed: {e}")))??;
            let url = if role == VETTER_ROLE { pg.vetter_url(&name) } else { pg.reader_url(&name) };
            connect(&url, max_connections, timeout).await
        }
        DatabaseSource::Url(url) => {
            let opts = PgConnectOptions::from_str(url.expose()).map_err(|e| DbError::BadUrl(redact(&e.to_string())))?;
            let target = format!("{}:{} as {role}", opts.get_host(), opts.get_port());
            let set_role: &'static str = if role == VETTER_ROLE { "SET ROLE lensnet_vetter" } else { "SET ROLE lensnet_reader" };
            PgPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(timeout)
                .after_connect(move |conn, _| {
                    Box::pin(async move {
                        sqlx::query(set_role).execute(conn).await?;
                        Ok(())
                    })
                })
                .connect_with(opts)
                .await
                .map_err(|source| DbError::Connect { target, source })
        }
    }
}
