//! `lensnet replay`: a past season reprocessed day by day as if live, with a summary of when
//! each star would have been flagged (and, with the simulator's truth, recall and lead time).

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use lensnet::config::Config;
use lensnet::fieldrun::FieldRunner;
use lensnet::replay::{against_truth, parse_step, ReplayResult};
use lensnet::shards::{parse_seasons, resolve_fields, run_shard, JobReport, ReplayJob};
use lensnet::{app, db};
use lensnet_stages::ingest::{ingest_location, CompactionPolicy, IngestOptions, PhotometryStore};
use lensnet_stages::simulate::{read_truth, TruthRow};
use lensnet_stages::Field;

use crate::cli::{ReplayArgs, ReplayReportArgs};

pub async fn run(cfg: Config, args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let step = parse_step(&args.step).map_err(|e| anyhow::anyhow!(e)).context("--step")?;
    let seasons = match args.season {
        Some(s) => vec![s],
        None => parse_seasons(&args.seasons).map_err(|e| anyhow::anyhow!(e)).context("--seasons")?,
    };
    let truth = match &args.truth {
        Some(p) => Some(read_truth(p).with_context(|| format!("reading {}", p.display()))?),
        None => None,
    };
    let pool = db::open(&cfg).await?;
    let scorer = Arc::new(app::scorer(&cfg, args.model.as_deref()).context("loading the model")?);
    let runner = app::field_runner(&cfg, pool.clone(), scorer).context("setting up the field runner")?;
    if let Some(input) = &args.ingest {
        ingest_all(&runner, input).await?;
    }
    let photometry = PhotometryStore::new(runner.store.clone(), runner.root.clone());
    let fields = resolve_fields(&args.fields, &photometry, &seasons).await?;
    let job = ReplayJob { seasons, fields, step_days: step, kind: "replay" };
    let replay_id = job.replay_id(runner.model_sha256());
    if let Some(i) = args.shard_index {
        let out = run_shard(&runner, &job, i, args.log.as_deref(), &progress_printer()).await?;
        println!(
            "replay {replay_id} shard {i} of {}: {} {} {} ({} step(s), {} failed)",
            job.shard_count(),
            out.season,
            out.field,
            out.status,
            out.steps,
            out.failed_steps
        );
        return Ok(if out.status == "failed" { ExitCode::FAILURE } else { ExitCode::SUCCESS });
    }
    let mut failed = 0;
    for i in 0..job.shard_count() {
        match run_shard(&runner, &job, i, None, &progress_printer()).await {
            Ok(o) if o.status == "failed" => failed += 1,
            Ok(_) => {}
            Err(e) => {
                failed += 1;
                eprintln!("shard {i}: {e:#}");
            }
        }
    }
    let rep = lensnet::shards::report(&pool, replay_id).await?;
    print_report(&rep, truth.as_deref());
    lensnet::print_peak_rss();
    Ok(if failed == 0 && rep.unfinished().is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// `lensnet replay-report --replay-id ID`: the same summary, from what the shards wrote.
pub async fn report(cfg: Config, args: ReplayReportArgs) -> anyhow::Result<ExitCode> {
    let truth = match &args.truth {
        Some(p) => Some(read_truth(p).with_context(|| format!("reading {}", p.display()))?),
        None => None,
    };
    let pool = db::open(&cfg).await?;
    let rep = lensnet::shards::report(&pool, args.replay_id).await?;
    print_report(&rep, truth.as_deref());
    Ok(if rep.unfinished().is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The replay's summary, then the shards that did not finish well with their logs.
pub fn print_report(rep: &JobReport, truth: Option<&[TruthRow]>) {
    print_summary(&rep.result, truth, &rep.job.fields);
    let done = rep.shards.iter().filter(|s| s.status == "succeeded").count();
    let skipped = rep.shards.iter().filter(|s| s.status == "skipped").count();
    println!();
    println!("  shards: {} in all, {done} succeeded, {skipped} without data, {} not finished", rep.shards.len(), rep.unfinished().len());
    let bad = rep.unfinished();
    for s in &bad {
        println!(
            "    shard {:>3}  {} {}  {:<9} attempts {}  {}{}",
            s.index,
            s.season,
            s.field,
            s.status,
            s.attempts,
            s.log_path.as_deref().map(|l| format!("log {l}")).unwrap_or_else(|| "no log recorded".into()),
            s.error.as_deref().map(|e| format!("  ({e})")).unwrap_or_default()
        );
    }
    if !bad.is_empty() {
        let list: Vec<String> = bad.iter().map(|s| s.index.to_string()).collect();
        println!("  rerun them alone: `sbatch --array={} <the job's .sbatch>`, or `lensnet replay ... --shard-index I` for each", list.join(","));
    }
}

/// Ingest a whole folder or URL (a simulated or archived season) into the photometry dataset.
pub async fn ingest_all(runner: &FieldRunner, input: &str) -> anyhow::Result<()> {
    let photometry = PhotometryStore::new(runner.store.clone(), runner.root.clone());
    let opts = IngestOptions { compaction: Some(CompactionPolicy::default()), accept_unterminated_tail: true, ..runner.ingest.clone() };
    let started = std::time::Instant::now();
    let report = ingest_location(input, &photometry, runner.ledger.as_ref(), &opts).await.with_context(|| format!("ingesting {input}"))?;
    println!(
        "ingest     {} file(s), {} rows added, {} quarantined, {} failed ({:.1} s)",
        report.files.len(),
        report.rows_added(),
        report.quarantined(),
        report.failed(),
        started.elapsed().as_secs_f64()
    );
    if report.failed() > 0 {
        anyhow::bail!("{} file(s) failed to ingest; see the log", report.failed());
    }
    Ok(())
}

/// Progress: a bar redrawn in place on a terminal, a log line every 10 % otherwise.
pub fn progress_printer() -> impl Fn(Field, usize, usize) + Sync {
    let tty = std::io::stderr().is_terminal();
    move |field: Field, k: usize, n: usize| {
        if tty {
            let width = 30;
            let done = (k * width) / n.max(1);
            eprint!("\r  {field} [{}{}] {k}/{n} days", "#".repeat(done), "-".repeat(width - done));
            if k == n {
                eprintln!();
            }
        } else if k == n || (k * 10 / n.max(1)) != ((k - 1) * 10 / n.max(1)) {
            eprintln!("  {field}: step {k}/{n}");
        }
    }
}

pub fn print_summary(r: &ReplayResult, truth: Option<&[TruthRow]>, fields: &[Field]) {
    println!();
    println!("replay {} (model {})", r.replay_id, &r.model_sha256[..12.min(r.model_sha256.len())]);
    println!("  {:<6} {:<6} {:>6} {:>10} {:>10} {:>7} {:>11} {:>8} {:>7}", "season", "field", "steps", "from", "to", "stars", "candidates", "flagged", "failed");
    for f in &r.fields {
        let flagged = r.stars.iter().filter(|s| s.field == f.field.to_string() && s.first_yes.is_some_and(|t| t >= f.first_as_of && t <= f.last_as_of)).count();
        println!(
            "  {:<6} {:<6} {:>6} {:>10.1} {:>10.1} {:>7} {:>11} {:>8} {:>7}",
            f.season,
            f.field.to_string(),
            f.steps,
            f.first_as_of,
            f.last_as_of,
            f.stars,
            f.candidates,
            flagged,
            f.failed_steps
        );
    }
    let flagged = r.stars.iter().filter(|s| s.first_yes.is_some()).count();
    let kept = r.stars.iter().filter(|s| s.first_kept.is_some()).count();
    let days: f64 = r.fields.iter().map(|f| f.steps as f64).fold(0.0, f64::max).max(1.0);
    let max_day = r.alerts_by_day.values().copied().max().unwrap_or(0);
    println!(
        "  stars that became candidates: {}; flagged yes: {flagged}; yes or maybe: {kept}; new alerts per day: {:.2} (max {max_day})",
        r.stars.len(),
        flagged as f64 / days
    );
    let before_fit = r.stars.iter().filter(|s| matches!((s.first_yes, s.fitted_peak), (Some(y), Some(p)) if y < p)).count();
    println!("  flagged before the fitted peak (point-lens grid t0): {before_fit} of {flagged}");
    if let Some(truth) = truth {
        let s = against_truth(&r.stars, truth, fields);
        let pct = |a: usize, b: usize| if b == 0 { 0.0 } else { 100.0 * a as f64 / b as f64 };
        println!();
        println!("  against the simulator's truth:");
        println!("    events (label yes)              {:>6}", s.events);
        println!("    ... became candidates           {:>6}  ({:.1} %)", s.events_candidates, pct(s.events_candidates, s.events));
        println!("    ... flagged yes (recall)        {:>6}  ({:.1} %)", s.events_flagged, pct(s.events_flagged, s.events));
        println!("    ... yes or maybe                {:>6}  ({:.1} %)", s.events_kept, pct(s.events_kept, s.events));
        println!("    ... flagged before their peak   {:>6}  ({:.1} % of events)", s.flagged_before_peak, pct(s.flagged_before_peak, s.events));
        match s.median_lead_days {
            Some(d) => println!("    median days before peak         {d:>6.1}"),
            None => println!("    median days before peak              -"),
        }
        println!("    maybe-labelled stars flagged yes {:>5} of {}", s.maybes_flagged, s.maybes);
        let false_total: usize = s.false_alerts.values().sum();
        println!("    false alerts (label no, yes)    {:>6}  (purity {:.1} %)", false_total, pct(s.flagged - false_total, s.flagged));
        for (class, n) in &s.false_alerts {
            println!("      {class:<28} {n:>4}");
        }
    }
}
