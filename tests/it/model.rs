//! model: each committed trained model end to end on a few fixed simulated candidates:
//! simulator -> AlertFinder -> preprocess (with the statistics saved with the model) -> the
//! ONNX Runtime `Scorer`, against tests/fixtures/model/<v>_expected.json, whose probabilities
//! Python onnxruntime computed from the same tensors (models/eval/fixture.py), to 1e-4.
//!
//! To regenerate after retraining (or after a deliberate change of the simulator, AlertFinder or
//! preprocess): `LENSNET_UPDATE_MODEL_FIXTURE=1 cargo test -p lensnet --test it model::` (writes
//! tests/fixtures/model/<v>_inputs.parquet), then `.venv/bin/python models/eval/fixture.py <v>`
//! for each version, and review the diff.


use lensnet_stages::alertfinder::{diagnosis_vector, scan_star, AlertParams, Scratch, Status, N_DIAGNOSIS};
use lensnet_stages::photometry::{Band, Field, MergedCurve, StarCurves};
use lensnet_stages::preprocess::{self, parquet::write_tensors, Candidate, PreprocessStats, SEQ_VALUES};
use lensnet_stages::score::{ScoreOptions, Scorer};
use lensnet_stages::simulate::{ClassMix, Label, Season, SimConfig};
use crate::harness::root;

/// Candidates in the fixture.
const N: usize = 8;


/// The first `N` AlertFinder candidates among fixed stars of a season and simulator seed that
/// no training or test export uses (exports derive their simulator seeds from a master seed
/// through a hash), at cut-offs before, at and after each star's peak.
fn fixed_candidates() -> Vec<(String, StarCurves, f64, [f64; N_DIAGNOSIS], Label)> {
    let field = Field(14);
    let mix = ClassMix { microlensing: 0.5, constant: 0.1, variable: 0.15, cataclysmic: 0.1, flare: 0.05, asteroid: 0.05, artefact: 0.05 };
    let config = SimConfig { season: 2024, fields: vec![field], stars: 200, seed: 20_260_777, mix, ..SimConfig::default() };
    let season = Season::new(&config).expect("season");
    let params = AlertParams::low_cadence();
    let mut scratch = Scratch::default();
    let mut out = Vec::new();
    for i in 0..config.stars {
        let s = season.star(field, i).expect("star");
        let (t0, te) = (s.truth.t0, if s.truth.te.is_finite() { s.truth.te } else { 3.0 });
        if !t0.is_finite() {
            continue;
        }
        let merged = MergedCurve::from_star(&s.curves, Band::I);
        for frac in [-0.3, 0.0, 0.7] {
            // "now" is the last epoch at or before the cut-off, as in the export.
            let Some(now) = merged.time.iter().copied().filter(|&t| t <= t0 + frac * te).reduce(f64::max) else { continue };
            let r = scan_star(&merged.view(), now, now - 1.0, &params, &mut scratch);
            if r.status == Status::Candidate {
                out.push((format!("{}@{now:.5}", s.curves.star), s.curves.clone(), now, diagnosis_vector(&r), s.truth.label));
                break;
            }
        }
        if out.len() == N {
            break;
        }
    }
    assert_eq!(out.len(), N, "the fixed stars give {N} candidates");
    out
}

#[derive(serde::Deserialize)]
struct Expected {
    model_sha256: String,
    ids: Vec<String>,
    seq_sum: Vec<f64>,
    seq_abs_sum: Vec<f64>,
    diag_sum: Vec<f64>,
    probs: Vec<[f32; 3]>,
    binary: Vec<f32>,
}

#[test]
fn trained_model_v1_reproduces_the_stored_probabilities() {
    reproduces("v1");
}

#[test]
fn trained_model_v2_reproduces_the_stored_probabilities() {
    reproduces("v2");
}

#[test]
fn trained_model_v3_reproduces_the_stored_probabilities() {
    reproduces("v3");
}

#[test]
fn trained_model_v4_reproduces_the_stored_probabilities() {
    reproduces("v4");
}

/// A model may declare its high-purity operating point (`lensnet.threshold_purity`, chosen for
/// it out of fold): the scorer takes it when told to (`score.threshold_purity` unset) and keeps
/// the configured one otherwise; a model that declares none keeps the configured one.
#[test]
fn a_model_declares_its_operating_point_and_a_configured_one_overrides_it() {
    use lensnet_stages::score::Thresholds;
    let (v2, v3) = (root().join("models/lensnet-v2.onnx"), root().join("models/lensnet-v3.onnx"));
    let given = Thresholds::new(0.95, 0.5).unwrap();
    let own = Scorer::new(&ScoreOptions { thresholds: given, model_threshold: true, ..ScoreOptions::cpu(&v3) }).expect("v3");
    assert_eq!(own.model().threshold_purity.as_deref(), Some("0.8"));
    assert_eq!(own.thresholds(), Thresholds::new(0.8, 0.5).unwrap());
    let configured = Scorer::new(&ScoreOptions { thresholds: given, model_threshold: false, ..ScoreOptions::cpu(&v3) }).expect("v3");
    assert_eq!(configured.thresholds(), given);
    let none = Scorer::new(&ScoreOptions { thresholds: given, model_threshold: true, ..ScoreOptions::cpu(&v2) }).expect("v2");
    assert_eq!((none.model().threshold_purity.as_deref(), none.thresholds()), (None, given));
    // A recall threshold above the model's own purity: an error naming the model and the key.
    let high_recall = Thresholds::new(0.95, 0.85).unwrap();
    let err = Scorer::new(&ScoreOptions { thresholds: high_recall, model_threshold: true, ..ScoreOptions::cpu(&v3) }).unwrap_err().to_string();
    assert!(err.contains("lensnet-v3.onnx") && err.contains("lensnet.threshold_purity"), "{err}");
}

fn reproduces(version: &str) {
    let model = format!("models/lensnet-{version}.onnx");
    let stats_path = format!("models/lensnet-{version}.preprocess.json");
    let inputs = format!("tests/fixtures/model/{version}_inputs.parquet");
    let expected_path = format!("tests/fixtures/model/{version}_expected.json");
    let stats = PreprocessStats::from_json(&std::fs::read_to_string(root().join(&stats_path)).expect("stats file")).expect("stats");
    let fixed = fixed_candidates();
    let cands: Vec<Candidate<'_>> = fixed
        .iter()
        .map(|(id, curves, now, diag, label)| Candidate { id: id.clone(), star: curves, now: *now, diag: *diag, label: Some(*label) })
        .collect();
    let prepared = preprocess::prepare(&cands, &stats).expect("prepare");
    if std::env::var_os("LENSNET_UPDATE_MODEL_FIXTURE").is_some() {
        let path = root().join(&inputs);
        std::fs::create_dir_all(path.parent().expect("fixture folder")).expect("mkdir");
        write_tensors(&path, &prepared, &stats).expect("write inputs");
        eprintln!("wrote {inputs}; now run models/eval/fixture.py {version}");
        return;
    }
    let expected: Expected =
        serde_json::from_str(&std::fs::read_to_string(root().join(&expected_path)).expect("fixture")).expect("fixture json");
    assert_eq!(prepared.ids, expected.ids);
    // The tensors are the ones Python scored (guards preprocess against silent drift).
    for i in 0..N {
        let row = prepared.seq_row(i);
        let sum: f64 = row.iter().map(|&v| v as f64).sum();
        let abs: f64 = row.iter().map(|&v| (v as f64).abs()).sum();
        let dsum: f64 = prepared.diag_row(i).iter().map(|&v| v as f64).sum();
        assert!((sum - expected.seq_sum[i]).abs() < 1e-3 * (1.0 + expected.seq_abs_sum[i]), "seq sum of {i}: {sum} vs {}", expected.seq_sum[i]);
        assert!((abs - expected.seq_abs_sum[i]).abs() < 1e-3 * (1.0 + expected.seq_abs_sum[i]), "seq |sum| of {i}");
        assert!((dsum - expected.diag_sum[i]).abs() < 1e-3, "diag sum of {i}: {dsum} vs {}", expected.diag_sum[i]);
        assert_eq!(row.len(), SEQ_VALUES);
    }

    let scorer = Scorer::new(&ScoreOptions { batch_size: 3, ..ScoreOptions::cpu(root().join(&model)) }).expect("scorer");
    assert_eq!(scorer.model().sha256, expected.model_sha256, "the fixture belongs to the committed model");
    assert_eq!(scorer.model().kind, "trained");
    let probs = scorer.score(&prepared.seq, &prepared.diag, N).expect("score");
    for (i, p) in probs.iter().enumerate() {
        let want = expected.probs[i];
        for (got, want) in [p.yes, p.maybe, p.no].iter().zip(want) {
            assert!((got - want).abs() < 1e-4, "candidate {i}: {p:?} vs {want:?}");
        }
        assert!((p.binary - expected.binary[i]).abs() < 1e-4, "candidate {i}: binary {} vs {}", p.binary, expected.binary[i]);
    }
}
