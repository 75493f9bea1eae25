//! Batch-engine files for a sharded replay (see `shards`): a Slurm job array (one task per
//! shard, a log per task, a summary step that runs after all of them) and a Kubernetes Indexed
//! Job (one completion index per shard). Both run the same task command,
//! `lensnet replay --seasons S --fields F --step D --model M --shard-index I`, with `I` from
//! `SLURM_ARRAY_TASK_ID` or `JOB_COMPLETION_INDEX`; the scheduling is the engine's.

use std::path::{Path, PathBuf};

use serde_json::json;

use crate::shards::ReplayJob;

/// What every task runs, and where.
#[derive(Debug, Clone)]
pub struct TaskSpec {
    /// The lensnet binary as the batch nodes see it.
    pub binary: String,
    /// `--config FILE` for every task, when given.
    pub config: Option<String>,
    /// The model file as the batch nodes see it (its sha256 is part of the replay id).
    pub model: String,
    pub job: ReplayJob,
}

impl TaskSpec {
    /// The task's arguments after the binary, with `index` standing for the shard index.
    pub fn args(&self, index: &str) -> Vec<String> {
        let mut a = Vec::new();
        if let Some(c) = &self.config {
            a.extend(["--config".to_string(), c.clone()]);
        }
        a.extend([
            "replay".into(),
            "--seasons".into(),
            self.job.seasons.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(","),
            "--fields".into(),
            self.job.fields.iter().map(|f| f.to_string()).collect::<Vec<_>>().join(","),
            "--step".into(),
            format!("{}d", self.job.step_days),
            "--model".into(),
            self.model.clone(),
            "--shard-index".into(),
            index.to_string(),
        ]);
        a
    }
}

/// Quotes a word for bash.
pub fn sh_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./,=:@%+".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// Slurm settings of a submission.
#[derive(Debug, Clone, Default)]
pub struct SlurmOptions {
    pub partition: Option<String>,
    pub cpus_per_task: u32,
    /// At most this many tasks at once (`--array=..%K`); None = as many as Slurm gives.
    pub max_parallel: Option<u32>,
    /// Only these shard indexes (a resubmission of failed shards); None = all.
    pub only: Option<Vec<usize>>,
    /// Folder of the scripts and logs, as the batch nodes see it.
    pub dir: PathBuf,
    pub time_limit: Option<String>,
}

/// `--array` value: `0-7`, `0-7%2`, `3,5`.
pub fn array_spec(count: usize, only: Option<&[usize]>, max_parallel: Option<u32>) -> String {
    let list = match only {
        Some(idx) => idx.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(","),
        None => format!("0-{}", count.saturating_sub(1)),
    };
    match max_parallel {
        Some(k) => format!("{list}%{k}"),
        None => list,
    }
}

/// The job array's script.
pub fn slurm_array_script(task: &TaskSpec, replay_id: uuid::Uuid, o: &SlurmOptions) -> String {
    let short = &replay_id.to_string()[..8];
    let logs = o.dir.join("logs");
    let mut s = String::from("#!/bin/bash\n");
    s.push_str(&format!("#SBATCH --job-name=lensnet-replay-{short}\n"));
    s.push_str(&format!("#SBATCH --array={}\n", array_spec(task.job.shard_count(), o.only.as_deref(), o.max_parallel)));
    s.push_str(&format!("#SBATCH --cpus-per-task={}\n", o.cpus_per_task.max(1)));
    s.push_str("#SBATCH --ntasks=1\n");
    if let Some(p) = &o.partition {
        s.push_str(&format!("#SBATCH --partition={p}\n"));
    }
    if let Some(t) = &o.time_limit {
        s.push_str(&format!("#SBATCH --time={t}\n"));
    }
    s.push_str(&format!("#SBATCH --output={}/shard-%a.log\n", logs.display()));
    s.push_str("#SBATCH --open-mode=append\n");
    s.push_str(&format!(
        "# lensnet replay {replay_id}: {} shard(s) = seasons {:?} x fields {}.\n\
         # Shard i is (season[i / fields], field[i % fields]); `lensnet replay-report --replay-id {replay_id}`\n\
         # gathers them. The environment of `sbatch` (DATABASE_URL, LENSNET__*, AWS_*) reaches every task\n\
         # (Slurm's default --export=ALL); resubmit failed shards with `sbatch --array=3,5 <this file>`.\n",
        task.job.shard_count(),
        task.job.seasons,
        task.job.fields.iter().map(|f| f.to_string()).collect::<Vec<_>>().join(",")
    ));
    s.push_str("set -euo pipefail\n");
    s.push_str("echo \"lensnet shard ${SLURM_ARRAY_TASK_ID} on $(hostname) (job ${SLURM_JOB_ID:-?})\"\n");
    let mut cmd = vec![sh_quote(&task.binary)];
    cmd.extend(task.args("\"${SLURM_ARRAY_TASK_ID}\"").into_iter().map(|a| if a.starts_with("\"$") { a } else { sh_quote(&a) }));
    cmd.push("--log".into());
    cmd.push(format!("{}/shard-\"${{SLURM_ARRAY_TASK_ID}}\".log", sh_quote(&logs.display().to_string())));
    s.push_str(&format!("exec {}\n", cmd.join(" ")));
    s
}

/// The summary step, run after every task of the array (`--dependency=afterany:JOB`).
pub fn slurm_report_script(task: &TaskSpec, replay_id: uuid::Uuid, o: &SlurmOptions) -> String {
    let short = &replay_id.to_string()[..8];
    let mut s = String::from("#!/bin/bash\n");
    s.push_str(&format!("#SBATCH --job-name=lensnet-report-{short}\n"));
    s.push_str("#SBATCH --ntasks=1\n#SBATCH --cpus-per-task=1\n");
    if let Some(p) = &o.partition {
        s.push_str(&format!("#SBATCH --partition={p}\n"));
    }
    s.push_str(&format!("#SBATCH --output={}/report.log\n", o.dir.join("logs").display()));
    s.push_str("set -euo pipefail\n");
    let mut cmd = vec![sh_quote(&task.binary)];
    if let Some(c) = &task.config {
        cmd.extend(["--config".into(), sh_quote(c)]);
    }
    cmd.extend(["replay-report".into(), "--replay-id".into(), replay_id.to_string()]);
    s.push_str(&format!("exec {}\n", cmd.join(" ")));
    s
}

/// Kubernetes settings of a submission.
#[derive(Debug, Clone)]
pub struct K8sOptions {
    pub image: String,
    pub namespace: Option<String>,
    /// Pods at once.
    pub parallelism: u32,
    /// Secret with key DATABASE_URL.
    pub database_secret: String,
    /// Secret whose keys become environment variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    /// AWS_ENDPOINT, AWS_REGION, ...).
    pub s3_secret: Option<String>,
    /// The store every pod uses (`s3://bucket/prefix`).
    pub store_url: String,
    pub cpus: u32,
    pub memory: String,
    /// Retries of one index before it counts as failed.
    pub backoff_per_index: u32,
}

/// The Indexed Job (YAML).
pub fn k8s_manifest(task: &TaskSpec, replay_id: uuid::Uuid, o: &K8sOptions) -> Result<String, serde_yaml::Error> {
    let short = &replay_id.to_string()[..8];
    let labels = json!({ "app.kubernetes.io/name": "lensnet", "app.kubernetes.io/component": "replay", "lensnet.io/replay-id": replay_id.to_string() });
    let mut command = vec![task.binary.clone()];
    command.extend(task.args("$(JOB_COMPLETION_INDEX)"));
    let mut env = vec![
        json!({ "name": "JOB_COMPLETION_INDEX", "valueFrom": { "fieldRef": { "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']" } } }),
        json!({ "name": "DATABASE_URL", "valueFrom": { "secretKeyRef": { "name": o.database_secret, "key": "DATABASE_URL" } } }),
        json!({ "name": "LENSNET__STORE__URL", "value": o.store_url }),
    ];
    env.push(json!({ "name": "LENSNET_LOG", "value": "info" }));
    let mut container = json!({
        "name": "shard",
        "image": o.image,
        "command": command,
        "env": env,
        "resources": {
            "requests": { "cpu": o.cpus.to_string(), "memory": o.memory },
            "limits": { "memory": o.memory }
        }
    });
    if let Some(sec) = &o.s3_secret {
        container["envFrom"] = json!([{ "secretRef": { "name": sec } }]);
    }
    let n = task.job.shard_count();
    let mut metadata = json!({ "name": format!("lensnet-replay-{short}"), "labels": labels });
    if let Some(ns) = &o.namespace {
        metadata["namespace"] = json!(ns);
    }
    let manifest = json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": {
            "completionMode": "Indexed",
            "completions": n,
            "parallelism": o.parallelism.max(1),
            "backoffLimitPerIndex": o.backoff_per_index,
            "maxFailedIndexes": n,
            "template": {
                "metadata": { "labels": labels },
                "spec": { "restartPolicy": "Never", "containers": [container] }
            }
        }
    });
    let mut text = format!(
        "# lensnet replay {replay_id}: {n} shard(s) = seasons {:?} x fields {}; completion index i is shard i\n\
         # (season[i / fields], field[i % fields]), as in the Slurm array. Apply with `kubectl apply -f`, wait with\n\
         # `kubectl wait --for=condition=complete job/lensnet-replay-{short}`, then `lensnet replay-report --replay-id {replay_id}`.\n",
        task.job.seasons,
        task.job.fields.iter().map(|f| f.to_string()).collect::<Vec<_>>().join(",")
    );
    text.push_str(&serde_yaml::to_string(&manifest)?);
    Ok(text)
}

/// Absolute form of a path (for scripts that run elsewhere).
pub fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().map(|c| c.join(p)).unwrap_or_else(|_| p.to_path_buf())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lensnet_stages::Field;

    #[test]
    fn words_are_quoted_for_bash() {
        assert_eq!(sh_quote("/opt/lensnet"), "/opt/lensnet");
        assert_eq!(sh_quote("a b'c"), "'a b'\\''c'");
        assert_eq!(array_spec(8, None, Some(2)), "0-7%2");
        assert_eq!(array_spec(8, Some(&[3, 5]), None), "3,5");
    }

    #[test]
    fn the_array_script_runs_one_shard_per_task() {
        let task = TaskSpec {
            binary: "/opt/lensnet/bin/lensnet".into(),
            config: None,
            model: "/opt/models/m.onnx".into(),
            job: ReplayJob { seasons: vec![2024, 2025], fields: vec![Field(2), Field(14)], step_days: 1.0, kind: "replay" },
        };
        let id = uuid::Uuid::nil();
        let s = slurm_array_script(&task, id, &SlurmOptions { dir: "/shared/run".into(), cpus_per_task: 2, max_parallel: Some(2), ..Default::default() });
        assert!(s.contains("#SBATCH --array=0-3%2\n") && s.contains("#SBATCH --output=/shared/run/logs/shard-%a.log"));
        assert!(s.contains("exec /opt/lensnet/bin/lensnet replay --seasons 2024,2025 --fields BLG02,BLG14 --step 1d --model /opt/models/m.onnx --shard-index \"${SLURM_ARRAY_TASK_ID}\""), "{s}");
        let r = slurm_report_script(&task, id, &SlurmOptions { dir: "/shared/run".into(), ..Default::default() });
        assert!(r.contains("replay-report --replay-id 00000000-0000-0000-0000-000000000000"));
    }
}
