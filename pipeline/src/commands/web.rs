//! `lensnet web [--bind ADDR]`: the coordinators' pages until SIGTERM or Ctrl-C (see
//! `lensnet::web`).

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use lensnet::config::Config;
use lensnet::web::{serve, WebState};
use lensnet::{app, db};
use tracing::info;

use crate::cli::WebArgs;

pub async fn run(mut cfg: Config, args: WebArgs) -> anyhow::Result<ExitCode> {
    if let Some(bind) = args.bind {
        cfg.web.bind = bind.parse().with_context(|| format!("--bind `{bind}`: give host:port, e.g. 127.0.0.1:8080"))?;
        if cfg.raw.web.base_url.trim().is_empty() {
            cfg.web.base_url = format!("http://{}", cfg.web.bind);
        }
    }
    // The owner's connection migrates and reads the accounts; pages and labels go through the
    // two restricted roles.
    let accounts = db::open(&cfg).await?;
    let reader = db::role_pool(&cfg, db::READER_ROLE, cfg.max_connections).await.context("connecting as lensnet_reader")?;
    let vetter = db::role_pool(&cfg, db::VETTER_ROLE, 2).await.context("connecting as lensnet_vetter")?;
    let (_, photometry) = app::photometry(&cfg).context("opening the object store")?;
    let listener = tokio::net::TcpListener::bind(cfg.web.bind).await.with_context(|| format!("cannot listen on {}", cfg.web.bind))?;
    let addr = listener.local_addr()?;
    let state = Arc::new(WebState::new(reader, vetter, accounts, photometry, cfg.web.clone()));
    println!("lensnet web: http://{addr}/ (Ctrl-C to stop)");
    info!(%addr, "web server listening");
    serve(state, listener, super::shutdown_signal()).await.context("web server")?;
    println!("lensnet web: stopped");
    Ok(ExitCode::SUCCESS)
}
