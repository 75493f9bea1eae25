//! Unit tests of preprocess on tiny hand-built stars (no simulator, no files).

use super::*;
use crate::alertfinder::N_DIAGNOSIS_V1;
use crate::photometry::{Band, Field, Site, SiteCurve, StarCurves, StarId};

/// A star with `n` points per listed site at 0.5-day spacing; `f(site, i)` gives the flux.
fn star(sites: &[Site], n: usize, f: &dyn Fn(Site, usize) -> f64) -> StarCurves {
    let curves = sites
        .iter()
        .map(|&s| {
            let mut c = SiteCurve::new(s, Band::I);
            for i in 0..n {
                c.hjd.push(1000.0 + 0.5 * i as f64 + 0.1 * s.index() as f64);
                c.flux.push(f(s, i));
                c.flux_err.push(10.0);
                c.mag.push(f64::NAN);
                c.mag_err.push(f64::NAN);
                c.fwhm.push(if i % 7 == 3 { f64::NAN } else { 4.0 });
                c.sky.push(800.0);
                c.airmass.push(1.2);
            }
            c
        })
        .collect();
    StarCurves { star: StarId("BLG14.0000001".into()), field: Field(14), curves }
}

fn noise(i: usize) -> f64 {
    // Deterministic pseudo-noise of unit-ish scale (σ ≈ 10 flux units).
    (((i * 7919) % 23) as f64 - 11.0) * 1.5
}

fn cand<'a>(s: &'a StarCurves, now: f64) -> Candidate<'a> {
    Candidate { id: format!("c@{now}"), star: s, now, diag: [0.0; N_DIAGNOSIS], label: None }
}

fn at(p: &Prepared, c: usize, site: usize, slot: usize, ch: usize) -> f32 {
    p.seq[c * SEQ_VALUES + (site * SEQ_LEN + slot) * N_CHANNELS + ch]
}

#[test]
fn pads_at_the_front_and_keeps_the_last_points() {
    let s = star(&[Site::Kmta, Site::Kmtc], 50, &|_, i| noise(i));
    let st = PreprocessStats::identity();
    let p = prepare(&[cand(&s, 1000.0 + 0.5 * 39.0 + 0.05)], &st).expect("prepare");
    assert_eq!(p.seq.len(), SEQ_VALUES);
    assert_eq!(p.diag.len(), N_DIAGNOSIS);
    // KMTA: points 0..=39 (t <= now); KMTC points are 0.1 d later, so 0..=38 fit.
    assert_eq!(p.n_points[0], [40, 39, 0]);
    for slot in 0..SEQ_LEN {
        let real = slot >= SEQ_LEN - 40;
        assert_eq!(at(&p, 0, 0, slot, 6), real as u8 as f32, "mask at slot {slot}");
        if !real {
            assert!((0..N_CHANNELS).all(|ch| at(&p, 0, 0, slot, ch) == 0.0));
        }
        assert_eq!(at(&p, 0, 2, slot, 6), 0.0);
    }
    // dt: 0 at the candidate's last epoch (KMTA's newest point), negative before.
    assert_eq!(at(&p, 0, 0, SEQ_LEN - 1, 5), 0.0);
    assert!(at(&p, 0, 0, SEQ_LEN - 2, 5) < 0.0);
    assert!(at(&p, 0, 1, SEQ_LEN - 1, 5) < 0.0);
}

#[test]
fn keeps_only_seq_len_points_per_site() {
    let s = star(&[Site::Kmts], 300, &|_, i| noise(i));
    let p = prepare(&[cand(&s, 5000.0)], &PreprocessStats::identity()).expect("prepare");
    assert_eq!(p.n_points[0], [0, 0, SEQ_LEN as u32]);
    // The newest point is slot 127 with dt = 0; the oldest kept is point 300 - 128.
    assert_eq!(at(&p, 0, 2, SEQ_LEN - 1, 5), 0.0);
    let dt_first = at(&p, 0, 2, 0, 5) as f64;
    assert!((dt_first + (0.5f64 * 127.0).ln_1p()).abs() < 1e-4, "{dt_first}");
}

#[test]
fn removes_an_isolated_spike_but_never_a_rise() {
    // Site KMTC: a single-point spike at i = 20 and a steep rise over the last 6 points.
    let f = |_: Site, i: usize| {
        if i == 20 {
            5000.0
        } else if i >= 44 {
            noise(i) + 400.0 * (i - 43) as f64
        } else {
            noise(i)
        }
    };
    let s = star(&[Site::Kmtc], 50, &f);
    let p = prepare(&[cand(&s, 2000.0)], &PreprocessStats::identity()).expect("prepare");
    assert_eq!(p.n_outliers[0], 1);
    assert_eq!(p.n_points[0], [0, 49, 0]);
    // The last 6 real points are the rise, increasing.
    let flux: Vec<f32> = (SEQ_LEN - 6..SEQ_LEN).map(|slot| at(&p, 0, 1, slot, 0)).collect();
    assert!(flux.windows(2).all(|w| w[1] > w[0]), "{flux:?}");
    assert!(flux[5] > 4.0, "asinh of a ~200 sigma excess: {}", flux[5]);
    // Missing fwhm (every 7th point) is 0 after standardisation, not NaN.
    assert!(p.seq.iter().all(|v| v.is_finite()));
}

#[test]
fn nan_points_and_points_after_now_are_dropped() {
    let mut s = star(&[Site::Kmta], 30, &|_, i| noise(i));
    s.curves[0].flux[5] = f64::NAN;
    s.curves[0].flux_err[6] = 0.0;
    s.curves[0].hjd[7] = f64::NAN;
    let p = prepare(&[cand(&s, 1000.0 + 0.5 * 25.0)], &PreprocessStats::identity()).expect("prepare");
    assert_eq!(p.n_points[0], [26 - 3, 0, 0]);
}

#[test]
fn batch_rows_are_independent_and_ordered() {
    let a = star(&[Site::Kmta], 40, &|_, i| noise(i));
    let b = star(&[Site::Kmtc, Site::Kmts], 60, &|_, i| noise(i) + if i > 50 { 300.0 } else { 0.0 });
    let st = PreprocessStats::identity();
    let both = prepare(&[cand(&a, 3000.0), cand(&b, 3000.0)], &st).expect("prepare");
    let only_b = prepare(&[cand(&b, 3000.0)], &st).expect("prepare");
    assert_eq!(both.len(), 2);
    assert_eq!(both.seq_row(1), only_b.seq_row(0));
    assert_eq!(both.ids[1], only_b.ids[0]);
    let empty = prepare(&[], &st).expect("prepare");
    assert!(empty.is_empty() && empty.seq.is_empty());
}

#[test]
fn stats_fit_round_trips_and_standardises() {
    let a = star(&[Site::Kmta, Site::Kmtc], 80, &|_, i| noise(i));
    let mut diag = [0.0; N_DIAGNOSIS];
    diag[10] = 1e6; // bl_delta_chi2: heavy-tailed, asinh first
    let mut c1 = cand(&a, 3000.0);
    c1.diag = diag;
    let c2 = cand(&a, 1010.0);
    let st = PreprocessStats::fit(&[c1.clone(), c2.clone()]).expect("fit");
    st.validate().expect("valid");
    assert!((st.airmass.mean - 1.2).abs() < 1e-9);
    assert!((st.log_fwhm.mean - 4f64.ln()).abs() < 1e-9);
    // serde_json may round the last bit of an f64; one ulp is harmless here.
    let back = PreprocessStats::from_json(&st.to_json()).expect("json");
    assert_eq!(back.diag_names, st.diag_names);
    assert!((back.dt.std - st.dt.std).abs() < 1e-12 && (back.diag[10].mean - st.diag[10].mean).abs() < 1e-12);
    let p = prepare(&[c1, c2], &st).expect("prepare");
    // Two values of asinh(x) standardise to ±1/√2 · √2 = ±0.707 with ddof 1.
    let j = 10;
    assert!((p.diag[j] + p.diag[N_DIAGNOSIS + j]).abs() < 1e-5);
    assert!((p.diag[j] - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-4, "{}", p.diag[j]);
    assert!(p.seq.iter().all(|v| v.is_finite()));
}

#[test]
fn invalid_stats_are_rejected_with_every_problem() {
    let mut st = PreprocessStats::identity();
    st.dt.std = 0.0;
    st.diag_names.swap(0, 1);
    let e = st.validate().expect_err("invalid").to_string();
    assert!(e.contains("dt") && e.contains("diag_names"), "{e}");
}

#[test]
fn a_model_of_the_first_feature_list_gets_its_prefix_of_the_diagnosis() {
    // lensnet-v1/-v2 statistics name the first 47 features: they stay valid, and prepare gives
    // such a model a 47-wide diag tensor from the full diagnosis vector.
    let a = star(&[Site::Kmta, Site::Kmtc], 80, &|_, i| noise(i));
    let mut c = cand(&a, 3000.0);
    for (j, v) in c.diag.iter_mut().enumerate() {
        *v = j as f64 * 0.1; // within the ±10 clip
    }
    let old = PreprocessStats::identity_prefix(N_DIAGNOSIS_V1);
    old.validate().expect("the first version's 47 names are valid");
    let p = prepare(&[c.clone()], &old).expect("prepare");
    assert_eq!((p.n_diag, p.diag.len()), (N_DIAGNOSIS_V1, N_DIAGNOSIS_V1));
    assert_eq!(p.diag_row(0)[N_DIAGNOSIS_V1 - 1], ((N_DIAGNOSIS_V1 - 1) as f64 * 0.1) as f32, "linear feature q_single_site_rise, unchanged");
    let full = prepare(&[c], &PreprocessStats::identity()).expect("prepare");
    assert_eq!(full.diag.len(), N_DIAGNOSIS);
    assert_eq!(&full.diag[..N_DIAGNOSIS_V1], &p.diag[..], "the prefix is the same numbers");
    // Fewer than the first version's names, or names out of order, are refused.
    let short = PreprocessStats::identity_prefix(N_DIAGNOSIS_V1 - 1);
    assert!(short.validate().is_err());
    let mut swapped = PreprocessStats::identity();
    swapped.diag_names.swap(N_DIAGNOSIS - 1, N_DIAGNOSIS - 2);
    assert!(swapped.validate().unwrap_err().to_string().contains("diag_names"));
    let mut transform = PreprocessStats::identity();
    transform.diag_asinh[N_DIAGNOSIS - 1] = !transform.diag_asinh[N_DIAGNOSIS - 1];
    assert!(transform.validate().unwrap_err().to_string().contains("diag_asinh"));
}
