//! score: the committed stand-in model through the real ONNX Runtime on the CPU gives the
//! probabilities that Python onnxruntime (checked against PyTorch) stored in
//! tests/fixtures/score/standin_expected.json, to 1e-4.


use lensnet_stages::alertfinder::diagnosis::{DIAGNOSIS_NAMES, N_DIAGNOSIS_V1};
use lensnet_stages::score::{verdict, Class, ExecutionProvider, ScoreOptions, Scorer, Thresholds, SEQ_LEN, SEQ_VALUES};
use crate::harness::root;


/// The fixture's inputs, from the exact integer formula of models/train/standin.py.
fn fixture_inputs(lengths: &[[usize; 3]]) -> (Vec<f32>, Vec<f32>) {
    let mut seq = vec![0f32; lengths.len() * SEQ_VALUES];
    for (b, ns) in lengths.iter().enumerate() {
        for (s, &n) in ns.iter().enumerate() {
            for t in SEQ_LEN - n..SEQ_LEN {
                let base = ((b * 3 + s) * SEQ_LEN + t) * 7;
                for c in 0..6 {
                    seq[base + c] = (((b * 31 + s * 17 + t * 7 + c * 13) % 97) as f64 / 48.5 - 1.0) as f32;
                }
                seq[base + 6] = 1.0;
            }
        }
    }
    // The stand-in was exported with the first version's 47 diagnosis features.
    let mut diag = vec![0f32; lengths.len() * N_DIAGNOSIS_V1];
    for b in 0..lengths.len() {
        for j in 0..N_DIAGNOSIS_V1 {
            diag[b * N_DIAGNOSIS_V1 + j] = (((b * 11 + j * 5) % 23) as f64 / 11.5 - 1.0) as f32;
        }
    }
    (seq, diag)
}

#[derive(serde::Deserialize)]
struct Fixture {
    model_sha256: String,
    lengths: Vec<[usize; 3]>,
    seq_sum: Vec<f64>,
    probs: Vec<[f32; 3]>,
    binary: Vec<f32>,
}

#[test]
fn standin_model_matches_the_python_expectations_on_cpu() {
    let text = std::fs::read_to_string(root().join("tests/fixtures/score/standin_expected.json")).unwrap();
    let fx: Fixture = serde_json::from_str(&text).unwrap();
    let (seq, diag) = fixture_inputs(&fx.lengths);
    // The inputs are the ones Python scored (guards the formula against drift).
    for (b, want) in fx.seq_sum.iter().enumerate() {
        let got: f64 = seq[b * SEQ_VALUES..(b + 1) * SEQ_VALUES].iter().map(|&v| v as f64).sum();
        assert!((got - want).abs() < 1e-3, "input {b}: sum {got} != {want}");
    }

    // batch_size 4 splits the 6 fixtures into calls of 4 and 2: the dynamic batch axis at work.
    let opts = ScoreOptions { batch_size: 4, ..ScoreOptions::cpu(root().join("models/lensnet-standin.onnx")) };
    let scorer = Scorer::new(&opts).unwrap();
    assert_eq!(scorer.provider(), ExecutionProvider::Cpu);
    assert_eq!(scorer.model().sha256, fx.model_sha256, "the committed model is the one the fixture was made with");
    assert_eq!(scorer.model().kind, "standin");
    assert_eq!(scorer.model().n_diag, N_DIAGNOSIS_V1, "the stand-in takes the first 47 diagnosis features");

    let got = scorer.score(&seq, &diag, fx.lengths.len()).unwrap();
    assert_eq!(got.len(), fx.probs.len());
    for (b, p) in got.iter().enumerate() {
        let want = fx.probs[b];
        for (g, w) in [p.yes, p.maybe, p.no].into_iter().zip(want) {
            assert!((g - w).abs() < 1e-4, "input {b}: probs {:?} != {want:?}", [p.yes, p.maybe, p.no]);
        }
        assert!((p.binary - fx.binary[b]).abs() < 1e-4, "input {b}: binary {} != {}", p.binary, fx.binary[b]);
    }

    // The verdicts and argmax follow from the numbers.
    let th = scorer.thresholds();
    assert_eq!(scorer.verdicts(&got), got.iter().map(|p| verdict(p.binary, &th)).collect::<Vec<_>>());
    let low = Thresholds::new(0.55, 0.0).unwrap();
    assert!(got.iter().any(|p| p.verdict(&low) == Class::Yes) && got.iter().any(|p| p.verdict(&low) == Class::Maybe));
    assert!(got.iter().all(|p| p.argmax() == Class::Yes), "the stand-in leans to yes on these inputs");

    let details = scorer.audit_details();
    for key in ["execution_provider", "runtime_version", "model_sha256"] {
        assert!(details.get(key).is_some_and(|v| v.is_string()), "audit details lack {key}: {details:?}");
    }
}

#[test]
fn standin_metadata_names_the_diagnosis_parameters_in_order() {
    // Scorer::new refuses a model whose metadata disagrees; this checks the stored string itself.
    let bytes = std::fs::read(root().join("models/lensnet-standin.onnx")).unwrap();
    let joined = DIAGNOSIS_NAMES[..N_DIAGNOSIS_V1].join(",");
    assert!(bytes.windows(joined.len()).any(|w| w == joined.as_bytes()), "lensnet.diag_names not in the model");
}
