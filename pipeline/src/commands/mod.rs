//! Subcommand handlers: glue between the CLI, the configuration, the database and the stages.

mod bench;
mod db;
mod demo;
mod evaluate;
mod export;
mod ingest;
mod replay;
mod plot;
mod run;
mod serve;
mod simulate;
mod store;
mod submit;
mod user;
mod web;

use std::process::ExitCode;

use anyhow::Context;
use lensnet::config::{Config, Sources};

use crate::cli::{Cli, Command, ConfigCommand};



pub fn load_config(cli_config: Option<std::path::PathBuf>) -> anyhow::Result<Config> {
    Config::load(&Sources::from_process(cli_config)).context("invalid configuration")
}

pub async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Config(ConfigCommand::Check) => {
            match Config::load(&Sources::from_process(cli.config)) {
                Ok(cfg) => {
                    println!("configuration ok (hash {})", &cfg.hash[..12]);
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("{e}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Config(ConfigCommand::Show) => {
            let cfg = load_config(cli.config)?;
            print!("{}", cfg.to_toml());
            Ok(ExitCode::SUCCESS)
        }
        Command::Db(cmd) => db::run(load_config(cli.config)?, cmd).await,
        Command::Store(cmd) => store::run(load_config(cli.config)?, cmd).await,
        Command::Evaluate(args) => evaluate::run(load_config(cli.config)?, args).await,
        Command::Plot(args) => plot::run(load_config(cli.config)?, args).await,
        Command::Demo(args) => demo::run(load_config(cli.config)?, args).await,
        Command::Simulate(args) if args.store => simulate::run_store(load_config(cli.config)?, args).await,
        Command::Simulate(args) => tokio::task::spawn_blocking(move || simulate::run(args)).await?,
        Command::Ingest(args) => ingest::run(load_config(cli.config)?, args).await,
        Command::Run(args) => run::run(load_config(cli.config)?, args).await,
        Command::Serve(args) => serve::run(load_config(cli.config)?, args).await,
        Command::Replay(args) => replay::run(load_config(cli.config)?, args).await,
        Command::ReplayReport(args) => replay::report(load_config(cli.config)?, args).await,
        Command::Submit(cmd) => {
            let file = cli.config.clone();
            submit::run(load_config(cli.config)?, file, cmd).await
        }
        Command::Web(args) => web::run(load_config(cli.config)?, args).await,
        Command::User(cmd) => user::run(load_config(cli.config)?, cmd).await,
        Command::Bench(args) if args.stage == "field" => bench::field(load_config(cli.config)?, args).await,
        Command::Bench(args) => bench::run(args, cli.config).await,
        Command::ExportTrainingSet(args) if args.vetted => export::run_vetted(load_config(cli.config)?, args).await,
        Command::ExportTrainingSet(args) => {
            let cfg = load_config(cli.config)?;
            tokio::task::spawn_blocking(move || export::run(cfg, args)).await?
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C: how `serve` and `web` stop.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
