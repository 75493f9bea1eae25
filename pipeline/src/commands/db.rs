//! `lensnet db {start,stop,status,url,migrate}`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use lensnet::config::{Config, DatabaseSource};
use lensnet::db;
use lensnet::localpg::ClusterState;

use crate::cli::DbCommand;

pub async fn run(cfg: Config, cmd: DbCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DbCommand::Start => {
            let Some((pg, name)) = db::local_cluster(&cfg)? else {
                println!("DATABASE_URL is set: lensnet uses that server and starts none");
                return Ok(ExitCode::SUCCESS);
            };
            let before = pg.state()?;
            tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
                pg.start()?;
                pg.ensure_database(&name)?;
                Ok(pg)
            })
            .await??;
            match before {
                ClusterState::Running => println!("local PostgreSQL already running"),
                ClusterState::Absent => println!("local PostgreSQL created and started"),
                ClusterState::Stopped => println!("local PostgreSQL started"),
            }
            Ok(ExitCode::SUCCESS)
        }
        DbCommand::Stop => {
            let Some((pg, _)) = db::local_cluster(&cfg)? else {
                println!("DATABASE_URL is set: there is no local PostgreSQL to stop");
                return Ok(ExitCode::SUCCESS);
            };
            let was = pg.state()?;
            tokio::task::spawn_blocking(move || pg.stop()).await??;
            println!("{}", if was == ClusterState::Running { "local PostgreSQL stopped" } else { "local PostgreSQL was not running" });
            Ok(ExitCode::SUCCESS)
        }
        DbCommand::Status => {
            let url = match db::local_cluster(&cfg)? {
                None => {
                    println!("database: DATABASE_URL (external server)");
                    match &cfg.database {
                        DatabaseSource::Url(s) => Some(s.expose().to_string()),
                        DatabaseSource::Local { .. } => None,
                    }
                }
                Some((pg, name)) => {
                    let state = pg.state()?;
                    println!("local cluster: {} ({state:?})", pg.root().display());
                    (state == ClusterState::Running).then(|| pg.url(&name))
                }
            };
            if let Some(url) = url {
                let pool = db::connect(&url, 1, Duration::from_secs(cfg.connect_timeout_s)).await?;
                let applied = db::applied_versions(&pool).await?;
                let known = db::MIGRATOR.iter().count();
                println!("migrations: {} of {known} applied", applied.len());
            }
            Ok(ExitCode::SUCCESS)
        }
        DbCommand::Url { reader } => {
            match db::local_cluster(&cfg)? {
                None => {
                    eprintln!("DATABASE_URL is set; lensnet does not print secrets");
                }
                Some((pg, name)) => {
                    if !pg.secret_file().exists() {
                        anyhow::bail!("the local cluster {} has not been created yet: run `lensnet db start`", pg.root().display());
                    }
                    let password = if reader { pg.reader_password() } else { pg.password() };
                    let password = password.context("reading the cluster's secret (only its owner can)")?;
                    let user = if reader { db::READER_ROLE } else { lensnet::localpg::SUPERUSER };
                    println!("{}", pg.url_with(user, Some(&password), &name));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        DbCommand::Migrate => {
            let url = tokio::task::spawn_blocking({
                let cfg = cfg.clone();
                move || db::ensure_url(&cfg)
            })
            .await??;
            let pool = db::connect(&url, 2, Duration::from_secs(cfg.connect_timeout_s)).await?;
            let n = db::migrate(&pool).await.context("applying migrations")?;
            let total = db::applied_versions(&pool).await?.len();
            println!("{n} migration(s) applied now; {total} applied in all");
            Ok(ExitCode::SUCCESS)
        }
    }
}
