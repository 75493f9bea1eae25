//! End-to-end tests of the AlertFinder on synthetic season light curves: injected events are
//! found, constant stars are not, degenerate inputs neither panic nor produce NaN.

use super::synth::{generate, Pspl, SynthSpec};
use super::*;
use crate::photometry::MergedCurve;

/// Every number in the result and its feature vector is finite (serde_json writes a non-finite
/// float as null; only the optional parts may be null themselves).
fn all_finite(r: &StarResult) -> bool {
    fn no_null(v: &serde_json::Value) -> bool {
        match v {
            serde_json::Value::Null => false,
            serde_json::Value::Array(a) => a.iter().all(no_null),
            serde_json::Value::Object(o) => o.values().all(no_null),
            _ => true,
        }
    }
    let Ok(serde_json::Value::Object(top)) = serde_json::to_value(r) else {
        return false;
    };
    diagnosis_vector(r).iter().all(|x| x.is_finite()) && top.values().all(|v| v.is_null() || no_null(v))
}

fn event_spec(cadence: f64, t0: f64, te: f64, u0: f64, seed_fs: f64) -> SynthSpec {
    SynthSpec { season_days: 120.0, event: Some(Pspl { t0, te, u0, fs: seed_fs }), ..SynthSpec::season(cadence) }
}

/// Injected events, (t_E, u0, f_s): two high-magnification, an intermediate and a u0 = 1 event
/// (whose light curve is exactly the low-magnification template with t_eff = t_E).
const EVENTS: [(f64, f64, f64); 4] = [(30.0, 0.05, 100.0), (20.0, 0.1, 300.0), (15.0, 0.5, 800.0), (10.0, 1.0, 3000.0)];

#[test]
fn injected_pspl_events_are_flagged_in_real_time_at_both_cadences() {
    // KMTNet's thresholds by field cadence.
    for (cadence, params) in [(0.2, AlertParams::low_cadence()), (4.0, AlertParams::high_cadence())] {
        for (i, &(te, u0, fs)) in EVENTS.iter().enumerate() {
            let t0 = 8295.0 + i as f64;
            let lc = generate(&event_spec(cadence, t0, te, u0, fs), 100 + i as u64);
            // The run at the peak, with the last day new.
            let r = scan_star(&lc.view(), t0, t0 - 1.0, &params, &mut Scratch::default());
            assert_eq!(r.status, Status::Candidate, "cadence {cadence} event {i}: {r:?}");
            let bl = r.broken_line.expect("candidate has a broken line");
            // The broken line passes the threshold the cadence adaptation set (at most KMTNet's).
            let used = r.preselection.delta_chi2_used;
            assert!(used <= params.delta_chi2_min && bl.delta_chi2 >= used && bl.t_rise < t0 && bl.slope > 0.0, "cadence {cadence} event {i}: {bl:?}");
            let g = r.grid.expect("candidate has a grid fit");
            assert!(g.delta_chi2 > params.delta_chi2_min);
            assert!(all_finite(&r));
        }
    }
}

/// Once the peak is covered, the grid finds t0 and a timescale. The EventFinder's t_eff is not
/// u0 t_E for every event: the best template is the one that collects the most delta chi2 over
/// its window, and for high-magnification events the low-magnification template with
/// t_eff ~ t_E / 4 usually wins over A1 with u0 t_E because PSPL wings fall as u^-4 (measured:
/// t_eff 5.6-7.5 d for t_E 20-30 d, u0 <= 0.1). So t_eff is checked against the range
/// [0.55 u0 t_E, 1.8 t_E], and within two grid steps of t_E for the u0 = 1 event; t0 within
/// a third of the timescale (at least a day).
#[test]
fn injected_pspl_events_are_recovered_by_the_grid_at_both_cadences() {
    for cadence in [0.2, 4.0] {
        for (i, &(te, u0, fs)) in EVENTS.iter().enumerate() {
            let t0 = 8295.0 + i as f64;
            let lc = generate(&event_spec(cadence, t0, te, u0, fs), 200 + i as u64);
            let now = t0 + 25.0;
            let p = AlertParams { fit_all: true, ..AlertParams::default() };
            let mut scratch = Scratch::default();
            let r = scan_star(&lc.view(), now, f64::NEG_INFINITY, &p, &mut scratch);
            fill_site_points(&lc.view(), lc.time.partition_point(|&t| t <= now), &r.baseline, &mut scratch.pts, recent_cut(now, &p), None);
            let gp = GridParams { t0_lookback_days: 40.0, ..GridParams::default() };
            let Some(g) = grid::search_grid(&scratch.pts, now, &gp) else { panic!("cadence {cadence} event {i}: no rising template; {r:?}") };
            let ctx = format!("cadence {cadence} event {i} (t_E {te}, u0 {u0}): {g:?}");
            assert!((g.t0 - t0).abs() <= (0.35 * te.min(g.teff)).max(1.0), "t0: {ctx}");
            assert!(g.teff >= 0.55 * u0 * te && g.teff <= 1.8 * te, "teff: {ctx}");
            if u0 == 1.0 {
                assert_eq!(g.regime, grid::REGIME_LOW, "{ctx}");
                assert!(g.teff / te > 0.55 && g.teff / te < 1.8, "{ctx}");
            }
            assert!(g.delta_chi2 > 250.0, "{ctx}");
            assert!(g.f1.iter().all(|&f| f > 0.0), "{ctx}");
        }
    }
}

#[test]
fn rising_event_is_flagged_before_the_peak() {
    let spec = event_spec(4.0, 8300.0, 30.0, 0.1, 150.0);
    let lc = generate(&spec, 5);
    // Three days before the peak (t_eff = 3 d): A ~ 3.
    let r = scan_star(&lc.view(), 8297.0, 8296.0, &AlertParams::high_cadence(), &mut Scratch::default());
    assert_eq!(r.status, Status::Candidate, "{r:?}");
    let g = r.grid.expect("grid");
    assert!(g.t0 > 8297.0 - 1.0, "peak predicted ahead or near now: {}", g.t0);
}

/// Broken-line delta chi2 of constant stars. Expectation: at a fixed break the unconstrained
/// improvement is chi2 with 1 degree of freedom (mean 1, the error bars being rescaled to
/// reduced chi2 1), so the rising-only one is 0 half of the time and chi2_1 otherwise (mean
/// 1/2). Scanning the break over the window (look-elsewhere) raises the maximum; by Davies'
/// bound, P(max > u) <= P(chi2_1 > u) + V e^(-u/2) / (2 pi) with V the path length of the
/// normalised hinge regressor (a few units for breaks over a 20-day window), so the mean of
/// the maximum is a few and values above 25 occur with probability ~1e-5.
#[test]
fn constant_stars_give_the_expected_delta_chi2_and_no_candidates() {
    for (cadence, n_stars) in [(0.2, 2000usize), (2.0, 300)] {
        let spec = SynthSpec { season_days: 60.0, ..SynthSpec::season(cadence) };
        let params = AlertParams { fit_all: true, ..AlertParams::low_cadence() };
        let now = 8260.0;
        let mut maxes = Vec::new();
        let mut fixed = Vec::new();
        let mut candidates = 0;
        let mut scratch = Scratch::default();
        for seed in 0..n_stars as u64 {
            let lc = generate(&spec, 10_000 + seed);
            let r = scan_star(&lc.view(), now, now - 1.0, &params, &mut scratch);
            assert!(all_finite(&r));
            candidates += (r.status == Status::Candidate) as usize;
            maxes.push(r.broken_line.map_or(0.0, |b| b.delta_chi2));
            // The unconstrained improvement at a break fixed in advance: mid-window.
            let w = &scratch.win;
            let k_mid = w.t.partition_point(|&t| t < now - 10.0);
            brokenline::for_each_break(&w.t, &w.y, &w.w, &w.site, 3, 3, |k, num, den| {
                if k == k_mid {
                    fixed.push(num * num / den);
                }
            });
        }
        maxes.sort_by(f64::total_cmp);
        let mean_max = maxes.iter().sum::<f64>() / maxes.len() as f64;
        let q99 = maxes[maxes.len() * 99 / 100];
        let mean_fixed = fixed.iter().sum::<f64>() / fixed.len() as f64;
        eprintln!(
            "cadence {cadence}: {} stars, mean fixed-break dchi2 {mean_fixed:.3} (n {}), mean max {mean_max:.3}, median {:.3}, q99 {q99:.2}, max {:.2}",
            maxes.len(),
            fixed.len(),
            maxes[maxes.len() / 2],
            maxes[maxes.len() - 1]
        );
        assert!(fixed.len() > n_stars * 9 / 10);
        let se = (2.0 / fixed.len() as f64).sqrt();
        assert!((mean_fixed - 1.0).abs() < 0.1 + 4.0 * se, "fixed-break mean {mean_fixed}");
        assert!(mean_max > 0.5 && mean_max < 6.0, "mean of the scanned maximum {mean_max}");
        assert!(q99 < 20.0, "99th percentile {q99}");
        assert!(maxes.iter().filter(|&&x| x > 25.0).count() <= 2);
        assert_eq!(candidates, 0);
    }
}

#[test]
fn degenerate_inputs_neither_panic_nor_produce_nan() {
    let params = AlertParams { fit_all: true, n_high: 1, delta_chi2_min: 0.0, ..AlertParams::default() };
    let base = generate(&SynthSpec { season_days: 30.0, ..SynthSpec::season(1.0) }, 3);
    let mut cases: Vec<(&str, MergedCurve)> = vec![("empty", MergedCurve::default())];
    let mut one = MergedCurve::default();
    for v in [&mut one.time, &mut one.flux, &mut one.err, &mut one.fwhm, &mut one.sky] {
        v.push(8210.0);
    }
    one.site.push(1);
    cases.push(("one point", one));
    let mut c = base.clone();
    c.err.iter_mut().for_each(|e| *e = 0.0);
    cases.push(("all errors zero", c));
    let mut c = base.clone();
    c.site.iter_mut().for_each(|s| *s = 2);
    cases.push(("one site", c));
    let mut c = base.clone();
    c.time.iter_mut().for_each(|t| *t = 8210.0);
    cases.push(("constant times", c));
    let mut c = base.clone();
    c.flux.iter_mut().for_each(|f| *f = 7.0);
    cases.push(("constant flux", c));
    let mut c = base.clone();
    c.flux.iter_mut().step_by(3).for_each(|f| *f = f64::NAN);
    c.err.iter_mut().step_by(5).for_each(|e| *e = f64::INFINITY);
    c.fwhm.iter_mut().for_each(|f| *f = f64::NAN);
    c.sky.iter_mut().for_each(|f| *f = f64::NAN);
    cases.push(("NaNs", c));
    let mut c = base.clone();
    c.flux.iter_mut().for_each(|f| *f *= 1e300);
    c.err.iter_mut().for_each(|e| *e *= 1e-300);
    cases.push(("huge values", c));
    let mut c = base.clone();
    c.site.iter_mut().for_each(|s| *s = 9);
    cases.push(("unknown sites", c));
    let mut c = base.clone();
    c.time.reverse();
    cases.push(("unsorted", c));
    let mut c = base.clone();
    c.flux.pop();
    c.fwhm.truncate(3);
    cases.push(("ragged columns", c));
    let mut scratch = Scratch::default();
    for (name, c) in &cases {
        for now in [8210.0, 8230.0, f64::INFINITY, f64::NAN] {
            let r = scan_star(&c.view(), now, f64::NEG_INFINITY, &params, &mut scratch);
            assert!(all_finite(&r), "{name} at {now}: {r:?}");
            if r.status == Status::Failed {
                assert!(r.reason.is_some(), "{name}: a failure says why");
            }
        }
    }
    let views: Vec<LightCurve<'_>> = cases.iter().map(|(_, c)| c.view()).collect();
    let batch = scan_batch(&views, 8230.0, f64::NEG_INFINITY, &params);
    assert_eq!(batch.len(), cases.len());
    assert_eq!(batch[cases.len() - 2].status, Status::Failed, "unsorted times are a per-star failure");
}

#[test]
fn watermark_and_now_bound_the_search() {
    let spec = event_spec(1.0, 8300.0, 20.0, 0.1, 150.0);
    let lc = generate(&spec, 9);
    let p = AlertParams::default();
    let mut scratch = Scratch::default();
    let now = 8301.0;
    let r = scan_star(&lc.view(), now, now, &p, &mut scratch);
    assert_eq!(r.status, Status::NotSearched);
    let a = scan_star(&lc.view(), now, now - 1.0, &p, &mut scratch);
    assert_eq!(a.status, Status::Candidate);
    // Only the data up to `now` matter: truncating the curve there changes nothing.
    let end = lc.time.partition_point(|&t| t <= now);
    let cut = MergedCurve {
        time: lc.time[..end].to_vec(),
        flux: lc.flux[..end].to_vec(),
        err: lc.err[..end].to_vec(),
        site: lc.site[..end].to_vec(),
        fwhm: lc.fwhm[..end].to_vec(),
        sky: lc.sky[..end].to_vec(),
    };
    let b = scan_star(&cut.view(), now, now - 1.0, &p, &mut scratch);
    assert_eq!(a, b);
}

#[test]
fn batch_equals_star_by_star() {
    let curves: Vec<MergedCurve> = (0..16)
        .map(|i| {
            let mut s = SynthSpec { season_days: 60.0, ..SynthSpec::season(1.0) };
            if i % 4 == 0 {
                s.event = Some(Pspl { t0: 8255.0, te: 15.0, u0: 0.1, fs: 150.0 });
            }
            generate(&s, i)
        })
        .collect();
    let views: Vec<LightCurve<'_>> = curves.iter().map(MergedCurve::view).collect();
    let p = AlertParams::default();
    let batch = scan_batch(&views, 8256.0, 8255.0, &p);
    let mut scratch = Scratch::default();
    for (v, r) in views.iter().zip(&batch) {
        assert_eq!(&scan_star(v, 8256.0, 8255.0, &p, &mut scratch), r);
    }
    assert_eq!(batch.iter().filter(|r| r.status == Status::Candidate).count(), 4);
}

#[test]
fn diagnosis_names_are_unique_and_params_round_trip() {
    let mut names = DIAGNOSIS_NAMES.to_vec();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), N_DIAGNOSIS);
    // Append-only: the first version's 47 (lensnet-v1, -v2) keep their places.
    assert_eq!(DIAGNOSIS_NAMES[N_DIAGNOSIS_V1 - 1], "q_single_site_rise");
    assert_eq!(DIAGNOSIS_NAMES[N_DIAGNOSIS_V1], "hist_nights");
    assert!(is_model_prefix(&DIAGNOSIS_NAMES[..N_DIAGNOSIS_V1]) && is_model_prefix(&DIAGNOSIS_NAMES));
    assert!(!is_model_prefix(&DIAGNOSIS_NAMES[..N_DIAGNOSIS_V1 - 1]), "shorter than version 1");
    let mut swapped = DIAGNOSIS_NAMES;
    swapped.swap(0, 1);
    assert!(!is_model_prefix(&swapped), "out of order");
    let p = AlertParams::high_cadence();
    let json = serde_json::to_string(&p).expect("serialisable");
    let back: AlertParams = serde_json::from_str(&json).expect("round trip");
    assert_eq!(p, back);
    assert!(serde_json::from_str::<AlertParams>(r#"{"n_hihg": 3}"#).is_err(), "unknown fields are refused");
    let partial: AlertParams = serde_json::from_str(r#"{"n_high": 10, "grid": {"teff_max": 50.0}}"#).expect("defaults fill in");
    assert_eq!(partial.grid.teff_max, 50.0);
    assert_eq!(partial.delta_chi2_min, 250.0);
}

#[test]
fn binned_preselection_passes_a_sustained_faint_excess_that_breaks_point_runs() {
    // High cadence, constant star; then a +2 sigma excess over the last 5 days: single points
    // are 3 sigma high only 16 % of the time, but 0.1-day bins (~10 points) are ~6 sigma high.
    let spec = SynthSpec { season_days: 120.0, ..SynthSpec::season(4.0) };
    let mut lc = generate(&spec, 5);
    let now = spec.season_start + spec.season_days;
    let quiet = lc.clone();
    for i in 0..lc.time.len() {
        if lc.time[i] > now - 5.0 {
            let k = spec.true_error_scale[lc.site[i] as usize];
            lc.flux[i] += 2.0 * k * lc.err[i];
        }
    }
    let off = AlertParams::high_cadence();
    let on = AlertParams { bin_days: 0.1, ..off.clone() };
    let mut scratch = Scratch::default();
    let r_off = scan_star(&lc.view(), now, now - 1.0, &off, &mut scratch);
    let r_on = scan_star(&lc.view(), now, now - 1.0, &on, &mut scratch);
    assert!(!r_off.preselection.passed && r_off.preselection.longest_run < 10, "{:?}", r_off.preselection);
    assert_eq!(r_off.preselection.longest_bin_run, 0, "bins off");
    assert!(r_on.preselection.passed && r_on.preselection.longest_bin_run >= 10, "{:?}", r_on.preselection);
    assert_eq!(r_on.preselection.longest_run, r_off.preselection.longest_run, "the point runs do not change");
    // The constant star passes neither way.
    for seed in 0..5 {
        let q = generate(&spec, 100 + seed);
        assert!(!scan_star(&q.view(), now, now - 1.0, &on, &mut scratch).preselection.passed);
    }
    assert!(!scan_star(&quiet.view(), now, now - 1.0, &on, &mut scratch).preselection.passed);
}

/// `high_nights` counts the nights in a row, up to the newest, whose weighted mean is high: a
/// single visit of four very high points makes one night, a rising event several, a constant
/// star none, and a brightening that is over by the newest night none.
#[test]
fn high_nights_count_the_nights_in_a_row_the_brightening_has_lasted() {
    let spec = SynthSpec { season_days: 120.0, ..SynthSpec::season(2.0) };
    let now = spec.season_start + spec.season_days;
    let p = AlertParams::high_cadence();
    let mut scratch = Scratch::default();
    let quiet = generate(&spec, 11);
    let r = scan_star(&quiet.view(), now, now - 1.0, &p, &mut scratch);
    assert_eq!(r.preselection.high_nights, 0, "{:?}", r.preselection);
    // Four points of the newest night 20 rescaled error bars high (an asteroid, a flare).
    let night = |lc: &MergedCurve, i: usize| local_night(lc.time[i], lc.site[i]);
    let last = (0..quiet.time.len()).rev().find(|&i| quiet.time[i] <= now).expect("points");
    let newest = night(&quiet, last);
    let mut blip = quiet.clone();
    let last4: Vec<usize> = (0..blip.time.len()).filter(|&i| blip.time[i] <= now).rev().take(4).collect();
    assert!(last4.iter().all(|&i| night(&blip, i) == newest));
    for &i in &last4 {
        let k = spec.true_error_scale[blip.site[i] as usize];
        blip.flux[i] += 20.0 * k * blip.err[i];
    }
    let r = scan_star(&blip.view(), now, now - 1.0, &p, &mut scratch);
    assert_eq!(r.preselection.high_nights, 1, "{:?}", r.preselection);
    // The same visit a night before the newest: over by now.
    let mut earlier = quiet.clone();
    let prev: Vec<usize> = (0..earlier.time.len()).filter(|&i| night(&earlier, i) < newest).rev().take(4).collect();
    for &i in &prev {
        let k = spec.true_error_scale[earlier.site[i] as usize];
        earlier.flux[i] += 20.0 * k * earlier.err[i];
    }
    let r = scan_star(&earlier.view(), now, now - 1.0, &p, &mut scratch);
    assert_eq!(r.preselection.high_nights, 0, "{:?}", r.preselection);
    // A rising event three days before its peak has been high for several nights.
    let lc = generate(&event_spec(4.0, 8300.0, 30.0, 0.1, 150.0), 5);
    let r = scan_star(&lc.view(), 8297.0, 8296.0, &AlertParams::high_cadence(), &mut scratch);
    assert!(r.preselection.high_nights >= 2, "{:?}", r.preselection);
}

/// A night is a local night: KMTA's nights straddle a whole HJD (Greenwich noon) and count
/// once, and the three sites' nights of one evening are the same night.
#[test]
fn a_kmta_night_across_a_whole_hjd_is_one_night() {
    // One evening: KMTA (from HJD x.88), then KMTS, then KMTC (to x+1.92); KMTA's next night.
    for (t, site) in [(9000.90, 0u8), (9001.00, 0), (9001.30, 0), (9001.25, 2), (9001.65, 2), (9001.50, 1), (9001.90, 1)] {
        assert_eq!(local_night(t, site), 9001.0, "site {site} at {t}");
    }
    assert_eq!(local_night(9001.90, 0), 9002.0);
    // A KMTA-only star whose newest night is high: one night, however it falls on HJD.
    let spec = SynthSpec { season_days: 60.0, ..SynthSpec::season(2.0) };
    let now = spec.season_start + spec.season_days;
    let all = generate(&spec, 12);
    let mut lc = MergedCurve::default();
    for i in (0..all.time.len()).filter(|&i| all.site[i] == 0 && all.time[i] <= now) {
        lc.time.push(all.time[i]);
        lc.flux.push(all.flux[i]);
        lc.err.push(all.err[i]);
        lc.site.push(0);
        lc.fwhm.push(all.fwhm[i]);
        lc.sky.push(all.sky[i]);
    }
    let last = lc.time.len() - 1;
    let newest: Vec<usize> = (0..lc.time.len()).filter(|&i| local_night(lc.time[i], 0) == local_night(lc.time[last], 0)).collect();
    assert!(newest.iter().any(|&i| lc.time[i].fract() > 0.5) && newest.iter().any(|&i| lc.time[i].fract() < 0.5), "the night straddles a whole HJD");
    for &i in &newest {
        lc.flux[i] += 20.0 * spec.true_error_scale[0] * lc.err[i];
    }
    let mut scratch = Scratch::default();
    let r = scan_star(&lc.view(), now, now - 1.0, &AlertParams::high_cadence(), &mut scratch);
    assert_eq!(r.preselection.high_nights, 1, "{:?}", r.preselection);
    // And nights that overlap at twilight are summed into their own night.
    let mut nights = Vec::new();
    for (night, wy) in [(1.0, 5.0), (2.0, 1.0), (1.0, 5.0), (2.0, 1.0), (0.0, 7.0), (3.0, 2.0)] {
        add_to_night(&mut nights, night, wy, 1.0);
    }
    assert_eq!(nights, vec![(0.0, 7.0, 1.0), (1.0, 10.0, 2.0), (2.0, 2.0, 2.0), (3.0, 2.0, 1.0)]);
}

/// For the diagnostics below: the field's AlertFinder parameters (`RECALL_BIN_DAYS` sets
/// `bin_days`), its simulated stars, and the first and last epoch of the season.
fn simulated_field(cfg: crate::simulate::SimConfig) -> (AlertParams, Vec<crate::simulate::SimStar>, f64, f64) {
    let field = cfg.fields[0];
    let mut params = stage::FieldThresholds::default().for_field(field).clone();
    if let Some(b) = std::env::var("RECALL_BIN_DAYS").ok().and_then(|v| v.parse().ok()) {
        params.bin_days = b;
    }
    let stars = crate::simulate::Season::new(&cfg).unwrap().field(field).unwrap();
    let times = || stars.iter().flat_map(|s| s.curves.curves.iter().flat_map(|c| c.hjd.iter().copied()));
    let (start, end) = (times().fold(f64::INFINITY, f64::min), times().fold(f64::NEG_INFINITY, f64::max));
    (params, stars, start, end)
}

/// Recall of clear simulated events by timescale and by how long after the season start they
/// peak, at a few days before the peak and at the peak, with the reasons of the misses.
/// `cargo test --release -p lensnet-stages --lib alertfinder::tests::recall_by_timescale -- --ignored --nocapture`
#[test]
#[ignore]
fn recall_by_timescale() {
    use crate::photometry::{Band, Field};
    use crate::simulate::{Class, ClassMix, Label, SimConfig};
    let mix = ClassMix { microlensing: 1.0, constant: 0.0, variable: 0.0, cataclysmic: 0.0, flare: 0.0, asteroid: 0.0, artefact: 0.0 };
    for field in [Field(14), Field(2)] {
        let (params, stars, start, end) = simulated_field(SimConfig { fields: vec![field], stars: 300, seed: 21, mix: mix.clone(), ..Default::default() });
        let mut rows: Vec<(f64, f64, [bool; 2], String)> = Vec::new();
        let mut scratch = Scratch::default();
        let mut daily: Vec<f64> = Vec::new();
        for s in &stars {
            let t = &s.truth;
            if !(t.class == Class::Microlensing && t.label == Label::Yes && t.t0 > start && t.t0 < end) {
                continue;
            }
            let lc = MergedCurve::from_star(&s.curves, Band::I);
            let mut hit = [false; 2];
            let mut why = String::new();
            for (k, dt) in [3.0, 0.0].into_iter().enumerate() {
                let now = (t.t0 - dt).floor() + 0.99;
                let r = scan_star(&lc.view(), now, now - 1.0, &params, &mut scratch);
                hit[k] = r.status == Status::Candidate;
                if k == 1 && !hit[k] {
                    why = format!(
                        "{:?} run {} n_high {} bl {:.0} base_n {:?} med {:?}",
                        r.status,
                        r.preselection.longest_run,
                        r.preselection.n_high,
                        r.broken_line.map_or(f64::NAN, |b| b.delta_chi2),
                        r.baseline.map(|b| b.n),
                        r.baseline.map(|b| (b.median * 10.0).round() / 10.0)
                    );
                }
            }
            // Daily steps as a replay takes them: the first flag before the peak.
            let mut first = None;
            let mut best = (0u32, 0.0f64, 0u32);
            let mut day = (t.t0 - 2.0 * t.te - 5.0).max(start + 1.0).floor();
            while day + 0.99 <= t.t0 {
                let now = day + 0.99;
                let r = scan_star(&lc.view(), now, now - 1.0, &params, &mut scratch);
                best.0 = best.0.max(r.preselection.longest_run);
                best.1 = best.1.max(r.broken_line.map_or(0.0, |b| b.delta_chi2));
                best.2 = best.2.max(r.preselection.longest_bin_run);
                if r.status == Status::Candidate {
                    first = Some(t.t0 - now);
                    break;
                }
                day += 1.0;
            }
            if first.is_some() {
                daily.push(first.unwrap());
            } else {
                eprintln!(
                    "  never before peak: tE {:.1} peak +{:.0} d {} {} u0 {:.2} fs {:.0} fb {:.0}: best run {} bins {} best bl {:.0}",
                    t.te,
                    t.t0 - start,
                    t.star_id.0,
                    t.subtype,
                    t.u0,
                    t.fs,
                    t.fb,
                    best.0,
                    best.2,
                    best.1
                );
            }
            rows.push((t.te, t.t0 - start, hit, format!("{} {} u0 {:.2} fs {:.0} fb {:.0}: {why}", t.star_id.0, t.subtype, t.u0, t.fs, t.fb)));
        }
        daily.sort_by(f64::total_cmp);
        eprintln!(
            "{field}: {} clear events; flagged on a daily step before the peak: {} (median {:.1} d before)",
            rows.len(),
            daily.len(),
            daily.get(daily.len() / 2).copied().unwrap_or(f64::NAN)
        );
        for (lo, hi) in [(0.0, 10.0), (10.0, 20.0), (20.0, 40.0), (40.0, 80.0), (80.0, 1e9)] {
            let b: Vec<_> = rows.iter().filter(|r| r.0 >= lo && r.0 < hi).collect();
            let n3 = b.iter().filter(|r| r.2[0]).count();
            let n0 = b.iter().filter(|r| r.2[1]).count();
            eprintln!("  tE {lo:>3}-{hi:<3}: {:>3} events, flagged 3 d before peak {n3:>3}, at peak {n0:>3}", b.len());
        }
        for (lo, hi) in [(0.0, 20.0), (20.0, 40.0), (40.0, 1e9)] {
            let b: Vec<_> = rows.iter().filter(|r| r.1 >= lo && r.1 < hi).collect();
            let n0 = b.iter().filter(|r| r.2[1]).count();
            eprintln!("  peak {lo:>3}-{hi:<3} d after season start: {:>3} events, at peak {n0:>3}", b.len());
        }
        if std::env::var_os("RECALL_VERBOSE").is_some() {
            for r in rows.iter().filter(|r| !r.2[1]) {
                eprintln!("  missed at peak: tE {:.1} peak +{:.0} d: {}", r.0, r.1, r.3);
            }
        }
    }
}

/// How many stars of each other class become candidates on some daily step of a season.
/// `cargo test --release -p lensnet-stages --lib alertfinder::tests::false_candidates_by_class -- --ignored --nocapture`
#[test]
#[ignore]
fn false_candidates_by_class() {
    use crate::photometry::{Band, Field};
    use crate::simulate::{Class, SimConfig};
    use std::collections::BTreeMap;
    for field in [Field(14), Field(2)] {
        let (params, stars, start, end) = simulated_field(SimConfig { fields: vec![field], stars: 400, seed: 23, ..Default::default() });
        let lcs: Vec<_> = stars.iter().filter(|s| s.truth.class != Class::Microlensing).map(|s| (s.truth.class, MergedCurve::from_star(&s.curves, Band::I))).collect();
        let mut by: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        for (class, lc) in &lcs {
            let mut day = start.floor() + 1.0;
            let mut hit = false;
            let views = [lc.view()];
            while day + 0.99 <= end + 1.0 && !hit {
                let now = day + 0.99;
                hit = scan_batch(&views, now, now - 1.0, &params)[0].status == Status::Candidate;
                day += 1.0;
            }
            let e = by.entry(format!("{class:?}")).or_default();
            e.0 += 1;
            e.1 += hit as usize;
        }
        eprintln!("{field}: stars flagged on some day / stars, by class: {by:?}");
    }
}

#[test]
fn the_history_enters_the_diagnosis_vector_by_name() {
    let mut r = StarResult::empty(Status::Candidate, None, 8300.0);
    r.history = HistorySummary { nights: [10, 20, 0], episodes: 2, max_z: 30.5, sites_used: 0b101, episode_sites: 1, history_sites: 2 };
    let v = diagnosis_vector(&r);
    let at = |name: &str| v[DIAGNOSIS_NAMES.iter().position(|n| *n == name).expect(name)];
    assert_eq!(
        [at("hist_nights"), at("hist_sites"), at("hist_sites_used"), at("hist_episodes"), at("hist_episode_sites"), at("hist_max_z")],
        [30.0, 2.0, 2.0, 2.0, 1.0, 30.5]
    );
    // Without a history every history feature is 0.
    let quiet = diagnosis_vector(&StarResult::empty(Status::Candidate, None, 8300.0));
    assert!(quiet[N_DIAGNOSIS_V1..].iter().all(|&x| x == 0.0));
}

/// A star seen about once a night: 120 quiet nights of earlier seasons (flux ~ N(0, 1), error
/// bars 1), then a season whose first nights are `season`; searched after its last point.
fn anchored_search(season: &[f64], p: &AlertParams) -> StarResult {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let prior_t: Vec<f64> = (0..120).map(|k| 8000.3 + k as f64).collect();
    let prior_f: Vec<f64> = prior_t.iter().map(|_| rng.sample::<f64, _>(rand_distr::StandardNormal)).collect();
    let ones = vec![1.0; prior_t.len()];
    let sites = vec![1u8; prior_t.len()];
    let before = LightCurve { time: &prior_t, flux: &prior_f, err: &ones, site: &sites, fwhm: &[], sky: &[] };
    let mut h = StarHistory::default();
    h.absorb(&before, 8200.0, &mut history::NightBuffers::default());
    h.freeze_prior();
    let t: Vec<f64> = (0..season.len()).map(|k| 8350.3 + k as f64).collect();
    let (e, s) = (vec![1.0; t.len()], vec![1u8; t.len()]);
    let lc = LightCurve { time: &t, flux: season, err: &e, site: &s, fwhm: &[], sky: &[] };
    scan_star_with(&lc, t[t.len() - 1] + 0.2, f64::NEG_INFINITY, p, Some(&h), &mut Scratch::default())
}

#[test]
fn a_season_that_starts_rising_is_searched_against_the_earlier_seasons_level() {
    let p = AlertParams::default();
    // An event rising from the season's first night: no season point before it, so the
    // broken line alone has no flat part to break from.
    let rise = [1.5, 4.0, 7.0, 10.0, 13.0];
    let r = anchored_search(&rise, &p);
    assert!(r.preselection.passed && !r.baseline[1].from_season, "{r:?}");
    assert_eq!(r.status, Status::Candidate, "{r:?}");
    let bl = r.broken_line.expect("a break");
    assert!(bl.delta_chi2 >= r.preselection.delta_chi2_used && bl.slope > 0.0, "{bl:?}");
    let off = AlertParams { anchor_history: false, ..p.clone() };
    assert_ne!(anchored_search(&rise, &off).status, Status::Candidate, "without the anchor the rise is not seen");
    // A season that sits at another level than the earlier seasons, flat (a recalibration, a
    // variable's other phase): high points, but no rise of its own, so no anchor.
    let shifted = [9.0, 10.5, 9.2, 10.1, 9.6, 10.3, 9.4, 10.0];
    let r = anchored_search(&shifted, &p);
    assert!(r.preselection.passed, "{r:?}");
    assert_ne!(r.status, Status::Candidate, "{r:?}");
}

/// The rows of `lc` from `from` on (fwhm and sky cut alike when present).
fn tail_view<'a>(lc: &LightCurve<'a>, from: usize) -> LightCurve<'a> {
    let cut = |v: &'a [f64]| if v.len() >= from { &v[from..] } else { v };
    LightCurve { time: &lc.time[from..], flux: &lc.flux[from..], err: &lc.err[from..], site: &lc.site[from..], fwhm: cut(lc.fwhm), sky: cut(lc.sky) }
}

/// Issue 14: a search given a carry of the star's older points and only its recent points
/// returns what the search of every point returns, bit for bit, at every cadence, for carries
/// as an earlier run leaves them (built in one step or night by night); and a carry that reaches
/// past what a search may leave to it is refused, not used.
#[test]
fn a_carry_and_the_recent_points_search_as_every_point_does() {
    use crate::photometry::{Band, Field};
    use crate::simulate::SimConfig;
    let mut compared = 0;
    let mut candidates = 0;
    let mut carried_rows = 0usize;
    let mut refused = 0;
    let mut cases: Vec<(AlertParams, Vec<MergedCurve>, f64, f64)> = Vec::new();
    for field in [Field(14), Field(2)] {
        let (params, stars, start, end) = simulated_field(SimConfig { fields: vec![field], stars: 60, seed: 31, ..Default::default() });
        cases.push((params, stars.iter().map(|s| MergedCurve::from_star(&s.curves, Band::I)).collect(), start, end));
    }
    // A point a night (the window widens to its min_window_points-th newest point).
    let mut low = Vec::new();
    for seed in 0..12 {
        let spec = event_spec(1.0 / 24.0, 8230.0 + 7.0 * seed as f64, 5.0 + 3.0 * seed as f64, 0.3, 1000.0);
        low.push(generate(&spec, 500 + seed));
    }
    let (lo_start, lo_end) = (low[0].time[0], *low[0].time.last().unwrap());
    cases.push((AlertParams::default(), low, lo_start, lo_end));
    let mut scratch = Scratch::default();
    for (p, curves, start, end) in &cases {
        for lc in curves {
            let v = lc.view();
            let mut carry = Carry::default();
            let mut taken = 0usize;
            let mut prev: Option<(f64, f64)> = None;
            let mut day = start.floor() + 12.0;
            while day <= end.floor() {
                let now = day + 0.99;
                let since = now - 1.0;
                let full = scan_star_with(&v, now, since, p, None, &mut scratch);
                if let Some((pnow, pws)) = prev {
                    // The carry an earlier run left, one step (from nothing) or night by night.
                    let upto = Carry::next_upto(pnow, pws, p);
                    let mut once = Carry::default();
                    let k = once.extend(&v, upto);
                    taken += carry.extend(&tail_view(&v, taken), upto);
                    assert_eq!(k, taken);
                    assert_eq!(once, carry, "a carry built night by night is the one built at once");
                    let got = scan_star_carry(&tail_view(&v, taken), now, since, p, None, Some(&carry), &mut scratch);
                    assert_eq!(got, Ok(full.clone()), "now {now}, carry to {upto} ({taken} rows)");
                    compared += 1;
                    candidates += (full.status == Status::Candidate) as usize;
                    carried_rows += taken;
                    // The same carry at an earlier now, whose recent nights reach before the
                    // carry's end, is refused.
                    let back = upto + 5.5;
                    if back < now {
                        let r = scan_star_carry(&tail_view(&v, taken), back, back - 1.0, p, None, Some(&carry), &mut scratch);
                        refused += (r == Err(CarryAhead)) as usize;
                        assert!(r == Err(CarryAhead) || r.as_ref().is_ok_and(|r| r.status == Status::NotSearched), "{r:?}");
                    }
                }
                if full.status != Status::NotSearched {
                    prev = Some((now, full.preselection.window_start));
                }
                day += 1.0 + (day as u64 % 3) as f64;
            }
        }
    }
    eprintln!("{compared} searches compared ({candidates} candidates, {carried_rows} rows carried), {refused} carries refused");
    assert!(compared > 500 && candidates > 20 && carried_rows > 100_000 && refused > 100, "{compared} {candidates} {carried_rows} {refused}");
}
