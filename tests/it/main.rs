//! lensnet's integration tests: one binary (this file holds only `mod` lines).

mod cli;
mod db;
mod harness;
mod ledger;
mod ingest;
mod score;
mod simulate;
mod publish;
mod alertfinder;
mod orchestration;
mod model;
mod security;
mod crash;
mod evaluate;
mod web;
mod batch;
mod s3;
