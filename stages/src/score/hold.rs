//! Why a "yes" is kept as "maybe": checks on the candidate beside the model's score. Each names
//! a kind of brightening that microlensing does not make; a candidate that shows one goes to a
//! human instead of being alerted, and its verdict's `note` says why.
//!
//! - [`fastrise`](super::fastrise): a rise of 1.5 mag or more within 2 days (a dwarf nova).
//! - The one-night check: the brightening has been seen on fewer than
//!   [`HoldParams::min_high_nights`] nights in a row so far (the AlertFinder's
//!   [`crate::alertfinder::Preselection::high_nights`]: local nights
//!   ([`crate::alertfinder::local_night`]), all sites together, whose weighted mean lies
//!   `high_sigma` above the baseline, up to the newest). A microlensing brightening lasts days,
//!   while a flare, an asteroid passing, an RR Lyrae star's maximum and a bad night of one site
//!   last hours: one night's points, however many, cannot tell them apart, and the next night
//!   can. It matters where a night's points come in one visit (Catalina takes four images in
//!   half an hour): at one point a night N_high already spans three nights, and at KMTNet's
//!   cadence an event's nightly means are high for several nights before its points pass.
//!   A count of 0 (the newest night is not high: the "yes" rests on older nights, as when an
//!   outburst fades) is held too. A candidate whose row lacks the count (written before it
//!   existed) is not held.

use serde::Deserialize;

use super::fastrise::{fast_rise, FastRise, FastRiseParams};
use crate::photometry::StarCurves;

/// The checks' parameters (`score.fast_rise_*`, `score.min_high_nights`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HoldParams {
    pub fast_rise: FastRiseParams,
    /// A "yes" whose brightening has lasted fewer nights in a row than this is kept as
    /// "maybe"; 0 or 1 turns the check off.
    pub min_high_nights: u32,
}

impl Default for HoldParams {
    fn default() -> Self {
        HoldParams { fast_rise: FastRiseParams::default(), min_high_nights: 2 }
    }
}

/// Why a "yes" is kept as "maybe".
#[derive(Debug, Clone, PartialEq)]
pub enum Hold {
    FastRise(FastRise),
    /// The brightening has been high on `nights` nights in a row, fewer than `needed`.
    OneNight { nights: u32, needed: u32 },
}

impl Hold {
    pub fn describe(&self) -> String {
        match self {
            Hold::FastRise(f) => f.describe(),
            Hold::OneNight { nights, needed } => {
                format!("brightening seen on {nights} night(s) in a row, {needed} needed")
            }
        }
    }
}

/// [`crate::alertfinder::Preselection::high_nights`] from a candidate's `result_json`; None when the row was
/// written before the count existed, or is not the AlertFinder's JSON.
pub fn high_nights(result_json: &str) -> Option<u32> {
    #[derive(Deserialize)]
    struct Row {
        preselection: Pre,
    }
    #[derive(Deserialize)]
    struct Pre {
        high_nights: Option<u32>,
    }
    serde_json::from_str::<Row>(result_json).ok()?.preselection.high_nights
}

/// The check that holds a "yes" of `star` at `now`, if any; `high_nights` is the candidate's
/// ([`high_nights`]). The fast rise is looked at first (its note says more).
pub fn hold(star: &StarCurves, now: f64, high_nights: Option<u32>, p: &HoldParams) -> Option<Hold> {
    if let Some(f) = fast_rise(star, now, &p.fast_rise) {
        return Some(Hold::FastRise(f));
    }
    match high_nights {
        Some(n) if p.min_high_nights > 1 && n < p.min_high_nights => Some(Hold::OneNight { nights: n, needed: p.min_high_nights }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alertfinder::Preselection;
    use crate::photometry::{Field, StarId};

    fn quiet() -> StarCurves {
        StarCurves { star: StarId("S".into()), field: Field(14), curves: vec![] }
    }

    #[test]
    fn the_count_is_read_from_the_alertfinders_json() {
        // Serialised by the AlertFinder's own type, so a renamed field fails here.
        let pre = Preselection { high_nights: 3, ..Default::default() };
        let json = serde_json::json!({ "status": "candidate", "preselection": pre }).to_string();
        assert_eq!(high_nights(&json), Some(3));
        // Written before the count existed, or not JSON: nothing to say.
        assert_eq!(high_nights(r#"{"preselection": {"n_high": 4}}"#), None);
        assert_eq!(high_nights("not json"), None);
    }

    #[test]
    fn a_brightening_of_one_night_is_held_and_of_two_is_not() {
        let p = HoldParams::default();
        assert_eq!(hold(&quiet(), 10.0, Some(1), &p), Some(Hold::OneNight { nights: 1, needed: 2 }));
        assert_eq!(hold(&quiet(), 10.0, Some(0), &p), Some(Hold::OneNight { nights: 0, needed: 2 }));
        assert_eq!(hold(&quiet(), 10.0, Some(2), &p), None);
        // Unknown count: fails open. Off: never held.
        assert_eq!(hold(&quiet(), 10.0, None, &p), None);
        assert_eq!(hold(&quiet(), 10.0, Some(1), &HoldParams { min_high_nights: 1, ..p }), None);
        assert!(Hold::OneNight { nights: 1, needed: 2 }.describe().contains("1 night(s) in a row, 2 needed"));
    }
}
