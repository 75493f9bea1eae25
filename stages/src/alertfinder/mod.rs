//! AlertFinder stage: rising light curves, broken-line scan, EventFinder grid (issue 5).
//!
//! The numeric core is [`scan_star`] (one star) and [`scan_batch`] (a field's stars in parallel
//! over zero-copy [`LightCurve`] views). For each star, with the run's `now` and the field's
//! watermark `since` (the last processed epoch, stored by the pipeline):
//!
//! 1. stars without a valid epoch in `(since, now]` are not searched ([`Status::NotSearched`]);
//!    epochs after `now` are ignored, so a rerun over old data reproduces the old answer;
//! 2. each site's robust baseline comes from the history before the search window
//!    `[now - window_days, now]` ([`baseline`]: P² estimators fed once per point);
//! 3. pre-selection: the window must hold `n_high` consecutive points (merged time order, any
//!    mix of sites) at least `high_sigma` rescaled error bars above the baseline;
//! 4. the broken line against a flat line over the window ([`brokenline`]); a pre-selected star
//!    with `delta_chi2 >= delta_chi2_min` is a [`Status::Candidate`]; in a season's first weeks,
//!    when a site's baseline is its history's, that level enters the fit as points before the
//!    window (`anchor_history`);
//! 5. candidates get the EventFinder grid over all their points up to `now` ([`grid`]; each
//!    night older than `recent_days` merged into one weighted point per site), the
//!    data-quality indicators, and a fixed feature vector ([`diagnosis`]).
//!
//! Points before the window and the recent nights enter only through state that can be carried
//! ([`Carry`]), so a search can be given a star's recent rows and its carry ([`scan_star_carry`]).
//!
//! A star that cannot be analysed is a [`Status::Failed`] row with a reason, never a panic or an
//! error that aborts the batch. All reported numbers are finite.

pub mod baseline;
pub mod bench;
pub mod brokenline;
pub mod diagnosis;
pub mod grid;
pub mod history;
pub mod nightly;
pub mod stage;
pub mod synth;
#[cfg(test)]
mod testutil;
#[cfg(test)]
mod tests;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

pub use baseline::SiteBaseline;
pub use brokenline::BrokenLine;
pub use diagnosis::{diagnosis_vector, is_model_prefix, DIAGNOSIS_NAMES, DIAGNOSIS_VERSION, N_DIAGNOSIS, N_DIAGNOSIS_V1};
pub use grid::{GridFit, GridParams};
pub use history::{HistorySummary, NightBuffers, StarHistory};

use crate::photometry::{LightCurve, Site};
use baseline::{valid, Estimators};
pub use baseline::SiteEstimator;
use brokenline::Window;
use grid::SitePoints;

/// Number of sites (KMTA, KMTC, KMTS); `LightCurve::site` values at or above it are ignored.
pub const N_SITES: usize = 3;

/// AlertFinder parameters of one field (the pipeline's config embeds one per field class).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertParams {
    /// Consecutive high points the search window must hold (KMTNet: 5 for low-cadence fields,
    /// 10 for high-cadence ones).
    pub n_high: usize,
    /// A point is high when it lies this many rescaled error bars above its site's baseline.
    pub high_sigma: f64,
    /// Width (days) of the time bins of an optional binned pre-selection (0, the default: off).
    /// When on, the window's points (all sites) are also averaged in bins this wide, and
    /// `n_high` consecutive bins whose weighted mean lies `high_sigma` above the baseline pass
    /// too. At high cadence a faint event rises at 1-3 sigma per point, which breaks runs of
    /// single points but not of bins; at low cadence a bin holds about one point. Measured on
    /// simulated seasons (`tests::recall_by_timescale`, `tests::false_candidates_by_class`),
    /// 0.1 d on BLG02 flags 102 instead of 96 of 125 clear events before their peak, and 18
    /// instead of 11 of 89 variables; on BLG14 (1/h) it changes nothing. Off by default because
    /// the model was trained on candidates of the unbinned pre-selection.
    pub bin_days: f64,
    /// Broken-line improvement over the flat line that makes a candidate (KMTNet: 250 for
    /// low-cadence fields, 400 for high-cadence ones).
    pub delta_chi2_min: f64,
    /// Length of the search window before `now` (days): pre-selection and broken line use its
    /// points; the baseline uses the points before it.
    pub window_days: f64,
    /// Fewest valid points a site needs for a baseline (a site with fewer is ignored).
    pub min_baseline_points: usize,
    /// Fewest points strictly after `t_rise`, and at or before it, for a break to be tried.
    pub min_rise_points: usize,
    /// Floor of the per-site error-bar multiplier (guards against zero MAD from quantised flux).
    pub min_error_scale: f64,
    /// Run the broken line even on stars that fail pre-selection (diagnostics, benchmarks).
    pub fit_all: bool,
    /// A rising point has bad seeing when its FWHM exceeds this multiple of its site's median.
    pub bad_seeing_ratio: f64,
    /// A rising point has high sky when its sky exceeds this multiple of its site's median.
    pub high_sky_ratio: f64,
    /// The EventFinder grid run on candidates.
    pub grid: GridParams,
    /// Days before `now` whose nights a search needs point by point (issue 14): the grid
    /// merges each older night of a site into one weighted point ([`NightSum`]), and the
    /// seeing and sky medians of [`Quality`] are those of the recent nights. Not below the
    /// grid's `t0_lookback_days` plus a few of its smallest windows. 0: every point on its own.
    pub recent_days: f64,
    /// Use the star's history ([`history`]: every stored night before the search window,
    /// earlier seasons included) once it holds `min_history_nights` nights: when the season has
    /// too few points before its window, the baseline (level and error-bar multiplier) is the
    /// earlier seasons' (else the history so far); when the season's level sits above the
    /// earlier seasons' by more than a point's noise (a long event under way), the level is
    /// theirs and the multiplier the season's. Otherwise the season's points decide, as without.
    pub use_history: bool,
    pub min_history_nights: usize,
    /// A candidate whose history holds ended brightenings ([`history::HistorySummary::recurrent`])
    /// is reported as recurrent (status preselected, with the reason) instead of as a candidate.
    pub recurrent_veto: bool,
    /// Cadence: a search window holding fewer than `min_window_points` points is widened
    /// (back to the point that makes it hold that many) up to `max_window_days` (0: off).
    pub min_window_points: usize,
    pub max_window_days: f64,
    /// Cadence: N_high is the window's points per night (rounded up), between `min_n_high`
    /// and `n_high` (`min_n_high` = `n_high`: fixed).
    pub min_n_high: usize,
    /// Cadence: the broken-line threshold is `delta_chi2_min` times the window's points over
    /// `ref_window_points` when fewer, never below `min_delta_chi2` (0: fixed).
    pub ref_window_points: usize,
    pub min_delta_chi2: f64,
    /// A site whose baseline comes from the history because the season has too few points
    /// before the window (its first weeks) has no flat points before a rise that starts with
    /// the season, and the broken line, whose per-site offsets are free, sees no rise there. With
    /// this on, such a site's history level enters the broken line as `min_baseline_points`
    /// points at the level (or the history's nights, when fewer), just before the window's first
    /// point: the flat part the season cannot show yet (issue 12).
    pub anchor_history: bool,
}

impl Default for AlertParams {
    fn default() -> Self {
        AlertParams {
            n_high: 5,
            high_sigma: 3.0,
            bin_days: 0.0,
            delta_chi2_min: 250.0,
            window_days: 20.0,
            min_baseline_points: 10,
            min_rise_points: 3,
            min_error_scale: 0.05,
            fit_all: false,
            bad_seeing_ratio: 1.5,
            high_sky_ratio: 1.5,
            grid: GridParams::default(),
            recent_days: 35.0,
            use_history: true,
            min_history_nights: 10,
            recurrent_veto: true,
            min_window_points: 40,
            max_window_days: 90.0,
            min_n_high: 3,
            ref_window_points: 100,
            min_delta_chi2: 50.0,
            anchor_history: true,
        }
    }
}

impl AlertParams {
    /// KMTNet's low-cadence thresholds: (N_high, delta_chi2) = (5, 250).
    pub fn low_cadence() -> Self {
        AlertParams::default()
    }

    /// KMTNet's high-cadence thresholds: (N_high, delta_chi2) = (10, 400).
    pub fn high_cadence() -> Self {
        AlertParams { n_high: 10, delta_chi2_min: 400.0, ..AlertParams::default() }
    }
}

/// What happened to a star.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// No valid epoch newer than the watermark: nothing to do.
    NotSearched,
    /// The star could not be analysed; `reason` says why.
    Failed,
    /// Pre-selection failed.
    Quiet,
    /// Pre-selected, but the broken line's improvement is below the threshold.
    Preselected,
    /// Pre-selected and rising: the grid and diagnosis were computed.
    Candidate,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::NotSearched => "not_searched",
            Status::Failed => "failed",
            Status::Quiet => "quiet",
            Status::Preselected => "preselected",
            Status::Candidate => "candidate",
        }
    }
}

/// The pre-selection counts of the search window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Preselection {
    /// Valid points of usable sites in the window.
    pub n_window: u32,
    /// Of them, points newer than the watermark.
    pub n_new: u32,
    /// Points at least `high_sigma` above the baseline.
    pub n_high: u32,
    /// Longest run of consecutive high points.
    pub longest_run: u32,
    /// Distinct sites in that run.
    pub run_sites: u8,
    /// Times of the first and last point of that run (0 when there is none).
    pub run_start: f64,
    pub run_end: f64,
    /// Largest normalised residual `(f - median) / (k_s e)` in the window (0 if none).
    pub max_z: f64,
    /// Longest run of consecutive high bins (`bin_days`; empty bins do not break a run).
    pub longest_bin_run: u32,
    /// Start of the search window (widened at low cadence).
    pub window_start: f64,
    /// Nights with points in the window.
    pub n_nights: u32,
    /// Nights in a row, up to the window's newest, whose points (all sites, weighted mean) lie
    /// `high_sigma` above the baseline: how many nights the brightening has lasted so far (0
    /// when the newest night is not high). A night is a local night ([`local_night`]), so that
    /// the points of one KMTA night, which straddle a whole HJD, count once.
    pub high_nights: u32,
    /// The N_high and broken-line threshold applied (adapted to the cadence).
    pub n_high_used: u32,
    pub delta_chi2_used: f64,
    /// `longest_run >= n_high_used` or `longest_bin_run >= n_high_used`.
    pub passed: bool,
}

/// Data-quality indicators of a candidate's rising points (after `t_rise`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Quality {
    /// Rising points counted.
    pub n_rising: u32,
    /// Share of rising points whose FWHM exceeds `bad_seeing_ratio` times the site's median.
    pub frac_bad_seeing: f64,
    /// Share of rising points whose sky exceeds `high_sky_ratio` times the site's median.
    pub frac_high_sky: f64,
    /// Share of rising points with missing FWHM or sky.
    pub frac_missing: f64,
    /// Only one site rises although at least two sites have points after `t_rise`.
    pub single_site_rise: bool,
}

/// The AlertFinder's answer for one star: one row of the candidates dataset.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StarResult {
    pub status: Status,
    /// Why the star failed or was not searched.
    pub reason: Option<String>,
    /// The run's `now`.
    pub now: f64,
    /// Valid points up to `now`.
    pub n_valid: u32,
    pub baseline: [SiteBaseline; N_SITES],
    pub preselection: Preselection,
    pub broken_line: Option<BrokenLine>,
    pub grid: Option<GridFit>,
    pub quality: Option<Quality>,
    /// The star's history as the search saw it.
    pub history: HistorySummary,
}

impl StarResult {
    fn empty(status: Status, reason: Option<String>, now: f64) -> Self {
        StarResult {
            status,
            reason,
            now: if now.is_finite() { now } else { 0.0 },
            n_valid: 0,
            baseline: [SiteBaseline::default(); N_SITES],
            preselection: Preselection::default(),
            broken_line: None,
            grid: None,
            quality: None,
            history: HistorySummary::default(),
        }
    }

    fn failed(reason: String, now: f64) -> Self {
        StarResult::empty(Status::Failed, Some(reason), now)
    }
}

/// Reusable buffers for [`scan_star`]; one per thread.
#[derive(Debug, Default)]
pub struct Scratch {
    win: Window,
    /// `win` with the history anchors in front ([`AlertParams::anchor_history`]).
    anchored: Window,
    pts: SitePoints,
    /// Per site: FWHM then sky values, for [`quality`]'s medians.
    sel: [Vec<f64>; 2 * N_SITES],
}

/// Analyse one star without a history; see [`scan_star_with`].
pub fn scan_star(lc: &LightCurve<'_>, now: f64, since: f64, p: &AlertParams, scratch: &mut Scratch) -> StarResult {
    scan_star_with(lc, now, since, p, None, scratch)
}

/// Analyse one star; see the module docs. `since` is the field's watermark (use
/// `f64::NEG_INFINITY` to search every star); `history` is the star's [`StarHistory`] up to the
/// search window, if kept.
pub fn scan_star_with(
    lc: &LightCurve<'_>,
    now: f64,
    since: f64,
    p: &AlertParams,
    history: Option<&StarHistory>,
    scratch: &mut Scratch,
) -> StarResult {
    match scan_star_carry(lc, now, since, p, history, None, scratch) {
        Ok(r) => r,
        Err(CarryAhead) => unreachable!("no carry, so none ahead of the search"),
    }
}

/// What a search carries of a star's points before `upto` instead of reading them (issue 14):
/// everything [`scan_star_carry`] needs of them. Built by [`Carry::extend`] from the points in
/// time order; a search given a carry and the points from its `upto` on returns what it returns
/// given every point (a test holds them equal), as long as `upto` is a night boundary not after
/// the search window's start nor [`recent_cut`].
#[derive(Debug, Clone, PartialEq)]
pub struct Carry {
    /// The points before this time are carried (a whole night: an integer; `-inf`: none).
    pub upto: f64,
    /// Rows carried (valid or not) and the first one's time.
    pub rows: u32,
    pub first_t: f64,
    /// Valid points carried.
    pub n_valid: u32,
    /// The baseline estimators fed with the carried points.
    pub est: Estimators,
    /// Each site's carried nights, merged, in time order.
    pub nights: [Vec<NightSum>; N_SITES],
}

impl Default for Carry {
    fn default() -> Self {
        Carry { upto: f64::NEG_INFINITY, rows: 0, first_t: f64::NEG_INFINITY, n_valid: 0, est: Estimators::default(), nights: Default::default() }
    }
}

impl Carry {
    /// Carry `lc`'s rows before `upto` (an integer night boundary), `lc` starting where the carry
    /// ends; returns how many rows it took (the rest are what a search is given).
    pub fn extend(&mut self, lc: &LightCurve<'_>, upto: f64) -> usize {
        let n = lc.time.len().min(lc.flux.len()).min(lc.err.len()).min(lc.site.len());
        let taken = lc.time[..n].partition_point(|&t| !(t >= upto));
        let mut open = OpenNights::default();
        for i in 0..taken {
            let (t, f, e, s) = (lc.time[i], lc.flux[i], lc.err[i], lc.site[i]);
            if self.rows == 0 {
                self.first_t = t;
            }
            self.rows += 1;
            if !valid(t, f, e, s) {
                continue;
            }
            let s = s as usize;
            self.n_valid += 1;
            self.est[s].push(f, e);
            self.nights[s].extend(open.add(s, t, f, e));
        }
        for s in 0..N_SITES {
            self.nights[s].extend(open.take(s));
        }
        if upto > self.upto {
            self.upto = upto;
        }
        taken
    }

    /// Values of [`Self::to_values`] before the nights.
    const FIXED_VALUES: usize = 4 + N_SITES * 24 + N_SITES;

    /// The carry as numbers (stored state): `upto, rows, first_t, n_valid`, each site's
    /// estimators, each site's night count, then the nights (night, n, w, wf, wt).
    pub fn to_values(&self, out: &mut Vec<f64>) {
        out.extend_from_slice(&[self.upto, self.rows as f64, self.first_t, self.n_valid as f64]);
        for e in &self.est {
            out.extend_from_slice(&[e.n as f64, e.sum_err]);
            for p in [&e.level, &e.resid] {
                out.push(p.n as f64);
                out.extend_from_slice(&p.q);
                out.extend_from_slice(&p.pos);
            }
        }
        out.extend(self.nights.iter().map(|n| n.len() as f64));
        for n in self.nights.iter().flatten() {
            out.extend_from_slice(&[n.night, n.n as f64, n.w, n.wf, n.wt]);
        }
    }

    /// The inverse of [`Self::to_values`] (`None` when the numbers do not make a carry).
    pub fn from_values(v: &[f64]) -> Option<Carry> {
        if v.len() < Self::FIXED_VALUES {
            return None;
        }
        let p2 = |c: &[f64]| history::P2 { n: c[0] as u32, q: [c[1], c[2], c[3], c[4], c[5]], pos: [c[6], c[7], c[8], c[9], c[10]] };
        let mut c = Carry { upto: v[0], rows: v[1] as u32, first_t: v[2], n_valid: v[3] as u32, ..Default::default() };
        for (e, x) in c.est.iter_mut().zip(v[4..4 + N_SITES * 24].chunks_exact(24)) {
            *e = baseline::SiteEstimator { n: x[0] as u32, sum_err: x[1], level: p2(&x[2..13]), resid: p2(&x[13..24]) };
        }
        let counts = &v[4 + N_SITES * 24..Self::FIXED_VALUES];
        let total: usize = counts.iter().map(|&n| n as usize).sum();
        if v.len() != Self::FIXED_VALUES + 5 * total {
            return None;
        }
        let mut rest = v[Self::FIXED_VALUES..].chunks_exact(5);
        for (s, &k) in counts.iter().enumerate() {
            for x in rest.by_ref().take(k as usize) {
                c.nights[s].push(NightSum { night: x[0], n: x[1] as u32, w: x[2], wf: x[3], wt: x[4] });
            }
        }
        Some(c)
    }

    /// The carry's boundary for the next search after one at `now` whose window started at
    /// `window_start`: the night boundary at or before both (both only move forward in time).
    pub fn next_upto(now: f64, window_start: f64, p: &AlertParams) -> f64 {
        window_start.floor().min(recent_cut(now, p))
    }
}

/// [`scan_star_carry`]'s answer when the carry reaches past what the search may leave to it
/// (a search at an earlier `now`, or a window that a cadence change moved back): search the
/// star with every point instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CarryAhead;

/// [`scan_star_with`] given `carry` (the star's points before `carry.upto`) and `lc`, the star's
/// points from `carry.upto` on.
pub fn scan_star_carry(
    lc: &LightCurve<'_>,
    now: f64,
    since: f64,
    p: &AlertParams,
    history: Option<&StarHistory>,
    carry: Option<&Carry>,
    scratch: &mut Scratch,
) -> Result<StarResult, CarryAhead> {
    let none = Carry::default();
    let carry = carry.unwrap_or(&none);
    let n = lc.time.len();
    if [lc.flux.len(), lc.err.len(), lc.site.len()].iter().any(|&l| l != n) {
        return Ok(StarResult::failed(
            format!(
                "columns differ in length: time {n}, flux {}, err {}, site {}",
                lc.flux.len(),
                lc.err.len(),
                lc.site.len()
            ),
            now,
        ));
    }
    if now.is_nan() {
        return Ok(StarResult::failed("now is NaN".into(), now));
    }
    // One pass: sortedness (the scans rely on it), the end of the data up to `now`, new epochs.
    let mut end = 0;
    let mut prev = f64::NEG_INFINITY;
    let mut n_valid = 0u32;
    let mut has_new = false;
    for i in 0..n {
        let t = lc.time[i];
        if t.is_nan() {
            continue;
        }
        if t < prev {
            return Ok(StarResult::failed(format!("times not sorted at index {i}"), now));
        }
        prev = t;
        if t > now {
            break;
        }
        end = i + 1;
        if valid(t, lc.flux[i], lc.err[i], lc.site[i]) {
            n_valid += 1;
            has_new |= t > since;
        }
    }
    if !has_new {
        let mut r = StarResult::empty(Status::NotSearched, Some("no valid epoch newer than the watermark".into()), now);
        r.n_valid = carry.n_valid + n_valid;
        return Ok(r);
    }
    let n_valid = carry.n_valid + n_valid;
    let mut window_start = now - p.window_days.max(0.0);
    if p.min_window_points > 0 && p.max_window_days > p.window_days {
        // Low cadence: widen the window back to its min_window_points-th newest point.
        let first = lc.time[..end].partition_point(|&t| !(t >= window_start));
        if end - first < p.min_window_points {
            // The min_window_points-th newest row, counting the carried ones.
            let k = (carry.rows as usize + end).saturating_sub(p.min_window_points);
            let earliest = now - p.max_window_days;
            let t_k = match k.checked_sub(carry.rows as usize) {
                Some(k) => lc.time[k],
                None if k == 0 => carry.first_t,
                // A carried row's time: before the carry's end, so only `earliest` can matter.
                None if earliest >= carry.upto => earliest,
                None => return Err(CarryAhead),
            };
            if t_k.is_finite() {
                window_start = t_k.max(earliest).min(window_start);
            }
        }
    }
    if carry.upto > window_start || carry.upto > recent_cut(now, p) {
        return Err(CarryAhead);
    }
    let mut baseline = baseline::site_baselines(lc, end, window_start, p, &carry.est);
    let mut hs = HistorySummary::default();
    // Per site: the points of the history's level that the broken line gets, for a site whose
    // baseline is the history's because the season has none before the window (0: none).
    let mut anchors = [0usize; N_SITES];
    if let Some(h) = history {
        hs = h.summary();
        for s in 0..N_SITES {
            let sh = &h.sites[s];
            if !p.use_history {
                continue;
            }
            let min = p.min_history_nights.max(1) as u32;
            let prior = sh.prior().filter(|pr| pr.0 >= min);
            let b = &mut baseline[s];
            if !b.from_season {
                // Too few season points before the window (a season's first weeks, or an event
                // since its start): the earlier seasons' baseline, else the history so far.
                let so_far = || sh.stats().filter(|_| sh.nights >= min).map(|(l, sc, e)| (sh.nights, l, sc, e));
                let source = prior.or_else(so_far);
                let Some((n, level, scatter, mean_err)) = source else { continue };
                // The nightly scatter over the nightly errors, never below 1 (a skewed
                // variable's lower half can be narrow: the history never claims that the
                // error bars are too large).
                let k = (scatter / mean_err).max(1.0).max(p.min_error_scale);
                if !(k.is_finite() && level.is_finite()) {
                    continue;
                }
                *b = SiteBaseline { n, usable: true, median: level, error_scale: k, mean_err: if b.mean_err > 0.0 { b.mean_err } else { mean_err }, from_season: false };
                hs.sites_used |= 1 << s;
                if p.anchor_history {
                    anchors[s] = (n as usize).min(p.min_baseline_points.max(1));
                }
            } else if let Some((_, level, _, _)) = prior {
                // The season sits above the earlier seasons by more than a point's noise (a
                // long event under way, or a variable's bright phase): their level, with the
                // season's own scatter.
                if level.is_finite() && level < b.median - b.error_scale * b.mean_err {
                    b.median = level;
                    hs.sites_used |= 1 << s;
                }
            }
        }
    }
    let mut r = StarResult::empty(Status::Quiet, None, now);
    r.n_valid = n_valid;
    r.baseline = baseline;
    r.history = hs;
    if !baseline.iter().any(|b| b.usable) {
        r.status = Status::Failed;
        r.reason = Some(format!(
            "no site has {} valid points for a baseline (valid points: {n_valid})",
            p.min_baseline_points
        ));
        return Ok(r);
    }
    let pre = window_and_preselect(lc, end, window_start, since, &baseline, p, &mut scratch.win);
    r.preselection = pre;
    if !pre.passed && !p.fit_all {
        return Ok(r);
    }
    let min_rise = p.min_rise_points.max(1);
    // Anchored only when the window's own points rise (a straight line over them, `high_sigma`
    // significant): a season whose level merely differs from the earlier seasons' (a new
    // calibration, a variable's other phase) is no rise from the history's level.
    let win = if anchors.iter().any(|&a| a > 0) && window_trend(&scratch.win) >= p.high_sigma {
        anchor_window(&scratch.win, &anchors, &baseline, &mut scratch.anchored);
        &scratch.anchored
    } else {
        &scratch.win
    };
    r.broken_line = brokenline::scan_broken_line(win, min_rise, min_rise).map(|mut b| {
        for s in 0..N_SITES {
            if baseline[s].usable {
                b.offset[s] += baseline[s].median;
            }
        }
        b
    });
    if !pre.passed {
        return Ok(r);
    }
    r.status = Status::Preselected;
    let Some(bl) = r.broken_line else {
        r.reason = Some("no break epoch with enough points on both sides".into());
        return Ok(r);
    };
    if !(bl.delta_chi2 >= pre.delta_chi2_used) {
        return Ok(r);
    }
    if p.recurrent_veto && hs.recurrent() {
        r.reason = Some(format!("recurrent: {} ended brightening(s) in the star's history", hs.episodes));
        return Ok(r);
    }
    r.status = Status::Candidate;
    r.quality = Some(quality(lc, end, recent_cut(now, p), &scratch.win, &bl, p, &mut scratch.sel));
    fill_site_points(lc, end, &baseline, &mut scratch.pts, recent_cut(now, p), Some(&carry.nights));
    r.grid = grid::search_grid(&scratch.pts, now, &p.grid);
    if r.grid.is_none() {
        r.reason = Some("no grid window with enough points rises".into());
    }
    Ok(r)
}

/// Analyse a field's stars in parallel (rayon, one [`Scratch`] per worker); results are in the
/// order of `curves`.
pub fn scan_batch(curves: &[LightCurve<'_>], now: f64, since: f64, p: &AlertParams) -> Vec<StarResult> {
    curves
        .par_iter()
        .map_init(Scratch::default, |scratch, lc| scan_star(lc, now, since, p, scratch))
        .collect()
}

/// [`scan_batch_with`] with each star's carry (`carries[i]`: `curves[i]` holds the star's points
/// from its end on).
pub fn scan_batch_carry(
    curves: &[LightCurve<'_>],
    histories: &[Option<&StarHistory>],
    carries: &[Option<&Carry>],
    now: f64,
    since: f64,
    p: &AlertParams,
) -> Vec<Result<StarResult, CarryAhead>> {
    curves
        .par_iter()
        .zip(histories.par_iter().zip(carries.par_iter()))
        .map_init(Scratch::default, |scratch, (lc, (h, c))| scan_star_carry(lc, now, since, p, *h, *c, scratch))
        .collect()
}

/// [`scan_batch`] with each star's history (`histories[i]` for `curves[i]`).
pub fn scan_batch_with(curves: &[LightCurve<'_>], histories: &[Option<&StarHistory>], now: f64, since: f64, p: &AlertParams) -> Vec<StarResult> {
    curves
        .par_iter()
        .zip(histories.par_iter())
        .map_init(Scratch::default, |scratch, (lc, h)| scan_star_with(lc, now, since, p, *h, scratch))
        .collect()
}

/// Significance `b / sigma_b` of a straight line (per-site offsets, one slope) over the
/// window's points (the broken line with its break at the first point); 0 when undefined.
fn window_trend(win: &Window) -> f64 {
    let mut sig = 0.0;
    brokenline::for_each_break(&win.t, &win.y, &win.w, &win.site, 1, 1, |k, num, den| {
        if k == 0 {
            sig = num / den.sqrt();
        }
    });
    if sig.is_finite() { sig } else { 0.0 }
}

/// `win` with, in front, `anchors[s]` points of each anchored site at its baseline level
/// (`y` = 0) and a window point's weight (`1 / (k e)^2`, `e` the site's mean error bar), at the
/// time of the window's first point: the history's level as the flat part before the window.
/// Index `u32::MAX` marks them (they are no light-curve rows).
fn anchor_window(win: &Window, anchors: &[usize; N_SITES], base: &[SiteBaseline; N_SITES], out: &mut Window) {
    out.clear();
    let t0 = win.t[0];
    for s in 0..N_SITES {
        let b = &base[s];
        let sigma = b.error_scale * b.mean_err;
        let w = 1.0 / (sigma * sigma);
        if anchors[s] == 0 || !b.usable || !(w.is_finite() && w > 0.0) {
            continue;
        }
        for _ in 0..anchors[s] {
            out.t.push(t0);
            out.y.push(0.0);
            out.w.push(w);
            out.site.push(s as u8);
            out.index.push(u32::MAX);
        }
    }
    out.t.extend_from_slice(&win.t);
    out.y.extend_from_slice(&win.y);
    out.w.extend_from_slice(&win.w);
    out.site.extend_from_slice(&win.site);
    out.index.extend_from_slice(&win.index);
}

/// Build the search window (fit units) and count the pre-selection in the same pass.
fn window_and_preselect(
    lc: &LightCurve<'_>,
    end: usize,
    window_start: f64,
    since: f64,
    base: &[SiteBaseline; N_SITES],
    p: &AlertParams,
    win: &mut Window,
) -> Preselection {
    win.clear();
    // Walk back to the window's first point (times are sorted; NaN times are skipped later).
    let mut start = end;
    while start > 0 && !(lc.time[start - 1] < window_start) {
        start -= 1;
    }
    let mut pre = Preselection { window_start: if window_start.is_finite() { window_start } else { 0.0 }, ..Default::default() };
    let mut last_night = f64::NAN;
    let mut run = 0u32;
    let mut run_sites = 0u8;
    let mut run_t0 = 0.0;
    let mut max_z = f64::NEG_INFINITY;
    // Per local night, in order: the night, sums of y / sigma^2 and 1 / sigma^2
    // ([`Preselection::high_nights`]); each site's shift to its local nights, once.
    let mut nights: Vec<(f64, f64, f64)> = Vec::new();
    let shift: [f64; N_SITES] = std::array::from_fn(|s| night_shift(s as u8));
    // The open bin: start time, sum of y / sigma^2, sum of 1 / sigma^2; and the run of bins.
    let (mut bin_t, mut bin_wy, mut bin_w) = (f64::NAN, 0.0f64, 0.0f64);
    let mut bin_run = 0u32;
    let mut close_bin = |bin_wy: f64, bin_w: f64, pre: &mut Preselection| {
        if bin_w > 0.0 {
            if bin_wy / bin_w.sqrt() >= p.high_sigma {
                bin_run += 1;
                pre.longest_bin_run = pre.longest_bin_run.max(bin_run);
            } else {
                bin_run = 0;
            }
        }
    };
    for i in start..end {
        let (t, f, e, s) = (lc.time[i], lc.flux[i], lc.err[i], lc.site[i]);
        if !valid(t, f, e, s) || !base[s as usize].usable {
            continue;
        }
        let b = &base[s as usize];
        let sigma = b.error_scale * e;
        let y = f - b.median;
        let z = y / sigma;
        if !z.is_finite() {
            continue;
        }
        let w = 1.0 / (sigma * sigma);
        if p.bin_days > 0.0 {
            if !(t < bin_t + p.bin_days) {
                close_bin(bin_wy, bin_w, &mut pre);
                (bin_t, bin_wy, bin_w) = (t, 0.0, 0.0);
            }
            if w.is_finite() {
                bin_wy += w * y;
                bin_w += w;
            }
        }
        win.t.push(t);
        win.y.push(y);
        win.w.push(w);
        win.site.push(s);
        win.index.push(i as u32);
        pre.n_window += 1;
        pre.n_new += (t > since) as u32;
        if t.floor() != last_night {
            last_night = t.floor();
            pre.n_nights += 1;
        }
        if w.is_finite() {
            add_to_night(&mut nights, (t + shift[s as usize]).floor(), w * y, w);
        }
        max_z = max_z.max(z);
        if z >= p.high_sigma {
            pre.n_high += 1;
            if run == 0 {
                run_t0 = t;
                run_sites = 0;
            }
            run += 1;
            run_sites |= 1 << s;
            if run > pre.longest_run {
                pre.longest_run = run;
                pre.run_sites = run_sites.count_ones() as u8;
                pre.run_start = run_t0;
                pre.run_end = t;
            }
        } else {
            run = 0;
        }
    }
    // The nights in a row, back from the newest, whose weighted mean is high (a night without
    // a finite weight neither counts nor breaks the run).
    for &(_, wy, w) in nights.iter().rev().filter(|n| n.2 > 0.0) {
        if wy / w.sqrt() < p.high_sigma {
            break;
        }
        pre.high_nights += 1;
    }
    // A rescaled weight can underflow to zero or overflow; such points carry no information.
    pre.max_z = if max_z.is_finite() { max_z } else { 0.0 };
    if p.bin_days > 0.0 {
        close_bin(bin_wy, bin_w, &mut pre);
    }
    let mut n_high = p.n_high.max(1);
    if p.min_n_high < n_high && pre.n_nights > 0 {
        let per_night = (pre.n_window as f64 / pre.n_nights as f64).ceil() as usize;
        n_high = per_night.clamp(p.min_n_high.max(1), n_high);
    }
    pre.n_high_used = n_high as u32;
    pre.delta_chi2_used = p.delta_chi2_min;
    if p.ref_window_points > 0 && (pre.n_window as usize) < p.ref_window_points {
        let scaled = p.delta_chi2_min * pre.n_window as f64 / p.ref_window_points as f64;
        pre.delta_chi2_used = scaled.max(p.min_delta_chi2).min(p.delta_chi2_min);
    }
    pre.passed = pre.longest_run as usize >= n_high || pre.longest_bin_run as usize >= n_high;
    pre
}

/// The observing night of a point taken at `t` (HJD - 2450000) at site `site`: the whole part
/// of the time shifted so that local noon at the site falls on a whole day. HJD's days start at
/// noon in Greenwich, which splits the nights of sites far to the east (KMTA, at 149° E,
/// observes from about HJD x.88 to x+1.33); a local night is one whole number at every site,
/// and the same number for the three sites' nights of the same evening. A site index that is
/// not a KMTNet site is taken as Greenwich.
pub fn local_night(t: f64, site: u8) -> f64 {
    (t + night_shift(site)).floor()
}

/// The days a site's times are shifted by for [`local_night`].
fn night_shift(site: u8) -> f64 {
    Site::from_index(site as usize).map_or(0.0, |s| s.longitude_deg() / 360.0)
}

/// Adds a point's weighted sums to its night in `nights` (kept in night order; points come
/// in time order, so their night is nearly always the last one, or one of the last few when
/// two sites' nights overlap at twilight).
fn add_to_night(nights: &mut Vec<(f64, f64, f64)>, night: f64, wy: f64, w: f64) {
    let at = nights.iter().rposition(|n| n.0 <= night);
    match at {
        Some(i) if nights[i].0 == night => {
            nights[i].1 += wy;
            nights[i].2 += w;
        }
        Some(i) => nights.insert(i + 1, (night, wy, w)),
        None => nights.insert(0, (night, wy, w)),
    }
}

/// One site's valid points of one night (`floor(time)`), merged for the grid: the sums that
/// stand in for them (issue 14: a search reads a star's recent points only, and carries the
/// older nights as these).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct NightSum {
    pub night: f64,
    pub n: u32,
    /// Sums of `1/e^2`, `f/e^2` and `t/e^2`.
    pub w: f64,
    pub wf: f64,
    pub wt: f64,
}

impl NightSum {
    #[inline]
    pub fn add(&mut self, t: f64, f: f64, e: f64) {
        let w = 1.0 / (e * e);
        self.n += 1;
        self.w += w;
        self.wf += w * f;
        self.wt += w * t;
    }
}

/// Each site's night being merged: the one way [`Carry::extend`] and `fill_site_points` merge
/// points into nights, so that a carried night and one merged during a search are the same sums.
#[derive(Default)]
struct OpenNights([Option<NightSum>; N_SITES]);

impl OpenNights {
    /// Adds a valid point of site `s`; returns the site's previous night if the point starts a
    /// new one.
    #[inline]
    fn add(&mut self, s: usize, t: f64, f: f64, e: f64) -> Option<NightSum> {
        let night = t.floor();
        let closed = if self.0[s].is_some_and(|o| o.night != night) { self.0[s].take() } else { None };
        self.0[s].get_or_insert(NightSum { night, ..Default::default() }).add(t, f, e);
        closed
    }

    /// The site's open night, closed.
    fn take(&mut self, s: usize) -> Option<NightSum> {
        self.0[s].take()
    }
}

/// The first night that `fill_site_points` keeps point by point: older nights enter the grid
/// merged (`-inf` when `recent_days` is not positive: every point on its own).
pub fn recent_cut(now: f64, p: &AlertParams) -> f64 {
    if p.recent_days > 0.0 && p.recent_days.is_finite() {
        (now - p.recent_days).floor()
    } else {
        f64::NEG_INFINITY
    }
}

/// The valid points up to `end` of usable sites, per site, for the grid: those of nights before
/// [`recent_cut`] merged night by night (`carried`: a site's nights before `lc`'s first point,
/// already merged), the recent ones one by one. Over the 5 `t_eff` half-width of a window, a
/// night's spread in time moves the templates by far less than the noise.
fn fill_site_points(lc: &LightCurve<'_>, end: usize, base: &[SiteBaseline; N_SITES], pts: &mut SitePoints, cut: f64, carried: Option<&[Vec<NightSum>; N_SITES]>) {
    pts.clear();
    for s in 0..N_SITES {
        pts.median[s] = if base[s].usable { base[s].median } else { 0.0 };
        pts.cum[s].push(0);
    }
    let push_night = |pts: &mut SitePoints, s: usize, ns: &NightSum| {
        let b = &base[s];
        let w = ns.w / (b.error_scale * b.error_scale);
        let t = ns.wt / ns.w;
        let y = ns.wf / ns.w - b.median;
        if w.is_finite() && w > 0.0 && t.is_finite() && y.is_finite() {
            pts.t[s].push(t);
            pts.y[s].push(y);
            pts.w[s].push(w);
            let c = *pts.cum[s].last().unwrap_or(&0);
            pts.cum[s].push(c + ns.n);
        }
    };
    if let Some(nights) = carried {
        for s in 0..N_SITES {
            if base[s].usable {
                for ns in &nights[s] {
                    push_night(pts, s, ns);
                }
            }
        }
    }
    let mut open = OpenNights::default();
    for i in 0..end {
        let (t, f, e, s) = (lc.time[i], lc.flux[i], lc.err[i], lc.site[i]);
        if !valid(t, f, e, s) || !base[s as usize].usable {
            continue;
        }
        let s = s as usize;
        if t < cut {
            if let Some(o) = open.add(s, t, f, e) {
                push_night(pts, s, &o);
            }
            continue;
        }
        if let Some(o) = open.take(s) {
            push_night(pts, s, &o);
        }
        let b = &base[s];
        let sigma = b.error_scale * e;
        let w = 1.0 / (sigma * sigma);
        if !(w.is_finite() && w > 0.0) {
            continue;
        }
        pts.t[s].push(t);
        pts.y[s].push(f - b.median);
        pts.w[s].push(w);
        let c = *pts.cum[s].last().unwrap_or(&0);
        pts.cum[s].push(c + 1);
    }
    for s in 0..N_SITES {
        if let Some(o) = open.take(s) {
            push_night(pts, s, &o);
        }
    }
}

/// Seeing and sky of the rising points against each site's median over its points from `cut` (the
/// recent nights) up to `end`.
fn quality(
    lc: &LightCurve<'_>,
    end: usize,
    cut: f64,
    win: &Window,
    bl: &BrokenLine,
    p: &AlertParams,
    sel: &mut [Vec<f64>; 2 * N_SITES],
) -> Quality {
    // One pass gathers every site's FWHM and sky values; then six selections.
    for v in sel.iter_mut() {
        v.clear();
    }
    let end_f = if lc.fwhm.len() >= end { end } else { 0 };
    let end_s = if lc.sky.len() >= end { end } else { 0 };
    for i in 0..end_f.max(end_s) {
        let s = lc.site[i] as usize;
        if s >= N_SITES || lc.time[i] < cut {
            continue;
        }
        if i < end_f && lc.fwhm[i].is_finite() {
            sel[s].push(lc.fwhm[i]);
        }
        if i < end_s && lc.sky[i].is_finite() {
            sel[N_SITES + s].push(lc.sky[i]);
        }
    }
    let fwhm_med: [f64; N_SITES] = std::array::from_fn(|s| baseline::median_in_place(&mut sel[s]));
    let sky_med: [f64; N_SITES] = std::array::from_fn(|s| baseline::median_in_place(&mut sel[N_SITES + s]));
    let mut q = Quality { single_site_rise: bl.n_sites_rising == 1 && bl.n_sites_after >= 2, ..Default::default() };
    let (mut bad, mut high, mut missing) = (0u32, 0u32, 0u32);
    for k in 0..win.len() {
        if !(win.t[k] > bl.t_rise) {
            continue;
        }
        q.n_rising += 1;
        let i = win.index[k] as usize;
        let s = win.site[k] as usize;
        let fw = lc.fwhm.get(i).copied().unwrap_or(f64::NAN);
        let sk = lc.sky.get(i).copied().unwrap_or(f64::NAN);
        if !(fw.is_finite() && sk.is_finite()) {
            missing += 1;
        }
        if fw > p.bad_seeing_ratio * fwhm_med[s] {
            bad += 1;
        }
        if sk > p.high_sky_ratio * sky_med[s] {
            high += 1;
        }
    }
    if q.n_rising > 0 {
        let n = q.n_rising as f64;
        q.frac_bad_seeing = bad as f64 / n;
        q.frac_high_sky = high as f64 / n;
        q.frac_missing = missing as f64 / n;
    }
    q
}
