//! The diagnosis parameters: a fixed, ordered, named feature vector per analysed star, for
//! preprocess and the classifier. The order is part of the dataset contract: append new
//! features at the end and never reorder (the model card names the version it was trained on).
//!
//! Conventions: a feature whose stage did not run (no broken line, no grid, not a candidate) is
//! 0; every value is finite (a non-finite number, which the fits never produce, would be
//! written as 0 too). Per-site features come in the order KMTA, KMTC, KMTS. Fluxes are in the
//! survey's difference-flux units, times in days.

use super::{StarResult, N_SITES};

/// Version of the feature list, bumped on any change (2: the star's history, appended).
pub const DIAGNOSIS_VERSION: u32 = 2;

/// Number of features.
pub const N_DIAGNOSIS: usize = 53;

/// Features of version 1 (`lensnet-v1`, `lensnet-v2`). A model is trained on a prefix of
/// [`DIAGNOSIS_NAMES`] (its `lensnet.diag_names`), so a model of an earlier version keeps
/// working: it is given the first names only.
pub const N_DIAGNOSIS_V1: usize = 47;

/// Whether a model can take `names` as its diagnosis features: the first [`N_DIAGNOSIS_V1`] to
/// [`N_DIAGNOSIS`] of [`DIAGNOSIS_NAMES`], in order (the list only grows at its end). The one
/// rule that both a model's metadata and its preprocessing statistics are checked against.
pub fn is_model_prefix<S: AsRef<str>>(names: &[S]) -> bool {
    (N_DIAGNOSIS_V1..=N_DIAGNOSIS).contains(&names.len()) && names.iter().zip(DIAGNOSIS_NAMES).all(|(a, b)| a.as_ref() == b)
}

/// Names of the features, in vector order.
pub const DIAGNOSIS_NAMES: [&str; N_DIAGNOSIS] = [
    // Status.
    "is_candidate",            // 1 when the star passed pre-selection and the broken line
    "n_valid",                 // valid points up to now
    "n_sites_usable",          // sites with a baseline
    // Pre-selection over the search window.
    "pre_n_window",            // points in the window
    "pre_n_new",               // points newer than the watermark
    "pre_n_high",              // points >= high_sigma above the baseline
    "pre_longest_run",         // longest run of consecutive high points
    "pre_run_sites",           // distinct sites in that run
    "pre_run_duration",        // days from the run's first to last point
    "pre_max_z",               // largest normalised residual
    // Broken line.
    "bl_delta_chi2",           // chi2_flat - chi2_broken (rising only)
    "bl_delta_chi2_per_point", // the same over the window's points
    "bl_chi2_flat_per_dof",    // flat chi2 / (points - sites): noise model check
    "bl_rise_age",             // now - t_rise (days)
    "bl_slope",                // shared slope (flux per day)
    "bl_slope_err",            // its formal error
    "bl_significance",         // slope / error
    "bl_n_after",              // points after t_rise
    "bl_n_sites_after",        // sites with >= 2 points after t_rise
    "bl_n_sites_rising",       // of them, sites whose own data rise
    // EventFinder grid.
    "grid_delta_chi2",         // best template's improvement over flat on its window
    "grid_delta_chi2_per_point",
    "grid_t0_minus_now",       // days; positive = peak still ahead
    "grid_log10_teff",         // log10 of t_eff (days)
    "grid_regime",             // 1 high magnification, 2 low magnification
    "grid_n_points",           // points in the best window
    "grid_max_site_share",     // largest single site's share of grid_delta_chi2
    "grid_f1_kmta",            // per-site template flux
    "grid_f1_kmtc",
    "grid_f1_kmts",
    "grid_f0_kmta",            // per-site flat flux (site's own scale)
    "grid_f0_kmtc",
    "grid_f0_kmts",
    // Baseline and noise.
    "base_median_kmta",        // baseline flux
    "base_median_kmtc",
    "base_median_kmts",
    "base_error_scale_kmta",   // error-bar multiplier k_s
    "base_error_scale_kmtc",
    "base_error_scale_kmts",
    "base_noise_kmta",         // k_s times the mean reported error (flux)
    "base_noise_kmtc",
    "base_noise_kmts",
    // Data quality of the rising points.
    "q_n_rising",
    "q_frac_bad_seeing",
    "q_frac_high_sky",
    "q_frac_missing",
    "q_single_site_rise",      // 1 when only one of >= 2 observing sites rises
    // The star's history before the search window (version 2; `history::HistorySummary`).
    "hist_nights",             // nights absorbed, all sites
    "hist_sites",              // sites whose history can show a brightening
    "hist_sites_used",         // sites whose baseline came from the history
    "hist_episodes",           // ended brightenings, all sites
    "hist_episode_sites",      // sites with an ended brightening
    "hist_max_z",              // highest nightly z (nightly sigmas above the level)
];

fn finite(x: f64) -> f64 {
    if x.is_finite() {
        x
    } else {
        0.0
    }
}

/// The feature vector of one star, in [`DIAGNOSIS_NAMES`] order.
pub fn diagnosis_vector(r: &StarResult) -> [f64; N_DIAGNOSIS] {
    let p = &r.preselection;
    let bl = r.broken_line.unwrap_or_default();
    let has_bl = r.broken_line.is_some();
    let g = r.grid.unwrap_or_default();
    let q = r.quality.unwrap_or_default();
    let b = &r.baseline;
    let h = &r.history;
    let n_usable = b.iter().filter(|s| s.usable).count();
    let per_point = |d: f64, n: u32| if n > 0 { d / n as f64 } else { 0.0 };
    let dof = bl.n_points as f64 - n_usable as f64;
    let max_site = g.site_delta_chi2.iter().fold(0.0f64, |a, &x| a.max(x));
    let site = |f: &dyn Fn(usize) -> f64| -> [f64; N_SITES] { std::array::from_fn(f) };
    let f1 = site(&|s| g.f1[s]);
    let f0 = site(&|s| if r.grid.is_some() { g.f0[s] } else { 0.0 });
    let med = site(&|s| if b[s].usable { b[s].median } else { 0.0 });
    let ks = site(&|s| if b[s].usable { b[s].error_scale } else { 0.0 });
    let noise = site(&|s| if b[s].usable { b[s].error_scale * b[s].mean_err } else { 0.0 });
    let v = [
        (r.status == super::Status::Candidate) as u8 as f64,
        r.n_valid as f64,
        n_usable as f64,
        p.n_window as f64,
        p.n_new as f64,
        p.n_high as f64,
        p.longest_run as f64,
        p.run_sites as f64,
        p.run_end - p.run_start,
        p.max_z,
        bl.delta_chi2,
        per_point(bl.delta_chi2, bl.n_points),
        if has_bl && dof > 0.0 { bl.chi2_flat / dof } else { 0.0 },
        if has_bl { r.now - bl.t_rise } else { 0.0 },
        bl.slope,
        bl.slope_err,
        bl.significance,
        bl.n_after as f64,
        bl.n_sites_after as f64,
        bl.n_sites_rising as f64,
        g.delta_chi2,
        per_point(g.delta_chi2, g.n_points),
        if r.grid.is_some() { g.t0 - r.now } else { 0.0 },
        if g.teff > 0.0 { g.teff.log10() } else { 0.0 },
        g.regime as f64,
        g.n_points as f64,
        if g.delta_chi2 > 0.0 { max_site / g.delta_chi2 } else { 0.0 },
        f1[0],
        f1[1],
        f1[2],
        f0[0],
        f0[1],
        f0[2],
        med[0],
        med[1],
        med[2],
        ks[0],
        ks[1],
        ks[2],
        noise[0],
        noise[1],
        noise[2],
        q.n_rising as f64,
        q.frac_bad_seeing,
        q.frac_high_sky,
        q.frac_missing,
        q.single_site_rise as u8 as f64,
        h.nights.iter().map(|&n| n as f64).sum(),
        h.history_sites as f64,
        h.sites_used.count_ones() as f64,
        h.episodes as f64,
        h.episode_sites as f64,
        h.max_z,
    ];
    v.map(finite)
}
