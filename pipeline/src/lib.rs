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
