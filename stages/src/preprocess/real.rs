//! Training rows from a labelled archive of real light curves (issue 12): the realistic
//! positives and negatives that the simulator cannot give.
//!
//! Every star of the archive is replayed day by day as the production alertfinder stage does it
//! (its history from the earlier seasons, extended each day with the nights older than the
//! window, [`crate::alertfinder::history`]), and each candidate becomes a row, prepared by the
//! production [`prepare`]:
//! - a labelled event's candidates in the season of its peak: "yes" (other seasons of an event
//!   star are skipped: a long event's tail is neither);
//! - a non-event's candidates in any season: "no" (dwarf novae, Miras, semiregulars, ... as the
//!   survey really sees them);
//! - point-lens (and some binary-lens) events injected ([`crate::simulate::inject`]) into the
//!   seasons of event stars that hold no event (their real cadence, gaps, noise and outliers):
//!   candidates between `t0 - 2 tE` and `t0 + tE` are "yes";
//! - optionally (`negative_variants`), resampled copies of a non-event's seasons that held
//!   candidates ([`crate::simulate::resample`]: fewer points, more noise): "no", the real
//!   variable met on other nights and at other signal-to-noise.
//!
//! Rows per (star, season, variant) are capped (evenly spaced over the candidate days), so that
//! a star that is a candidate all season does not outweigh the others.

use std::collections::BTreeMap;

use rayon::prelude::*;

use super::Candidate;
use crate::simulate::Label;
use crate::alertfinder::stage::FieldThresholds;
use crate::alertfinder::{diagnosis_vector, scan_star_with, NightBuffers, Scratch, StarHistory, Status, N_DIAGNOSIS};
use crate::ingest::season_of;
use crate::photometry::{Band, MergedCurve, StarCurves};
use crate::simulate::inject::{inject, Injection};
use crate::simulate::resample::{resample, Resampling};
use crate::simulate::rng_for;

/// What the archive says of a star.
#[derive(Debug, Clone)]
pub struct RealLabel {
    pub star: String,
    pub is_event: bool,
    /// Variable type (`dwarf_nova`, `mira`, ...) or `microlensing`.
    pub kind: String,
    /// Peak time of an event (HJD - 2450000).
    pub peak: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct RealOptions {
    pub thresholds: FieldThresholds,
    /// Injections per event-free season of an event star.
    pub injections_per_season: usize,
    /// Share of the injections with a binary lens.
    pub binary_fraction: f64,
    /// Rows kept per (star, season, variant).
    pub max_rows: usize,
    pub seed: u64,
    /// Resampled variants per non-event season with candidates (0: none, as lensnet-v2).
    pub negative_variants: usize,
    /// Largest share of points a variant leaves out, and its largest noise multiplier.
    pub variant_max_drop: f64,
    pub variant_max_noise: f64,
}

impl Default for RealOptions {
    fn default() -> Self {
        RealOptions { thresholds: FieldThresholds::default(), injections_per_season: 6, binary_fraction: 0.1, max_rows: 12, seed: 12, negative_variants: 0, variant_max_drop: 0.5, variant_max_noise: 1.5 }
    }
}

/// One row before preparation.
#[derive(Debug, Clone)]
pub struct RealRow {
    pub id: String,
    pub star: String,
    /// The season's photometry (injected for injections).
    pub curves: StarCurves,
    pub now: f64,
    pub diag: [f64; N_DIAGNOSIS],
    pub label: Label,
    /// `real` or `injected`.
    pub source: &'static str,
    pub kind: String,
    pub season: i32,
    /// Injection parameters (NaN for real rows).
    pub t0: f64,
    pub te: f64,
    pub u0: f64,
}

impl RealRow {
    pub fn candidate(&self) -> Candidate<'_> {
        Candidate { id: self.id.clone(), star: &self.curves, now: self.now, diag: self.diag, label: Some(self.label) }
    }
}

/// The candidate days of one star over its seasons, as the production stage finds them:
/// `(season index, now, diag)` for the seasons in `wanted`.
fn replay_star(seasons: &[&StarCurves], wanted: &[bool], opts: &RealOptions, scratch: &mut Scratch, buf: &mut NightBuffers) -> Vec<(usize, f64, [f64; N_DIAGNOSIS])> {
    let mut out = Vec::new();
    let mut history = StarHistory::default();
    for (k, curves) in seasons.iter().enumerate() {
        history.freeze_prior();
        let merged = MergedCurve::from_star(curves, Band::I);
        let view = merged.view();
        let params = opts.thresholds.for_field(curves.field);
        if wanted[k] {
            let (lo, hi) = view.time.iter().filter(|t| t.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &t| (a.min(t), b.max(t)));
            if lo.is_finite() {
                let mut day = 1.0;
                loop {
                    let now = lo.floor() + day;
                    if params.use_history {
                        history.absorb(&view, now - params.window_days.max(0.0), buf);
                    }
                    let r = scan_star_with(&view, now, now - 1.0, params, params.use_history.then_some(&history), scratch);
                    if r.status == Status::Candidate {
                        out.push((k, now, diagnosis_vector(&r)));
                    }
                    if now >= hi {
                        break;
                    }
                    day += 1.0;
                }
            }
        }
        history.absorb(&view, f64::INFINITY, buf);
    }
    out
}

/// The candidate days `(now, diag)` of season `k` of a star when `season` (an injected or
/// resampled copy) stands in its place; the other seasons stay the real ones (its history).
fn replay_in_place_of(seasons: &[&StarCurves], k: usize, season: &StarCurves, opts: &RealOptions, scratch: &mut Scratch, buf: &mut NightBuffers) -> Vec<(f64, [f64; N_DIAGNOSIS])> {
    let mut all: Vec<&StarCurves> = seasons.to_vec();
    all[k] = season;
    let wanted: Vec<bool> = (0..all.len()).map(|i| i == k).collect();
    replay_star(&all, &wanted, opts, scratch, buf).into_iter().map(|(_, now, d)| (now, d)).collect()
}

fn hash_str(s: &str) -> u64 {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(s.as_bytes());
    u64::from_le_bytes(d[..8].try_into().expect("8 bytes"))
}

/// At most `max` of `v`, evenly spaced.
fn thin<T>(v: Vec<T>, max: usize) -> Vec<T> {
    if v.len() <= max || max == 0 {
        return v;
    }
    let n = v.len();
    let keep: std::collections::BTreeSet<usize> = (0..max).map(|i| i * (n - 1) / (max - 1).max(1)).collect();
    v.into_iter().enumerate().filter(|(i, _)| keep.contains(i)).map(|(_, x)| x).collect()
}

/// The rows of an archive: `stars` holds every (season, field) partition's stars; `labels` the
/// stars to use (others are ignored).
pub fn real_rows(stars: Vec<StarCurves>, labels: &[RealLabel], opts: &RealOptions) -> Vec<RealRow> {
    let by_label: BTreeMap<&str, &RealLabel> = labels.iter().map(|l| (l.star.as_str(), l)).collect();
    let mut by_star: BTreeMap<String, Vec<StarCurves>> = BTreeMap::new();
    for s in stars {
        if by_label.contains_key(s.star.0.as_str()) {
            by_star.entry(s.star.0.clone()).or_default().push(s);
        }
    }
    let season_of_curves = |s: &StarCurves| -> i32 {
        let t = s.curves.iter().flat_map(|c| c.hjd.iter().copied()).find(|t| t.is_finite()).unwrap_or(f64::NAN);
        if t.is_finite() { season_of(t) } else { i32::MIN }
    };
    let work: Vec<(String, Vec<StarCurves>)> = by_star
        .into_iter()
        .map(|(k, mut v)| {
            v.sort_by_key(|s| season_of_curves(s));
            (k, v)
        })
        .collect();
    work.par_iter()
        .map_init(|| (Scratch::default(), NightBuffers::default()), |(scratch, buf), (star, seasons)| {
            let label = by_label[star.as_str()];
            let years: Vec<i32> = seasons.iter().map(season_of_curves).collect();
            let refs: Vec<&StarCurves> = seasons.iter().collect();
            let peak_season = label.peak.map(season_of);
            let mut rows = Vec::new();
            // The real star.
            let wanted: Vec<bool> = years.iter().map(|&y| if label.is_event { Some(y) == peak_season } else { true }).collect();
            let mut per_season: BTreeMap<usize, Vec<(f64, [f64; N_DIAGNOSIS])>> = BTreeMap::new();
            for (k, now, diag) in replay_star(&refs, &wanted, opts, scratch, buf) {
                per_season.entry(k).or_default().push((now, diag));
            }
            let variant_seasons: Vec<usize> = if label.is_event { Vec::new() } else { per_season.keys().copied().collect() };
            for (k, days) in per_season {
                for (now, diag) in thin(days, opts.max_rows) {
                    rows.push(RealRow {
                        id: format!("real:{star}@{now:.5}"),
                        star: star.clone(),
                        curves: seasons[k].clone(),
                        now,
                        diag,
                        label: if label.is_event { Label::Yes } else { Label::No },
                        source: "real",
                        kind: label.kind.clone(),
                        season: years[k],
                        t0: f64::NAN,
                        te: f64::NAN,
                        u0: f64::NAN,
                    });
                }
            }
            // Resampled copies of a non-event's seasons that held candidates.
            for &k in &variant_seasons {
                let y = years[k];
                for j in 0..opts.negative_variants {
                    let mut rng = rng_for(opts.seed, &[0x7E5, hash_str(star), y as u64, j as u64]);
                    let r = Resampling::draw(&mut rng, opts.variant_max_drop, opts.variant_max_noise);
                    let mut variant = resample(&seasons[k], &r, &mut rng);
                    variant.star.0 = format!("{star}+var{y}.{j}");
                    let days = replay_in_place_of(&refs, k, &variant, opts, scratch, buf);
                    for (now, diag) in thin(days, opts.max_rows) {
                        rows.push(RealRow {
                            id: format!("var:{}@{now:.5}", variant.star.0),
                            star: variant.star.0.clone(),
                            curves: variant.clone(),
                            now,
                            diag,
                            label: Label::No,
                            source: "variant",
                            kind: label.kind.clone(),
                            season: y,
                            t0: f64::NAN,
                            te: f64::NAN,
                            u0: f64::NAN,
                        });
                    }
                }
            }
            // Injections into the event star's seasons without its event.
            if label.is_event {
                for (k, &y) in years.iter().enumerate() {
                    if Some(y) == peak_season {
                        continue;
                    }
                    let times: Vec<f64> = seasons[k].curves.iter().flat_map(|c| c.hjd.iter().copied()).filter(|t| t.is_finite()).collect();
                    let (lo, hi) = times.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &t| (a.min(t), b.max(t)));
                    if !(hi - lo > 30.0) {
                        continue;
                    }
                    for j in 0..opts.injections_per_season {
                        let mut rng = rng_for(opts.seed, &[0x1A1, hash_str(star), y as u64, j as u64]);
                        let inj = Injection::draw(&mut rng, lo + 5.0, hi - 5.0, opts.binary_fraction);
                        let mut injected = seasons[k].clone();
                        let done = inject(&mut injected, &inj);
                        if done.epochs_changed == 0 {
                            continue;
                        }
                        injected.star.0 = format!("{star}+inj{y}.{j}");
                        let days: Vec<(f64, [f64; N_DIAGNOSIS])> = replay_in_place_of(&refs, k, &injected, opts, scratch, buf)
                            .into_iter()
                            .filter(|(now, _)| *now >= inj.t0 - 2.0 * inj.te && *now <= inj.t0 + inj.te)
                            .collect();
                        for (now, diag) in thin(days, opts.max_rows) {
                            rows.push(RealRow {
                                id: format!("inj:{}@{now:.5}", injected.star.0),
                                star: injected.star.0.clone(),
                                curves: injected.clone(),
                                now,
                                diag,
                                label: Label::Yes,
                                source: "injected",
                                kind: if matches!(inj.lens, crate::simulate::inject::Lens::Point) { "injected_point".into() } else { "injected_binary".into() },
                                season: y,
                                t0: inj.t0,
                                te: inj.te,
                                u0: inj.u0,
                            });
                        }
                    }
                }
            }
            rows
        })
        .flatten()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::photometry::{Field, Site, SiteCurve, StarId};

    /// One season (2018 or 2019) of a one-site star, a point a night, magnitude 18 at baseline,
    /// with a point-lens event of `te` days peaking at `t0` when given.
    fn season(star: &str, year: i32, event: Option<(f64, f64)>) -> StarCurves {
        let start = if year == 2018 { 8180.0 } else { 8545.0 };
        let mut c = SiteCurve::new(Site::Kmtc, Band::I);
        let mut state = (year as u64) * 7919 + star.len() as u64;
        for k in 0..200 {
            let t = start + k as f64 + 0.6;
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let noise = ((state >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 2.0 * 80.0;
            let a = event.map_or(1.0, |(t0, te)| crate::simulate::lens::pspl(crate::simulate::lens::u_of_t(t, t0, te, 0.2)));
            let f0 = 10f64.powf(0.4 * (28.0 - 18.0));
            let flux = f0 * (a - 1.0) + noise;
            c.hjd.push(t);
            c.flux.push(flux);
            c.flux_err.push(80.0);
            c.mag.push(28.0 - 2.5 * (f0 + flux).log10());
            c.mag_err.push(0.01);
            c.fwhm.push(f64::NAN);
            c.sky.push(f64::NAN);
            c.airmass.push(f64::NAN);
        }
        StarCurves { star: StarId(star.into()), field: Field(20), curves: vec![c] }
    }

    #[test]
    fn events_are_yes_in_their_peak_season_only_and_injections_near_their_peak() {
        let stars = vec![season("EV", 2018, None), season("EV", 2019, Some((8640.0, 20.0))), season("VAR", 2019, Some((8600.0, 15.0)))];
        let labels = vec![
            RealLabel { star: "EV".into(), is_event: true, kind: "event".into(), peak: Some(8640.0) },
            RealLabel { star: "VAR".into(), is_event: false, kind: "mira".into(), peak: None },
        ];
        let opts = RealOptions { injections_per_season: 4, max_rows: 5, ..RealOptions::default() };
        let rows = real_rows(stars.clone(), &labels, &opts);
        let real_ev: Vec<&RealRow> = rows.iter().filter(|r| r.star == "EV").collect();
        assert!(!real_ev.is_empty() && real_ev.len() <= 5, "the event is found, rows capped: {}", real_ev.len());
        assert!(real_ev.iter().all(|r| r.season == 2019 && r.label == Label::Yes && r.now > 8580.0), "{:?}", real_ev.iter().map(|r| (r.season, r.now)).collect::<Vec<_>>());
        let var: Vec<&RealRow> = rows.iter().filter(|r| r.star == "VAR").collect();
        assert!(!var.is_empty() && var.iter().all(|r| r.label == Label::No), "a labelled non-event's candidates are negatives");
        let inj: Vec<&RealRow> = rows.iter().filter(|r| r.source == "injected").collect();
        assert!(!inj.is_empty(), "some of the injections into the event-free 2018 season are found");
        for r in &inj {
            assert_eq!((r.season, r.label), (2018, Label::Yes));
            assert!(r.star.starts_with("EV+inj2018."), "{}", r.star);
            assert!(r.now >= r.t0 - 2.0 * r.te && r.now <= r.t0 + r.te, "{} at {} (t0 {} tE {})", r.star, r.now, r.t0, r.te);
            // The row's photometry is the injected season, cut nowhere: the preprocess cuts at now.
            assert!(r.curves.curves[0].flux.iter().zip(&stars[0].curves[0].flux).any(|(a, b)| a != b));
        }
        // The same options give the same rows.
        let again = real_rows(stars, &labels, &opts);
        assert_eq!(rows.iter().map(|r| r.id.clone()).collect::<Vec<_>>(), again.iter().map(|r| r.id.clone()).collect::<Vec<_>>());
    }

    #[test]
    fn a_non_event_gets_resampled_negatives_only_when_asked() {
        let stars = vec![season("EV", 2018, None), season("EV", 2019, Some((8640.0, 20.0))), season("VAR", 2018, None), season("VAR", 2019, Some((8600.0, 15.0)))];
        let labels = vec![
            RealLabel { star: "EV".into(), is_event: true, kind: "event".into(), peak: Some(8640.0) },
            RealLabel { star: "VAR".into(), is_event: false, kind: "dwarf_nova".into(), peak: None },
        ];
        let plain = real_rows(stars.clone(), &labels, &RealOptions { injections_per_season: 0, ..RealOptions::default() });
        assert!(plain.iter().all(|r| r.source != "variant"), "none by default (lensnet-v2's recipe)");
        let opts = RealOptions { injections_per_season: 0, negative_variants: 3, ..RealOptions::default() };
        let rows = real_rows(stars.clone(), &labels, &opts);
        let var: Vec<&RealRow> = rows.iter().filter(|r| r.source == "variant").collect();
        assert!(!var.is_empty(), "the variable's rising season is found in its variants too");
        let real_var = rows.iter().filter(|r| r.star == "VAR").count();
        assert_eq!(real_var, plain.iter().filter(|r| r.star == "VAR").count(), "the real rows are unchanged");
        for r in &var {
            // Only the non-event's season with candidates (2019), labelled no, named after its host.
            assert!(r.star.starts_with("VAR+var2019."), "{}", r.star);
            assert_eq!((r.label, r.season, r.kind.as_str()), (Label::No, 2019, "dwarf_nova"));
            // Its photometry is a subset of the real season's epochs.
            let real_t = &stars[3].curves[0].hjd;
            assert!(r.curves.curves[0].hjd.iter().all(|t| real_t.contains(t)) && r.curves.curves[0].hjd.len() <= real_t.len());
        }
        assert!(rows.iter().filter(|r| r.star.starts_with("EV")).all(|r| r.source != "variant"), "events get no variants");
        let again = real_rows(stars, &labels, &opts);
        assert_eq!(rows.iter().map(|r| r.id.clone()).collect::<Vec<_>>(), again.iter().map(|r| r.id.clone()).collect::<Vec<_>>());
    }
}
