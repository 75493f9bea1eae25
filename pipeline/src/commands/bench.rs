//! `lensnet bench STAGE`: throughput of the hot stages, printed (never asserted).

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use lensnet_stages::ingest::bench::{bench_parse, bench_write, synthetic_pysis};
use lensnet_stages::ingest::PhotometryStore;
use lensnet_stages::simulate::{bench_simulate, SimConfig};
use lensnet_stages::Field;
use object_store::memory::InMemory;

use super::not_built;
use crate::cli::BenchArgs;

fn scaled(n: f64, scale: f64) -> usize {
    ((n * scale).round() as usize).max(1)
}

pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    match args.stage.as_str() {
        "simulate" => simulate(args.scale),
        "ingest" => ingest(args.scale).await,
        "alertfinder" => not_built("bench alertfinder", "issue 5: alertfinder stage"),
        "preprocess" => not_built("bench preprocess", "issue 6: preprocess stage"),
        _ => not_built("bench score", "issue 7: score stage"),
    }
}

fn simulate(scale: f64) -> anyhow::Result<ExitCode> {
    println!("simulate: stars generated in memory per second (all cores: {})", rayon_threads());
    for (field, stars) in [(Field(14), 1000.0), (Field(2), 250.0)] {
        let cfg = SimConfig { fields: vec![field], ..SimConfig::default() };
        let r = bench_simulate(&cfg, field, scaled(stars, scale) as u64).context("simulating")?;
        println!(
            "  {field}: {:>6} stars, {:>9} epochs in {:>6.2} s = {:>7.1} stars/s, {:>6.2} M epochs/s ({} threads)",
            r.stars,
            r.points,
            r.seconds,
            r.stars_per_second,
            r.points as f64 / r.seconds / 1e6,
            r.threads
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn ingest(scale: f64) -> anyhow::Result<ExitCode> {
    let rows = scaled(200_000.0, scale);
    let text = synthetic_pysis(rows);
    println!("ingest: pySIS text of {rows} rows, {:.1} MB", text.len() as f64 / 1e6);
    let parse = bench_parse(&text, 5).context("parsing")?;
    println!("  parse (bytes -> columns)          {:>8.1} MB/s  {:>7.2} M rows/s", parse.mb_per_s(), parse.rows_per_s() / 1e6);
    let store = PhotometryStore::new(Arc::new(InMemory::new()), object_store::path::Path::from("bench"));
    let write = bench_write(&store, &text, 3).await.context("writing")?;
    println!(
        "  parse + write (zstd Parquet)      {:>8.1} MB/s  {:>7.2} M rows/s  ({:.2} MB Parquet)",
        write.mb_per_s(),
        write.rows_per_s() / 1e6,
        write.output_bytes as f64 / 1e6
    );
    Ok(ExitCode::SUCCESS)
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}
