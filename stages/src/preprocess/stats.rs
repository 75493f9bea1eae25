//! The global preprocessing statistics: fitted once on the training set, saved with the model
//! (ONNX metadata key [`METADATA_KEY`], and `preprocess_stats.json` beside the training
//! Parquet), and loaded by the scorer so that serving standardises exactly as training did.

use serde::{Deserialize, Serialize};

use super::{frame, Candidate, PreprocessError};
use crate::alertfinder::{is_model_prefix, DIAGNOSIS_NAMES, N_DIAGNOSIS, N_DIAGNOSIS_V1};

/// ONNX metadata key holding [`PreprocessStats`] as JSON.
pub const METADATA_KEY: &str = "lensnet.preprocess_stats";

/// Version of the preprocessing recipe (bump on any change of the transforms in `mod.rs`).
pub const PREPROCESS_VERSION: u32 = 1;

/// Mean and standard deviation of one transformed quantity.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeanStd {
    pub mean: f64,
    pub std: f64,
}

impl MeanStd {
    pub const IDENTITY: MeanStd = MeanStd { mean: 0.0, std: 1.0 };

    /// From raw moments; a zero or undefined spread becomes 1 (the feature is then only
    /// centred), so that a constant training column cannot produce infinities at serving.
    pub fn from_moments(mean: Option<f64>, std: Option<f64>) -> MeanStd {
        let mean = mean.filter(|m| m.is_finite()).unwrap_or(0.0);
        let std = std.filter(|s| s.is_finite() && *s > 1e-9).unwrap_or(1.0);
        MeanStd { mean, std }
    }
}

/// Statistics of the global standardisations (see the module docs of `preprocess`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreprocessStats {
    /// [`PREPROCESS_VERSION`] the statistics were fitted with.
    pub version: u32,
    /// Of `ln(fwhm)` over all real points.
    pub log_fwhm: MeanStd,
    /// Of `ln(sky)`.
    pub log_sky: MeanStd,
    /// Of `airmass`.
    pub airmass: MeanStd,
    /// Of `-ln(1 + (t_last - t))` over the kept (tail) points.
    pub dt: MeanStd,
    /// The diagnosis names, in vector order: the first [`PreprocessStats::n_diag`] of
    /// `DIAGNOSIS_NAMES` (a model trained on an earlier version of the list is given its prefix).
    pub diag_names: Vec<String>,
    /// Whether feature j goes through `asinh` before standardisation.
    pub diag_asinh: Vec<bool>,
    /// Of each (transformed) diagnosis feature.
    pub diag: Vec<MeanStd>,
}

/// Features that are bounded or already logarithmic, standardised as they are; every other
/// diagnosis feature (Δχ², counts, fluxes, slopes, times) is heavy-tailed and goes through
/// `asinh` (≈ sign(x)·ln 2|x| for |x| ≫ 1, linear near 0, defined for negative values).
const DIAG_LINEAR: [&str; 18] = [
    "is_candidate",
    "n_sites_usable",
    "pre_run_sites",
    "bl_n_sites_after",
    "bl_n_sites_rising",
    "grid_log10_teff",
    "grid_regime",
    "grid_max_site_share",
    "base_error_scale_kmta",
    "base_error_scale_kmtc",
    "base_error_scale_kmts",
    "q_frac_bad_seeing",
    "q_frac_high_sky",
    "q_frac_missing",
    "q_single_site_rise",
    "hist_sites",
    "hist_sites_used",
    "hist_episode_sites",
];

/// Whether diagnosis feature `name` is log-transformed (asinh) before standardisation.
pub fn diag_uses_asinh(name: &str) -> bool {
    !DIAG_LINEAR.contains(&name)
}

impl PreprocessStats {
    /// No standardisation (means 0, spreads 1): what [`PreprocessStats::fit`] computes raw
    /// values with, and a usable default for tests.
    pub fn identity() -> PreprocessStats {
        PreprocessStats {
            version: PREPROCESS_VERSION,
            log_fwhm: MeanStd::IDENTITY,
            log_sky: MeanStd::IDENTITY,
            airmass: MeanStd::IDENTITY,
            dt: MeanStd::IDENTITY,
            diag_names: DIAGNOSIS_NAMES.iter().map(|s| s.to_string()).collect(),
            diag_asinh: DIAGNOSIS_NAMES.iter().map(|s| diag_uses_asinh(s)).collect(),
            diag: vec![MeanStd::IDENTITY; N_DIAGNOSIS],
        }
    }

    /// [`PreprocessStats::identity`] for a model trained on the first `n` diagnosis features
    /// (the stand-in exported before the list grew).
    pub fn identity_prefix(n: usize) -> PreprocessStats {
        let mut s = PreprocessStats::identity();
        let n = n.min(N_DIAGNOSIS);
        s.diag_names.truncate(n);
        s.diag_asinh.truncate(n);
        s.diag.truncate(n);
        s
    }

    /// Width of the `diag` tensor: the diagnosis features the model was trained on.
    pub fn n_diag(&self) -> usize {
        self.diag_names.len()
    }

    /// Fit the statistics on a batch of candidates (the training set, or a large sample of it).
    pub fn fit(cands: &[Candidate<'_>]) -> Result<PreprocessStats, PreprocessError> {
        let id = PreprocessStats::identity();
        let points = frame::points_frame(cands)?;
        let [log_fwhm, log_sky, airmass, dt] = frame::seq_moments(points)?;
        let diag = frame::diag_moments(cands, &id)?;
        Ok(PreprocessStats { log_fwhm, log_sky, airmass, dt, diag, ..id })
    }

    /// Every problem that would make the statistics unusable, as one error.
    pub fn validate(&self) -> Result<(), PreprocessError> {
        let mut problems = Vec::new();
        if self.version != PREPROCESS_VERSION {
            problems.push(format!("version {} (this code implements {PREPROCESS_VERSION})", self.version));
        }
        let names: Vec<&str> = self.diag_names.iter().map(String::as_str).collect();
        let n = names.len();
        if !is_model_prefix(&names) {
            problems.push(format!(
                "diag_names ({n}) are not the first {N_DIAGNOSIS_V1} to {N_DIAGNOSIS} of DIAGNOSIS_NAMES in order (a newer or reordered feature list)"
            ));
        }
        if self.diag_asinh.len() != n || self.diag.len() != n {
            problems.push(format!("diag_asinh/diag need {n} entries, one per name"));
        } else if self.diag_asinh.iter().zip(&names).any(|(&a, name)| a != diag_uses_asinh(name)) {
            problems.push("diag_asinh differs from this code's transforms".to_string());
        }
        let all = [("log_fwhm", self.log_fwhm), ("log_sky", self.log_sky), ("airmass", self.airmass), ("dt", self.dt)];
        for (name, m) in all.iter().copied().chain(self.diag.iter().enumerate().map(|(j, m)| (DIAGNOSIS_NAMES.get(j).copied().unwrap_or("?"), *m))) {
            if !(m.mean.is_finite() && m.std.is_finite() && m.std > 0.0) {
                problems.push(format!("{name}: mean {} std {}", m.mean, m.std));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(PreprocessError::Stats(problems.join("; ")))
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("plain numbers and strings always serialise")
    }

    pub fn from_json(text: &str) -> Result<PreprocessStats, PreprocessError> {
        let s: PreprocessStats = serde_json::from_str(text).map_err(|e| PreprocessError::Stats(e.to_string()))?;
        s.validate()?;
        Ok(s)
    }
}
