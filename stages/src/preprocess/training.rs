//! The training (and test) set: the simulator, the AlertFinder core and [`prepare`] exactly as
//! in production, at many real-time "now"s, written as tensors + labels Parquet.
//!
//! Per chunk of `chunk_stars` stars, a (season, field, simulator seed) is drawn from the master
//! seed, so many seasons, fields and weather/noise realisations are covered. For every star,
//! `nows_per_star` real-time cut-offs are drawn: most around the star's peak time
//! (`t0 + u · width`, `u ~ U(-1.5, 1.5)`, width = tE for events, 3 days otherwise), so that "now"
//! falls before, at and after the peak, plus one uniformly in the season; each is snapped to
//! the last I-band epoch at or before it (a run happens when data arrive). The data after `now`
//! are cut, then, independently per cut-off, one site may be dropped entirely
//! (`site_drop_prob`) and a gap of 1-5 days ending 0.5-10 days before `now` may be cut
//! (`gap_prob`). The AlertFinder scans the result with the field's thresholds (high-cadence
//! ones for 4/hr fields), the star's history up to the search window (as the stage keeps it)
//! and the watermark one day before `now`; only candidates are kept,
//! labelled with the star's vetting label (what a human would decide from the whole season,
//! i.e. the answer a real-time classifier should anticipate).
//!
//! The preprocessing statistics are fitted on the first `fit_candidates` candidates unless
//! given (the test set must be exported with the training set's statistics).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, Float64Array, Int32Array, StringArray, UInt64Array};
use rand::Rng;
use rayon::prelude::*;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::parquet::{io, TensorWriter};
use super::{prepare, Candidate, PreprocessError, PreprocessStats};
use crate::alertfinder::{diagnosis_vector, scan_star_with, NightBuffers, Scratch, StarHistory, Status, N_DIAGNOSIS};
use crate::photometry::{Band, Field, MergedCurve, SiteCurve, StarCurves};
use crate::simulate::{rng_for, ClassMix, Season, SimConfig, Truth};

/// What to export.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// Output folder (created); gets `<file_name>`, `preprocess_stats.json`, `summary.json`.
    pub out_dir: PathBuf,
    /// Stars simulated in all.
    pub stars: u64,
    /// Master seed: chunk seasons, fields and simulator seeds, cut-offs and augmentation all
    /// derive from it. Use disjoint seeds for training and test sets.
    pub seed: u64,
    /// Seasons drawn from.
    pub seasons: Vec<i32>,
    /// Fields drawn from.
    pub fields: Vec<Field>,
    /// AlertFinder parameters by field (the pipeline passes its configured ones).
    pub thresholds: crate::alertfinder::stage::FieldThresholds,
    /// Stars per simulated chunk (one season, field and simulator seed).
    pub chunk_stars: u64,
    /// Real-time cut-offs per star.
    pub nows_per_star: usize,
    /// Class mix of the simulated stars.
    pub mix: ClassMix,
    /// Probability that a cut-off loses one whole site.
    pub site_drop_prob: f64,
    /// Probability that a cut-off gets a 1-5 day gap shortly before `now`.
    pub gap_prob: f64,
    /// Statistics to standardise with; None = fit on the first `fit_candidates` candidates.
    pub stats: Option<PreprocessStats>,
    /// Candidates the statistics are fitted on when `stats` is None.
    pub fit_candidates: usize,
    /// Stop after this many candidates (None = all).
    pub max_candidates: Option<u64>,
    /// Parquet file name inside `out_dir`.
    pub file_name: String,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            out_dir: PathBuf::from(".lensnet/training"),
            stars: 20_000,
            seed: 1,
            seasons: (2016..=2025).collect(),
            // Prime, sub-prime, low and wide cadences, weighted towards the faster ones.
            fields: vec![Field(2), Field(4), Field(14), Field(14), Field(18), Field(9), Field(12), Field(38)],
            thresholds: Default::default(),
            chunk_stars: 250,
            nows_per_star: 4,
            // Events and their confusers are enriched: most constant stars never become
            // candidates and only cost simulation time.
            mix: ClassMix {
                microlensing: 0.40,
                constant: 0.10,
                variable: 0.18,
                cataclysmic: 0.08,
                flare: 0.06,
                asteroid: 0.06,
                artefact: 0.12,
            },
            site_drop_prob: 0.1,
            gap_prob: 0.15,
            stats: None,
            fit_candidates: 2000,
            max_candidates: None,
            file_name: "tensors.parquet".into(),
        }
    }
}

/// What was exported.
#[derive(Debug, Clone, Serialize)]
pub struct ExportSummary {
    pub parquet: PathBuf,
    pub stats_path: PathBuf,
    /// sha256 of the Parquet file (hex), recorded in the model's metadata.
    pub sha256: String,
    pub seed: u64,
    pub stars: u64,
    pub cutoffs: u64,
    pub candidates: u64,
    /// Candidates per label: yes, maybe, no.
    pub by_label: BTreeMap<String, u64>,
    /// Candidates per simulated class.
    pub by_class: BTreeMap<String, u64>,
    pub seconds: f64,
}

/// One kept candidate with the data it was prepared from.
struct Kept {
    id: String,
    curves: StarCurves,
    now: f64,
    diag: [f64; N_DIAGNOSIS],
    truth: Truth,
    season: i32,
    sim_seed: u64,
    dropped_site: i32,
    gap: bool,
}

/// Run the export; see the module docs.
pub fn export_training_set(opts: &ExportOptions) -> Result<ExportSummary, PreprocessError> {
    let start = Instant::now();
    if opts.seasons.is_empty() || opts.fields.is_empty() || opts.chunk_stars == 0 || opts.nows_per_star == 0 {
        return Err(PreprocessError::Options("seasons, fields, chunk_stars and nows_per_star must be non-empty".into()));
    }
    std::fs::create_dir_all(&opts.out_dir).map_err(|e| io(&opts.out_dir, e))?;
    let parquet = opts.out_dir.join(&opts.file_name);
    let stats_path = opts.out_dir.join("preprocess_stats.json");
    let mut stats = opts.stats.clone();
    let mut writer: Option<TensorWriter> = None;
    let mut pending: Vec<Kept> = Vec::new();
    let mut summary = ExportSummary {
        parquet: parquet.clone(),
        stats_path: stats_path.clone(),
        sha256: String::new(),
        seed: opts.seed,
        stars: 0,
        cutoffs: 0,
        candidates: 0,
        by_label: BTreeMap::new(),
        by_class: BTreeMap::new(),
        seconds: 0.0,
    };
    let n_chunks = opts.stars.div_ceil(opts.chunk_stars);
    for k in 0..n_chunks {
        let stars = opts.chunk_stars.min(opts.stars - k * opts.chunk_stars);
        let (kept, cutoffs) = simulate_chunk(opts, k, stars)?;
        summary.stars += stars;
        summary.cutoffs += cutoffs;
        pending.extend(kept);
        let last = k + 1 == n_chunks
            || opts.max_candidates.is_some_and(|m| summary.candidates + pending.len() as u64 >= m);
        if stats.is_none() && (pending.len() >= opts.fit_candidates || last) {
            let cands = candidates(&pending);
            let fitted = PreprocessStats::fit(&cands)?;
            std::fs::write(&stats_path, fitted.to_json()).map_err(|e| io(&stats_path, e))?;
            stats = Some(fitted);
        }
        if let Some(st) = &stats {
            if let Some(m) = opts.max_candidates {
                pending.truncate(m.saturating_sub(summary.candidates) as usize);
            }
            let w = writer.get_or_insert_with(|| TensorWriter::new(&parquet, st));
            write_chunk(w, &pending, st, &mut summary)?;
            pending.clear();
        }
        tracing::info!(chunk = k, chunks = n_chunks, candidates = summary.candidates, "export chunk done");
        if last {
            break;
        }
    }
    let st = stats.ok_or_else(|| PreprocessError::Options("no statistics could be fitted".into()))?;
    std::fs::write(&stats_path, st.to_json()).map_err(|e| io(&stats_path, e))?;
    let wrote = match writer {
        Some(w) => w.close()?,
        None => false,
    };
    if !wrote {
        return Err(PreprocessError::Options(format!("no candidate found among {} stars", summary.stars)));
    }
    summary.sha256 = sha256_file(&parquet)?;
    summary.seconds = start.elapsed().as_secs_f64();
    let sp = opts.out_dir.join("summary.json");
    let text = serde_json::to_string_pretty(&summary).expect("plain fields always serialise");
    std::fs::write(&sp, text).map_err(|e| io(&sp, e))?;
    Ok(summary)
}

fn candidates(kept: &[Kept]) -> Vec<Candidate<'_>> {
    kept.iter()
        .map(|c| Candidate { id: c.id.clone(), star: &c.curves, now: c.now, diag: c.diag, label: Some(c.truth.label) })
        .collect()
}

fn write_chunk(w: &mut TensorWriter, kept: &[Kept], stats: &PreprocessStats, summary: &mut ExportSummary) -> Result<(), PreprocessError> {
    if kept.is_empty() {
        return Ok(());
    }
    let prepared = prepare(&candidates(kept), stats)?;
    let f64col = |f: &dyn Fn(&Kept) -> f64| -> ArrayRef { Arc::new(kept.iter().map(f).collect::<Float64Array>()) };
    let strcol = |f: &dyn Fn(&Kept) -> String| -> ArrayRef { Arc::new(kept.iter().map(|k| Some(f(k))).collect::<StringArray>()) };
    let extra: Vec<(String, ArrayRef)> = vec![
        ("class".into(), strcol(&|k| k.truth.class.name().to_string())),
        ("subtype".into(), strcol(&|k| k.truth.subtype.to_string())),
        ("label_reason".into(), strcol(&|k| k.truth.label_reason.clone())),
        ("field".into(), strcol(&|k| k.truth.field.name())),
        ("season".into(), Arc::new(kept.iter().map(|k| k.season).collect::<Int32Array>())),
        ("sim_seed".into(), Arc::new(kept.iter().map(|k| k.sim_seed).collect::<UInt64Array>())),
        ("now".into(), f64col(&|k| k.now)),
        ("t0".into(), f64col(&|k| k.truth.t0)),
        ("te".into(), f64col(&|k| k.truth.te)),
        ("u0".into(), f64col(&|k| k.truth.u0)),
        ("source_mag".into(), f64col(&|k| k.truth.source_mag)),
        ("delta_chi2_truth".into(), f64col(&|k| k.truth.stats.delta_chi2)),
        ("dropped_site".into(), Arc::new(kept.iter().map(|k| k.dropped_site).collect::<Int32Array>())),
        ("gap".into(), Arc::new(kept.iter().map(|k| k.gap as i32).collect::<Int32Array>())),
    ];
    w.write(&prepared, extra)?;
    for k in kept {
        summary.candidates += 1;
        *summary.by_label.entry(k.truth.label.name().to_string()).or_default() += 1;
        *summary.by_class.entry(k.truth.class.name().to_string()).or_default() += 1;
    }
    Ok(())
}

/// Simulate chunk `k` and return its candidates and the number of cut-offs scanned.
fn simulate_chunk(opts: &ExportOptions, k: u64, stars: u64) -> Result<(Vec<Kept>, u64), PreprocessError> {
    let mut rng = rng_for(opts.seed, &[0xE7A0, k]);
    let season = opts.seasons[rng.random_range(0..opts.seasons.len())];
    let field = opts.fields[rng.random_range(0..opts.fields.len())];
    let sim_seed: u64 = rng.random();
    let config = SimConfig { season, fields: vec![field], stars, seed: sim_seed, mix: opts.mix, ..SimConfig::default() };
    let sim = Season::new(&config)?;
    let (_, ctx) = sim.schedule(field)?;
    let (lo, hi) = ctx.season;
    let params = opts.thresholds.for_field(field).clone();
    let results: Vec<(Vec<Kept>, u64)> = (0..stars)
        .into_par_iter()
        .map_init(Scratch::default, |scratch, i| -> Result<(Vec<Kept>, u64), PreprocessError> {
            let star = sim.star(field, i)?;
            let mut rng = rng_for(opts.seed, &[0xC0F, k, i]);
            let mut kept = Vec::new();
            let mut cutoffs = 0;
            let t0 = star.truth.t0;
            let width = if star.truth.te.is_finite() && star.truth.te > 0.0 { star.truth.te } else { 3.0 };
            for m in 0..opts.nows_per_star {
                let t = if m + 1 < opts.nows_per_star && t0.is_finite() {
                    t0 + width * rng.random_range(-1.5..1.5)
                } else {
                    rng.random_range(lo + 20.0..hi.max(lo + 21.0))
                };
                let Some(now) = last_epoch_before(&star.curves, t) else { continue };
                let (curves, dropped_site, gap) = cut(&star.curves, now, opts, &mut rng);
                cutoffs += 1;
                let merged = MergedCurve::from_star(&curves, Band::I);
                // As the production stage: the star's history is its nights before the window
                // (a simulated star has one season).
                let mut history = StarHistory::default();
                if params.use_history {
                    history.absorb(&merged.view(), now - params.window_days.max(0.0), &mut NightBuffers::default());
                }
                let r = scan_star_with(&merged.view(), now, now - 1.0, &params, params.use_history.then_some(&history), scratch);
                if r.status != Status::Candidate {
                    continue;
                }
                kept.push(Kept {
                    id: format!("s{}k{k}.{}@{now:.5}", opts.seed, star.curves.star),
                    curves,
                    now,
                    diag: diagnosis_vector(&r),
                    truth: star.truth.clone(),
                    season,
                    sim_seed,
                    dropped_site,
                    gap,
                });
            }
            Ok((kept, cutoffs))
        })
        .collect::<Result<_, _>>()?;
    let cutoffs = results.iter().map(|r| r.1).sum();
    Ok((results.into_iter().flat_map(|r| r.0).collect(), cutoffs))
}

/// The last finite I-band epoch at or before `t`.
fn last_epoch_before(star: &StarCurves, t: f64) -> Option<f64> {
    star.curves
        .iter()
        .filter(|c| c.band == Some(Band::I))
        .flat_map(|c| c.hjd.iter().copied().filter(|&h| h <= t && h.is_finite()))
        .fold(None, |acc: Option<f64>, h| Some(acc.map_or(h, |a| a.max(h))))
}

/// The I-band data up to `now`, with the cut-off's augmentation (a dropped site, a gap).
fn cut(star: &StarCurves, now: f64, opts: &ExportOptions, rng: &mut impl Rng) -> (StarCurves, i32, bool) {
    let sites: Vec<usize> = star.curves.iter().filter(|c| c.band == Some(Band::I)).filter_map(|c| c.site.map(|s| s.index())).collect();
    let dropped = if sites.len() > 1 && rng.random::<f64>() < opts.site_drop_prob {
        sites[rng.random_range(0..sites.len())] as i32
    } else {
        -1
    };
    let gap = rng.random::<f64>() < opts.gap_prob;
    let gap_end = now - rng.random_range(0.5..10.0);
    let gap_start = gap_end - rng.random_range(1.0..5.0);
    let keep = |t: f64| t <= now && !(gap && t > gap_start && t < gap_end);
    let curves = star
        .curves
        .iter()
        .filter(|c| c.band == Some(Band::I) && c.site.map(|s| s.index() as i32) != Some(dropped))
        .map(|c| {
            let idx: Vec<usize> = (0..c.len()).filter(|&i| keep(c.hjd[i])).collect();
            let pick = |v: &Vec<f64>| idx.iter().map(|&i| v.get(i).copied().unwrap_or(f64::NAN)).collect();
            SiteCurve {
                site: c.site,
                band: c.band,
                hjd: pick(&c.hjd),
                flux: pick(&c.flux),
                flux_err: pick(&c.flux_err),
                mag: pick(&c.mag),
                mag_err: pick(&c.mag_err),
                fwhm: pick(&c.fwhm),
                sky: pick(&c.sky),
                airmass: pick(&c.airmass),
            }
        })
        .collect();
    (StarCurves { star: star.star.clone(), field: star.field, curves }, dropped, gap)
}

/// sha256 (hex) of a file.
pub fn sha256_file(path: &Path) -> Result<String, PreprocessError> {
    let mut f = std::fs::File::open(path).map_err(|e| io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}
