//! Sharded reprocessing: a replay job over many seasons and fields, one shard per (season,
//! field), each an idempotent task that any host can run (`lensnet replay --seasons ..
//! --fields .. --shard-index I`, the task of Slurm job arrays and Kubernetes Indexed Jobs).
//!
//! - Shard `i` of seasons `S` and fields `F` is `(S[i / |F|], F[i % |F|])`: season-major, in the
//!   order given ([`ReplayJob::shard`]); Slurm's `SLURM_ARRAY_TASK_ID` and Kubernetes'
//!   `JOB_COMPLETION_INDEX` are that `i`.
//! - The replay id covers (kind, seasons, step, fields, model): every shard of a job writes under
//!   the same id, and one season's job has the id a one-season `lensnet replay` always had.
//! - A shard holds `pg_advisory_lock(hash("lensnet replay shard" id i))` while it runs, on a
//!   connection of its own: a second copy of the same shard (a resubmission, another host) waits
//!   for the first and then finds every step done. Each shard records itself in
//!   `replay_shards` (host, pid, log, steps, status, error), which `replay-report` reads.
//! - A (season, field) without photometry is `skipped`, not failed: `--fields all` over ten
//!   seasons need not know which fields were observed when.

use std::collections::{BTreeMap, HashMap};

use lensnet_stages::ingest::PhotometryStore;
use lensnet_stages::Field;
use serde::Serialize;
use sqlx::{PgPool, Row};
use tracing::{info, warn};
use uuid::Uuid;

use crate::fieldrun::{FieldRunError, FieldRunner};
use crate::replay::{replay_field, star_histories, FieldReplay, ReplayResult};

/// What to reprocess.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayJob {
    pub seasons: Vec<i32>,
    pub fields: Vec<Field>,
    pub step_days: f64,
    pub kind: &'static str,
}

impl ReplayJob {
    pub fn shard_count(&self) -> usize {
        self.seasons.len() * self.fields.len()
    }

    /// Shard `i`: (season, field).
    pub fn shard(&self, i: usize) -> Option<(i32, Field)> {
        let nf = self.fields.len();
        (nf > 0 && i < self.shard_count()).then(|| (self.seasons[i / nf], self.fields[i % nf]))
    }

    /// The job's replay id (see the module doc).
    pub fn replay_id(&self, model_sha256: &str) -> Uuid {
        let mut fields: Vec<String> = self.fields.iter().map(|f| f.to_string()).collect();
        fields.sort();
        let seasons: Vec<String> = self.seasons.iter().map(|s| s.to_string()).collect();
        crate::fieldrun::uuid_of(&format!("replay|{}|{}|{:.6}|{}|{}", self.kind, seasons.join(","), self.step_days, fields.join(","), model_sha256))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("{0}")]
    Spec(String),
    #[error("shard {index} does not exist: the job has {count} shard(s) ({seasons} season(s) x {fields} field(s))")]
    NoShard { index: usize, count: usize, seasons: usize, fields: usize },
    #[error("replay {0} is not in this database (no shard of it ever started)")]
    NoJob(Uuid),
    #[error("replay {id} exists with other parameters ({what}): a job's shards must be given the same seasons, fields and step")]
    Mismatch { id: Uuid, what: String },
    #[error(transparent)]
    Run(#[from] FieldRunError),
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("object store: {0}")]
    Store(String),
}

/// Seasons as a list of years and ranges: `2016-2025`, `2019,2021`, `2016-2018,2024`.
pub fn parse_seasons(items: &[String]) -> Result<Vec<i32>, String> {
    let mut out = Vec::new();
    for item in items.iter().flat_map(|s| s.split(',')).map(str::trim).filter(|s| !s.is_empty()) {
        let year = |y: &str| -> Result<i32, String> {
            let v: i32 = y.trim().parse().map_err(|_| format!("season `{y}` is not a year (e.g. 2016-2025 or 2019,2021)"))?;
            if !(1990..=2100).contains(&v) {
                return Err(format!("season {v} is not between 1990 and 2100"));
            }
            Ok(v)
        };
        match item.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (year(a)?, year(b)?);
                if a > b {
                    return Err(format!("season range `{item}` runs backwards"));
                }
                out.extend(a..=b);
            }
            None => out.push(year(item)?),
        }
    }
    if out.is_empty() {
        return Err("no seasons given (--seasons 2016-2025)".into());
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|s| seen.insert(*s));
    Ok(out)
}

/// Fields by name, or `all`: every field with photometry in any of `seasons` (read from the
/// store once, at the time of the call: a submitted job carries the explicit list).
pub async fn resolve_fields(items: &[String], photometry: &PhotometryStore, seasons: &[i32]) -> Result<Vec<Field>, ShardError> {
    let names: Vec<&str> = items.iter().flat_map(|s| s.split(',')).map(str::trim).filter(|s| !s.is_empty()).collect();
    if names.is_empty() {
        return Err(ShardError::Spec("no fields given (--fields BLG01,BLG02 or --fields all)".into()));
    }
    if names.iter().any(|n| n.eq_ignore_ascii_case("all")) {
        let mut fields: Vec<Field> =
            photometry.partitions().await.map_err(|e| ShardError::Store(e.to_string()))?.into_iter().filter(|k| seasons.contains(&k.season)).map(|k| k.field).collect();
        fields.sort();
        fields.dedup();
        if fields.is_empty() {
            return Err(ShardError::Spec(format!("--fields all: the store holds no photometry of seasons {seasons:?}")));
        }
        return Ok(fields);
    }
    let mut out = Vec::new();
    for n in names {
        let f: Field = n.parse().map_err(ShardError::Spec)?;
        if !out.contains(&f) {
            out.push(f);
        }
    }
    Ok(out)
}

/// Records the job (first shard to start wins; later ones check that they agree).
pub async fn register(pool: &PgPool, job: &ReplayJob, replay_id: Uuid, model: &str) -> Result<(), ShardError> {
    let fields: Vec<String> = job.fields.iter().map(|f| f.to_string()).collect();
    sqlx::query(
        "INSERT INTO replay_jobs (replay_id, kind, seasons, fields, step_days, model_sha256, shards) VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (replay_id) DO NOTHING",
    )
    .bind(replay_id)
    .bind(job.kind)
    .bind(&job.seasons)
    .bind(&fields)
    .bind(job.step_days)
    .bind(model)
    .bind(job.shard_count() as i32)
    .execute(pool)
    .await?;
    let (seasons, stored_fields): (Vec<i32>, Vec<String>) = sqlx::query_as("SELECT seasons, fields FROM replay_jobs WHERE replay_id = $1").bind(replay_id).fetch_one(pool).await?;
    if seasons != job.seasons || stored_fields != fields {
        return Err(ShardError::Mismatch { id: replay_id, what: format!("stored seasons {seasons:?} fields {stored_fields:?}, given {:?} {fields:?}", job.seasons) });
    }
    Ok(())
}

/// What one shard did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShardOutcome {
    pub index: usize,
    pub season: i32,
    pub field: String,
    /// `succeeded`, `failed` or `skipped`.
    pub status: String,
    pub steps: usize,
    pub failed_steps: usize,
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").or_else(|_| std::fs::read_to_string("/etc/hostname")).map(|s| s.trim().to_string()).unwrap_or_default()
}

/// Key of a shard's advisory lock.
pub fn shard_lock_key(replay_id: Uuid, index: usize) -> i64 {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(format!("lensnet replay shard {replay_id} {index}").as_bytes());
    i64::from_be_bytes(h[..8].try_into().expect("8 bytes"))
}

/// Runs shard `index` of `job` (see the module doc). `log_path` is recorded for
/// `replay-report` (a batch system's log of this task).
pub async fn run_shard(
    runner: &FieldRunner,
    job: &ReplayJob,
    index: usize,
    log_path: Option<&str>,
    progress: &(dyn Fn(Field, usize, usize) + Sync),
) -> Result<ShardOutcome, ShardError> {
    let Some((season, field)) = job.shard(index) else {
        return Err(ShardError::NoShard { index, count: job.shard_count(), seasons: job.seasons.len(), fields: job.fields.len() });
    };
    let model = runner.model_sha256().to_string();
    let replay_id = job.replay_id(&model);
    register(&runner.pool, job, replay_id, &model).await?;
    // The shard's lock, in a session of its own: a killed task's session closes and frees it.
    let mut lock = runner.pool.acquire().await?.detach();
    let key = shard_lock_key(replay_id, index);
    let free: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(key).fetch_one(&mut lock).await?;
    if !free {
        info!(index, season, %field, "another task runs this shard; waiting for it");
        sqlx::query("SELECT pg_advisory_lock($1)").bind(key).execute(&mut lock).await?;
    }
    sqlx::query(
        "INSERT INTO replay_shards (replay_id, shard_index, season, field, status, host, pid, log_path) VALUES ($1, $2, $3, $4, 'running', $5, $6, $7) \
         ON CONFLICT (replay_id, shard_index) DO UPDATE SET status = 'running', attempts = replay_shards.attempts + 1, host = EXCLUDED.host, \
             pid = EXCLUDED.pid, log_path = EXCLUDED.log_path, started_at = now(), finished_at = NULL, error = NULL",
    )
    .bind(replay_id)
    .bind(index as i32)
    .bind(season)
    .bind(field.to_string())
    .bind(host())
    .bind(std::process::id() as i32)
    .bind(log_path)
    .execute(&runner.pool)
    .await?;
    let result = replay_field(runner, job.kind, season, field, job.step_days, replay_id, progress).await;
    let (status, steps, failed, error) = match &result {
        Ok(Some((f, _))) if f.failed_steps == 0 => ("succeeded", f.steps, 0, None),
        Ok(Some((f, _))) => ("failed", f.steps, f.failed_steps, Some(format!("{} of {} step(s) failed", f.failed_steps, f.steps))),
        Ok(None) => ("skipped", 0, 0, Some(format!("no photometry of {field} in season {season}"))),
        Err(e) => ("failed", 0, 0, Some(e.to_string())),
    };
    sqlx::query("UPDATE replay_shards SET status = $3, steps = $4, failed_steps = $5, error = $6, finished_at = now() WHERE replay_id = $1 AND shard_index = $2")
        .bind(replay_id)
        .bind(index as i32)
        .bind(status)
        .bind(steps as i32)
        .bind(failed as i32)
        .bind(&error)
        .execute(&runner.pool)
        .await?;
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)").bind(key).execute(&mut lock).await;
    let _ = sqlx::Connection::close(lock).await;
    match result {
        Err(e) => {
            warn!(index, season, %field, error = %e, "shard failed");
            Err(e.into())
        }
        Ok(_) => {
            info!(index, season, %field, status, steps, "shard finished");
            Ok(ShardOutcome { index, season, field: field.to_string(), status: status.into(), steps, failed_steps: failed })
        }
    }
}

/// One shard as recorded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShardRow {
    pub index: usize,
    pub season: i32,
    pub field: String,
    /// `running`, `succeeded`, `failed`, `skipped`, or `missing` (never started).
    pub status: String,
    pub attempts: i32,
    pub host: String,
    pub log_path: Option<String>,
    pub error: Option<String>,
}

/// A replay job gathered from the database: what every shard wrote, as one summary.
#[derive(Debug, Clone)]
pub struct JobReport {
    pub job: ReplayJob,
    pub shards: Vec<ShardRow>,
    pub result: ReplayResult,
}

impl JobReport {
    /// Shards that did not finish well: failed, missing (never started) or still running.
    pub fn unfinished(&self) -> Vec<&ShardRow> {
        self.shards.iter().filter(|s| !matches!(s.status.as_str(), "succeeded" | "skipped")).collect()
    }
}

/// The report of replay `replay_id`: the job, its shards, and the summary a local replay prints
/// (per (season, field): steps, range, stars searched, candidates, failed steps; per star: first
/// candidate and verdicts), computed from the runs, attempts and verdicts the shards wrote.
pub async fn report(pool: &PgPool, replay_id: Uuid) -> Result<JobReport, ShardError> {
    let Some(j) = sqlx::query("SELECT kind, seasons, fields, step_days, model_sha256 FROM replay_jobs WHERE replay_id = $1").bind(replay_id).fetch_optional(pool).await? else {
        return Err(ShardError::NoJob(replay_id));
    };
    let kind: String = j.get("kind");
    let job = ReplayJob {
        seasons: j.get("seasons"),
        fields: j.get::<Vec<String>, _>("fields").iter().map(|f| f.parse::<Field>().map_err(ShardError::Spec)).collect::<Result<_, _>>()?,
        step_days: j.get("step_days"),
        kind: if kind == "demo" { "demo" } else { "replay" },
    };
    let model: String = j.get("model_sha256");
    let rows = sqlx::query("SELECT shard_index, season, field, status, attempts, host, log_path, error FROM replay_shards WHERE replay_id = $1 ORDER BY shard_index")
        .bind(replay_id)
        .fetch_all(pool)
        .await?;
    let mut by_index: BTreeMap<usize, ShardRow> = BTreeMap::new();
    for r in rows {
        let index = r.get::<i32, _>("shard_index") as usize;
        by_index.insert(
            index,
            ShardRow {
                index,
                season: r.get("season"),
                field: r.get("field"),
                status: r.get("status"),
                attempts: r.get("attempts"),
                host: r.get("host"),
                log_path: r.get("log_path"),
                error: r.get("error"),
            },
        );
    }
    let shards: Vec<ShardRow> = (0..job.shard_count())
        .map(|i| {
            by_index.remove(&i).unwrap_or_else(|| {
                let (season, field) = job.shard(i).expect("index within the job");
                ShardRow { index: i, season, field: field.to_string(), status: "missing".into(), attempts: 0, host: String::new(), log_path: None, error: None }
            })
        })
        .collect();
    // Per (season, field): its steps from the runs, stars and candidates from the alertfinder's
    // newest successful attempt of each step.
    let runs = sqlx::query(
        "SELECT r.field, r.as_of_hjd, r.status, \
                (SELECT a.rows_in FROM stage_attempts a WHERE a.run_id = r.run_id AND a.stage = 'alertfinder' AND a.status = 'succeeded' ORDER BY a.attempt DESC LIMIT 1) AS stars, \
                (SELECT a.rows_out FROM stage_attempts a WHERE a.run_id = r.run_id AND a.stage = 'alertfinder' AND a.status = 'succeeded' ORDER BY a.attempt DESC LIMIT 1) AS candidates \
         FROM runs r WHERE r.replay_id = $1 ORDER BY r.field, r.as_of_hjd",
    )
    .bind(replay_id)
    .fetch_all(pool)
    .await?;
    let mut per: BTreeMap<(i32, String), FieldReplay> = BTreeMap::new();
    let mut as_ofs: HashMap<String, Vec<f64>> = HashMap::new();
    for r in runs {
        let field: String = r.get("field");
        let t: f64 = r.get("as_of_hjd");
        let season = season_of_step(t, &job.seasons);
        let f = per.entry((season, field.clone())).or_insert_with(|| FieldReplay {
            season,
            field: field.parse().unwrap_or(Field(0)),
            steps: 0,
            first_as_of: f64::INFINITY,
            last_as_of: f64::NEG_INFINITY,
            stars: 0,
            candidates: 0,
            failed_steps: 0,
        });
        f.steps += 1;
        f.first_as_of = f.first_as_of.min(t);
        f.last_as_of = f.last_as_of.max(t);
        f.stars = f.stars.max(r.get::<Option<i64>, _>("stars").unwrap_or(0) as usize);
        f.candidates += r.get::<Option<i64>, _>("candidates").unwrap_or(0) as u64;
        if r.get::<String, _>("status") != "succeeded" {
            f.failed_steps += 1;
        }
        as_ofs.entry(field).or_default().push(t);
    }
    let fields: Vec<FieldReplay> = shards.iter().filter_map(|s| per.remove(&(s.season, s.field.clone()))).collect();
    let stars = star_histories(pool, &model, &as_ofs).await.map_err(ShardError::Run)?;
    let mut alerts_by_day = BTreeMap::new();
    for s in &stars {
        if let Some(t) = s.first_yes {
            *alerts_by_day.entry(t.floor() as i64).or_insert(0) += 1;
        }
    }
    Ok(JobReport { job, shards, result: ReplayResult { replay_id, model_sha256: model, fields, stars, alerts_by_day } })
}

/// The season a step belongs to: that of its as-of time, except the last step of a season,
/// which may fall just after the year turns (it is still that season's, when the next year is
/// not a season of the job).
fn season_of_step(t: f64, seasons: &[i32]) -> i32 {
    let s = lensnet_stages::ingest::season_of(t);
    if seasons.contains(&s) || !seasons.contains(&(s - 1)) {
        s
    } else {
        s - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seasons_parse_as_lists_and_ranges() {
        assert_eq!(parse_seasons(&["2016-2018,2021".into()]).unwrap(), vec![2016, 2017, 2018, 2021]);
        assert_eq!(parse_seasons(&["2019".into(), "2019,2020".into()]).unwrap(), vec![2019, 2020]);
        assert!(parse_seasons(&["2018-2016".into()]).unwrap_err().contains("backwards"));
        assert!(parse_seasons(&["last".into()]).unwrap_err().contains("not a year"));
        assert!(parse_seasons(&[]).is_err());
    }

    #[test]
    fn shards_are_season_major_and_one_season_keeps_the_old_replay_id() {
        let job = ReplayJob { seasons: vec![2024, 2025], fields: vec![Field(2), Field(14)], step_days: 1.0, kind: "replay" };
        assert_eq!(job.shard_count(), 4);
        let all: Vec<_> = (0..4).map(|i| job.shard(i).unwrap()).collect();
        assert_eq!(all, vec![(2024, Field(2)), (2024, Field(14)), (2025, Field(2)), (2025, Field(14))]);
        assert_eq!(job.shard(4), None);
        // The id the demo's replay has had since before sharding (README), whatever the order
        // of the fields.
        let demo = ReplayJob { seasons: vec![2025], fields: vec![Field(14), Field(2)], step_days: 1.0, kind: "demo" };
        let v2 = "140192a198a8ea7425159dbe30803521b3a2e48eb7276b5e2137747d8f625b1f";
        assert_eq!(demo.replay_id(v2).to_string(), "f40c449a-e926-8f9f-b49b-74e19e06d74a");
        let one = ReplayJob { seasons: vec![2025], ..job.clone() };
        assert_ne!(job.replay_id("m"), one.replay_id("m"));
    }
}
