//! `lensnet demo`: the README's main job on the embedded default. It simulates a small KMTNet
//! season of two fields (a prime, high-cadence field and a sub-prime one), starts the local
//! PostgreSQL if needed, ingests the season, replays it day by day as if live with the committed
//! model, and prints what was flagged against the simulator's truth, with the SQL to look at it.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use lensnet::config::Config;
use lensnet::replay::{replay, ReplayOptions};
use lensnet::{app, db};
use lensnet_stages::simulate::{read_truth, write_season, SimConfig};
use lensnet_stages::Field;

use super::replay::{ingest_all, print_summary, progress_printer};
use crate::cli::DemoArgs;

pub const DEMO_SEASON: i32 = 2025;
pub const DEMO_FIELDS: [Field; 2] = [Field(2), Field(14)];

pub async fn run(cfg: Config, args: DemoArgs) -> anyhow::Result<ExitCode> {
    let started = std::time::Instant::now();
    println!("lensnet demo: season {DEMO_SEASON}, fields BLG02 (prime) and BLG14 (sub-prime), {} stars per field, seed {}", args.stars, args.seed);
    let dir = cfg.data_dir.join("demo").join(format!("season-{DEMO_SEASON}-stars{}-seed{}", args.stars, args.seed));
    let truth_path = dir.join("truth.parquet");
    if truth_path.is_file() {
        println!("simulate   already written: {}", dir.display());
    } else {
        let sim = SimConfig { season: DEMO_SEASON, fields: DEMO_FIELDS.to_vec(), stars: args.stars as u64, seed: args.seed, ..SimConfig::default() };
        let out = dir.clone();
        let t = std::time::Instant::now();
        // Written to a temporary folder first, so that an interrupted demo never looks complete.
        let tmp = dir.with_extension("partial");
        let _ = std::fs::remove_dir_all(&tmp);
        let summary = tokio::task::spawn_blocking({
            let tmp = tmp.clone();
            move || write_season(&sim, &tmp)
        })
        .await?
        .context("simulating the demo season")?;
        std::fs::rename(&tmp, &out).with_context(|| format!("moving {} to {}", tmp.display(), out.display()))?;
        println!("simulate   {} stars, {} files, {} points ({:.1} s) -> {}", summary.stars, summary.files, summary.points, t.elapsed().as_secs_f64(), out.display());
    }
    let truth = read_truth(&truth_path).with_context(|| format!("reading {}", truth_path.display()))?;

    let pool = db::open(&cfg).await?;
    println!("database   ok ({} migrations applied)", db::applied_versions(&pool).await?.len());
    let scorer = Arc::new(app::scorer(&cfg, None).context("loading the model")?);
    let m = scorer.model();
    println!("model      {} ({}, sha256 {}), {} on ONNX Runtime {}", m.path.display(), m.kind, &m.sha256[..12], scorer.provider().as_str(), scorer.runtime().version);
    let runner = app::field_runner(&cfg, pool, scorer).context("setting up the field runner")?;
    ingest_all(&runner, &dir.display().to_string()).await?;

    let opts = ReplayOptions { season: DEMO_SEASON, fields: DEMO_FIELDS.to_vec(), step_days: 1.0, kind: "demo" };
    let t = std::time::Instant::now();
    let result = replay(&runner, &opts, &progress_printer()).await?;
    println!("replay     {:.1} s", t.elapsed().as_secs_f64());
    print_summary(&result, Some(&truth), &opts.fields);

    // The binary as this user can call it (target/debug/lensnet from the repository root).
    let exe = std::env::current_exe().ok().map(|p| {
        let cwd = std::env::current_dir().unwrap_or_default();
        p.strip_prefix(&cwd).map(|r| r.display().to_string()).unwrap_or_else(|_| p.display().to_string())
    });
    let exe = exe.unwrap_or_else(|| "lensnet".into());
    let url = match &cfg.database {
        lensnet::config::DatabaseSource::Local { .. } => format!("\"$({exe} db url)\""),
        lensnet::config::DatabaseSource::Url(_) => "\"$DATABASE_URL\"".to_string(),
    };
    println!();
    println!("look at it with SQL (views in sql/):");
    println!("  psql {url} -c \"SELECT field, star_id, as_of_hjd, binary_score FROM newest_yes_alerts ORDER BY as_of_hjd DESC LIMIT 20\"");
    println!("  psql {url} -c \"SELECT field, star_id, first_flagged_hjd, peak_hjd, lead_days FROM flagged_before_peak ORDER BY lead_days DESC LIMIT 20\"");
    println!("  psql {url} -c \"SELECT field, star_id, binary_score FROM needs_human ORDER BY binary_score DESC LIMIT 20\"");
    println!("demo finished in {:.1} s", started.elapsed().as_secs_f64());
    Ok(ExitCode::SUCCESS)
}
