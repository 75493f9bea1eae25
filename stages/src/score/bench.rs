//! The scoring benchmark behind `lensnet bench score`: sequences per second through ONNX Runtime
//! at a few batch sizes, on the CPU and (when this ONNX Runtime has it) CUDA. It prints nothing and
//! asserts nothing about time; the caller prints the rows.

use std::time::Instant;

use serde::Serialize;

use super::{cuda_available, ExecutionProvider, ScoreError, ScoreOptions, Scorer, SEQ_LEN, SEQ_VALUES};

/// Batch sizes that the issue asks for: one alert at a time, a typical call, a replay.
pub const BATCH_SIZES: [usize; 3] = [1, 64, 1024];

/// One measurement.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchRow {
    /// `onnxruntime` (the PyTorch figures come from models/train/bench_torch.py).
    pub engine: &'static str,
    pub provider: ExecutionProvider,
    pub batch: usize,
    /// Sequences scored in the timed calls.
    pub sequences: usize,
    pub seconds: f64,
    pub sequences_per_s: f64,
    pub runtime_version: String,
    pub model_sha256: String,
}

/// Deterministic full-length inputs (every point real) for `batch` sequences; the values are a
/// cheap hash, which is all a timing needs.
pub fn synthetic_inputs(batch: usize, n_diag: usize) -> (Vec<f32>, Vec<f32>) {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    let mut seq: Vec<f32> = (0..batch * SEQ_VALUES).map(|_| next()).collect();
    // The mask channel (last of each step) is 1: full sequences are the worst case.
    for step in seq.chunks_exact_mut(super::CHANNELS.len()) {
        if let Some(m) = step.last_mut() {
            *m = 1.0;
        }
    }
    debug_assert_eq!(seq.len(), batch * 3 * SEQ_LEN * 7);
    let diag = (0..batch * n_diag).map(|_| next()).collect();
    (seq, diag)
}

/// Sequences per second at each of `batch_sizes`, on the CPU and on CUDA when available. Each
/// size runs one warm-up call, then calls until `min_seconds` have passed (at least 3 calls).
pub fn bench(opts: &ScoreOptions, batch_sizes: &[usize], min_seconds: f64) -> Result<Vec<BenchRow>, ScoreError> {
    let mut providers = vec![ExecutionProvider::Cpu];
    if cuda_available(opts.ort_library.as_deref())? {
        providers.push(ExecutionProvider::Cuda);
    }
    let mut rows = Vec::new();
    for provider in providers {
        let scorer = Scorer::new(&ScoreOptions { provider, cuda_fallback: false, ..opts.clone() })?;
        for &batch in batch_sizes {
            let batch = batch.max(1);
            let (seq, diag) = synthetic_inputs(batch, scorer.model().n_diag);
            scorer.score_in_chunks(&seq, &diag, batch, batch)?;
            let start = Instant::now();
            let mut calls = 0usize;
            while calls < 3 || start.elapsed().as_secs_f64() < min_seconds {
                scorer.score_in_chunks(&seq, &diag, batch, batch)?;
                calls += 1;
            }
            let seconds = start.elapsed().as_secs_f64();
            let sequences = calls * batch;
            rows.push(BenchRow {
                engine: "onnxruntime",
                provider: scorer.provider(),
                batch,
                sequences,
                seconds,
                sequences_per_s: sequences as f64 / seconds,
                runtime_version: scorer.runtime().version.clone(),
                model_sha256: scorer.model().sha256.clone(),
            });
        }
    }
    Ok(rows)
}
