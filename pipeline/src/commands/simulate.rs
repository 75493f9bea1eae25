//! `lensnet simulate`: a KMTNet-like season in real pySIS files plus `truth.parquet`, and the
//! side-by-side comparison of simulated and real KMTNet statistics (`--report`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use lensnet_stages::simulate::{report::report, write_season, SimConfig};
use lensnet_stages::Field;

use crate::cli::SimulateArgs;

/// Real files to calibrate against: `--real`, else the shared KMTNet season next to the checkout.
pub fn real_dir(flag: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = flag {
        return Ok(p);
    }
    let candidates = [
        PathBuf::from("../shared/data/kmtnet/BLG14-2018-season"),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/kmtnet/BLG14-2018-season"),
    ];
    candidates
        .into_iter()
        .find(|p| p.is_dir())
        .context("no real KMTNet files found: pass --real DIR (a folder of KMTNet pySIS files of one star)")
}

/// `lensnet simulate --store`: the fields straight into the configured store, under its writer
/// lock (one writer per store).
pub async fn run_store(cfg: lensnet::config::Config, args: SimulateArgs) -> anyhow::Result<ExitCode> {
    use lensnet_stages::ingest::ledger::FileLedger;
    let mut sim = sim_config(args.season, &args.fields, args.stars, args.seed)?;
    if args.mix == "field" {
        sim.mix = lensnet_stages::simulate::ClassMix::field();
    }
    let (opened, photometry) = lensnet::app::photometry(&cfg).context("opening the object store")?;
    let pool = lensnet::db::open(&cfg).await?;
    let ledger = lensnet::ledger::PgLedger::new(pool.clone());
    let _writer = ledger.lock_writer(&photometry.identity()).await?;
    let season = lensnet_stages::simulate::Season::new(&sim).context("building the season's schedules")?;
    for field in &sim.fields {
        let t = std::time::Instant::now();
        let r = lensnet_stages::simulate::store::simulate_to_store(&season, *field, args.days.clone(), &photometry)
            .await
            .with_context(|| format!("writing {field} into {}", opened.location))?;
        println!(
            "{field}: {} stars, {} rows in {} parts ({} buckets), days {}..{} of season {}, {:.1} s; store {}",
            r.stars,
            r.rows,
            r.parts,
            r.buckets,
            r.first_day,
            r.end_day,
            sim.season,
            t.elapsed().as_secs_f64(),
            opened.location
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn sim_config(season: i32, fields: &[String], stars: usize, seed: u64) -> anyhow::Result<SimConfig> {
    let fields = fields
        .iter()
        .map(|f| f.parse::<Field>().map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(SimConfig { season, fields, stars: stars as u64, seed, ..SimConfig::default() })
}

pub fn run(args: SimulateArgs) -> anyhow::Result<ExitCode> {
    if args.days.is_some() {
        bail!("--days needs --store");
    }
    if args.out.is_none() && !args.report {
        bail!("nothing to do: give --out DIR to write a season, --report to compare with real files, or both");
    }
    let cfg = sim_config(args.season, &args.fields, args.stars, args.seed)?;
    if let Some(out) = &args.out {
        let summary = write_season(&cfg, out).with_context(|| format!("writing the season to {}", out.display()))?;
        println!(
            "wrote {} stars ({} files, {} epochs) to {}; truth: {}",
            summary.stars,
            summary.files,
            summary.points,
            out.display(),
            summary.truth_path.display()
        );
        println!("labels: {} yes, {} maybe, {} no", summary.labels[0], summary.labels[1], summary.labels[2]);
        let classes: Vec<String> = summary.classes.iter().map(|(c, n)| format!("{c} {n}")).collect();
        println!("classes: {}", classes.join(", "));
    }
    if args.report {
        let real = real_dir(args.real)?;
        let text = report(&cfg, &real, args.stars.clamp(50, 400) as u64).context("building the report")?;
        println!("{text}");
    }
    Ok(ExitCode::SUCCESS)
}
