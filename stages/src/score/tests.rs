//! Unit tests of the score module: verdict thresholds, argmax, and the committed stand-in model
//! through the real ONNX Runtime (found in .ort/lib, see runtime.rs).

use std::path::PathBuf;

use super::*;

fn t(purity: f64, recall: f64) -> Thresholds {
    Thresholds::new(purity, recall).unwrap()
}

#[test]
fn verdict_thresholds_are_inclusive_from_below() {
    let th = t(0.9, 0.5);
    assert_eq!(verdict(1.0, &th), Class::Yes);
    assert_eq!(verdict(0.9, &th), Class::Yes, "binary == purity is an alert");
    assert_eq!(verdict(0.899_99, &th), Class::Maybe);
    assert_eq!(verdict(0.5, &th), Class::Maybe, "binary == recall needs a human");
    assert_eq!(verdict(0.499_99, &th), Class::No);
    assert_eq!(verdict(0.0, &th), Class::No);
}

#[test]
fn non_finite_scores_never_alert() {
    let th = t(0.9, 0.5);
    assert_eq!(verdict(f32::NAN, &th), Class::No);
    assert_eq!(verdict(f32::INFINITY, &th), Class::No);
}

#[test]
fn equal_thresholds_leave_no_maybe_band() {
    let th = t(0.7, 0.7);
    assert_eq!(verdict(0.7, &th), Class::Yes);
    assert_eq!(verdict(0.69, &th), Class::No);
}

#[test]
fn thresholds_are_checked() {
    assert!(Thresholds::new(0.5, 0.9).is_err(), "recall above purity");
    assert!(Thresholds::new(1.5, 0.5).is_err());
    assert!(Thresholds::new(0.9, -0.1).is_err());
    assert!(Thresholds::new(f64::NAN, 0.5).is_err());
    let e = Thresholds::new(0.5, 0.9).unwrap_err();
    assert!(e.to_string().contains("recall 0.9"), "{e}");
}

#[test]
fn argmax_keeps_the_three_class_answer_apart_from_the_verdict() {
    let p = Probabilities { yes: 0.2, maybe: 0.5, no: 0.3, binary: 0.95 };
    assert_eq!(p.argmax(), Class::Maybe);
    assert_eq!(p.verdict(&Thresholds::default()), Class::Yes);
    assert_eq!(Probabilities { yes: 0.4, maybe: 0.4, no: 0.2, binary: 0.1 }.argmax(), Class::Yes, "ties go to yes");
    assert_eq!(Probabilities { yes: 0.1, maybe: 0.2, no: 0.7, binary: 0.1 }.argmax(), Class::No);
    assert!(!Probabilities { yes: f32::NAN, maybe: 0.2, no: 0.7, binary: 0.1 }.is_valid());
}

#[test]
fn class_strings_round_trip() {
    for c in [Class::Yes, Class::Maybe, Class::No] {
        assert_eq!(c.as_str().parse::<Class>().unwrap(), c);
    }
    assert!("perhaps".parse::<Class>().is_err());
}

fn standin() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/lensnet-standin.onnx")
}

#[test]
fn standin_model_loads_and_scores_with_dynamic_batch() {
    let scorer = Scorer::new(&ScoreOptions { batch_size: 3, ..ScoreOptions::cpu(standin()) }).unwrap();
    assert_eq!(scorer.provider(), ExecutionProvider::Cpu);
    assert_eq!(scorer.model().kind, "standin");
    assert_eq!(scorer.model().sha256.len(), 64);
    let (seq, diag) = bench::synthetic_inputs(7, scorer.model().n_diag);
    // Seven sequences in calls of 3, 3 and 1 give the same numbers as one call of 7.
    let split = scorer.score(&seq, &diag, 7).unwrap();
    let whole = scorer.score_in_chunks(&seq, &diag, 7, 7).unwrap();
    assert_eq!(split.len(), 7);
    for (a, b) in split.iter().zip(&whole) {
        assert!(a.is_valid());
        assert!((a.yes - b.yes).abs() < 1e-5 && (a.binary - b.binary).abs() < 1e-5);
        assert!((a.yes + a.maybe + a.no - 1.0).abs() < 1e-4, "softmax sums to one");
    }
    assert!(scorer.score(&[], &[], 0).unwrap().is_empty());
    let details = scorer.audit_details();
    assert_eq!(details["execution_provider"], "cpu");
    assert_eq!(details["model_sha256"], scorer.model().sha256.as_str());
    assert!(details["runtime_version"].as_str().is_some_and(|v| v.starts_with("1.")), "{details:?}");
}

#[test]
fn wrong_input_lengths_are_refused() {
    let scorer = Scorer::new(&ScoreOptions::cpu(standin())).unwrap();
    let err = scorer.score(&[0.0; 10], &[0.0; 47], 1).unwrap_err();
    assert!(matches!(err, ScoreError::Shape(_)), "{err}");
}

#[test]
fn missing_model_is_a_clear_error() {
    let err = Scorer::new(&ScoreOptions::cpu("/nonexistent/lensnet-x.onnx")).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/lensnet-x.onnx"), "{err}");
    assert!(find_model(Some(std::path::Path::new("/nonexistent/m.onnx"))).is_err());
}

#[test]
fn cuda_asked_for_on_a_cpu_build_errors_or_falls_back_as_configured() {
    if cuda_available(None).unwrap() {
        return; // a CUDA build of ONNX Runtime: nothing to fall back from here
    }
    let opts = ScoreOptions { provider: ExecutionProvider::Cuda, ..ScoreOptions::cpu(standin()) };
    let err = Scorer::new(&opts).unwrap_err();
    assert!(matches!(err, ScoreError::Cuda { .. }), "{err}");
    assert!(err.to_string().contains("on_cuda_failure"), "{err}");
    let scorer = Scorer::new(&ScoreOptions { cuda_fallback: true, ..opts }).unwrap();
    assert_eq!(scorer.provider(), ExecutionProvider::Cpu);
    assert!(scorer.cuda_fallback_reason().is_some());
    assert!(scorer.audit_details()["cuda_fallback"].is_string());
}

#[test]
fn a_held_yes_becomes_maybe_and_nothing_else_moves() {
    let scorer = Scorer::new(&ScoreOptions::cpu(standin())).unwrap();
    let (purity, recall) = (scorer.thresholds().purity as f32, scorer.thresholds().recall as f32);
    let p = |binary: f32| Probabilities { yes: 0.3, maybe: 0.3, no: 0.4, binary };
    let probs = [p(1.0), p(1.0), p(0.5 * (purity + recall)), p(0.1), p(1.0)];
    let one = Some(Hold::OneNight { nights: 1, needed: 2 });
    // A yes held, a yes not held, a maybe and a no held (nothing to keep), a yes past the list.
    let held = [one.clone(), None, one.clone(), one];
    let v = scorer.final_verdicts(&probs, &held);
    assert_eq!(scorer.verdicts(&probs)[..2], [Class::Yes, Class::Yes]);
    assert_eq!(v, vec![Class::Maybe, Class::Yes, Class::Maybe, Class::No, Class::Yes]);
    assert_eq!(scorer.hold().min_high_nights, 2, "on by default");
}
