//! `lensnet export-training-set`: the training (or test) set through the production code.

use std::process::ExitCode;

use anyhow::Context;
use lensnet_stages::preprocess::{export_training_set, ExportOptions, PreprocessStats};

use crate::cli::ExportArgs;
use lensnet::config::Config;
use lensnet::{app, db};

/// The AlertFinder thresholds come from the configuration, as in field runs, so that the
/// training set holds the candidates that serving would see.
pub fn run(cfg: Config, args: ExportArgs) -> anyhow::Result<ExitCode> {
    let stats = match &args.stats {
        Some(p) => Some(
            PreprocessStats::from_json(&std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?)
                .with_context(|| format!("statistics in {}", p.display()))?,
        ),
        None => None,
    };
    let opts = ExportOptions {
        out_dir: args.out.clone(),
        stars: args.stars,
        seed: args.seed,
        stats,
        max_candidates: args.max_candidates.map(|n| n as u64),
        thresholds: cfg.alert_thresholds.clone(),
        ..ExportOptions::default()
    };
    let summary = export_training_set(&opts).context("exporting the training set")?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(ExitCode::SUCCESS)
}

/// `--vetted`: the vetted candidates (see `lensnet::vetting::vetted_rows`) into
/// `<out>/tensors.parquet`, with `summary.json` and the statistics used.
pub async fn run_vetted(cfg: Config, args: ExportArgs) -> anyhow::Result<ExitCode> {
    let stats = match &args.stats {
        Some(p) => PreprocessStats::from_json(&std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?)
            .with_context(|| format!("statistics in {}", p.display()))?,
        None => {
            let scorer = app::scorer(&cfg, args.model.as_deref()).context("loading the model for its preprocessing statistics")?;
            lensnet_stages::score::stage::ScoreStage::stats_of(&scorer)?
        }
    };
    let pool = db::open(&cfg).await?;
    let (_, photometry) = app::photometry(&cfg).context("opening the object store")?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let summary = lensnet::vetting::export_vetted(&pool, &photometry, &stats, &args.out).await?;
    std::fs::write(args.out.join("preprocess_stats.json"), stats.to_json())?;
    let text = serde_json::to_string_pretty(&summary)?;
    std::fs::write(args.out.join("summary.json"), &text)?;
    println!("{text}");
    Ok(ExitCode::SUCCESS)
}
