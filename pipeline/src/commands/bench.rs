//! `lensnet bench STAGE`: throughput of the hot stages, printed (never asserted).

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use lensnet_stages::ingest::bench::{bench_parse, bench_write, synthetic_pysis};
use lensnet_stages::ingest::PhotometryStore;
use lensnet_stages::simulate::{bench_simulate, SimConfig};
use lensnet_stages::Field;
use object_store::memory::InMemory;

use crate::cli::BenchArgs;

fn scaled(n: f64, scale: f64) -> usize {
    ((n * scale).round() as usize).max(1)
}

pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    match args.stage.as_str() {
        "simulate" => simulate(args.scale),
        "ingest" => ingest(args.scale).await,
        "alertfinder" => alertfinder(args.scale),
        "preprocess" => preprocess(args.scale),
        "score" => score(args.scale),
        other => anyhow::bail!("unknown stage `{other}` (simulate, ingest, alertfinder, preprocess or score)"),
    }
}

fn alertfinder(scale: f64) -> anyhow::Result<ExitCode> {
    println!("alertfinder: season-long synthetic light curves (all cores: {})", rayon_threads());
    let figures = lensnet_stages::alertfinder::bench::bench(scaled(200.0, scale), scaled(20.0, scale), 1.0);
    print!("{figures}");
    Ok(ExitCode::SUCCESS)
}

fn preprocess(scale: f64) -> anyhow::Result<ExitCode> {
    use lensnet_stages::alertfinder::N_DIAGNOSIS;
    use lensnet_stages::preprocess::{prepare, Candidate, PreprocessStats};
    use lensnet_stages::simulate::Season;
    let n = scaled(400.0, scale) as u64;
    println!("preprocess: polars whole-batch tensors for {n} simulated stars per field");
    for field in [Field(14), Field(2)] {
        let cfg = SimConfig { fields: vec![field], stars: n, ..SimConfig::default() };
        let season = Season::new(&cfg).context("simulating")?;
        let stars = season.field(field).context("simulating")?;
        let cands: Vec<Candidate<'_>> = stars
            .iter()
            .map(|s| {
                let last = s.curves.curves.iter().flat_map(|c| c.hjd.iter().copied()).fold(f64::NEG_INFINITY, f64::max);
                Candidate { id: s.curves.star.0.clone(), star: &s.curves, now: last, diag: [0.0; N_DIAGNOSIS], label: None }
            })
            .collect();
        let points: usize = stars.iter().map(|s| s.curves.curves.iter().map(|c| c.hjd.len()).sum::<usize>()).sum();
        let stats = PreprocessStats::identity();
        prepare(&cands, &stats).context("warm-up")?;
        let mut reps = 0;
        let t = std::time::Instant::now();
        while reps < 2 || t.elapsed().as_secs_f64() < 1.0 {
            prepare(&cands, &stats).context("preprocess")?;
            reps += 1;
        }
        let secs = t.elapsed().as_secs_f64() / reps as f64;
        println!(
            "  {field}: {:>5} candidates, {:>9} input points in {:>6.3} s = {:>8.0} candidates/s, {:>6.2} M points/s",
            cands.len(),
            points,
            secs,
            cands.len() as f64 / secs,
            points as f64 / secs / 1e6
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn score(scale: f64) -> anyhow::Result<ExitCode> {
    use lensnet_stages::score::{bench::BATCH_SIZES, find_model, ScoreOptions};
    let cfg = super::load_config(None)?;
    let model = find_model(cfg.model.as_deref()).context("finding the model")?;
    let opts = ScoreOptions { ort_library: cfg.ort_library.clone(), ..ScoreOptions::cpu(&model) };
    println!("score: sequences per second through ONNX Runtime, model {}", model.display());
    let rows = lensnet_stages::score::bench(&opts, &BATCH_SIZES, 1.0 * scale.max(0.1)).context("benchmarking")?;
    for r in &rows {
        println!(
            "  {:<12} {:<5} batch {:>5}: {:>10.1} sequences/s ({} sequences in {:.2} s, ONNX Runtime {})",
            r.engine,
            r.provider.as_str(),
            r.batch,
            r.sequences_per_s,
            r.sequences,
            r.seconds,
            r.runtime_version
        );
    }
    // PyTorch on the same architecture, in the same run, where the training environment exists.
    let python = std::path::Path::new(".venv/bin/python");
    let script = std::path::Path::new("models/train/bench_torch.py");
    if python.is_file() && script.is_file() {
        let status = std::process::Command::new(python).arg(script).arg("--model").arg(&model).status();
        if !matches!(status, Ok(s) if s.success()) {
            println!("  pytorch: models/train/bench_torch.py failed ({status:?})");
        }
    } else {
        println!("  pytorch: not installed here (.venv from models/train/requirements.txt); skipped");
    }
    Ok(ExitCode::SUCCESS)
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
    let files: Vec<Vec<u8>> = (0..8).map(|_| synthetic_pysis(rows / 8)).collect();
    let par = lensnet_stages::ingest::bench::bench_parse_files(&files, 5).context("parsing files in parallel")?;
    println!(
        "  parse, 8 files in parallel        {:>8.1} MB/s  {:>7.2} M rows/s  ({} threads, as ingest parses a batch of files)",
        par.mb_per_s(),
        par.rows_per_s() / 1e6,
        rayon_threads()
    );
    let polars = lensnet_stages::ingest::bench::bench_polars_csv(&text, 5).map_err(|e| anyhow::anyhow!(e)).context("polars CSV")?;
    println!(
        "  polars CSV reader (same rows)     {:>8.1} MB/s  {:>7.2} M rows/s  ({} threads; pySIS spaces made commas first)",
        polars.mb_per_s(),
        polars.rows_per_s() / 1e6,
        rayon_threads()
    );
    let store = PhotometryStore::new(Arc::new(InMemory::new()), object_store::path::Path::from("bench"));
    let write = bench_write(&store, &text, 3).await.context("writing")?;
    println!(
        "  parse + write (staged part)       {:>8.1} MB/s  {:>7.2} M rows/s  ({:.2} MB Parquet)",
        write.mb_per_s(),
        write.rows_per_s() / 1e6,
        write.output_bytes as f64 / 1e6
    );
    Ok(ExitCode::SUCCESS)
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}
