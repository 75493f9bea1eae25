//! Export a training or test set (development driver for `preprocess::export_training_set`;
//! the pipeline's `lensnet export-training-set` is the supported entry point).
//!
//! Usage: cargo run --release -p lensnet-stages --features preprocess --example export_training_set --
//!        OUT_DIR STARS SEED [STATS_JSON] [MAX_CANDIDATES]

use std::path::PathBuf;

use lensnet_stages::preprocess::{export_training_set, ExportOptions, PreprocessStats};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: export_training_set OUT_DIR STARS SEED [STATS_JSON|-] [MAX_CANDIDATES]");
        std::process::exit(2);
    }
    let stats = match args.get(4).map(String::as_str) {
        None | Some("-") => None,
        Some(p) => Some(PreprocessStats::from_json(&std::fs::read_to_string(p)?)?),
    };
    let opts = ExportOptions {
        out_dir: PathBuf::from(&args[1]),
        stars: args[2].parse()?,
        seed: args[3].parse()?,
        stats,
        max_candidates: args.get(5).map(|s| s.parse()).transpose()?,
        ..ExportOptions::default()
    };
    let s = export_training_set(&opts)?;
    println!("{}", serde_json::to_string_pretty(&s)?);
    Ok(())
}
