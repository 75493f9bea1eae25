//! `lensnet user add|list|disable`: the web pages' accounts (argon2 hashes in `web_users`).

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use anyhow::Context;
use lensnet::config::Config;
use lensnet::db;
use lensnet::web::auth::{add_user, disable_user, list_users, Role};

use crate::cli::UserCommand;

pub async fn run(cfg: Config, cmd: UserCommand) -> anyhow::Result<ExitCode> {
    let pool = db::open(&cfg).await?;
    match cmd {
        UserCommand::Add { name, role, update, password_stdin } => {
            let role = Role::parse(&role).expect("clap checked the role");
            let password = read_password(password_stdin)?;
            add_user(&pool, &name, role, &password, update).await?;
            println!("user {name} ({}) {}", role.as_str(), if update { "saved" } else { "added" });
        }
        UserCommand::List => {
            let users = list_users(&pool).await?;
            if users.is_empty() {
                println!("no users (add one with `lensnet user add NAME --role vetter`)");
            }
            for (name, role, disabled, created) in users {
                println!("{name:<24} {role:<7} {}  created {created}", if disabled { "disabled" } else { "active  " });
            }
        }
        UserCommand::Disable { name } => {
            disable_user(&pool, &name).await?;
            println!("user {name} disabled");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The password: the first line of standard input with --password-stdin or when input is not a
/// terminal; otherwise asked twice on the terminal (echo off).
fn read_password(from_stdin: bool) -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    if from_stdin || !stdin.is_terminal() {
        let mut line = String::new();
        stdin.lock().read_line(&mut line).context("reading the password from standard input")?;
        return Ok(line.trim_end_matches(['\n', '\r']).to_string());
    }
    let ask = |prompt: &str| -> anyhow::Result<String> {
        eprint!("{prompt}");
        std::io::stderr().flush()?;
        let _echo = EchoOff::new();
        let mut line = String::new();
        stdin.lock().read_line(&mut line)?;
        eprintln!();
        Ok(line.trim_end_matches(['\n', '\r']).to_string())
    };
    let a = ask("password: ")?;
    let b = ask("again: ")?;
    anyhow::ensure!(a == b, "the two passwords differ");
    Ok(a)
}

/// Terminal echo off while alive (`stty`, so no terminal crate is needed).
struct EchoOff;

impl EchoOff {
    fn new() -> EchoOff {
        let _ = std::process::Command::new("stty").arg("-echo").stdin(std::process::Stdio::inherit()).status();
        EchoOff
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        let _ = std::process::Command::new("stty").arg("echo").stdin(std::process::Stdio::inherit()).status();
    }
}
