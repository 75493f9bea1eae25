//! Subcommand handlers: glue between the CLI, the configuration, the database and the stages.

mod bench;
mod db;
mod demo;
mod ingest;
mod simulate;

use std::fmt;
use std::process::ExitCode;

use anyhow::Context;
use lensnet::config::{Config, Sources};

use crate::cli::{Cli, Command, ConfigCommand};

/// A subcommand of the CLI contract that is not built yet: it says so and exits non-zero.
#[derive(Debug)]
pub struct NotBuilt {
    pub command: &'static str,
    pub issue: &'static str,
}

impl fmt::Display for NotBuilt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`lensnet {}` is not built yet ({}); nothing was done", self.command, self.issue)
    }
}

impl std::error::Error for NotBuilt {}

fn not_built(command: &'static str, issue: &'static str) -> anyhow::Result<ExitCode> {
    Err(NotBuilt { command, issue }.into())
}

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
        Command::Demo(args) => demo::run(load_config(cli.config)?, args).await,
        Command::Simulate(args) => tokio::task::spawn_blocking(move || simulate::run(args)).await?,
        Command::Ingest(args) => ingest::run(load_config(cli.config)?, args).await,
        Command::Run(_) => not_built("run", "issue 8: orchestration"),
        Command::Serve(_) => not_built("serve", "issue 8: orchestration"),
        Command::Replay(_) => not_built("replay", "issue 8: orchestration"),
        Command::Bench(args) => bench::run(args).await,
    }
}
