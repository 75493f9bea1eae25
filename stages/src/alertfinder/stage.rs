//! The `alertfinder` stage's I/O shell: reads a field's photometry from the Parquet store, runs
//! the numeric core on the stars with new epochs, and writes candidates (and per-star failures,
//! as rows with a reason) to `candidates/` plus the field's watermark.
//!
//! # Layout
//! ```text
//! <root>/candidates/season=2025/field=BLG14/asof-10800.50000.parquet
//! <root>/state/alertfinder/season=2025/field=BLG14.json          (watermarks)
//! ```
//! One file per (field, as_of), written with one put, so it appears whole; re-running the same
//! as_of rewrites identical bytes.
//!
//! # Watermarks
//! The state file keeps, for every processed `as_of`, the newest epoch seen per site. A run at
//! `as_of = T` searches only stars with an epoch newer than the watermark of the newest processed
//! `as_of < T` (the minimum over sites, so a site that was clouded out cannot hide new data),
//! so re-running T — a resumed or repeated run — searches exactly what it searched before.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, FixedSizeListBuilder, Float64Array, Float64Builder, RecordBatch, StringArray, UInt32Array, UInt8Array,
};
use arrow::datatypes::{DataType, Field as ArrowField, Schema, SchemaRef};
use async_trait::async_trait;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

use super::diagnosis::{diagnosis_vector, DIAGNOSIS_NAMES, N_DIAGNOSIS};
use super::history::{NightBuffers, StarHistory, HISTORY_VERSION, STAR_VALUES};
use super::{scan_batch_with, AlertParams, Status, StarResult, N_SITES};
use crate::ingest::{read_photometry, PhotometryStore};
use crate::cache::PhotometryCache;
use crate::photometry::{Band, Field, LightCurve, MergedCurve, Site, StarCurves};
use crate::stage::{Dataset, RunCtx, Stage, StageError, StageReport};

pub const STAGE: &str = "alertfinder";


/// Version of the search's results for the same photometry, bumped when the algorithm changes
/// what it finds (2: the baseline from streaming P² estimators and the grid's older nights
/// merged, stop 37; 3: the history anchors of the broken line, stop 38; 4: the pre-selection's
/// `high_nights`, which the score stage's one-night check reads, stop 39; 5: its nights are local
/// nights, stop 40), so that the runner
/// searches a step again instead of keeping its results.
pub const SEARCH_VERSION: u32 = 5;
/// Thresholds by field cadence, as in KMTNet: prime fields use the high-cadence pair; a field
/// in `per_field` uses its own parameters instead.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldThresholds {
    pub high_cadence_fields: BTreeSet<Field>,
    pub high: AlertParams,
    pub low: AlertParams,
    pub per_field: std::collections::BTreeMap<Field, AlertParams>,
}

impl Default for FieldThresholds {
    fn default() -> Self {
        FieldThresholds {
            high_cadence_fields: [1, 2, 3, 41, 42, 43].into_iter().map(Field).collect(),
            high: AlertParams::high_cadence(),
            low: AlertParams::low_cadence(),
            per_field: Default::default(),
        }
    }
}

impl FieldThresholds {
    pub fn for_field(&self, field: Field) -> &AlertParams {
        self.per_field.get(&field).unwrap_or_else(|| self.by_cadence(field))
    }

    /// The parameters `field` would use without a `per_field` entry (the base of one).
    pub fn by_cadence(&self, field: Field) -> &AlertParams {
        if self.high_cadence_fields.contains(&field) { &self.high } else { &self.low }
    }
}

/// The stage.
#[derive(Debug, Clone, Default)]
pub struct AlertFinderStage {
    pub thresholds: FieldThresholds,
    /// Photometry shared with the other stages of the run (or of a replay); None = read the
    /// store on every run.
    pub cache: Option<PhotometryCache>,
}

#[async_trait]
impl Stage for AlertFinderStage {
    fn name(&self) -> &'static str {
        STAGE
    }
    fn reads(&self) -> &'static [Dataset] {
        &[Dataset::Photometry]
    }
    fn writes(&self) -> &'static [Dataset] {
        &[Dataset::Candidates]
    }
    /// The photometry of the field-season visible at the as-of time (see
    /// [`crate::cache::FieldPhotometry::digest`]), and the search's [`SEARCH_VERSION`]: a
    /// replay made with an earlier search is searched again.
    async fn input_digest(&self, ctx: &RunCtx) -> Result<Option<String>, StageError> {
        let Some(cache) = &self.cache else { return Ok(None) };
        let photometry = PhotometryStore::new(ctx.store.clone(), ctx.root.clone());
        let digest = if cache.streaming_budget().is_some() {
            super::nightly::manifests_digest(&photometry, ctx.season, ctx.field).await?
        } else {
            let field = cache.get(&photometry, ctx.season, ctx.field).await.map_err(|e| {
                if e.is_retryable() { transient(e.to_string()) } else { permanent(e.to_string()) }
            })?;
            field.digest(ctx.as_of)
        };
        Ok(Some(format!("search-v{SEARCH_VERSION}:{digest}")))
    }

    async fn run(&self, ctx: &RunCtx) -> Result<StageReport, StageError> {
        if let Some(budget) = self.cache.as_ref().and_then(PhotometryCache::streaming_budget) {
            let (out, n) = super::nightly::find_candidates_nightly(ctx, self.thresholds.for_field(ctx.field), budget).await?;
            return Ok(stage_report(ctx, &out, [
                ("buckets", serde_json::json!(n.buckets)),
                ("searched_in_full", serde_json::json!(n.screened_in)),
                ("searched_from_carry", serde_json::json!(n.from_carry)),
                ("photometry_rows_read", serde_json::json!(n.rows_read)),
                ("photometry_rows_read_for_new_points", serde_json::json!(n.new_rows_read)),
                ("photometry_rows_in_windows", serde_json::json!(n.window_rows)),
                ("photometry_bytes_read", serde_json::json!(n.bytes_read)),
                ("photometry_bytes_read_for_new_points", serde_json::json!(n.new_bytes_read)),
                ("state_bytes_read", serde_json::json!(n.state_bytes_read)),
                ("searched_from_tail", serde_json::json!(n.from_tail)),
                ("state_rows_in_tails", serde_json::json!(n.tail_rows)),
                ("screen_passed_kept", serde_json::json!(n.passed_kept)),
                ("screen_passed_no_level", serde_json::json!(n.passed_unknown)),
                ("screen_passed_high_run", serde_json::json!(n.passed_high)),
            ]));
        }
        let out = find_candidates_with(ctx, self.thresholds.for_field(ctx.field), self.cache.as_ref()).await?;
        Ok(stage_report(ctx, &out, []))
    }
}

/// The audit report of one alertfinder run, with the path's own `extra` details.
fn stage_report<const N: usize>(ctx: &RunCtx, out: &AlertFinderOutput, extra: [(&str, serde_json::Value); N]) -> StageReport {
    let mut details = serde_json::Map::from_iter([
        ("as_of".to_string(), serde_json::json!(out.as_of)),
        ("failed_stars".to_string(), serde_json::json!(out.failed)),
    ]);
    details.extend(extra.into_iter().map(|(k, v)| (k.to_string(), v)));
    StageReport {
        rows_in: out.stars_searched as u64,
        rows_out: out.candidates as u64,
        inputs: serde_json::json!({ "photometry": format!("photometry/season={}/field={}", ctx.season, ctx.field), "since": finite_or_null(out.since) }),
        outputs: serde_json::json!({ "objects": [out.object.to_string()] }),
        details,
    }
}

fn finite_or_null(x: f64) -> serde_json::Value {
    if x.is_finite() { serde_json::json!(x) } else { serde_json::Value::Null }
}

/// What one alertfinder run did.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertFinderOutput {
    pub as_of: f64,
    pub since: f64,
    pub stars_searched: usize,
    pub candidates: usize,
    pub failed: usize,
    pub object: Path,
}

fn transient(message: String) -> StageError {
    StageError::Transient { stage: STAGE, message }
}

fn permanent(message: String) -> StageError {
    StageError::Permanent { stage: STAGE, message }
}

/// Search one field at `ctx.as_of` (or at its newest epoch) and write the candidates.
pub async fn find_candidates(ctx: &RunCtx, params: &AlertParams) -> Result<AlertFinderOutput, StageError> {
    find_candidates_with(ctx, params, None).await
}

/// [`find_candidates`] reading the photometry through `cache` when given.
pub async fn find_candidates_with(ctx: &RunCtx, params: &AlertParams, cache: Option<&PhotometryCache>) -> Result<AlertFinderOutput, StageError> {
    let photometry = PhotometryStore::new(ctx.store.clone(), ctx.root.clone());
    let state_path = state_path(&ctx.root, ctx.season, ctx.field);
    let mut state = read_state(ctx.store.as_ref(), &state_path).await?;
    let as_of_hint = ctx.as_of;
    let since = as_of_hint.map_or(f64::NEG_INFINITY, |t| state.since(t));
    let store_err = |e: crate::ingest::IngestError| if e.is_retryable() { transient(e.to_string()) } else { permanent(e.to_string()) };
    let owned: Vec<StarCurves>;
    let owned_merged: Vec<MergedCurve>;
    let cached = match cache {
        Some(cache) => Some(cache.get(&photometry, ctx.season, ctx.field).await.map_err(store_err)?),
        None => None,
    };
    let (stars, views): (Vec<&StarCurves>, Vec<LightCurve<'_>>) = match &cached {
        Some(c) => {
            // The same selection as read_photometry's `since`: stars with an epoch after it
            // (and, in a replay, not after as_of).
            let upto = as_of_hint.unwrap_or(f64::INFINITY);
            let keep: Vec<usize> = (0..c.stars.len())
                .filter(|&k| c.stars[k].curves.iter().any(|c| c.hjd.iter().any(|&t| t > since && t <= upto)))
                .collect();
            (keep.iter().map(|&k| &c.stars[k]).collect(), keep.iter().map(|&k| c.merged_i[k].view()).collect())
        }
        None => {
            owned = read_photometry(&photometry, ctx.season, ctx.field, since.is_finite().then_some(since)).await.map_err(store_err)?;
            owned_merged = owned.iter().map(|s| MergedCurve::from_star(s, Band::I)).collect();
            (owned.iter().collect(), owned_merged.iter().map(MergedCurve::view).collect())
        }
    };
    let newest = stars
        .iter()
        .flat_map(|s| s.curves.iter())
        .flat_map(|c| c.hjd.iter().copied())
        .fold(f64::NEG_INFINITY, f64::max);
    let as_of = as_of_hint.unwrap_or(newest);
    let since = if as_of_hint.is_some() { since } else { state.since(as_of) };

    // Each star's history up to the search window: the newest earlier state of this season (or
    // the season's start state, from the earlier seasons) extended with the nights since.
    let histories = if params.use_history && as_of.is_finite() {
        let mut h = load_history(ctx, &photometry, as_of).await?;
        let upto = as_of - params.window_days.max(0.0);
        let all: Vec<(&StarCurves, LightCurve<'_>)> = match &cached {
            Some(c) => c.stars.iter().zip(c.merged_i.iter().map(MergedCurve::view)).collect(),
            None => stars.iter().copied().zip(views.iter().copied()).collect(),
        };
        absorb_all(&mut h, &all, upto);
        write_history(ctx, as_of, &h).await?;
        Some(h)
    } else {
        None
    };
    let star_history: Vec<Option<&StarHistory>> = match &histories {
        Some(h) => stars.iter().map(|s| h.get(&s.star.0)).collect(),
        None => vec![None; stars.len()],
    };
    let results = if as_of.is_finite() { scan_batch_with(&views, &star_history, as_of, since, params) } else { Vec::new() };

    // Newest epoch per site up to as_of, for the watermark. A site without new points keeps
    // the previous run's watermark, as in the nightly path: a night without data must not
    // leave an empty watermark, or the next run would search every star of the field again
    // from the season's start (and score the stars that had no new data on stale points).
    let mut site_max = state.carried_over(as_of);
    for s in &stars {
        for c in &s.curves {
            let key = c.site.map(|s| s.code().to_string()).unwrap_or_else(|| "other".into());
            let m = c.hjd.iter().copied().filter(|&t| t <= as_of).fold(f64::NEG_INFINITY, f64::max);
            let e = site_max.entry(key).or_insert(f64::NEG_INFINITY);
            *e = e.max(m);
        }
    }

    let rows: Vec<(usize, &StarResult)> =
        results.iter().enumerate().filter(|(_, r)| matches!(r.status, Status::Candidate | Status::Failed)).collect();
    let batch = candidates_batch(ctx.field, as_of, &rows, &stars.iter().map(|s| s.star.0.as_str()).collect::<Vec<_>>())
        .map_err(|e| permanent(format!("cannot build the candidates batch: {e}")))?;
    let object = candidates_path(&ctx.root, ctx.season, ctx.field, as_of);
    let bytes = to_parquet(&batch).map_err(|e| permanent(format!("cannot encode {object}: {e}")))?;
    ctx.store
        .put(&object, PutPayload::from(bytes))
        .await
        .map_err(|e| transient(format!("cannot write {object}: {e}")))?;

    if as_of.is_finite() {
        state.record(as_of, site_max);
        write_state(ctx.store.as_ref(), &state_path, &state).await?;
    }
    let candidates = rows.iter().filter(|(_, r)| r.status == Status::Candidate).count();
    let failed = rows.len() - candidates;
    tracing::info!(field = %ctx.field, as_of, stars = views.len(), candidates, failed, "alertfinder finished");
    Ok(AlertFinderOutput { as_of, since, stars_searched: views.len(), candidates, failed, object })
}

// ---- per-star history state ----

/// `state/alertfinder/history/season=../field=../` (one `asof-<as_of>.parquet` per run and a
/// `start.parquet` built from the earlier seasons).
fn history_dir(root: &Path, season: i32, field: Field) -> String {
    let p = format!("state/alertfinder/history/season={season}/field={field}");
    if root.as_ref().is_empty() { p } else { format!("{root}/{p}") }
}

/// The history state of (season, field) after the run at `as_of` (`None`: the season's start).
pub fn history_path(root: &Path, season: i32, field: Field, as_of: Option<f64>) -> Path {
    let dir = history_dir(root, season, field);
    match as_of {
        Some(t) => Path::from(format!("{dir}/asof-{t:.5}.parquet")),
        None => Path::from(format!("{dir}/start.parquet")),
    }
}

/// The season's stored per-run states before `as_of`, oldest first, and whether its start state
/// exists.
async fn history_states(ctx: &RunCtx, as_of: f64) -> Result<(Vec<(f64, Path)>, bool), StageError> {
    use futures::TryStreamExt;
    let dir = Path::from(history_dir(&ctx.root, ctx.season, ctx.field));
    let listed: Vec<_> = ctx.store.list(Some(&dir)).try_collect().await.map_err(|e| transient(format!("cannot list {dir}: {e}")))?;
    let start = history_path(&ctx.root, ctx.season, ctx.field, None);
    let has_start = listed.iter().any(|m| m.location == start);
    let mut earlier: Vec<(f64, Path)> = listed
        .into_iter()
        .filter_map(|m| {
            let t: f64 = m.location.filename()?.strip_prefix("asof-")?.strip_suffix(".parquet")?.parse().ok()?;
            (t < as_of).then_some((t, m.location))
        })
        .collect();
    earlier.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok((earlier, has_start))
}

/// The histories before the run at `as_of`: the newest state of an earlier run of the season,
/// else the season's start state (built from the earlier seasons' photometry and stored the
/// first time). Either way the result is the same (see [`super::history`]): a lost or pruned
/// state file only costs time.
async fn load_history(ctx: &RunCtx, photometry: &PhotometryStore, as_of: f64) -> Result<std::collections::HashMap<String, StarHistory>, StageError> {
    let (earlier, has_start) = history_states(ctx, as_of).await?;
    if let Some((_, path)) = earlier.last() {
        return read_history(ctx.store.as_ref(), path).await;
    }
    let start = history_path(&ctx.root, ctx.season, ctx.field, None);
    if has_start {
        return read_history(ctx.store.as_ref(), &start).await;
    }
    // The season's start: every night of the earlier seasons, in time order, read in chunks.
    let h = super::nightly::earlier_histories(photometry, ctx.season, ctx.field, None, super::nightly::START_BUDGET_ROWS).await?;
    put_history(ctx.store.as_ref(), &start, &h).await?;
    Ok(h)
}

/// Extend every star's history with its complete nights before `upto` (stars in parallel).
fn absorb_all(h: &mut std::collections::HashMap<String, StarHistory>, stars: &[(&StarCurves, LightCurve<'_>)], upto: f64) {
    use rayon::prelude::*;
    let mut work: Vec<(String, StarHistory, LightCurve<'_>)> =
        stars.iter().map(|(s, lc)| (s.star.0.clone(), h.remove(&s.star.0).unwrap_or_default(), *lc)).collect();
    work.par_iter_mut().for_each_init(NightBuffers::default, |buf, (_, hist, lc)| hist.absorb(lc, upto, buf));
    h.extend(work.into_iter().map(|(k, v, _)| (k, v)));
}

/// Store the histories after the run at `as_of`, then delete the states of earlier runs but the
/// newest one (any run can be redone from it or from the start state).
async fn write_history(ctx: &RunCtx, as_of: f64, h: &std::collections::HashMap<String, StarHistory>) -> Result<(), StageError> {
    let path = history_path(&ctx.root, ctx.season, ctx.field, Some(as_of));
    put_history(ctx.store.as_ref(), &path, h).await?;
    let (mut earlier, _) = history_states(ctx, as_of).await?;
    earlier.pop();
    for (_, p) in earlier {
        match ctx.store.delete(&p).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(transient(format!("cannot delete {p}: {e}"))),
        }
    }
    Ok(())
}

pub(crate) async fn put_history(store: &dyn ObjectStore, path: &Path, h: &std::collections::HashMap<String, StarHistory>) -> Result<(), StageError> {
    let mut keys: Vec<&String> = h.keys().collect();
    keys.sort_unstable();
    let mut values = FixedSizeListBuilder::new(Float64Builder::new(), STAR_VALUES as i32);
    let mut buf = Vec::with_capacity(STAR_VALUES);
    for k in &keys {
        buf.clear();
        h[*k].to_values(&mut buf);
        values.values().append_slice(&buf);
        values.append(true);
    }
    let schema = Arc::new(Schema::new(vec![
        ArrowField::new("star", DataType::Utf8, false),
        ArrowField::new("history", DataType::FixedSizeList(Arc::new(ArrowField::new("item", DataType::Float64, true)), STAR_VALUES as i32), false),
    ]));
    let batch = RecordBatch::try_new(schema, vec![Arc::new(StringArray::from_iter_values(keys.iter().map(|k| k.as_str()))), Arc::new(values.finish())])
        .map_err(|e| permanent(format!("cannot build {path}: {e}")))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).expect("zstd level")))
        .set_key_value_metadata(Some(vec![parquet::file::metadata::KeyValue::new("lensnet.history_version".to_string(), HISTORY_VERSION.to_string())]))
        .build();
    let mut bytes = Vec::new();
    let mut w = ArrowWriter::try_new(&mut bytes, batch.schema(), Some(props)).map_err(|e| permanent(format!("cannot encode {path}: {e}")))?;
    w.write(&batch).and_then(|_| w.close().map(|_| ())).map_err(|e| permanent(format!("cannot encode {path}: {e}")))?;
    store.put(path, PutPayload::from(bytes)).await.map_err(|e| transient(format!("cannot write {path}: {e}")))?;
    Ok(())
}

pub(crate) async fn read_history(store: &dyn ObjectStore, path: &Path) -> Result<std::collections::HashMap<String, StarHistory>, StageError> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::Float64Type;
    let bytes = crate::stage::read_object(store, path, STAGE).await?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(|e| permanent(format!("corrupt history state {path}: {e}")))?;
    let version = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|k| k.key == "lensnet.history_version").and_then(|k| k.value.clone()));
    if version.as_deref() != Some(&HISTORY_VERSION.to_string()) {
        return Err(permanent(format!("history state {path} has version {version:?}, this build reads {HISTORY_VERSION}: delete it to rebuild")));
    }
    let reader = builder.build().map_err(|e| permanent(format!("corrupt history state {path}: {e}")))?;
    let mut out = std::collections::HashMap::new();
    for batch in reader {
        let b = batch.map_err(|e| permanent(format!("corrupt history state {path}: {e}")))?;
        let bad = |what: &str| permanent(format!("corrupt history state {path}: {what}"));
        let stars = b.column_by_name("star").and_then(|c| c.as_any().downcast_ref::<StringArray>()).ok_or_else(|| bad("no star column"))?;
        let hist = b.column_by_name("history").and_then(|c| c.as_fixed_size_list_opt()).ok_or_else(|| bad("no history column"))?;
        for i in 0..b.num_rows() {
            let v = hist.value(i);
            let v = v.as_primitive_opt::<Float64Type>().ok_or_else(|| bad("history items are not f64"))?;
            let h = StarHistory::from_values(v.values()).ok_or_else(|| bad("history of the wrong length"))?;
            out.insert(stars.value(i).to_string(), h);
        }
    }
    Ok(out)
}

/// `candidates/season=../field=../asof-<as_of>.parquet`.
pub fn candidates_path(root: &Path, season: i32, field: Field, as_of: f64) -> Path {
    let p = format!("candidates/season={season}/field={field}/asof-{as_of:.5}.parquet");
    if root.as_ref().is_empty() { Path::from(p) } else { Path::from(format!("{root}/{p}")) }
}

pub(crate) fn state_path(root: &Path, season: i32, field: Field) -> Path {
    let p = format!("state/alertfinder/season={season}/field={field}.json");
    if root.as_ref().is_empty() { Path::from(p) } else { Path::from(format!("{root}/{p}")) }
}

/// A candidate's id: stable for (field, star, as_of).
pub fn candidate_id(field: Field, star: &str, as_of: f64) -> String {
    format!("{field}:{star}:{as_of:.5}")
}

/// The watermark history of one field.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WatermarkState {
    /// Processed as_of values (ascending) with the newest epoch per site seen then.
    pub runs: Vec<WatermarkEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WatermarkEntry {
    pub as_of: f64,
    pub sites: BTreeMap<String, f64>,
}

/// Entries kept: more than a season of daily steps.
const MAX_ENTRIES: usize = 2000;

impl WatermarkState {
    /// The `since` for a run at `as_of`: the oldest site watermark of the newest earlier run
    /// that saw data (a run that saw none, stored by a version before the watermark was
    /// carried over, holds no sites and says nothing about what was processed).
    pub fn since(&self, as_of: f64) -> f64 {
        self.runs
            .iter()
            .rev()
            .filter(|e| e.as_of < as_of)
            .find_map(|e| e.sites.values().copied().filter(|v| v.is_finite()).reduce(f64::min))
            .unwrap_or(f64::NEG_INFINITY)
    }

    /// The newest earlier run's watermarks: where a run at `as_of` starts its own, so that a
    /// site without new points keeps its watermark (both alertfinder paths).
    pub fn carried_over(&self, as_of: f64) -> BTreeMap<String, f64> {
        self.runs.iter().rev().find(|e| e.as_of < as_of).map(|e| e.sites.clone()).unwrap_or_default()
    }

    pub fn record(&mut self, as_of: f64, sites: BTreeMap<String, f64>) {
        let sites = sites.into_iter().filter(|(_, v)| v.is_finite()).collect();
        match self.runs.binary_search_by(|e| e.as_of.total_cmp(&as_of)) {
            Ok(i) => self.runs[i].sites = sites,
            Err(i) => self.runs.insert(i, WatermarkEntry { as_of, sites }),
        }
        if self.runs.len() > MAX_ENTRIES {
            let extra = self.runs.len() - MAX_ENTRIES;
            self.runs.drain(..extra);
        }
    }
}

pub(crate) async fn read_state(store: &dyn ObjectStore, path: &Path) -> Result<WatermarkState, StageError> {
    match store.get(path).await {
        Ok(r) => {
            let bytes = r.bytes().await.map_err(|e| transient(format!("cannot read {path}: {e}")))?;
            serde_json::from_slice(&bytes).map_err(|e| permanent(format!("corrupt watermark file {path}: {e}")))
        }
        Err(object_store::Error::NotFound { .. }) => Ok(WatermarkState::default()),
        Err(e) => Err(transient(format!("cannot read {path}: {e}"))),
    }
}

pub(crate) async fn write_state(store: &dyn ObjectStore, path: &Path, state: &WatermarkState) -> Result<(), StageError> {
    let json = serde_json::to_vec_pretty(state).map_err(|e| permanent(format!("cannot encode watermarks: {e}")))?;
    store.put(path, PutPayload::from(json)).await.map_err(|e| transient(format!("cannot write {path}: {e}")))?;
    Ok(())
}

/// The Arrow schema of a candidates file (documented in ARCHITECTURE.md).
pub fn candidates_schema() -> SchemaRef {
    let f = |n: &str, t: DataType, null: bool| ArrowField::new(n, t, null);
    Arc::new(Schema::new(vec![
        f("candidate_id", DataType::Utf8, false),
        f("star", DataType::Utf8, false),
        f("field", DataType::Utf8, false),
        f("as_of", DataType::Float64, false),
        f("status", DataType::Utf8, false),
        f("reason", DataType::Utf8, true),
        f("sites", DataType::Utf8, false),
        f("n_valid", DataType::UInt32, false),
        f("n_high", DataType::UInt32, false),
        f("longest_run", DataType::UInt32, false),
        f("bl_delta_chi2", DataType::Float64, false),
        f("bl_t_rise", DataType::Float64, false),
        f("bl_slope", DataType::Float64, false),
        f("bl_significance", DataType::Float64, false),
        f("grid_t0", DataType::Float64, false),
        f("grid_teff", DataType::Float64, false),
        f("grid_regime", DataType::UInt8, false),
        f("grid_delta_chi2", DataType::Float64, false),
        f("diagnosis", DataType::FixedSizeList(Arc::new(ArrowField::new("item", DataType::Float64, true)), N_DIAGNOSIS as i32), false),
        f("result_json", DataType::Utf8, false),
    ]))
}

pub(crate) fn candidates_batch(field: Field, as_of: f64, rows: &[(usize, &StarResult)], stars: &[&str]) -> Result<RecordBatch, arrow::error::ArrowError> {
    let nan = f64::NAN;
    let col_f = |f: &dyn Fn(&StarResult) -> f64| -> ArrayRef { Arc::new(Float64Array::from_iter_values(rows.iter().map(|(_, r)| f(r)))) };
    let col_u = |f: &dyn Fn(&StarResult) -> u32| -> ArrayRef { Arc::new(UInt32Array::from_iter_values(rows.iter().map(|(_, r)| f(r)))) };
    let mut diag = FixedSizeListBuilder::new(Float64Builder::new(), N_DIAGNOSIS as i32);
    for (_, r) in rows {
        diag.values().append_slice(&diagnosis_vector(r));
        diag.append(true);
    }
    let sites = |r: &StarResult| -> String {
        (0..N_SITES)
            .filter(|&s| r.baseline[s].usable)
            .filter_map(Site::from_index)
            .map(|s| s.code())
            .collect::<Vec<_>>()
            .join(",")
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(rows.iter().map(|(i, _)| candidate_id(field, stars[*i], as_of)))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|(i, _)| stars[*i]))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|_| field.name()))),
        Arc::new(Float64Array::from_iter_values(rows.iter().map(|_| as_of))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|(_, r)| r.status.name()))),
        Arc::new(StringArray::from(rows.iter().map(|(_, r)| r.reason.clone()).collect::<Vec<_>>())),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|(_, r)| sites(r)))),
        col_u(&|r| r.n_valid),
        col_u(&|r| r.preselection.n_high),
        col_u(&|r| r.preselection.longest_run),
        col_f(&|r| r.broken_line.map_or(nan, |b| b.delta_chi2)),
        col_f(&|r| r.broken_line.map_or(nan, |b| b.t_rise)),
        col_f(&|r| r.broken_line.map_or(nan, |b| b.slope)),
        col_f(&|r| r.broken_line.map_or(nan, |b| b.significance)),
        col_f(&|r| r.grid.map_or(nan, |g| g.t0)),
        col_f(&|r| r.grid.map_or(nan, |g| g.teff)),
        Arc::new(UInt8Array::from_iter_values(rows.iter().map(|(_, r)| r.grid.map_or(0, |g| g.regime)))),
        col_f(&|r| r.grid.map_or(nan, |g| g.delta_chi2)),
        Arc::new(diag.finish()),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|(_, r)| serde_json::to_string(r).unwrap_or_default()))),
    ];
    RecordBatch::try_new(candidates_schema(), columns)
}

/// How a candidates file is written (both alertfinder paths).
pub(crate) fn candidates_props() -> Result<WriterProperties, parquet::errors::ParquetError> {
    Ok(WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
        .set_max_row_group_row_count(Some(16 * 1024))
        .set_key_value_metadata(Some(vec![parquet::file::metadata::KeyValue::new(
            "lensnet.diagnosis_names".to_string(),
            DIAGNOSIS_NAMES.join(","),
        )]))
        .build())
}

pub(crate) fn to_parquet(batch: &RecordBatch) -> Result<Vec<u8>, parquet::errors::ParquetError> {
    let props = candidates_props()?;
    let mut buf = Vec::new();
    let mut w = ArrowWriter::try_new(&mut buf, batch.schema(), Some(props))?;
    w.write(batch)?;
    w.close()?;
    Ok(buf)
}

/// One row of a candidates file, as later stages read it.
#[derive(Debug, Clone, PartialEq)]
pub struct CandidateRecord {
    pub candidate_id: String,
    pub star: String,
    pub field: String,
    pub as_of: f64,
    pub status: String,
    pub reason: Option<String>,
    pub sites: Vec<String>,
    pub n_valid: u32,
    pub n_high: u32,
    pub bl_delta_chi2: f64,
    pub bl_t_rise: f64,
    pub bl_slope: f64,
    pub grid_t0: f64,
    pub grid_teff: f64,
    pub grid_regime: u8,
    pub grid_delta_chi2: f64,
    pub diagnosis: Vec<f64>,
    /// The whole `StarResult` as JSON (evidence for publish).
    pub result_json: String,
}

/// Read the rows (candidates and failures) of one (field, as_of).
pub async fn read_candidates(store: &dyn ObjectStore, root: &Path, season: i32, field: Field, as_of: f64) -> Result<Vec<CandidateRecord>, StageError> {
    let path = candidates_path(root, season, field, as_of);
    let bytes = crate::stage::read_object(store, &path, STAGE).await?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|b| b.build())
        .map_err(|e| permanent(format!("corrupt {path}: {e}")))?;
    let mut out = Vec::new();
    for batch in reader {
        let b = batch.map_err(|e| permanent(format!("corrupt {path}: {e}")))?;
        decode_batch(&b, &mut out).map_err(|e| permanent(format!("unexpected columns in {path}: {e}")))?;
    }
    Ok(out)
}

/// The rows of status `candidate` of a candidates file, read a row group at a time (ranged
/// reads): what score and publish need, without the failed rows (a season's first night has a
/// failed row for nearly every star of the field), with the file's number of rows.
pub async fn read_candidate_rows(store: Arc<dyn ObjectStore>, root: &Path, season: i32, field: Field, as_of: f64) -> Result<(Vec<CandidateRecord>, u64), StageError> {
    use futures::TryStreamExt;
    let path = candidates_path(root, season, field, as_of);
    let meta = store.head(&path).await.map_err(|e| match e {
        object_store::Error::NotFound { .. } => permanent(format!("{path} does not exist: run {STAGE} first")),
        e => StageError::Transient { stage: STAGE, message: format!("cannot read {path}: {e}") },
    })?;
    let reader = crate::ingest::store::RangeReader::uncounted(store, path.clone(), meta.size);
    // A failed ranged read (the store down, a dropped connection) is worth retrying; anything
    // else the reader finds is a corrupt file.
    let corrupt = |e: parquet::errors::ParquetError| match e {
        parquet::errors::ParquetError::External(e) => StageError::Transient { stage: STAGE, message: format!("cannot read {path}: {e}") },
        e => permanent(format!("corrupt {path}: {e}")),
    };
    let builder = parquet::arrow::ParquetRecordBatchStreamBuilder::new(reader).await.map_err(corrupt)?;
    let total = builder.metadata().file_metadata().num_rows().max(0) as u64;
    let mut stream = builder.with_batch_size(8192).build().map_err(corrupt)?;
    let mut out = Vec::new();
    while let Some(b) = stream.try_next().await.map_err(corrupt)? {
        let status = b.column_by_name("status").and_then(|c| c.as_any().downcast_ref::<StringArray>()).ok_or_else(|| permanent(format!("unexpected columns in {path}: no status")))?;
        let keep: arrow::array::BooleanArray = (0..b.num_rows()).map(|i| Some(status.value(i) == Status::Candidate.name())).collect();
        let b = arrow::compute::filter_record_batch(&b, &keep).map_err(|e| permanent(format!("corrupt {path}: {e}")))?;
        decode_batch(&b, &mut out).map_err(|e| permanent(format!("unexpected columns in {path}: {e}")))?;
    }
    Ok((out, total))
}

fn decode_batch(b: &RecordBatch, out: &mut Vec<CandidateRecord>) -> Result<(), String> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Float64Type, UInt32Type, UInt8Type};
    let col = |n: &str| b.column_by_name(n).ok_or_else(|| format!("missing column {n}"));
    let s = |n: &str| -> Result<&StringArray, String> { col(n)?.as_any().downcast_ref::<StringArray>().ok_or(format!("{n} is not utf8")) };
    let f = |n: &str| -> Result<&arrow::array::PrimitiveArray<Float64Type>, String> { col(n)?.as_primitive_opt::<Float64Type>().ok_or(format!("{n} is not f64")) };
    let u = |n: &str| -> Result<&arrow::array::PrimitiveArray<UInt32Type>, String> { col(n)?.as_primitive_opt::<UInt32Type>().ok_or(format!("{n} is not u32")) };
    let (id, star, field, status, reason, sites, json) = (s("candidate_id")?, s("star")?, s("field")?, s("status")?, s("reason")?, s("sites")?, s("result_json")?);
    let (as_of, dchi, trise, slope, t0, teff, gdchi) = (f("as_of")?, f("bl_delta_chi2")?, f("bl_t_rise")?, f("bl_slope")?, f("grid_t0")?, f("grid_teff")?, f("grid_delta_chi2")?);
    let (n_valid, n_high) = (u("n_valid")?, u("n_high")?);
    let regime = col("grid_regime")?.as_primitive_opt::<UInt8Type>().ok_or("grid_regime is not u8")?;
    let diag = col("diagnosis")?.as_fixed_size_list_opt().ok_or("diagnosis is not a fixed-size list")?;
    for i in 0..b.num_rows() {
        let d = diag.value(i);
        let d = d.as_primitive_opt::<Float64Type>().ok_or("diagnosis items are not f64")?;
        out.push(CandidateRecord {
            candidate_id: id.value(i).into(),
            star: star.value(i).into(),
            field: field.value(i).into(),
            as_of: as_of.value(i),
            status: status.value(i).into(),
            reason: (!reason.is_null(i)).then(|| reason.value(i).to_string()),
            sites: sites.value(i).split(',').filter(|x| !x.is_empty()).map(String::from).collect(),
            n_valid: n_valid.value(i),
            n_high: n_high.value(i),
            bl_delta_chi2: dchi.value(i),
            bl_t_rise: trise.value(i),
            bl_slope: slope.value(i),
            grid_t0: t0.value(i),
            grid_teff: teff.value(i),
            grid_regime: regime.value(i),
            grid_delta_chi2: gdchi.value(i),
            diagnosis: d.values().to_vec(),
            result_json: json.value(i).into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;

    #[test]
    fn a_field_entry_overrides_its_cadence_thresholds() {
        let mut t = FieldThresholds::default();
        assert_eq!(t.for_field(Field(2)).n_high, 10);
        assert_eq!(t.for_field(Field(4)).n_high, 5);
        t.per_field.insert(Field(4), AlertParams { n_high: 7, ..t.by_cadence(Field(4)).clone() });
        assert_eq!(t.for_field(Field(4)).n_high, 7);
        assert_eq!(t.by_cadence(Field(4)).n_high, 5);
        assert_eq!(t.for_field(Field(2)).n_high, 10);
    }

    #[test]
    fn since_uses_the_newest_earlier_run_and_its_oldest_site() {
        let mut s = WatermarkState::default();
        assert_eq!(s.since(100.0), f64::NEG_INFINITY);
        s.record(100.0, BTreeMap::from([("KMTA".into(), 99.5), ("KMTC".into(), 99.9)]));
        s.record(101.0, BTreeMap::from([("KMTA".into(), 100.5), ("KMTC".into(), 100.2)]));
        assert_eq!(s.since(100.0), f64::NEG_INFINITY, "re-running the first as_of searches as before");
        assert_eq!(s.since(101.0), 99.5);
        assert_eq!(s.since(102.0), 100.2);
        s.record(100.5, BTreeMap::from([("KMTA".into(), 100.4)]));
        assert_eq!(s.runs.iter().map(|e| e.as_of).collect::<Vec<_>>(), vec![100.0, 100.5, 101.0]);
        // A run that saw no data (an empty entry, as older versions stored one) is skipped.
        s.record(102.0, BTreeMap::new());
        assert_eq!(s.since(103.0), 100.2, "a night without data does not reset the watermark");
    }

    /// The watermarks read back are the epochs written, bit for bit (serde_json's default float
    /// parser was off by an ulp for some: 10764.911798192921 came back 10764.91179819292, below
    /// the epoch, so the rows at the watermark were read as new again at the next run).
    #[test]
    fn watermarks_round_trip_bit_for_bit() {
        let mut s = WatermarkState::default();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut epochs = vec![10764.911798192921, 10763.808319172651];
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            epochs.push(10_000.0 + (x >> 11) as f64 / (1u64 << 53) as f64 * 2000.0);
        }
        for (i, t) in epochs.iter().enumerate() {
            s.record(i as f64, BTreeMap::from([("KMTC".to_string(), *t)]));
        }
        let back: WatermarkState = serde_json::from_slice(&serde_json::to_vec_pretty(&s).unwrap()).unwrap();
        for (a, b) in s.runs.iter().zip(&back.runs) {
            assert_eq!(a.sites["KMTC"].to_bits(), b.sites["KMTC"].to_bits(), "{} came back {}", a.sites["KMTC"], b.sites["KMTC"]);
        }
    }

    #[tokio::test]
    async fn a_run_after_a_night_without_data_searches_only_stars_with_new_points() {
        let dir = tempfile::tempdir().unwrap();
        let (store, root) = ingested(dir.path()).await;
        let p = AlertParams::low_cadence();
        // As a replay runs: through the photometry cache, which holds the whole season and
        // gives each run the stars with points in (since, as_of].
        let cache = crate::cache::PhotometryCache::new();
        let find_candidates = |c: RunCtx, p: &AlertParams| {
            let (p, cache) = (p.clone(), &cache);
            async move { find_candidates_with(&c, &p, Some(cache)).await }
        };
        // The event (peak 8192) is a candidate on day 20 of the season...
        find_candidates(ctx(&store, &root, 8200.0), &p).await.unwrap();
        assert_eq!(status_of(&store, &root, 8200.0).await.as_deref(), Some("candidate"));
        // ...then two runs before the night's points (at .55-.70): no new data for either.
        for as_of in [8200.3, 8200.4] {
            let out = find_candidates(ctx(&store, &root, as_of), &p).await.unwrap();
            assert_eq!(out.since, 8199.7, "as_of {as_of}");
            assert_eq!(status_of(&store, &root, as_of).await, None, "as_of {as_of}: a star without new points is not scored again");
        }
        let state = read_state(store.as_ref(), &state_path(&root, 2018, Field(14))).await.unwrap();
        assert_eq!(state.runs.iter().map(|e| e.sites.get("KMTC").copied()).collect::<Vec<_>>(), vec![Some(8199.7); 3], "the watermark is carried over");
        // The night's points arrive: searched again.
        find_candidates(ctx(&store, &root, 8201.0), &p).await.unwrap();
        assert_eq!(status_of(&store, &root, 8201.0).await.as_deref(), Some("candidate"));
    }

    /// A pySIS file of one star: `points` are (HJD - 2450000, flux), brightening positive.
    fn pysis(points: &[(f64, f64)]) -> String {
        let mut s = String::from("# HJD  \\Delta_flux flux_err  mag  mag_err  fwhm  sky  secz\n");
        for &(t, f) in points {
            let mag = 19.0 - 2.5 * ((3000.0 + f) / 3000.0).log10();
            s += &format!("{t:.5} {:.2} 40.00 {mag:.4} 0.0200 4.50 1000.0 1.20\n", -f);
        }
        s
    }

    /// Two seasons of a star, four points a night; in the second an event peaks 12 days after
    /// the season's first night, so the season alone holds no baseline before its window.
    fn two_seasons(dir: &std::path::Path) {
        let mut rng_state = 42u64;
        let mut noise = || {
            rng_state = rng_state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((rng_state >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 2.0 * 40.0 * 1.7
        };
        let mut pts = vec![];
        for season_start in [7815.0, 8180.0] {
            for night in 0..150 {
                for k in 0..4 {
                    let t: f64 = season_start + night as f64 + 0.55 + 0.05 * k as f64;
                    let u0: f64 = 0.3;
                    let tau: f64 = (t - 8192.0) / 25.0;
                    let u = (u0 * u0 + tau * tau).sqrt();
                    let a = (u * u + 2.0) / (u * (u * u + 4.0).sqrt());
                    let f = if season_start > 8000.0 { 2000.0 * (a - 1.0) } else { 0.0 };
                    pts.push((t, f + noise()));
                }
            }
        }
        let star = dir.join("KB-early");
        std::fs::create_dir_all(&star).unwrap();
        std::fs::write(star.join("KMTC14_I.pysis"), pysis(&pts)).unwrap();
    }

    async fn ingested(dir: &std::path::Path) -> (Arc<dyn ObjectStore>, Path) {
        let inbox = dir.join("inbox");
        two_seasons(&inbox);
        let o = crate::store::open_store(dir.join("store").to_str().unwrap(), true).unwrap();
        let ps = PhotometryStore::new(o.store.clone(), o.prefix.clone());
        let r = crate::ingest::ingest_location(inbox.to_str().unwrap(), &ps, &crate::ingest::MemoryLedger::new(), &crate::ingest::IngestOptions::default()).await.unwrap();
        assert_eq!(r.quarantined() + r.failed(), 0, "{:?}", r.files);
        (o.store, o.prefix)
    }

    fn ctx(store: &Arc<dyn ObjectStore>, root: &Path, as_of: f64) -> RunCtx {
        RunCtx { run_id: format!("t-{as_of}"), field: Field(14), season: 2018, as_of: Some(as_of), store: store.clone(), root: root.clone() }
    }

    async fn status_of(store: &Arc<dyn ObjectStore>, root: &Path, as_of: f64) -> Option<String> {
        read_candidates(store.as_ref(), root, 2018, Field(14), as_of).await.unwrap().into_iter().next().map(|c| c.status)
    }

    #[tokio::test]
    async fn an_event_at_the_start_of_a_season_is_found_with_the_earlier_seasons_baseline() {
        let dir = tempfile::tempdir().unwrap();
        let (store, root) = ingested(dir.path()).await;
        // Day 8 of the season, four days before the peak.
        let as_of = 8188.0;
        let without = AlertParams { use_history: false, ..AlertParams::low_cadence() };
        find_candidates(&ctx(&store, &root, as_of), &without).await.unwrap();
        assert_eq!(status_of(&store, &root, as_of).await, None, "the season alone has no baseline below the event");
        find_candidates(&ctx(&store, &root, as_of), &AlertParams::low_cadence()).await.unwrap();
        assert_eq!(status_of(&store, &root, as_of).await.as_deref(), Some("candidate"));
        let rows = read_candidates(store.as_ref(), &root, 2018, Field(14), as_of).await.unwrap();
        let r: serde_json::Value = serde_json::from_str(&rows[0].result_json).unwrap();
        assert_eq!(r["history"]["nights"][1], 150, "the whole earlier season is the history: {}", r["history"]);
        assert_eq!(r["history"]["sites_used"], 2);
        assert!(r["baseline"][1]["median"].as_f64().unwrap().abs() < 30.0, "{}", r["baseline"][1]);
    }

    #[tokio::test]
    async fn the_history_state_is_the_same_whatever_the_chain_of_runs() {
        let dir = tempfile::tempdir().unwrap();
        let (store, root) = ingested(dir.path()).await;
        let p = AlertParams::low_cadence();
        let bytes = |t: Option<f64>| {
            let (store, root) = (store.clone(), root.clone());
            async move { store.get(&history_path(&root, 2018, Field(14), t)).await.unwrap().bytes().await.unwrap() }
        };
        // Day by day...
        for t in (8181..=8240).map(f64::from) {
            find_candidates(&ctx(&store, &root, t), &p).await.unwrap();
        }
        let chained = bytes(Some(8240.0)).await;
        let verdicts = status_of(&store, &root, 8240.0).await;
        // ...only the newest earlier state is kept...
        let dir_path = Path::from(history_dir(&root, 2018, Field(14)));
        let mut names: Vec<String> = ctx(&store, &root, 0.0).store.list(Some(&dir_path)).map_ok(|m| m.location.filename().unwrap().to_string()).try_collect().await.unwrap();
        names.sort();
        assert_eq!(names, vec!["asof-8239.00000.parquet", "asof-8240.00000.parquet", "start.parquet"]);
        // ...a re-run (a killed run started again) writes the same bytes...
        find_candidates(&ctx(&store, &root, 8240.0), &p).await.unwrap();
        assert_eq!(bytes(Some(8240.0)).await, chained);
        assert_eq!(status_of(&store, &root, 8240.0).await, verdicts);
        // ...and so does a run from the season's start state, and one from nothing at all.
        store.delete(&history_path(&root, 2018, Field(14), Some(8239.0))).await.unwrap();
        find_candidates(&ctx(&store, &root, 8240.0), &p).await.unwrap();
        assert_eq!(bytes(Some(8240.0)).await, chained);
        let start = bytes(None).await;
        store.delete(&history_path(&root, 2018, Field(14), None)).await.unwrap();
        store.delete(&history_path(&root, 2018, Field(14), Some(8240.0))).await.unwrap();
        find_candidates(&ctx(&store, &root, 8240.0), &p).await.unwrap();
        assert_eq!(bytes(Some(8240.0)).await, chained);
        assert_eq!(bytes(None).await, start);
    }

    #[test]
    fn paths_and_ids_are_stable() {
        assert_eq!(candidates_path(&Path::from("lake"), 2025, Field(14), 10800.5).as_ref(), "lake/candidates/season=2025/field=BLG14/asof-10800.50000.parquet");
        assert_eq!(candidate_id(Field(2), "BLG02.0000012", 10800.123456), "BLG02:BLG02.0000012:10800.12346");
    }
}
