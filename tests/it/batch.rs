//! Sharded reprocessing on batch engines: `lensnet submit k8s` writes an Indexed Job whose
//! completion indexes are the Slurm array's shards, and a four-shard replay of two simulated
//! seasons of two fields, submitted to a real one-node Slurm (munged, slurmctld and slurmd
//! started by `scripts/slurm-local`), ends with the same tables and the same summary as a local
//! sequential replay; a shard that never ran is listed with `replay-report` and resubmitted
//! alone; a shard run again, or twice at once, changes nothing.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use lensnet::shards::ReplayJob;
use lensnet_stages::simulate::{write_season, SimConfig};
use lensnet_stages::Field;

use crate::harness::TestDb;
use crate::orchestration::{event_rich, tables};
use crate::harness::root;


/// The environment of one lensnet "site": its database, store and data folder.
struct Site {
    url: Option<String>,
    data: PathBuf,
    store: PathBuf,
    slurm_conf: Option<PathBuf>,
}

impl Site {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_lensnet"));
        c.args(args)
            .current_dir(&self.data)
            .env_remove("LENSNET_CONFIG")
            .env("LENSNET_LOG", "warn")
            .env("LENSNET__PATHS__DATA_DIR", &self.data)
            .env("LENSNET__STORE__URL", format!("file://{}", self.store.display()));
        match &self.url {
            Some(u) => c.env("DATABASE_URL", u),
            None => c.env_remove("DATABASE_URL"),
        };
        if let Some(s) = &self.slurm_conf {
            c.env("SLURM_CONF", s);
        }
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("lensnet runs")
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(o.status.success(), "lensnet {args:?} failed:\n{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

fn flag_value<'a>(words: &'a [String], flag: &str) -> &'a str {
    let i = words.iter().position(|w| w == flag).unwrap_or_else(|| panic!("{flag} in {words:?}"));
    &words[i + 1]
}

fn job_of(words: &[String]) -> ReplayJob {
    ReplayJob {
        seasons: lensnet::shards::parse_seasons(&[flag_value(words, "--seasons").to_string()]).unwrap(),
        fields: flag_value(words, "--fields").split(',').map(|f| f.parse().unwrap()).collect(),
        step_days: lensnet::replay::parse_step(flag_value(words, "--step")).unwrap(),
        kind: "replay",
    }
}

#[test]
fn submit_k8s_writes_an_indexed_job_whose_indexes_are_the_slurm_shards() {
    let dir = tempfile::tempdir().unwrap();
    let site = Site { url: None, data: dir.path().to_path_buf(), store: dir.path().join("store"), slurm_conf: None };
    let spec = ["--seasons", "2016-2018", "--fields", "BLG02,BLG14,BLG41", "--step", "1d"];
    let k8s_dir = dir.path().join("k8s");
    let slurm_dir = dir.path().join("slurm");
    let mut args = vec!["submit", "k8s", "--image", "registry.example/lensnet:1.0", "--parallelism", "4", "--out", k8s_dir.to_str().unwrap()];
    args.extend(spec);
    let said = site.ok(&args);
    let mut args = vec!["submit", "slurm", "--out", slurm_dir.to_str().unwrap(), "--partition", "batch", "--cpus-per-task", "2"];
    args.extend(spec);
    let said_slurm = site.ok(&args);
    let id = said.split_whitespace().nth(1).unwrap().trim_end_matches(':').to_string();
    assert_eq!(said_slurm.split_whitespace().nth(1).unwrap().trim_end_matches(':'), id, "the same job has the same replay id on both engines");

    let text = std::fs::read_to_string(k8s_dir.join("job.yaml")).unwrap();
    let y: serde_yaml::Value = serde_yaml::from_str(&text).expect("valid YAML");
    assert_eq!(y["apiVersion"].as_str(), Some("batch/v1"));
    assert_eq!(y["kind"].as_str(), Some("Job"));
    let name = y["metadata"]["name"].as_str().unwrap();
    assert!(name.len() <= 63 && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'), "{name} is a DNS-1123 label");
    let spec_y = &y["spec"];
    assert_eq!(spec_y["completionMode"].as_str(), Some("Indexed"));
    assert_eq!(spec_y["completions"].as_u64(), Some(9));
    assert_eq!(spec_y["parallelism"].as_u64(), Some(4));
    let pod = &spec_y["template"]["spec"];
    assert_eq!(pod["restartPolicy"].as_str(), Some("Never"), "Indexed Jobs need Never or OnFailure");
    let c = &pod["containers"][0];
    assert_eq!(c["image"].as_str(), Some("registry.example/lensnet:1.0"));
    assert!(c["name"].as_str().is_some());
    let env = c["env"].as_sequence().unwrap();
    let env_named = |n: &str| env.iter().find(|e| e["name"].as_str() == Some(n)).unwrap_or_else(|| panic!("env {n}"));
    assert_eq!(env_named("JOB_COMPLETION_INDEX")["valueFrom"]["fieldRef"]["fieldPath"].as_str(), Some("metadata.annotations['batch.kubernetes.io/job-completion-index']"));
    assert_eq!(env_named("DATABASE_URL")["valueFrom"]["secretKeyRef"]["key"].as_str(), Some("DATABASE_URL"));
    assert!(env_named("LENSNET__STORE__URL")["value"].as_str().is_some());
    assert_eq!(c["envFrom"][0]["secretRef"]["name"].as_str(), Some("lensnet-s3"));
    let command: Vec<String> = c["command"].as_sequence().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    assert_eq!(flag_value(&command, "--shard-index"), "$(JOB_COMPLETION_INDEX)");

    // The same task command, the same index-to-shard mapping, as the Slurm array and shards.tsv.
    let script = std::fs::read_to_string(slurm_dir.join("replay.sbatch")).unwrap();
    assert!(script.contains("#SBATCH --array=0-8\n") && script.contains("#SBATCH --partition=batch") && script.contains("--cpus-per-task=2"));
    let exec: Vec<String> = script.lines().find(|l| l.starts_with("exec ")).unwrap().split_whitespace().map(String::from).collect();
    assert_eq!(flag_value(&exec, "--shard-index"), "\"${SLURM_ARRAY_TASK_ID}\"");
    let (k, s) = (job_of(&command), job_of(&exec));
    assert_eq!(k, s);
    let tsv = std::fs::read_to_string(k8s_dir.join("shards.tsv")).unwrap();
    for (i, line) in tsv.lines().skip(1).enumerate() {
        let cols: Vec<&str> = line.split('\t').collect();
        let (season, field) = s.shard(i).unwrap();
        assert_eq!(cols, vec![i.to_string(), season.to_string(), field.to_string()]);
        assert_eq!(k.shard(i), Some((season, field)));
    }
    assert_eq!(tsv.lines().count(), 10);
    assert_eq!(std::fs::read_to_string(slurm_dir.join("shards.tsv")).unwrap(), tsv);
}

/// The one-node Slurm of this test, stopped when dropped.
struct Slurm {
    dir: tempfile::TempDir,
}

impl Slurm {
    fn start() -> Option<Slurm> {
        let have = Command::new("sh").arg("-c").arg("command -v slurmctld && command -v slurmd && command -v munged").stdout(Stdio::null()).status().is_ok_and(|s| s.success());
        if !have {
            assert!(std::env::var_os("CI").is_none(), "CI needs slurm-wlm and munge (scripts/setup installs them)");
            eprintln!("batch: Slurm not installed; the Slurm test is skipped");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(root().join("scripts/slurm-local")).arg("start").arg(dir.path()).arg("2").output().unwrap();
        assert!(out.status.success(), "slurm-local start: {}", String::from_utf8_lossy(&out.stderr));
        Some(Slurm { dir })
    }

    fn conf(&self) -> PathBuf {
        self.dir.path().join("slurm.conf")
    }

    /// Waits until none of `jobs` is queued or running.
    fn wait(&self, jobs: &[&str], limit: Duration) {
        let started = Instant::now();
        loop {
            let out = Command::new("squeue").args(["-h", "-o", "%i", "-j", &jobs.join(",")]).env("SLURM_CONF", self.conf()).output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            if out.status.success() && text.trim().is_empty() {
                return;
            }
            assert!(started.elapsed() < limit, "Slurm jobs {jobs:?} still queued after {limit:?}: {text}");
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Slurm {
    fn drop(&mut self) {
        let _ = Command::new(root().join("scripts/slurm-local")).arg("stop").arg(self.dir.path()).output();
    }
}

/// Job ids in `submit slurm --now`'s output.
fn submitted(text: &str) -> (String, String) {
    let line = text.lines().find(|l| l.starts_with("submitted job array")).unwrap_or_else(|| panic!("{text}"));
    let w: Vec<&str> = line.split_whitespace().collect();
    (w[3].to_string(), w[7].trim_end_matches(';').to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_four_shard_slurm_replay_ends_with_the_tables_of_a_local_sequential_one() {
    let Some(slurm) = Slurm::start() else { return };
    let local_db = TestDb::new().await;
    let slurm_db = TestDb::new().await;
    let (Some(local_url), Some(slurm_url)) = (local_db.url(), slurm_db.url()) else {
        eprintln!("batch: needs the harness's local cluster (DATABASE_URL is set); skipped");
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let inbox = work.path().join("inbox");
    for (season, seed) in [(2024, 31), (2025, 32)] {
        let cfg = SimConfig { season, fields: vec![Field(2), Field(14)], stars: 24, seed, mix: event_rich(), ..Default::default() };
        write_season(&cfg, &inbox.join(season.to_string())).unwrap();
    }
    let site = |name: &str, url: String, conf: Option<PathBuf>| {
        let data = work.path().join(name);
        std::fs::create_dir_all(&data).unwrap();
        Site { url: Some(url), store: data.join("store"), data, slurm_conf: conf }
    };
    let local = site("local", local_url, None);
    let batch = site("slurm", slurm_url, Some(slurm.conf()));
    for s in [&local, &batch] {
        s.ok(&["ingest", "--input", inbox.to_str().unwrap()]);
    }
    let spec = ["--seasons", "2024-2025", "--fields", "BLG02,BLG14", "--step", "6d"];

    // Local and sequential.
    let mut args = vec!["replay"];
    args.extend(spec);
    let local_summary = local.ok(&args);
    assert!(local_summary.contains("shards: 4 in all, 4 succeeded"), "{local_summary}");

    // Slurm: three shards first (as if one had been lost), then the report names the missing
    // one, then it alone is resubmitted.
    let out_dir = work.path().join("submit");
    let mut args = vec!["submit", "slurm", "--now", "--max-parallel", "2", "--only", "0,1,3", "--out", out_dir.to_str().unwrap()];
    args.extend(spec);
    let said = batch.ok(&args);
    let replay_id = said.split_whitespace().nth(1).unwrap().trim_end_matches(':').to_string();
    let (array, report) = submitted(&said);
    slurm.wait(&[&array, &report], Duration::from_secs(600));
    let partial = batch.run(&["replay-report", "--replay-id", &replay_id]);
    let partial_text = String::from_utf8_lossy(&partial.stdout).into_owned();
    assert_eq!(partial.status.code(), Some(1), "a job with a missing shard is not complete:\n{partial_text}");
    assert!(partial_text.contains("shard   2  2025 BLG02  missing"), "{partial_text}");
    assert!(partial_text.contains("sbatch --array=2 "), "{partial_text}");
    let logged = std::fs::read_to_string(out_dir.join("logs/report.log")).unwrap();
    assert!(logged.contains("missing"), "the summary step ran after the array: {logged}");
    for i in [0, 1, 3] {
        let log = std::fs::read_to_string(out_dir.join(format!("logs/shard-{i}.log"))).unwrap();
        assert!(log.contains(&format!("lensnet shard {i} on ")) && log.contains("succeeded"), "shard {i}'s log: {log}");
    }
    let mut args = vec!["submit", "slurm", "--now", "--only", "2", "--out", out_dir.to_str().unwrap()];
    args.extend(spec);
    let (array, report) = submitted(&batch.ok(&args));
    slurm.wait(&[&array, &report], Duration::from_secs(600));
    let batch_summary = batch.ok(&["replay-report", "--replay-id", &replay_id]);
    assert_eq!(batch_summary, local_summary, "the gathered summary is the local replay's");
    assert_eq!(tables(&slurm_db.pool).await, tables(&local_db.pool).await, "the same candidates, fits and verdicts");
    let hosts: Vec<(String, Option<String>)> = sqlx::query_as("SELECT host, log_path FROM replay_shards ORDER BY shard_index").fetch_all(&slurm_db.pool).await.unwrap();
    assert_eq!(hosts.len(), 4);
    assert!(hosts.iter().all(|(h, l)| !h.is_empty() && l.as_deref().is_some_and(|l| l.ends_with(".log"))));

    // A shard run again, and the same shard twice at once (two hosts), change nothing.
    let before = tables(&slurm_db.pool).await;
    let mut one = vec!["replay"];
    one.extend(spec);
    one.extend(["--shard-index", "1"]);
    let a = batch.cmd(&one).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let b = batch.cmd(&one).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    for p in [a, b] {
        let o = p.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(String::from_utf8_lossy(&o.stdout).contains("2024 BLG14 succeeded"));
    }
    assert_eq!(tables(&slurm_db.pool).await, before);
    let attempts: i32 = sqlx::query_scalar("SELECT attempts FROM replay_shards WHERE shard_index = 1").fetch_one(&slurm_db.pool).await.unwrap();
    assert_eq!(attempts, 3, "each run of the shard is recorded");
    assert_eq!(batch.ok(&["replay-report", "--replay-id", &replay_id]), local_summary);
    // A shard index outside the job is a clear error.
    let mut bad = vec!["replay"];
    bad.extend(spec);
    bad.extend(["--shard-index", "4"]);
    let o = batch.run(&bad);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("shard 4 does not exist: the job has 4 shard(s)"));
}
