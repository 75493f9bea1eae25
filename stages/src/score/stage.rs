//! The `score` stage's I/O shell: the candidates of one (field, as_of) and their photometry go
//! through [`crate::preprocess::prepare`] (the same code that built the training set) and the
//! ONNX model; probabilities and verdicts are written to `verdicts/`.
//!
//! # Layout
//! ```text
//! <root>/verdicts/season=2025/field=BLG14/asof-10800.50000.model-<sha256[..12]>.parquet
//! ```
//! One file per (field, as_of, model), written with one put; re-running rewrites identical
//! bytes, and scoring the same candidates with another model adds another file.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, AsArray, Float32Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field as ArrowField, Float32Type, Schema};
use async_trait::async_trait;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use super::{hold, Hold, Probabilities, Scorer};
use crate::alertfinder::stage::{read_candidate_rows, CandidateRecord};
use crate::alertfinder::N_DIAGNOSIS;
use crate::cache::PhotometryCache;
use crate::ingest::PhotometryStore;
use crate::photometry::Field;
use crate::preprocess::{prepare, Candidate, PreprocessStats};
use crate::stage::{Dataset, RunCtx, Stage, StageError, StageReport};

pub const STAGE: &str = "score";

/// The stage: one scorer (one ONNX Runtime session) for the whole process.
#[derive(Debug, Clone)]
pub struct ScoreStage {
    pub scorer: Arc<Scorer>,
    /// The model's preprocessing statistics.
    pub stats: PreprocessStats,
    pub cache: PhotometryCache,
}

impl ScoreStage {
    /// The preprocessing statistics saved with the scorer's model, parsed once per process
    /// (the pipeline builds a score stage per run). A model without them is refused, except the
    /// untrained stand-in, which was exported against identity statistics.
    pub fn stats_of(scorer: &Scorer) -> Result<PreprocessStats, StageError> {
        let model = scorer.model();
        let stats = match &model.preprocess_stats {
            Some(json) => PreprocessStats::from_json(json)
                .map_err(|e| permanent(format!("the preprocessing statistics of model {} are invalid: {e}", model.path.display())))?,
            None if model.kind == "standin" => {
                tracing::warn!(model = %model.path.display(), "the stand-in model has no preprocessing statistics; using identity statistics");
                PreprocessStats::identity_prefix(model.n_diag)
            }
            None => {
                return Err(permanent(format!(
                    "model {} has no preprocessing statistics (metadata lensnet.preprocess_stats or {})",
                    model.path.display(),
                    model.path.with_extension("preprocess.json").display()
                )))
            }
        };
        if stats.n_diag() != model.n_diag {
            return Err(permanent(format!(
                "model {} takes {} diagnosis features but its preprocessing statistics name {}",
                model.path.display(),
                model.n_diag,
                stats.n_diag()
            )));
        }
        Ok(stats)
    }
}

/// A stored candidate's diagnosis as the full vector, for a model that takes the first `need`
/// values. Candidates written before the list grew (47 values) still serve a model trained on
/// those 47 (the rest is zero and never read); a model that takes more cannot use them.
fn diagnosis_for_model(r: &CandidateRecord, need: usize) -> Result<[f64; N_DIAGNOSIS], String> {
    let have = r.diagnosis.len();
    if have < need || have > N_DIAGNOSIS {
        return Err(format!("candidate {} has {have} diagnosis values; the model takes {need} (of at most {N_DIAGNOSIS})", r.candidate_id));
    }
    let mut diag = [0.0; N_DIAGNOSIS];
    diag[..have].copy_from_slice(&r.diagnosis);
    Ok(diag)
}

fn transient(message: String) -> StageError {
    StageError::Transient { stage: STAGE, message }
}

fn permanent(message: String) -> StageError {
    StageError::Permanent { stage: STAGE, message }
}

#[async_trait]
impl Stage for ScoreStage {
    fn name(&self) -> &'static str {
        STAGE
    }
    fn reads(&self) -> &'static [Dataset] {
        &[Dataset::Candidates, Dataset::Photometry]
    }
    fn writes(&self) -> &'static [Dataset] {
        &[Dataset::Verdicts]
    }
    async fn run(&self, ctx: &RunCtx) -> Result<StageReport, StageError> {
        let as_of = ctx.as_of.ok_or_else(|| permanent("a score run needs its as-of time".into()))?;
        let (records, _) = read_candidate_rows(ctx.store.clone(), &ctx.root, ctx.season, ctx.field, as_of).await?;
        let photometry = PhotometryStore::new(ctx.store.clone(), ctx.root.clone());
        // Streaming, the candidates go through in batches whose photometry fits the budget
        // (a candidate's stored rows estimated from its valid points), in the candidates file's
        // order (bucket by bucket): a field's candidates are never held with their curves at once.
        let chunks = match self.cache.streaming_budget() {
            Some(budget) => score_batches(&records, (budget / crate::alertfinder::nightly::BYTES_PER_ROW).max(1)),
            None => vec![0..records.len()],
        };
        let (mut ids, mut star_ids, mut probs, mut held) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for chunk in chunks {
            let (i, s, p, f) = self.score_chunk(&photometry, ctx, as_of, &records[chunk]).await?;
            ids.extend(i);
            star_ids.extend(s);
            probs.extend(p);
            held.extend(f);
        }
        let model = self.scorer.model();
        let object = verdicts_path(&ctx.root, ctx.season, ctx.field, as_of, &model.sha256);
        let by_score = self.scorer.verdicts(&probs);
        let classes = self.scorer.final_verdicts(&probs, &held);
        let bytes = verdicts_parquet(self.scorer.as_ref(), &ids, &star_ids, &probs, &by_score, &classes, &held)
            .map_err(|e| permanent(format!("cannot encode {object}: {e}")))?;
        ctx.store.put(&object, PutPayload::from(bytes)).await.map_err(|e| transient(format!("cannot write {object}: {e}")))?;
        // Yes kept as maybe, by check.
        let kept = |f: &dyn Fn(&Hold) -> bool| {
            (0..classes.len()).filter(|&i| by_score[i] != classes[i] && held[i].as_ref().is_some_and(f)).count()
        };
        let fast_kept = kept(&|h| matches!(h, Hold::FastRise(_)));
        let one_night_kept = kept(&|h| matches!(h, Hold::OneNight { .. }));
        let count = |c: super::Class| classes.iter().filter(|&&x| x == c).count();
        tracing::info!(field = %ctx.field, as_of, scored = probs.len(), yes = count(super::Class::Yes), maybe = count(super::Class::Maybe), "score finished");
        let mut report = StageReport {
            rows_in: records.len() as u64,
            rows_out: probs.len() as u64,
            inputs: serde_json::json!({ "candidates": crate::alertfinder::stage::candidates_path(&ctx.root, ctx.season, ctx.field, as_of).to_string() }),
            outputs: serde_json::json!({ "objects": [object.to_string()] }),
            details: serde_json::Map::from_iter([
                ("yes".to_string(), serde_json::json!(count(super::Class::Yes))),
                ("maybe".to_string(), serde_json::json!(count(super::Class::Maybe))),
                ("no".to_string(), serde_json::json!(count(super::Class::No))),
                ("fast_rise_kept_as_maybe".to_string(), serde_json::json!(fast_kept)),
                ("one_night_kept_as_maybe".to_string(), serde_json::json!(one_night_kept)),
            ]),
        };
        self.scorer.fill_report(&mut report);
        Ok(report)
    }
}

/// Consecutive batches of `records` whose estimated stored rows (valid points x 5/4, at
/// least one row each) stay within `budget_rows`; a batch holds at least one candidate.
fn score_batches(records: &[CandidateRecord], budget_rows: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut rows) = (0usize, 0usize);
    for (i, r) in records.iter().enumerate() {
        let n = (r.n_valid as usize * 5 / 4).max(1);
        if i > start && rows + n > budget_rows {
            out.push(start..i);
            (start, rows) = (i, 0);
        }
        rows += n;
    }
    if start < records.len() {
        out.push(start..records.len());
    }
    out
}

/// Candidate ids, star ids, probabilities and holds ([`hold`]), in the batch's order.
type Scored = (Vec<String>, Vec<String>, Vec<Probabilities>, Vec<Option<Hold>>);

impl ScoreStage {
    /// Read the photometry of one batch of candidates, prepare and score them.
    async fn score_chunk(&self, photometry: &PhotometryStore, ctx: &RunCtx, as_of: f64, records: &[CandidateRecord]) -> Result<Scored, StageError> {
        if records.is_empty() {
            return Ok((Vec::new(), Vec::new(), Vec::new(), Vec::new()));
        }
        let ids: Vec<String> = records.iter().map(|r| r.star.clone()).collect();
        let photometry_of_field = self.cache.stars(photometry, ctx.season, ctx.field, &ids).await.map_err(|e| {
            if e.is_retryable() { transient(e.to_string()) } else { permanent(e.to_string()) }
        })?;
        let by_id: HashMap<&str, usize> = photometry_of_field.stars.iter().enumerate().map(|(i, s)| (s.star.0.as_str(), i)).collect();
        let mut plan: Vec<(String, usize, [f64; N_DIAGNOSIS])> = Vec::with_capacity(records.len());
        for r in records {
            let Some(&i) = by_id.get(r.star.as_str()) else {
                return Err(permanent(format!("candidate {} names star {} that has no photometry", r.candidate_id, r.star)));
            };
            let diag = diagnosis_for_model(r, self.stats.n_diag())
                .map_err(|e| permanent(format!("{e}: re-run the alertfinder of season {} field {} to rewrite its candidates", ctx.season, ctx.field)))?;
            plan.push((r.candidate_id.clone(), i, diag));
        }
        drop(by_id);
        let nights: Vec<Option<u32>> = records.iter().map(|r| super::hold::high_nights(&r.result_json)).collect();
        let scorer = self.scorer.clone();
        let stats = self.stats.clone();
        // prepare (polars) and ONNX Runtime are CPU-bound: keep them off the async workers.
        tokio::task::spawn_blocking(move || -> Result<Scored, StageError> {
            let cands: Vec<Candidate<'_>> =
                plan.into_iter().map(|(id, i, diag)| Candidate { id, star: &photometry_of_field.stars[i], now: as_of, diag, label: None }).collect();
            let prepared = prepare(&cands, &stats).map_err(|e| permanent(format!("preprocess: {e}")))?;
            let probs = scorer.score(&prepared.seq, &prepared.diag, prepared.len()).map_err(|e| {
                if e.is_retryable() { transient(e.to_string()) } else { permanent(e.to_string()) }
            })?;
            // `prepare` keeps the input order. Only a "yes" can be held: the checks (the fast
            // rise reads the star's photometry) run for those alone.
            let params = scorer.hold();
            let by_score = scorer.verdicts(&probs);
            let held = cands
                .iter()
                .zip(&nights)
                .zip(&by_score)
                .map(|((c, &n), &v)| if v == super::Class::Yes { hold(c.star, as_of, n, &params) } else { None })
                .collect();
            Ok((prepared.ids, prepared.stars, probs, held))
        })
        .await
        .map_err(|e| permanent(format!("the scoring task died: {e}")))?
    }
}

/// `verdicts/season=../field=../asof-<as_of>.model-<sha12>.parquet`.
pub fn verdicts_path(root: &Path, season: i32, field: Field, as_of: f64, model_sha256: &str) -> Path {
    let sha = &model_sha256[..model_sha256.len().min(12)];
    let p = format!("verdicts/season={season}/field={field}/asof-{as_of:.5}.model-{sha}.parquet");
    if root.as_ref().is_empty() { Path::from(p) } else { Path::from(format!("{root}/{p}")) }
}

/// `by_score`: the binary score's verdicts; `classes`: the final ones ([`Scorer::final_verdicts`]).
#[allow(clippy::too_many_arguments)]
fn verdicts_parquet(
    scorer: &Scorer,
    ids: &[String],
    stars: &[String],
    probs: &[Probabilities],
    by_score: &[super::Class],
    classes: &[super::Class],
    held: &[Option<Hold>],
) -> Result<Vec<u8>, parquet::errors::ParquetError> {
    let note = |i: usize| match (by_score[i], classes[i], held.get(i).and_then(|f| f.as_ref())) {
        (super::Class::Yes, super::Class::Maybe, Some(f)) => format!("kept as maybe: {}", f.describe()),
        _ => String::new(),
    };
    let f32col = |f: &dyn Fn(&Probabilities) -> f32| -> Arc<dyn Array> { Arc::new(Float32Array::from_iter_values(probs.iter().map(f))) };
    let cols: Vec<(&str, Arc<dyn Array>)> = vec![
        ("candidate_id", Arc::new(StringArray::from_iter_values(ids))),
        ("star", Arc::new(StringArray::from_iter_values(stars))),
        ("p_yes", f32col(&|p| p.yes)),
        ("p_maybe", f32col(&|p| p.maybe)),
        ("p_no", f32col(&|p| p.no)),
        ("binary", f32col(&|p| p.binary)),
        ("verdict", Arc::new(StringArray::from_iter_values(classes.iter().map(|c| c.as_str())))),
        // Why a verdict is not the binary score's ("kept as maybe: fast rise: ..."); empty otherwise.
        ("note", Arc::new(StringArray::from_iter_values((0..ids.len()).map(note)))),
    ];
    let schema = Arc::new(Schema::new(cols.iter().map(|(n, a)| ArrowField::new(*n, a.data_type().clone(), false)).collect::<Vec<_>>()));
    let batch = RecordBatch::try_new(schema.clone(), cols.into_iter().map(|c| c.1).collect())?;
    let t = scorer.thresholds();
    let kv = |k: &str, v: String| parquet::file::metadata::KeyValue::new(k.to_string(), v);
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
        .set_key_value_metadata(Some(vec![
            kv("lensnet.model_sha256", scorer.model().sha256.clone()),
            kv("lensnet.threshold_purity", t.purity.to_string()),
            kv("lensnet.threshold_recall", t.recall.to_string()),
        ]))
        .build();
    let mut buf = Vec::new();
    let mut w = ArrowWriter::try_new(&mut buf, schema, Some(props))?;
    w.write(&batch)?;
    w.close()?;
    Ok(buf)
}

/// One row of a verdicts file.
#[derive(Debug, Clone, PartialEq)]
pub struct VerdictRecord {
    pub candidate_id: String,
    pub star: String,
    pub probs: Probabilities,
    pub verdict: String,
    /// Why the verdict is not the binary score's (files written before the column: empty).
    pub note: String,
}

/// A verdicts file with the model and thresholds it was written with.
#[derive(Debug, Clone, PartialEq)]
pub struct VerdictFile {
    pub model_sha256: String,
    pub threshold_purity: f64,
    pub threshold_recall: f64,
    pub rows: Vec<VerdictRecord>,
}

/// Read the verdicts of one (field, as_of, model).
pub async fn read_verdicts(store: &dyn ObjectStore, root: &Path, season: i32, field: Field, as_of: f64, model_sha256: &str) -> Result<VerdictFile, StageError> {
    let path = verdicts_path(root, season, field, as_of, model_sha256);
    let bytes = crate::stage::read_object(store, &path, STAGE).await?;
    let corrupt = |e: String| permanent(format!("corrupt {path}: {e}"));
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(|e| corrupt(e.to_string()))?;
    let meta: HashMap<String, String> = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .map(|kv| kv.iter().filter_map(|k| k.value.clone().map(|v| (k.key.clone(), v))).collect())
        .unwrap_or_default();
    let num = |k: &str| meta.get(k).and_then(|v| v.parse::<f64>().ok()).ok_or_else(|| corrupt(format!("metadata {k} missing")));
    let mut out = VerdictFile {
        model_sha256: meta.get("lensnet.model_sha256").cloned().ok_or_else(|| corrupt("metadata lensnet.model_sha256 missing".into()))?,
        threshold_purity: num("lensnet.threshold_purity")?,
        threshold_recall: num("lensnet.threshold_recall")?,
        rows: Vec::new(),
    };
    for batch in builder.build().map_err(|e| corrupt(e.to_string()))? {
        let b = batch.map_err(|e| corrupt(e.to_string()))?;
        let s = |n: &str| -> Result<&StringArray, StageError> {
            b.column_by_name(n).and_then(|c| c.as_any().downcast_ref::<StringArray>()).ok_or_else(|| corrupt(format!("column {n} missing or not utf8")))
        };
        let f = |n: &str| -> Result<&arrow::array::PrimitiveArray<Float32Type>, StageError> {
            b.column_by_name(n)
                .filter(|c| c.data_type() == &DataType::Float32)
                .map(|c| c.as_primitive::<Float32Type>())
                .ok_or_else(|| corrupt(format!("column {n} missing or not f32")))
        };
        let (id, star, verdict) = (s("candidate_id")?, s("star")?, s("verdict")?);
        let (y, m, n, bin) = (f("p_yes")?, f("p_maybe")?, f("p_no")?, f("binary")?);
        let note = b.column_by_name("note").and_then(|c| c.as_any().downcast_ref::<StringArray>());
        for i in 0..b.num_rows() {
            out.rows.push(VerdictRecord {
                candidate_id: id.value(i).to_string(),
                star: star.value(i).to_string(),
                probs: Probabilities { yes: y.value(i), maybe: m.value(i), no: n.value(i), binary: bin.value(i) },
                verdict: verdict.value(i).to_string(),
                note: note.map(|c| c.value(i).to_string()).unwrap_or_default(),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n_valid: u32) -> CandidateRecord {
        CandidateRecord {
            candidate_id: format!("c{n_valid}"),
            star: "s".into(),
            field: "BLG14".into(),
            as_of: 0.0,
            status: "candidate".into(),
            reason: None,
            sites: Vec::new(),
            n_valid,
            n_high: 0,
            bl_delta_chi2: 0.0,
            bl_t_rise: 0.0,
            bl_slope: 0.0,
            grid_t0: 0.0,
            grid_teff: 0.0,
            grid_regime: 0,
            grid_delta_chi2: 0.0,
            diagnosis: Vec::new(),
            result_json: String::new(),
        }
    }

    #[test]
    fn score_batches_cover_every_candidate_once_within_the_budget() {
        // Estimated rows: 125, 250, 12, 1 (no valid point), 1250 (alone over the budget), 10.
        let records: Vec<CandidateRecord> = [100, 200, 10, 0, 1000, 8].into_iter().map(record).collect();
        let batches = score_batches(&records, 400);
        assert_eq!(batches, vec![0..4, 4..5, 5..6]);
        let est = |r: &std::ops::Range<usize>| records[r.clone()].iter().map(|c| (c.n_valid as usize * 5 / 4).max(1)).sum::<usize>();
        for b in &batches {
            assert!(b.len() == 1 || est(b) <= 400, "{b:?} holds {} rows", est(b));
        }
        assert_eq!(score_batches(&records, usize::MAX), vec![0..6]);
        assert!(score_batches(&[], 400).is_empty());
    }

    #[test]
    fn candidates_of_the_first_feature_list_serve_a_model_of_it_only() {
        use crate::alertfinder::N_DIAGNOSIS_V1;
        let mut old = record(10);
        old.diagnosis = (0..N_DIAGNOSIS_V1).map(|j| j as f64).collect();
        let d = diagnosis_for_model(&old, N_DIAGNOSIS_V1).expect("a 47-value candidate serves a 47-value model");
        assert_eq!(&d[..N_DIAGNOSIS_V1], &old.diagnosis[..]);
        let e = diagnosis_for_model(&old, N_DIAGNOSIS).unwrap_err();
        assert!(e.contains("c10") && e.contains("47") && e.contains(&N_DIAGNOSIS.to_string()), "{e}");
        let mut new = record(11);
        new.diagnosis = vec![1.0; N_DIAGNOSIS];
        assert_eq!(diagnosis_for_model(&new, N_DIAGNOSIS_V1).unwrap(), [1.0; N_DIAGNOSIS]);
        new.diagnosis.push(2.0);
        assert!(diagnosis_for_model(&new, N_DIAGNOSIS_V1).is_err(), "more values than this code knows");
    }
}
