//! Preprocess stage (issue 6): candidates + photometry -> the model's input tensors, as one
//! columnar polars computation over the whole batch, used identically for serving and training.
//!
//! # The tensors (the model contract, see models/README.md)
//! - `seq`: f32 `[n, 3, 128, 7]`: sites KMTA, KMTC, KMTS; per site the most recent
//!   [`SEQ_LEN`] cleaned I-band points up to the candidate's `now`, zero-padded at the FRONT;
//!   channels [`CHANNELS`] = flux, flux_err, fwhm, sky, airmass, dt, mask.
//! - `diag`: f32 `[n, 47]`: the AlertFinder diagnosis vector, standardised.
//!
//! # What is done to each candidate's points (all as polars expressions over the batch)
//! 1. **Truncation and NaN removal**: points after `now`, and points whose time, flux or
//!    flux error is not finite (or whose error is not positive), are dropped. Missing fwhm, sky
//!    or airmass do not drop a point: they become 0 (the global mean) after standardisation.
//! 2. **Per star and site robust scale**: `med` = median flux of the site's points up to now
//!    (its baseline: an event covers a small part of a season), `σ = max(1.4826 · MAD,
//!    ½ · median(flux_err), 1e-6)`; the error floor keeps quantised or nearly constant fluxes
//!    from giving a zero scale.
//! 3. **Outlier removal** ([`OUTLIER_SIGMA`]): a point is an isolated spike, and is dropped,
//!    when it lies more than 10 `s` from the mean of its two neighbours at the same site
//!    (`s = max(σ, its own error)`) while the two neighbours agree with each other (they differ
//!    by less than a quarter of that jump). A point on a rise lies between its neighbours, a
//!    point of a plateau agrees with them, and the newest point has no later neighbour, so
//!    none of them is ever removed: only single-point spikes and dips are.
//! 4. **Tail**: the last [`SEQ_LEN`] points per (candidate, site) are kept; slot `127` is the
//!    newest.
//! 5. **Channels**: `flux = asinh((f - med) / σ)`, `flux_err = asinh(e / σ)` (the same scale;
//!    asinh is linear near 0 and logarithmic for the thousands-of-σ peaks of high-magnification
//!    events, so the RNN sees bounded inputs); `fwhm = (ln fwhm - μ) / s`, `sky = (ln sky - μ) /
//!    s`, `airmass = (airmass - μ) / s` with global statistics ([`PreprocessStats`], fitted on
//!    the training set and saved with the model); `dt = (-ln(1 + (t_last - t)) - μ) / s`,
//!    where `t_last` is the candidate's last valid epoch over all sites, so dt is 0 for the
//!    newest point and logarithmic in the look-back time; `mask = 1`. Standardised channels are
//!    clipped to ±[`CLIP`] and NaN becomes 0.
//! 6. **Diagnosis**: heavy-tailed features (Δχ², counts, fluxes, slopes; see
//!    [`stats::diag_uses_asinh`]) go through `asinh` first, then every feature is standardised
//!    with the training mean and standard deviation, clipped to ±[`CLIP`].
//!
//! Entry points: [`prepare`] (candidates -> contiguous tensors, for scoring),
//! [`parquet::write_tensors`] (the same tensors as Parquet with fixed-size list columns),
//! [`training::export_training_set`] (simulator -> alertfinder -> prepare -> Parquet).

pub mod frame;
pub mod parquet;
pub mod real;
pub mod stats;
pub mod training;
pub mod vetted;

#[cfg(test)]
mod tests;

use crate::alertfinder::N_DIAGNOSIS;
use crate::photometry::StarCurves;
use crate::simulate::Label;

pub use stats::{MeanStd, PreprocessStats};
pub use training::{export_training_set, ExportOptions, ExportSummary};

/// Time steps per site.
pub const SEQ_LEN: usize = 128;
/// Sites (KMTA, KMTC, KMTS).
pub const N_SEQ_SITES: usize = 3;
/// Channels per time step, in [`CHANNELS`] order.
pub const N_CHANNELS: usize = 7;
/// Channel names, in tensor order.
pub const CHANNELS: [&str; N_CHANNELS] = ["flux", "flux_err", "fwhm", "sky", "airmass", "dt", "mask"];
/// Class order of the model's `probs` output.
pub const CLASS_ORDER: [&str; 3] = ["yes", "maybe", "no"];
/// f32 values per candidate in `seq`.
pub const SEQ_VALUES: usize = N_SEQ_SITES * SEQ_LEN * N_CHANNELS;
/// A point further than this many robust σ from both agreeing neighbours is a spike.
pub const OUTLIER_SIGMA: f64 = 10.0;
/// Standardised values are clipped to ±CLIP.
pub const CLIP: f64 = 10.0;

/// Errors of preprocess. Only file I/O is retryable; the rest are bugs or bad inputs.
#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    #[error("polars: {0}")]
    Polars(#[from] polars::prelude::PolarsError),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("parquet: {0}")]
    Parquet(#[from] ::parquet::errors::ParquetError),
    #[error("cannot access {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("invalid preprocess statistics: {0}")]
    Stats(String),
    #[error("simulator: {0}")]
    Simulate(#[from] crate::simulate::SimError),
    #[error("invalid export options: {0}")]
    Options(String),
}

impl PreprocessError {
    /// Whether retrying the same call can help (only file I/O can).
    pub fn is_retryable(&self) -> bool {
        matches!(self, PreprocessError::Io { .. })
    }
}

/// One candidate to prepare: a star's photometry, the run's `now` and the AlertFinder's
/// diagnosis vector (`alertfinder::diagnosis_vector`).
#[derive(Debug, Clone)]
pub struct Candidate<'a> {
    /// The candidate's id (the key of the candidates dataset).
    pub id: String,
    pub star: &'a StarCurves,
    /// Only points with `hjd <= now` are used.
    pub now: f64,
    pub diag: [f64; N_DIAGNOSIS],
    /// The vetting label when known (training, evaluation).
    pub label: Option<Label>,
}

/// The model's inputs for a batch, row-major and contiguous, ready for ONNX Runtime.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Prepared {
    /// Candidate ids, in input order.
    pub ids: Vec<String>,
    /// Star ids, in input order.
    pub stars: Vec<String>,
    /// Labels, in input order (None when unknown).
    pub labels: Vec<Option<Label>>,
    /// `[n, 3, SEQ_LEN, N_CHANNELS]`.
    pub seq: Vec<f32>,
    /// `[n, n_diag]`.
    pub diag: Vec<f32>,
    /// Width of `diag`: the model's diagnosis features (`PreprocessStats::n_diag`, at most
    /// `N_DIAGNOSIS`).
    pub n_diag: usize,
    /// Real points per candidate and site after cleaning and the tail (`[n, 3]`).
    pub n_points: Vec<[u32; N_SEQ_SITES]>,
    /// Spikes removed per candidate (all sites).
    pub n_outliers: Vec<u32>,
}

impl Prepared {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The seq tensor of candidate `i` (`3 * SEQ_LEN * N_CHANNELS` values).
    pub fn seq_row(&self, i: usize) -> &[f32] {
        &self.seq[i * SEQ_VALUES..(i + 1) * SEQ_VALUES]
    }

    /// The diag tensor of candidate `i`.
    pub fn diag_row(&self, i: usize) -> &[f32] {
        &self.diag[i * self.n_diag..(i + 1) * self.n_diag]
    }
}

/// Prepare a batch of candidates with the model's statistics: the one function that both the
/// score stage and the training export call.
pub fn prepare(cands: &[Candidate<'_>], stats: &PreprocessStats) -> Result<Prepared, PreprocessError> {
    stats.validate()?;
    let points = frame::points_frame(cands)?;
    let (seq, n_points, n_outliers) = frame::seq_tensor(points, cands.len(), stats)?;
    let diag = frame::diag_tensor(cands, stats)?;
    Ok(Prepared {
        ids: cands.iter().map(|c| c.id.clone()).collect(),
        stars: cands.iter().map(|c| c.star.star.0.clone()).collect(),
        labels: cands.iter().map(|c| c.label).collect(),
        seq,
        diag,
        n_diag: stats.n_diag(),
        n_points,
        n_outliers,
    })
}
