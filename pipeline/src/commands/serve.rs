//! `lensnet serve`: the cron scheduler. Every configured field runs on `schedule.cron` (or its
//! own `schedule.field_cron` entry); runs of
//! different fields go in parallel up to `schedule.max_parallel`, and never two of one field
//! (the PostgreSQL advisory lock in `FieldRunner::run`, so two `serve` processes on two machines
//! are safe too). A tick missed while no scheduler ran (the newest `serve` run of a field is
//! older than the last scheduled tick) runs once at start-up. SIGTERM or Ctrl-C stops the
//! scheduling; runs in progress get `SHUTDOWN_GRACE` to finish, then are abandoned (their run
//! rows say so, and the next run of the same field resumes cleanly because every stage is
//! idempotent).

use std::collections::{BTreeMap, HashSet};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use lensnet::config::Config;
use lensnet::fieldrun::{now_hjd, FieldRunError, FieldRunner, Plan};
use lensnet::publish::{finish_run, RetryPolicy, Status};
use lensnet::{app, db};
use lensnet_stages::ingest::season_of;
use lensnet_stages::Field;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::cli::ServeArgs;

/// How long runs in progress may take to finish after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(60);

pub async fn run(cfg: Config, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let pool = db::open(&cfg).await?;
    let scorer = Arc::new(app::scorer(&cfg, None).context("loading the model")?);
    let runner = Arc::new(app::field_runner(&cfg, pool.clone(), scorer).context("setting up the field runner")?);
    let fields = cfg.schedule_fields.clone();
    if fields.is_empty() {
        anyhow::bail!("schedule.fields is empty: nothing to serve");
    }
    let limit = Arc::new(Semaphore::new(cfg.max_parallel.max(1)));
    let running: Arc<Mutex<HashSet<Field>>> = Arc::new(Mutex::new(HashSet::new()));
    let mut tasks: JoinSet<()> = JoinSet::new();
    info!(fields = ?fields.iter().map(|f| f.to_string()).collect::<Vec<_>>(), cron = %cfg.raw.schedule.cron,
          max_parallel = cfg.max_parallel, once = args.once, "serve starting");

    if args.once {
        for &f in &fields {
            spawn_run(&mut tasks, runner.clone(), f, limit.clone(), running.clone());
        }
        while tasks.join_next().await.is_some() {}
        info!("serve --once finished");
        return Ok(ExitCode::SUCCESS);
    }

    // Missed ticks: a field whose last scheduled tick came after its newest serve run.
    let now = Utc::now();
    for &f in &fields {
        let last: Option<DateTime<Utc>> =
            sqlx::query_scalar("SELECT max(started_at) FROM runs WHERE kind = 'serve' AND field = $1").bind(f.to_string()).fetch_one(&pool).await?;
        if let Some(last) = last {
            if cfg.schedule_for(f).after(&last).next().is_some_and(|tick| tick <= now) {
                info!(field = %f, last_run = %last, "a scheduled tick was missed; running once now");
                spawn_run(&mut tasks, runner.clone(), f, limit.clone(), running.clone());
            }
        }
    }

    let mut next: BTreeMap<Field, DateTime<Utc>> = BTreeMap::new();
    for &f in &fields {
        if let Some(t) = cfg.schedule_for(f).after(&now).next() {
            next.insert(f, t);
        }
    }
    let shutdown = super::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let Some(due) = next.values().min().copied() else {
            warn!("the schedule has no future ticks; stopping");
            break;
        };
        let wait = (due - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        tokio::select! {
            _ = &mut shutdown => {
                info!(in_progress = tasks.len(), "shutdown requested; no new runs");
                break;
            }
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = done { error!(error = %e, "a run task died"); }
            }
            _ = tokio::time::sleep(wait) => {
                let now = Utc::now();
                for (&f, t) in next.iter_mut() {
                    if *t <= now {
                        spawn_run(&mut tasks, runner.clone(), f, limit.clone(), running.clone());
                        *t = cfg.schedule_for(f).after(&now).next().unwrap_or(*t + chrono::Duration::days(365 * 100));
                        info!(field = %f, next = %t, "next run scheduled");
                    }
                }
            }
        }
    }

    // Let runs in progress finish; abandon them after the grace period.
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        warn!(grace_s = SHUTDOWN_GRACE.as_secs(), "runs still in progress after the grace period; abandoning them");
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        let abandoned = sqlx::query_scalar::<_, uuid::Uuid>("SELECT run_id FROM runs WHERE kind = 'serve' AND status = 'running'")
            .fetch_all(&pool)
            .await
            .unwrap_or_default();
        for id in abandoned {
            let _ = finish_run(&pool, id, Status::Abandoned, Some("abandoned at shutdown"), &RetryPolicy::default()).await;
        }
    }
    info!("serve stopped");
    Ok(ExitCode::SUCCESS)
}

/// Start one run of `field` unless one is already in progress in this process.
fn spawn_run(tasks: &mut JoinSet<()>, runner: Arc<FieldRunner>, field: Field, limit: Arc<Semaphore>, running: Arc<Mutex<HashSet<Field>>>) {
    if !running.lock().expect("running set").insert(field) {
        info!(field = %field, "previous run of this field still in progress; tick skipped");
        return;
    }
    tasks.spawn(async move {
        let _permit = limit.acquire_owned().await;
        let as_of = now_hjd();
        let season = season_of(as_of);
        info!(field = %field, as_of, "scheduled run starting");
        match runner.run("serve", Plan::Live, field, season, as_of, None, &runner.live_cache()).await {
            Ok(run) if run.outcome.succeeded() => {
                info!(field = %field, run_id = %run.run_id, summary = %super::run::summary_line(&run), "scheduled run succeeded")
            }
            Ok(run) => warn!(field = %field, run_id = %run.run_id, error = run.outcome.first_error().unwrap_or_default(), "scheduled run failed"),
            Err(FieldRunError::Busy(_)) => info!(field = %field, "another process is running this field; tick skipped"),
            Err(e) => error!(field = %field, error = %e, "scheduled run could not run"),
        }
        running.lock().expect("running set").remove(&field);
    });
}
