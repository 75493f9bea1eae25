//! `lensnet submit slurm|k8s`: batch-engine jobs for a sharded replay (see `lensnet::submit`).

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::Context;
use lensnet::config::Config;
use lensnet::replay::parse_step;
use lensnet::shards::{parse_seasons, resolve_fields, ReplayJob};
use lensnet::submit::{absolute, k8s_manifest, slurm_array_script, slurm_report_script, K8sOptions, SlurmOptions, TaskSpec};
use lensnet::app;
use lensnet_stages::score::find_model;

use crate::cli::{ShardSpecArgs, SubmitCommand};

/// The job, its replay id and the task's command, from the shard arguments.
async fn spec(cfg: &Config, config_file: Option<PathBuf>, a: &ShardSpecArgs, binary: String, model_as_seen: Option<String>) -> anyhow::Result<(TaskSpec, uuid::Uuid, PathBuf)> {
    let seasons = parse_seasons(&a.seasons).map_err(|e| anyhow::anyhow!(e)).context("--seasons")?;
    let step = parse_step(&a.step).map_err(|e| anyhow::anyhow!(e)).context("--step")?;
    let (_, photometry) = app::photometry(cfg).context("opening the object store")?;
    let fields = resolve_fields(&a.fields, &photometry, &seasons).await?;
    let found = find_model(a.model.as_deref().or(cfg.model.as_deref()))?;
    let model = std::fs::canonicalize(&found).unwrap_or_else(|_| absolute(&found));
    // The scorer's model_sha256 is the file's sha256, as here.
    let sha = lensnet_stages::preprocess::training::sha256_file(&model).with_context(|| format!("reading {}", model.display()))?;
    let job = ReplayJob { seasons, fields, step_days: step, kind: "replay" };
    let replay_id = job.replay_id(&sha);
    let dir = absolute(&a.out.clone().unwrap_or_else(|| cfg.data_dir.join("submit").join(replay_id.to_string())));
    let task = TaskSpec {
        binary,
        config: config_file.map(|c| absolute(&c).display().to_string()),
        model: model_as_seen.unwrap_or_else(|| model.display().to_string()),
        job,
    };
    Ok((task, replay_id, dir))
}

pub async fn run(cfg: Config, config_file: Option<PathBuf>, cmd: SubmitCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        SubmitCommand::Slurm(a) => {
            let binary = std::env::current_exe().context("finding the lensnet binary")?.display().to_string();
            let (task, replay_id, dir) = spec(&cfg, config_file, &a.spec, binary, None).await?;
            for i in &a.only {
                anyhow::ensure!(*i < task.job.shard_count(), "--only {i}: the job has shards 0..{}", task.job.shard_count() - 1);
            }
            let o = SlurmOptions {
                partition: a.partition.clone(),
                cpus_per_task: a.cpus_per_task,
                max_parallel: a.max_parallel,
                only: (!a.only.is_empty()).then(|| a.only.clone()),
                dir: dir.clone(),
                time_limit: a.time.clone(),
            };
            std::fs::create_dir_all(dir.join("logs")).with_context(|| format!("creating {}", dir.display()))?;
            let array = dir.join("replay.sbatch");
            let report = dir.join("report.sbatch");
            std::fs::write(&array, slurm_array_script(&task, replay_id, &o))?;
            std::fs::write(&report, slurm_report_script(&task, replay_id, &o))?;
            std::fs::write(dir.join("shards.tsv"), shard_table(&task.job))?;
            println!("replay {replay_id}: {} shard(s)", task.job.shard_count());
            println!("wrote {} (the job array), {} (the summary step), {}", array.display(), report.display(), dir.join("shards.tsv").display());
            if !a.now {
                println!("submit with: jid=$(sbatch --parsable {}) && sbatch --dependency=afterany:$jid {}", array.display(), report.display());
                return Ok(ExitCode::SUCCESS);
            }
            let jid = sbatch(&[array.display().to_string()])?;
            let rid = sbatch(&[format!("--dependency=afterany:{jid}"), report.display().to_string()])?;
            println!("submitted job array {jid} and summary step {rid}; logs in {}", dir.join("logs").display());
            println!("when done: lensnet replay-report --replay-id {replay_id}  (also in {})", dir.join("logs/report.log").display());
            Ok(ExitCode::SUCCESS)
        }
        SubmitCommand::K8s(a) => {
            let model_in_image = match &a.image_model {
                Some(m) => m.clone(),
                None => {
                    let m = find_model(a.spec.model.as_deref().or(cfg.model.as_deref()))?;
                    format!("/opt/lensnet/models/{}", m.file_name().and_then(|n| n.to_str()).unwrap_or("model.onnx"))
                }
            };
            let (task, replay_id, dir) = spec(&cfg, None, &a.spec, "/usr/local/bin/lensnet".into(), Some(model_in_image)).await?;
            if !cfg.store_url.starts_with("s3://") {
                eprintln!("warning: store.url is {}: pods need a shared store (s3://bucket/prefix, LENSNET__STORE__URL)", cfg.store_url);
            }
            let o = K8sOptions {
                image: a.image.clone(),
                namespace: a.namespace.clone(),
                parallelism: a.parallelism,
                database_secret: a.database_secret.clone(),
                s3_secret: Some(a.s3_secret.clone()),
                store_url: cfg.store_url.clone(),
                cpus: a.cpus,
                memory: a.memory.clone(),
                backoff_per_index: 2,
            };
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let path = dir.join("job.yaml");
            std::fs::write(&path, k8s_manifest(&task, replay_id, &o)?)?;
            std::fs::write(dir.join("shards.tsv"), shard_table(&task.job))?;
            println!("replay {replay_id}: {} shard(s)", task.job.shard_count());
            println!("wrote {}; apply with: kubectl apply -f {}", path.display(), path.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// index, season, field: one line per shard.
fn shard_table(job: &ReplayJob) -> String {
    let mut s = String::from("shard\tseason\tfield\n");
    for i in 0..job.shard_count() {
        let (season, field) = job.shard(i).expect("within the job");
        s.push_str(&format!("{i}\t{season}\t{field}\n"));
    }
    s
}

/// Runs `sbatch --parsable ARGS`; the job id.
fn sbatch(args: &[String]) -> anyhow::Result<String> {
    let out = Command::new("sbatch").arg("--parsable").args(args).output().context("running sbatch (is Slurm installed and SLURM_CONF set?)")?;
    anyhow::ensure!(out.status.success(), "sbatch {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.trim().split(';').next().unwrap_or("").to_string())
}
