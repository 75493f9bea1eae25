//! lensnet's pipeline library: configuration, the local PostgreSQL, database access, and (later)
//! the DAG, runner and scheduler. The `lensnet` binary in `main.rs` is glue over this library
//! and `lensnet-stages`.

pub mod app;
pub mod config;
pub mod dag;
pub mod evaluate;
pub mod plot;
pub mod fieldrun;
pub mod db;
pub mod ledger;
pub mod localpg;
pub mod notify;
pub mod vetting;
pub mod web;
pub mod publish;
pub mod replay;
pub mod runner;
pub mod shards;
pub mod submit;

pub use config::{Config, Sources};

/// This process's peak resident memory in MB (Linux: VmHWM of /proc/self/status; None
/// elsewhere), which `run` and `replay` print when they finish.
pub fn peak_rss_mb() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = s.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// The line `run` and `replay` print on standard error when they finish (what `bench field`
/// reads from its child processes).
pub fn print_peak_rss() {
    if let Some(mb) = peak_rss_mb() {
        eprintln!("peak resident memory {mb:.0} MB");
    }
}
