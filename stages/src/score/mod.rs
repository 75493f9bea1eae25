//! score: runs the ONNX model over preprocessed sequences with ONNX Runtime and turns its
//! probabilities into verdicts. One session per process (`Scorer`), CPU or CUDA as configured.
//!
//! The model contract (models/README.md): input `seq` f32 `[batch, 3, 128, 7]` (sites KMTA, KMTC,
//! KMTS; zero-padded at the front; channels flux, flux_err, fwhm, sky, airmass, dt, mask) and
//! `diag` f32 `[batch, 47]`; outputs `probs` f32 `[batch, 3]` (yes, maybe, no) and `binary` f32
//! `[batch, 1]` (yes-or-maybe against no). The model's metadata must say so; a model that does
//! not is refused instead of being silently mis-fed.
//!
//! Verdicts (see [`verdict`]): `binary >= threshold_purity` → yes (an alert at the high-purity
//! operating point); `threshold_recall <= binary < threshold_purity` → maybe (needs a human);
//! otherwise no. The 3-class argmax is kept alongside ([`Probabilities::argmax`]).

pub mod bench;
pub mod fastrise;
pub mod hold;
pub mod runtime;
pub mod stage;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;

use ort::session::Session;
use ort::value::TensorRef;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::alertfinder::diagnosis::{is_model_prefix, DIAGNOSIS_NAMES, N_DIAGNOSIS, N_DIAGNOSIS_V1};
use crate::stage::StageReport;

pub use bench::{bench, BenchRow};
pub use fastrise::{fast_rise, FastRise, FastRiseParams};
pub use hold::{hold, Hold, HoldParams};
pub use runtime::{find_ort_library, runtime, Runtime};

/// Sites in tensor order.
pub const SITES: [&str; 3] = ["KMTA", "KMTC", "KMTS"];
/// Time steps per site (zero-padded at the front).
pub const SEQ_LEN: usize = 128;
/// Channels per time step, in tensor order.
pub const CHANNELS: [&str; 7] = ["flux", "flux_err", "fwhm", "sky", "airmass", "dt", "mask"];
/// f32 values of one sequence: sites × steps × channels.
pub const SEQ_VALUES: usize = SITES.len() * SEQ_LEN * CHANNELS.len();
/// Class order of the `probs` output.
pub const CLASS_ORDER: [&str; 3] = ["yes", "maybe", "no"];

/// Why scoring failed. None of these go away on retry: they need a file, a setting or a fix.
#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    #[error("ONNX Runtime library not found (from {source_name}; looked for {}): {}", fmt_paths(.tried), runtime::SETUP_HINT)]
    MissingLibrary { source_name: &'static str, tried: Vec<PathBuf> },
    #[error("cannot load ONNX Runtime from {}: {message} ({})", .path.display(), runtime::SETUP_HINT)]
    LoadLibrary { path: PathBuf, message: String },
    #[error("no model found (looked for {}): set score.model or commit a models/lensnet-*.onnx", fmt_paths(.tried))]
    ModelNotFound { tried: Vec<PathBuf> },
    #[error("cannot read model {}: {source}", .path.display())]
    ReadModel { path: PathBuf, #[source] source: std::io::Error },
    #[error("model {} does not follow the lensnet model contract: {message}", .path.display())]
    Contract { path: PathBuf, message: String },
    #[error("cannot build an ONNX Runtime session for {}: {message}", .path.display())]
    Session { path: PathBuf, message: String },
    #[error("CUDA was asked for (score.provider = cuda) but cannot start: {message}; set score.on_cuda_failure = fallback to use the CPU instead")]
    Cuda { message: String },
    #[error("invalid thresholds: {0}")]
    Thresholds(String),
    #[error("invalid input shape: {0}")]
    Shape(String),
    #[error("ONNX Runtime inference failed: {0}")]
    Run(String),
    #[error("the scorer's session lock is poisoned (a previous inference panicked)")]
    Poisoned,
}

impl ScoreError {
    /// Whether a retry can help: never; every failure needs a file, a setting or a fix.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

fn fmt_paths(p: &[PathBuf]) -> String {
    p.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}

/// Where inference runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionProvider {
    Cpu,
    Cuda,
}

impl ExecutionProvider {
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionProvider::Cpu => "cpu",
            ExecutionProvider::Cuda => "cuda",
        }
    }
}

/// The two operating points on the binary score.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    /// At or above: "yes" (alert at the high-purity operating point).
    pub purity: f64,
    /// At or above (and below `purity`): "maybe" (high-recall operating point; needs a human).
    pub recall: f64,
}

impl Thresholds {
    /// Checked: `0 <= recall <= purity <= 1`.
    pub fn new(purity: f64, recall: f64) -> Result<Thresholds, ScoreError> {
        if !(0.0..=1.0).contains(&purity) || !(0.0..=1.0).contains(&recall) || recall > purity {
            return Err(ScoreError::Thresholds(format!(
                "need 0 <= threshold_recall <= threshold_purity <= 1, got recall {recall} and purity {purity}"
            )));
        }
        Ok(Thresholds { purity, recall })
    }
}

impl Default for Thresholds {
    /// The configuration's defaults (`[score]` in defaults.toml): the high-purity threshold of a
    /// model that declares none of its own (`lensnet.threshold_purity`), and the high-recall one.
    fn default() -> Self {
        Thresholds { purity: 0.95, recall: 0.5 }
    }
}

/// A verdict or a class of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    Yes,
    Maybe,
    No,
}

impl Class {
    /// The string stored in `verdicts.verdict`.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Yes => "yes",
            Class::Maybe => "maybe",
            Class::No => "no",
        }
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Class {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "yes" => Ok(Class::Yes),
            "maybe" => Ok(Class::Maybe),
            "no" => Ok(Class::No),
            other => Err(format!("unknown class `{other}` (expected yes, maybe or no)")),
        }
    }
}

/// The model's outputs for one sequence.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Probabilities {
    pub yes: f32,
    pub maybe: f32,
    pub no: f32,
    /// Probability of yes-or-maybe against no (the `binary` output).
    pub binary: f32,
}

impl Probabilities {
    /// The most probable of the three classes (ties go to the earlier class: yes, maybe, no).
    pub fn argmax(&self) -> Class {
        if self.yes >= self.maybe && self.yes >= self.no {
            Class::Yes
        } else if self.maybe >= self.no {
            Class::Maybe
        } else {
            Class::No
        }
    }

    /// The verdict at the configured operating points; see [`verdict`].
    pub fn verdict(&self, t: &Thresholds) -> Class {
        verdict(self.binary, t)
    }

    /// All four numbers are finite and within [0, 1] (what the verdicts table accepts).
    pub fn is_valid(&self) -> bool {
        [self.yes, self.maybe, self.no, self.binary].iter().all(|p| (0.0..=1.0).contains(p))
    }
}

/// The verdict from the binary score:
/// - `binary >= t.purity` → [`Class::Yes`]: an alert at the high-purity operating point;
/// - `t.recall <= binary < t.purity` → [`Class::Maybe`]: kept at the high-recall operating
///   point, needs a human look;
/// - `binary < t.recall` → [`Class::No`].
///
/// Both bounds are inclusive from below. A non-finite score is [`Class::No`] (fail closed: a
/// broken number never raises an alert). The comparison is made in f32, the model's precision
/// and that of the `verdicts` table's `real` columns: with f64, a score of `0.9f32`
/// (0.899999976) would fall below a threshold of 0.9 that it is stored equal to.
pub fn verdict(binary: f32, t: &Thresholds) -> Class {
    if !binary.is_finite() {
        Class::No
    } else if binary >= t.purity as f32 {
        Class::Yes
    } else if binary >= t.recall as f32 {
        Class::Maybe
    } else {
        Class::No
    }
}

/// What the scorer needs; built by the pipeline from `[score]` in the configuration.
#[derive(Debug, Clone)]
pub struct ScoreOptions {
    /// The ONNX file.
    pub model: PathBuf,
    /// ONNX Runtime library (`score.ort_library`); None = `$ORT_DYLIB_PATH`, else `.ort/lib`.
    pub ort_library: Option<PathBuf>,
    pub provider: ExecutionProvider,
    /// When CUDA is asked for and cannot start: true = warn and use the CPU, false = error.
    pub cuda_fallback: bool,
    /// Sequences per ONNX Runtime call (at least 1).
    pub batch_size: usize,
    pub thresholds: Thresholds,
    /// Use the model's own high-purity threshold (`lensnet.threshold_purity` in its metadata,
    /// the operating point chosen for it by cross-validation) instead of `thresholds.purity`
    /// when it declares one (`score.threshold_purity` unset).
    pub model_threshold: bool,
    /// Intra-op threads; None = ONNX Runtime's default (one per core).
    pub intra_threads: Option<usize>,
    /// A "yes" that rose too fast for microlensing, or whose brightening has lasted one night
    /// so far, is kept as "maybe" ([`hold`]).
    pub hold: HoldParams,
}

impl ScoreOptions {
    /// CPU, the configuration's default batch size and thresholds.
    pub fn cpu(model: impl Into<PathBuf>) -> ScoreOptions {
        ScoreOptions {
            model: model.into(),
            ort_library: None,
            provider: ExecutionProvider::Cpu,
            cuda_fallback: false,
            batch_size: 256,
            thresholds: Thresholds::default(),
            model_threshold: false,
            intra_threads: None,
            hold: HoldParams::default(),
        }
    }
}

/// The model file that a scorer loaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelInfo {
    pub path: PathBuf,
    /// sha256 of the file's bytes (lower-case hex): the model version in `verdicts`.
    pub sha256: String,
    /// `lensnet.kind` from the metadata (`standin`, `trained`, ...; `unknown` when absent).
    pub kind: String,
    pub bytes: u64,
    /// The preprocessing statistics saved with the model (`lensnet.preprocess_stats` in the
    /// metadata, else a `<model>.preprocess.json` beside the file), as JSON.
    pub preprocess_stats: Option<String>,
    /// Width of the model's `diag` input: it was trained on the first `n_diag` of
    /// `DIAGNOSIS_NAMES` (`lensnet.diag_names`; 47 for lensnet-v1 and -v2).
    pub n_diag: usize,
    /// The high-purity threshold the model declares (`lensnet.threshold_purity`), if any.
    pub threshold_purity: Option<String>,
}

/// One ONNX Runtime session, built once per process and shared (`score` takes `&self`).
pub struct Scorer {
    // ort's `Session::run` takes `&mut self`; the lock serialises calls, each of which already
    // uses every core through ONNX Runtime's own thread pool.
    session: Mutex<Session>,
    runtime: Runtime,
    model: ModelInfo,
    provider: ExecutionProvider,
    /// Why CUDA was given up for the CPU, when it was.
    cuda_fallback: Option<String>,
    batch_size: usize,
    thresholds: Thresholds,
    hold: HoldParams,
}

impl fmt::Debug for Scorer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scorer")
            .field("model", &self.model)
            .field("runtime", &self.runtime)
            .field("provider", &self.provider)
            .field("cuda_fallback", &self.cuda_fallback)
            .field("batch_size", &self.batch_size)
            .finish()
    }
}

/// Whether the loaded ONNX Runtime build has the CUDA execution provider (loads the runtime).
pub fn cuda_available(ort_library: Option<&Path>) -> Result<bool, ScoreError> {
    runtime(ort_library)?;
    <ort::ep::CUDA as ort::ep::ExecutionProvider>::is_available().map_err(|e| ScoreError::Run(e.to_string()))
}

impl Scorer {
    /// Load ONNX Runtime (once per process), read and check the model, and build the session on
    /// the configured execution provider. Logs the provider, runtime version and model once.
    pub fn new(opts: &ScoreOptions) -> Result<Scorer, ScoreError> {
        if opts.batch_size == 0 {
            return Err(ScoreError::Shape("score.batch_size must be at least 1".into()));
        }
        let mut thresholds = Thresholds::new(opts.thresholds.purity, opts.thresholds.recall)?;
        let runtime = runtime(opts.ort_library.as_deref())?;
        let bytes = std::fs::read(&opts.model).map_err(|source| ScoreError::ReadModel { path: opts.model.clone(), source })?;
        let sha256 = hex::encode(Sha256::digest(&bytes));

        let (session, provider, cuda_fallback) = match opts.provider {
            ExecutionProvider::Cpu => (build_session(&runtime, &opts.model, &bytes, false, opts.intra_threads)?, ExecutionProvider::Cpu, None),
            ExecutionProvider::Cuda => match try_cuda(&runtime, &opts.model, &bytes, opts.intra_threads) {
                Ok(s) => (s, ExecutionProvider::Cuda, None),
                Err(message) if opts.cuda_fallback => {
                    warn!(reason = %message, "CUDA cannot start; falling back to the CPU as configured (score.on_cuda_failure = fallback)");
                    let s = build_session(&runtime, &opts.model, &bytes, false, opts.intra_threads)?;
                    (s, ExecutionProvider::Cpu, Some(message))
                }
                Err(message) => return Err(ScoreError::Cuda { message }),
            },
        };
        let (kind, stats_meta, n_diag, declared) = check_contract(&session, &opts.model)?;
        let sidecar = opts.model.with_extension("preprocess.json");
        let preprocess_stats = stats_meta.or_else(|| std::fs::read_to_string(&sidecar).ok());
        if let (true, Some(text)) = (opts.model_threshold, &declared) {
            let contract = |message: String| ScoreError::Contract { path: opts.model.clone(), message };
            let purity: f64 = text.trim().parse().map_err(|_| contract(format!("metadata lensnet.threshold_purity is `{text}`, not a number")))?;
            thresholds = Thresholds::new(purity, opts.thresholds.recall)
                .map_err(|e| contract(format!("metadata lensnet.threshold_purity {purity} does not fit score.threshold_recall {}: {e}", opts.thresholds.recall)))?;
        }
        let model = ModelInfo { path: opts.model.clone(), sha256, kind, bytes: bytes.len() as u64, preprocess_stats, n_diag, threshold_purity: declared };
        info!(
            provider = provider.as_str(),
            cuda_fallback = cuda_fallback.is_some(),
            runtime_version = %runtime.version,
            runtime_library = %runtime.library.display(),
            model = %model.path.display(),
            model_sha256 = %model.sha256,
            model_kind = %model.kind,
            batch_size = opts.batch_size,
            threshold_purity = thresholds.purity,
            "scorer ready"
        );
        Ok(Scorer { session: Mutex::new(session), runtime, model, provider, cuda_fallback, batch_size: opts.batch_size, thresholds, hold: opts.hold })
    }

    /// Score `batch` sequences: `seq` holds `batch * SEQ_VALUES` f32 (row-major `[batch, 3, 128,
    /// 7]`), `diag` holds `batch * n_diag` (the model's [`ModelInfo::n_diag`]). Runs in calls of at most `batch_size` sequences.
    pub fn score(&self, seq: &[f32], diag: &[f32], batch: usize) -> Result<Vec<Probabilities>, ScoreError> {
        self.score_in_chunks(seq, diag, batch, self.batch_size)
    }

    /// [`Scorer::score`] with an explicit number of sequences per call (benchmarks).
    pub fn score_in_chunks(&self, seq: &[f32], diag: &[f32], batch: usize, chunk: usize) -> Result<Vec<Probabilities>, ScoreError> {
        let width = self.model.n_diag;
        if seq.len() != batch * SEQ_VALUES || diag.len() != batch * width {
            return Err(ScoreError::Shape(format!(
                "for {batch} sequences expected {} seq values and {} diag values, got {} and {}",
                batch * SEQ_VALUES,
                batch * width,
                seq.len(),
                diag.len()
            )));
        }
        let chunk = chunk.max(1);
        let mut out = Vec::with_capacity(batch);
        let mut session = self.session.lock().map_err(|_| ScoreError::Poisoned)?;
        let mut start = 0;
        while start < batch {
            let n = chunk.min(batch - start);
            let s = &seq[start * SEQ_VALUES..(start + n) * SEQ_VALUES];
            let d = &diag[start * width..(start + n) * width];
            run_chunk(&mut session, s, d, n, width, &mut out)?;
            start += n;
        }
        Ok(out)
    }

    /// Verdicts for scored sequences at this scorer's thresholds.
    pub fn verdicts(&self, probs: &[Probabilities]) -> Vec<Class> {
        probs.iter().map(|p| p.verdict(&self.thresholds)).collect()
    }

    /// The parameters of the checks that keep a "yes" as "maybe" ([`hold`]).
    pub fn hold(&self) -> HoldParams {
        self.hold
    }

    /// Final verdicts: [`Scorer::verdicts`], with a "yes" that a check holds (`held[i]` is
    /// Some: [`hold`]) kept as "maybe".
    pub fn final_verdicts(&self, probs: &[Probabilities], held: &[Option<Hold>]) -> Vec<Class> {
        self.verdicts(probs)
            .into_iter()
            .enumerate()
            .map(|(i, c)| if c == Class::Yes && held.get(i).is_some_and(|f| f.is_some()) { Class::Maybe } else { c })
            .collect()
    }

    /// The provider actually in use (CPU after a CUDA fallback).
    pub fn provider(&self) -> ExecutionProvider {
        self.provider
    }

    /// Why CUDA was given up for the CPU, if it was.
    pub fn cuda_fallback_reason(&self) -> Option<&str> {
        self.cuda_fallback.as_deref()
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    pub fn model(&self) -> &ModelInfo {
        &self.model
    }

    pub fn thresholds(&self) -> Thresholds {
        self.thresholds
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Facts for every audit record of a scoring batch: provider, runtime version, model.
    pub fn audit_details(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        m.insert("execution_provider".into(), self.provider.as_str().into());
        m.insert("cuda_fallback".into(), self.cuda_fallback.clone().map_or(serde_json::Value::Null, Into::into));
        m.insert("runtime_version".into(), self.runtime.version.clone().into());
        m.insert("runtime_library".into(), self.runtime.library.display().to_string().into());
        m.insert("model_sha256".into(), self.model.sha256.clone().into());
        m.insert("model_path".into(), self.model.path.display().to_string().into());
        m.insert("model_kind".into(), self.model.kind.clone().into());
        m.insert("batch_size".into(), self.batch_size.into());
        m.insert("threshold_purity".into(), self.thresholds.purity.into());
        m.insert("threshold_recall".into(), self.thresholds.recall.into());
        m.insert("fast_rise_max_days".into(), self.hold.fast_rise.max_rise_days.into());
        m.insert("fast_rise_min_mag".into(), self.hold.fast_rise.min_amplitude_mag.into());
        m.insert("min_high_nights".into(), self.hold.min_high_nights.into());
        m
    }

    /// Add [`Scorer::audit_details`] to a stage report.
    pub fn fill_report(&self, report: &mut StageReport) {
        report.details.extend(self.audit_details());
    }
}

fn try_cuda(rt: &Runtime, path: &Path, bytes: &[u8], intra: Option<usize>) -> Result<Session, String> {
    let available = <ort::ep::CUDA as ort::ep::ExecutionProvider>::is_available().map_err(|e| e.to_string())?;
    if !available {
        return Err(format!(
            "the ONNX Runtime at {} (version {}) has no CUDA execution provider; a CUDA build (onnxruntime-gpu) is needed",
            rt.library.display(),
            rt.version
        ));
    }
    build_session(rt, path, bytes, true, intra).map_err(|e| e.to_string())
}

fn build_session(rt: &Runtime, path: &Path, bytes: &[u8], cuda: bool, intra: Option<usize>) -> Result<Session, ScoreError> {
    let err = |e: String| ScoreError::Session { path: path.to_path_buf(), message: e };
    let mut b = Session::builder(&rt.env).map_err(|e| err(e.to_string()))?;
    if let Some(n) = intra {
        b = b.with_intra_threads(n).map_err(|e| err(e.to_string()))?;
    }
    if cuda {
        // error_on_failure: without it ort logs the failure and quietly runs on the CPU.
        b = b.with_execution_providers([ort::ep::CUDA::default().build().error_on_failure()]).map_err(|e| err(e.to_string()))?;
    }
    b.commit_from_memory(bytes).map_err(|e| err(e.to_string()))
}

/// Check the metadata and the input/output names; returns `lensnet.kind`, the preprocessing
/// statistics of the metadata, if any, the width of `diag` (the model's diagnosis names must
/// be the first 47 or more of `DIAGNOSIS_NAMES`, in order: the list only grows at its end), and
/// the high-purity threshold the model declares (`lensnet.threshold_purity`), if any.
fn check_contract(session: &Session, path: &Path) -> Result<(String, Option<String>, usize, Option<String>), ScoreError> {
    let bad = |message: String| ScoreError::Contract { path: path.to_path_buf(), message };
    let meta = session.metadata().map_err(|e| bad(format!("cannot read metadata: {e}")))?;
    let want = [
        ("lensnet.class_order", CLASS_ORDER.join(",")),
        ("lensnet.seq_len", SEQ_LEN.to_string()),
        ("lensnet.channels", CHANNELS.join(",")),
    ];
    for (key, value) in want {
        match meta.custom(key) {
            Some(v) if v == value => {}
            Some(v) => return Err(bad(format!("metadata {key} is `{v}`, expected `{value}`"))),
            None => return Err(bad(format!("metadata {key} is missing"))),
        }
    }
    let names = meta.custom("lensnet.diag_names").ok_or_else(|| bad("metadata lensnet.diag_names is missing".to_string()))?;
    let names: Vec<&str> = names.split(',').collect();
    let n_diag = names.len();
    if !is_model_prefix(&names) {
        return Err(bad(format!(
            "metadata lensnet.diag_names is `{}`, expected the first {N_DIAGNOSIS_V1} to {N_DIAGNOSIS} of `{}` in order",
            names.join(","),
            DIAGNOSIS_NAMES.join(",")
        )));
    }
    let kind = meta.custom("lensnet.kind").unwrap_or_else(|| "unknown".to_string());
    let stats = meta.custom("lensnet.preprocess_stats").filter(|s| !s.trim().is_empty());
    let inputs: Vec<&str> = session.inputs().iter().map(|o| o.name()).collect();
    let outputs: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
    for name in ["seq", "diag"] {
        if !inputs.contains(&name) {
            return Err(bad(format!("no input named `{name}` (inputs: {})", inputs.join(", "))));
        }
    }
    for name in ["probs", "binary"] {
        if !outputs.contains(&name) {
            return Err(bad(format!("no output named `{name}` (outputs: {})", outputs.join(", "))));
        }
    }
    let threshold = meta.custom("lensnet.threshold_purity").filter(|s| !s.trim().is_empty());
    Ok((kind, stats, n_diag, threshold))
}

fn run_chunk(session: &mut Session, seq: &[f32], diag: &[f32], n: usize, width: usize, out: &mut Vec<Probabilities>) -> Result<(), ScoreError> {
    let run = |e: ort::Error| ScoreError::Run(e.to_string());
    let seq_t = TensorRef::from_array_view(([n, SITES.len(), SEQ_LEN, CHANNELS.len()], seq)).map_err(run)?;
    let diag_t = TensorRef::from_array_view(([n, width], diag)).map_err(run)?;
    let outputs = session.run(ort::inputs!["seq" => seq_t, "diag" => diag_t]).map_err(run)?;
    let get = |name: &str, width: usize| -> Result<&[f32], ScoreError> {
        let v = outputs.get(name).ok_or_else(|| ScoreError::Run(format!("output `{name}` missing")))?;
        let (shape, data) = v.try_extract_tensor::<f32>().map_err(|e| ScoreError::Run(format!("output `{name}`: {e}")))?;
        if data.len() != n * width {
            return Err(ScoreError::Run(format!("output `{name}` has shape {:?}, expected [{n}, {width}]", &shape[..])));
        }
        Ok(data)
    };
    let probs = get("probs", 3)?;
    let binary = get("binary", 1)?;
    out.extend((0..n).map(|i| Probabilities { yes: probs[3 * i], maybe: probs[3 * i + 1], no: probs[3 * i + 2], binary: binary[i] }));
    Ok(())
}

/// The model to load: `configured` if given (must exist), else the `models/lensnet-*.onnx` of the
/// highest version (`lensnet-v<N>.onnx`; then the newest by modification time) in the current
/// directory's ancestors or the source tree, preferring any trained model over the stand-in. The
/// version comes first so that a fresh clone (every file the same age) picks the same model.
pub fn find_model(configured: Option<&Path>) -> Result<PathBuf, ScoreError> {
    if let Some(p) = configured {
        return if p.is_file() { Ok(p.to_path_buf()) } else { Err(ScoreError::ModelNotFound { tried: vec![p.to_path_buf()] }) };
    }
    let mut dirs: Vec<PathBuf> = std::env::current_dir().map(|c| c.ancestors().map(|a| a.join("models")).collect()).unwrap_or_default();
    dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("models"));
    for dir in &dirs {
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        let mut found: Vec<(bool, u64, std::time::SystemTime, PathBuf)> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("lensnet-") && n.ends_with(".onnx")))
            .map(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                let standin = name == "lensnet-standin.onnx";
                let version = name.strip_prefix("lensnet-v").and_then(|v| v.strip_suffix(".onnx")).and_then(|v| v.parse().ok()).unwrap_or(0);
                let mtime = std::fs::metadata(&p).and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH);
                (!standin, version, mtime, p)
            })
            .collect();
        found.sort();
        if let Some((_, _, _, p)) = found.pop() {
            return Ok(p);
        }
    }
    Err(ScoreError::ModelNotFound { tried: dirs.into_iter().map(|d| d.join("lensnet-*.onnx")).collect() })
}

#[cfg(test)]
mod tests;
