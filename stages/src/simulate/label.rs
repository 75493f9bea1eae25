//! The vetting rule: the label a human vetter would give from the simulated data, not only
//! from the truth.
//!
//! # Labelling rule (copy into the docs)
//!
//! For every star the simulator computes, from the I-band points it actually produced, the
//! excess flux `d = F_obs - F_baseline`, the model excess `m` (noise-free flux minus baseline)
//! and a realistic per-point error `σ` (stated error times the site's robust scatter/error
//! ratio, measured on the residuals `d - m`). A point is *significant* when both `m > 3σ` and
//! `d > 3σ`. `Δχ² = Σ (d² - (d - m)²) / σ²` is the improvement of the true model over a flat
//! line, i.e. what a vetter fitting the event would see.
//!
//! Microlensing events:
//! - **yes** when `Δχ² ≥ 500`, at least 6 significant points, at least 2 of them on the rise
//!   (before the peak), and the peak covered (a point with `m ≥ ½ m_peak`);
//! - **maybe** when `Δχ² ≥ 100` and at least 3 significant points (marginal signal, peak in a
//!   gap, rise unobserved, or only a tail of an event peaking outside the season);
//! - **no** otherwise (the event is not visible in the data).
//!
//! Confusers are **no**, except those a vetter could not rule out, which are **maybe**:
//! - a dwarf nova with exactly one observed outburst (≥ 3 significant points) whose rise is not
//!   resolved (no quiescent point within 1.5 days before the first bright one), which looks
//!   like a symmetric event;
//! - a long-period variable with period ≥ 300 days and amplitude ≥ 0.5 mag, whose single
//!   smooth hump over a season resembles a long event.

use serde::{Deserialize, Serialize};

use super::model::{dwarf_nova_starts, Class, Model, Star};

/// Thresholds of the vetting rule (see the module documentation).
pub const YES_DCHI2: f64 = 500.0;
pub const YES_MIN_SIGNIFICANT: usize = 6;
pub const YES_MIN_RISE: usize = 2;
pub const MAYBE_DCHI2: f64 = 100.0;
pub const MAYBE_MIN_SIGNIFICANT: usize = 3;
pub const SIGNIFICANCE: f64 = 3.0;

/// The vetter's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Label {
    Yes,
    Maybe,
    No,
}

impl Label {
    pub fn name(self) -> &'static str {
        match self {
            Label::Yes => "yes",
            Label::Maybe => "maybe",
            Label::No => "no",
        }
    }
}

/// One I-band point as the vetter sees it.
#[derive(Debug, Clone, Copy)]
pub struct VetPoint {
    pub t: f64,
    /// Observed excess over the baseline.
    pub d: f64,
    /// Model excess over the baseline.
    pub m: f64,
    /// Realistic error (stated times the site's scatter/error ratio).
    pub sigma: f64,
}

/// Data statistics behind a label (stored in the truth table).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct VetStats {
    pub delta_chi2: f64,
    pub n_significant: usize,
    pub n_rise: usize,
    pub peak_covered: bool,
}

/// Statistics of `pts` against a model peaking at `t_peak` with peak excess `m_peak`.
pub fn stats(pts: &[VetPoint], t_peak: f64, m_peak: f64) -> VetStats {
    let mut s = VetStats::default();
    for p in pts {
        if !(p.sigma > 0.0) || !p.d.is_finite() {
            continue;
        }
        s.delta_chi2 += (p.d * p.d - (p.d - p.m).powi(2)) / (p.sigma * p.sigma);
        if p.m > SIGNIFICANCE * p.sigma && p.d > SIGNIFICANCE * p.sigma {
            s.n_significant += 1;
            if p.t < t_peak {
                s.n_rise += 1;
            }
        }
        if m_peak > 0.0 && p.m >= 0.5 * m_peak {
            s.peak_covered = true;
        }
    }
    s
}

/// The label and its reason for a star, given its vetting points and the model's peak excess.
pub fn vet(star: &Star, pts: &[VetPoint], m_peak: f64) -> (Label, String, VetStats) {
    let st = stats(pts, star.t_peak(), m_peak);
    let dc = st.delta_chi2;
    let label = match star.class {
        Class::Microlensing => {
            if dc >= YES_DCHI2
                && st.n_significant >= YES_MIN_SIGNIFICANT
                && st.n_rise >= YES_MIN_RISE
                && st.peak_covered
            {
                (Label::Yes, format!("clear event: dchi2 {dc:.0}, {} significant points, {} on the rise", st.n_significant, st.n_rise))
            } else if dc >= MAYBE_DCHI2 && st.n_significant >= MAYBE_MIN_SIGNIFICANT {
                let why = if !st.peak_covered {
                    "peak not covered"
                } else if st.n_rise < YES_MIN_RISE {
                    "rise not observed"
                } else {
                    "marginal signal"
                };
                (Label::Maybe, format!("{why}: dchi2 {dc:.0}, {} significant points", st.n_significant))
            } else {
                (Label::No, format!("event not visible in the data: dchi2 {dc:.0}, {} significant points", st.n_significant))
            }
        }
        Class::Cataclysmic => vet_dwarf_nova(star, pts),
        Class::Variable => match star.model {
            Model::LongPeriod { period, amp, .. } if period >= 300.0 && amp >= 0.5 => (
                Label::Maybe,
                format!("single smooth hump over the season (period {period:.0} d): cannot rule out a long event"),
            ),
            _ => (Label::No, format!("periodic variable ({})", star.subtype)),
        },
        Class::Constant => (Label::No, "constant star".to_string()),
        Class::Flare => (Label::No, "one-night fast flare".to_string()),
        Class::Asteroid => (Label::No, "one-night bump at one site (moving object)".to_string()),
        Class::Artefact => (Label::No, format!("instrumental artefact ({})", star.subtype)),
    };
    (label.0, label.1, st)
}

fn vet_dwarf_nova(star: &Star, pts: &[VetPoint]) -> (Label, String) {
    let Model::DwarfNova { rise, plateau, decay, amp, .. } = star.model else {
        return (Label::No, "cataclysmic variable".to_string());
    };
    let mut observed = 0;
    let mut unresolved = 0;
    for s in dwarf_nova_starts(&star.model) {
        let end = s + rise + plateau + amp * decay;
        let bright: Vec<&VetPoint> = pts
            .iter()
            .filter(|p| p.t >= s && p.t <= end && p.d > SIGNIFICANCE * p.sigma)
            .collect();
        if bright.len() < MAYBE_MIN_SIGNIFICANT {
            continue;
        }
        observed += 1;
        let first = bright.iter().map(|p| p.t).fold(f64::INFINITY, f64::min);
        let quiet_before = pts.iter().any(|p| p.t < first && p.t > first - 1.5 && p.d < SIGNIFICANCE * p.sigma);
        if !quiet_before {
            unresolved += 1;
        }
    }
    match (observed, unresolved) {
        (0, _) => (Label::No, "dwarf nova with no outburst observed".to_string()),
        (1, 1) => (Label::Maybe, "single outburst with unresolved rise: looks like an event".to_string()),
        (1, _) => (Label::No, "single outburst with a resolved fast rise (dwarf nova)".to_string()),
        (n, _) => (Label::No, format!("{n} repeated outbursts (dwarf nova)")),
    }
}
