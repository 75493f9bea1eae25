//! `lensnet export-training-set`: the training (or test) set through the production code.

use std::process::ExitCode;

use anyhow::Context;
use lensnet_stages::preprocess::{export_training_set, ExportOptions, PreprocessStats};

use crate::cli::ExportArgs;
use lensnet::config::Config;

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
