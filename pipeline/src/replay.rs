//! Historical reprocessing: a past season replayed as if live. For each field the watermark
//! advances by `step` from the season's first epoch to its last; each step is one field run
//! (alertfinder -> score -> publish) that sees only data taken before its as-of time, so the
//! verdicts say when each star would have been flagged by this model.
//!
//! The photometry of a season does not change during a replay, so each field's photometry is
//! read from the store once and shared by all its steps.

use std::collections::{BTreeMap, HashMap};

use lensnet_stages::ingest::PhotometryStore;
use lensnet_stages::simulate::TruthRow;
use lensnet_stages::{Field, PhotometryCache};
use sqlx::Row;
use tracing::info;
use uuid::Uuid;

use crate::fieldrun::{FieldRunError, FieldRunner, Plan};

/// What to replay.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    pub season: i32,
    pub fields: Vec<Field>,
    /// Days between steps.
    pub step_days: f64,
    /// `runs.kind` of the steps (`replay`, or `demo`).
    pub kind: &'static str,
}

/// Parse `1d`, `12h`, `30m` or a plain number of days.
pub fn parse_step(s: &str) -> Result<f64, String> {
    let s = s.trim();
    let (num, unit) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&s[..i], c.to_ascii_lowercase()),
        _ => (s, 'd'),
    };
    let v: f64 = num.trim().parse().map_err(|_| format!("step `{s}` is not like 1d, 12h or 30m"))?;
    let days = match unit {
        'd' => v,
        'h' => v / 24.0,
        'm' => v / 1440.0,
        other => return Err(format!("step `{s}`: unknown unit `{other}` (d, h or m)")),
    };
    if !(days.is_finite() && days >= 1.0 / 1440.0) {
        return Err(format!("step `{s}` must be at least one minute"));
    }
    Ok(days)
}

/// One star's history in a replay.
#[derive(Debug, Clone, PartialEq)]
pub struct StarHistory {
    pub field: String,
    pub star_id: String,
    /// First as-of at which AlertFinder made it a candidate.
    pub first_candidate: f64,
    /// First as-of with a "yes" verdict (high-purity alert).
    pub first_yes: Option<f64>,
    /// First as-of with "yes" or "maybe" (high-recall operating point).
    pub first_kept: Option<f64>,
    /// Peak of the latest point-lens grid fit (an estimate where no truth is known).
    pub fitted_peak: Option<f64>,
}

/// What one field's replay did.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldReplay {
    pub season: i32,
    pub field: Field,
    pub steps: usize,
    pub first_as_of: f64,
    pub last_as_of: f64,
    pub stars: usize,
    pub candidates: u64,
    pub failed_steps: usize,
}

/// The result of a replay.
#[derive(Debug, Clone)]
pub struct ReplayResult {
    pub replay_id: Uuid,
    pub model_sha256: String,
    pub fields: Vec<FieldReplay>,
    pub stars: Vec<StarHistory>,
    /// New "yes" alerts per day of the season (first "yes" of a star), by day.
    pub alerts_by_day: BTreeMap<i64, u32>,
}

/// The id of a replay: the same season, fields, step and model give the same id, so running
/// a replay again resumes it and adds nothing (a one-season [`crate::shards::ReplayJob`]).
pub fn replay_id(opts: &ReplayOptions, model_sha256: &str) -> Uuid {
    crate::shards::ReplayJob { seasons: vec![opts.season], fields: opts.fields.clone(), step_days: opts.step_days, kind: opts.kind }.replay_id(model_sha256)
}

/// The as-of times of a replay over epochs `first..=last`: whole-day grid points (JD noon)
/// from the first after `first` up to the first at or after `last`.
pub fn step_times(first: f64, last: f64, step: f64) -> Vec<f64> {
    if !(first.is_finite() && last.is_finite() && step > 0.0) {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut k = 1.0;
    loop {
        let t = first.floor() + k * step;
        out.push((t * 1e5).round() / 1e5);
        if t >= last {
            break;
        }
        k += 1.0;
    }
    out
}

/// Replay `opts.fields` of `opts.season`. `progress(field, step, steps)` is called after each
/// step.
pub async fn replay(runner: &FieldRunner, opts: &ReplayOptions, progress: &(dyn Fn(Field, usize, usize) + Sync)) -> Result<ReplayResult, FieldRunError> {
    let model = runner.model_sha256().to_string();
    let replay_id = replay_id(opts, &model);
    let mut fields = Vec::new();
    let mut as_ofs: HashMap<String, Vec<f64>> = HashMap::new();
    for &field in &opts.fields {
        let Some((f, times)) = replay_field(runner, opts.kind, opts.season, field, opts.step_days, replay_id, progress).await? else {
            return Err(lensnet_stages::StageError::Permanent {
                stage: "replay",
                message: format!("no photometry for field {field} in season {}: ingest it first", opts.season),
            }
            .into());
        };
        as_ofs.entry(field.to_string()).or_default().extend(times);
        fields.push(f);
    }
    let stars = star_histories(&runner.pool, &model, &as_ofs).await?;
    let mut alerts_by_day = BTreeMap::new();
    for s in &stars {
        if let Some(t) = s.first_yes {
            *alerts_by_day.entry(t.floor() as i64).or_insert(0) += 1;
        }
    }
    Ok(ReplayResult { replay_id, model_sha256: model, fields, stars, alerts_by_day })
}

/// How long a replay step waits for a field whose lock another run holds (a live run, or a
/// shard of another season of the same field) before it gives up.
pub const BUSY_WAIT: std::time::Duration = std::time::Duration::from_secs(1800);

/// Replays one (season, field): every step time of the season's photometry, each a field run
/// tagged with `replay_id`. None when the store holds no photometry of it. A step whose field is
/// locked by another run waits for it (up to [`BUSY_WAIT`]).
pub async fn replay_field(
    runner: &FieldRunner,
    kind: &'static str,
    season: i32,
    field: Field,
    step_days: f64,
    replay_id: Uuid,
    progress: &(dyn Fn(Field, usize, usize) + Sync),
) -> Result<Option<(FieldReplay, Vec<f64>)>, FieldRunError> {
    let photometry = PhotometryStore::new(runner.store.clone(), runner.root.clone());
    let read_err = |e: lensnet_stages::ingest::IngestError| {
        let message = format!("reading the photometry of {field}, season {season}: {e}");
        lensnet_stages::StageError::Permanent { stage: "replay", message }
    };
    // A small field-season is held in memory for the whole replay; a large one is streamed
    // step by step, like a live run.
    let rows = photometry.field_rows(season, field).await.map_err(read_err)?;
    let (cache, n_stars, first, last) = if rows <= runner.replay_whole_field_max_rows {
        let cache = PhotometryCache::new();
        let fp = cache.get(&photometry, season, field).await.map_err(read_err)?;
        let (first, last) = fp
            .stars
            .iter()
            .flat_map(|s| s.curves.iter().flat_map(|c| c.hjd.iter().copied()))
            .filter(|t| t.is_finite())
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), t| (a.min(t), b.max(t)));
        (cache, fp.stars.len(), first, last)
    } else {
        let (_, n, first, last) = photometry.field_summary(season, field).await.map_err(read_err)?;
        (runner.live_cache(), n, first, last)
    };
    if n_stars == 0 || !first.is_finite() {
        return Ok(None);
    }
    let times = step_times(first, last, step_days);
    info!(%field, season, stars = n_stars, rows, streamed = cache.streaming_budget().is_some(), first, last, steps = times.len(), %replay_id, "replaying");
    let mut candidates = 0u64;
    let mut failed_steps = 0;
    for (k, &t) in times.iter().enumerate() {
        let started = std::time::Instant::now();
        let run = loop {
            match runner.run(kind, Plan::Reprocess, field, season, t, Some(replay_id), &cache).await {
                Err(FieldRunError::Busy(_)) if started.elapsed() < BUSY_WAIT => {
                    tracing::debug!(%field, as_of = t, "field locked by another run; waiting");
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
                other => break other?,
            }
        };
        if !run.outcome.succeeded() {
            failed_steps += 1;
            tracing::warn!(%field, as_of = t, error = run.outcome.first_error().unwrap_or_default(), "replay step failed");
        }
        candidates += run.report("alertfinder").map_or(0, |r| r.rows_out);
        progress(field, k + 1, times.len());
    }
    let f = FieldReplay {
        season,
        field,
        steps: times.len(),
        first_as_of: times.first().copied().unwrap_or(f64::NAN),
        last_as_of: times.last().copied().unwrap_or(f64::NAN),
        stars: n_stars,
        candidates,
        failed_steps,
    };
    Ok(Some((f, times)))
}

/// Per-star first candidate / first verdicts among the given as-of times, from PostgreSQL.
/// Selected by (field, as_of, model) rather than by replay id, so that candidates shared with
/// an earlier replay at the same as-of times count too.
pub async fn star_histories(pool: &sqlx::PgPool, model: &str, as_ofs: &HashMap<String, Vec<f64>>) -> Result<Vec<StarHistory>, FieldRunError> {
    let mut out = Vec::new();
    for (field, times) in as_ofs {
        let rows = sqlx::query(
            "WITH c AS (SELECT * FROM candidates WHERE field = $1 AND as_of_hjd = ANY($2::float8[])), \
             v AS (SELECT c.star_id, c.as_of_hjd, v.verdict FROM c JOIN verdicts v ON v.candidate_id = c.candidate_id AND v.model_sha256 = $3), \
             peak AS (SELECT DISTINCT ON (c.star_id) c.star_id, f.t0 FROM c JOIN fits f ON f.candidate_id = c.candidate_id AND f.kind = 'pspl_grid' \
                      ORDER BY c.star_id, c.as_of_hjd DESC) \
             SELECT c.star_id, min(c.as_of_hjd) AS first_candidate, \
                    (SELECT min(as_of_hjd) FROM v WHERE v.star_id = c.star_id AND v.verdict = 'yes') AS first_yes, \
                    (SELECT min(as_of_hjd) FROM v WHERE v.star_id = c.star_id AND v.verdict IN ('yes', 'maybe')) AS first_kept, \
                    (SELECT t0 FROM peak WHERE peak.star_id = c.star_id) AS fitted_peak \
             FROM c GROUP BY c.star_id ORDER BY c.star_id",
        )
        .bind(field)
        .bind(times.clone())
        .bind(model)
        .fetch_all(pool)
        .await?;
        for r in rows {
            out.push(StarHistory {
                field: field.clone(),
                star_id: r.try_get("star_id")?,
                first_candidate: r.try_get("first_candidate")?,
                first_yes: r.try_get("first_yes")?,
                first_kept: r.try_get("first_kept")?,
                fitted_peak: r.try_get("fitted_peak")?,
            });
        }
    }
    out.sort_by(|a, b| (&a.field, &a.star_id).cmp(&(&b.field, &b.star_id)));
    Ok(out)
}

/// The replay against the simulator's truth.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TruthSummary {
    /// Stars labelled yes (clear events) in the replayed fields.
    pub events: usize,
    /// ... of which AlertFinder made a candidate at some step.
    pub events_candidates: usize,
    /// ... of which got a "yes" at some step (recall at the high-purity point).
    pub events_flagged: usize,
    /// ... of which got "yes" or "maybe" (recall at the high-recall point).
    pub events_kept: usize,
    /// Events flagged "yes" before their true peak.
    pub flagged_before_peak: usize,
    /// Median days between the first "yes" and the true peak (positive = before the peak).
    pub median_lead_days: Option<f64>,
    /// Stars labelled maybe, and how many got a "yes".
    pub maybes: usize,
    pub maybes_flagged: usize,
    /// Stars labelled no that got a "yes" (false alerts), by class.
    pub false_alerts: BTreeMap<String, usize>,
    /// Stars flagged "yes" in all.
    pub flagged: usize,
}

/// Compare a replay's star histories with the truth table.
pub fn against_truth(stars: &[StarHistory], truth: &[TruthRow], fields: &[Field]) -> TruthSummary {
    let field_names: Vec<String> = fields.iter().map(|f| f.to_string()).collect();
    let hist: HashMap<(&str, &str), &StarHistory> = stars.iter().map(|s| ((s.field.as_str(), s.star_id.as_str()), s)).collect();
    let mut s = TruthSummary::default();
    let mut leads = Vec::new();
    for t in truth.iter().filter(|t| field_names.contains(&t.field)) {
        let h = hist.get(&(t.field.as_str(), t.star_id.as_str()));
        let yes = h.and_then(|h| h.first_yes);
        if yes.is_some() {
            s.flagged += 1;
        }
        match t.label.as_str() {
            "yes" => {
                s.events += 1;
                if h.is_some() {
                    s.events_candidates += 1;
                }
                if h.and_then(|h| h.first_kept).is_some() {
                    s.events_kept += 1;
                }
                if let Some(y) = yes {
                    s.events_flagged += 1;
                    if t.t0.is_finite() {
                        leads.push(t.t0 - y);
                        if y < t.t0 {
                            s.flagged_before_peak += 1;
                        }
                    }
                }
            }
            "maybe" => {
                s.maybes += 1;
                if yes.is_some() {
                    s.maybes_flagged += 1;
                }
            }
            _ => {
                if yes.is_some() {
                    *s.false_alerts.entry(t.class.clone()).or_insert(0) += 1;
                }
            }
        }
    }
    leads.sort_by(f64::total_cmp);
    s.median_lead_days = (!leads.is_empty()).then(|| leads[leads.len() / 2]);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_parse_and_cover_the_season() {
        assert_eq!(parse_step("1d").unwrap(), 1.0);
        assert_eq!(parse_step("12h").unwrap(), 0.5);
        assert_eq!(parse_step("2").unwrap(), 2.0);
        assert!(parse_step("0d").is_err());
        assert!(parse_step("1w").is_err());
        let t = step_times(10.3, 13.0, 1.0);
        assert_eq!(t, vec![11.0, 12.0, 13.0]);
        let t = step_times(10.3, 13.2, 1.0);
        assert_eq!(t.last(), Some(&14.0), "the last step sees every epoch");
        assert!(step_times(f64::NAN, 1.0, 1.0).is_empty());
    }

    #[test]
    fn truth_summary_counts_recall_lead_and_false_alerts() {
        let h = |star: &str, yes: Option<f64>| StarHistory {
            field: "BLG14".into(),
            star_id: star.into(),
            first_candidate: 1.0,
            first_yes: yes,
            first_kept: yes,
            fitted_peak: None,
        };
        let t = |star: &str, label: &str, class: &str, t0: f64| TruthRow {
            star_id: star.into(),
            field: "BLG14".into(),
            class: class.into(),
            subtype: String::new(),
            label: label.into(),
            t0,
            te: 20.0,
        };
        let stars = vec![h("a", Some(95.0)), h("b", Some(105.0)), h("c", Some(50.0)), h("d", None)];
        let truth = vec![t("a", "yes", "microlensing", 100.0), t("b", "yes", "microlensing", 100.0), t("c", "no", "variable", f64::NAN), t("d", "yes", "microlensing", 10.0), t("e", "no", "constant", f64::NAN)];
        let s = against_truth(&stars, &truth, &[Field(14)]);
        assert_eq!((s.events, s.events_candidates, s.events_flagged, s.flagged_before_peak), (3, 3, 2, 1));
        assert_eq!(s.false_alerts.get("variable"), Some(&1));
        assert_eq!(s.flagged, 3);
        assert_eq!(s.median_lead_days, Some(5.0));
    }
}
