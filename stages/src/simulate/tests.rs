//! Unit tests of the whole simulator: cadence, gaps, noise law, labels, determinism.

use super::*;
use crate::photometry::MergedCurve;

fn config(fields: &[u8], stars: u64, seed: u64) -> SimConfig {
    SimConfig { fields: fields.iter().map(|&f| Field(f)).collect(), stars, seed, ..SimConfig::default() }
}

/// Median epochs per hour over nights with at least 3 epochs spanning 2 hours.
fn rate_per_hour(c: &SiteCurve) -> f64 {
    let mut nights: Vec<Vec<f64>> = Vec::new();
    for &t in &c.hjd {
        match nights.last_mut() {
            Some(n) if t - n[n.len() - 1] < 0.3 => n.push(t),
            _ => nights.push(vec![t]),
        }
    }
    let mut r: Vec<f64> = nights
        .iter()
        .filter(|n| n.len() >= 3 && n[n.len() - 1] - n[0] > 2.0 / 24.0)
        .map(|n| (n.len() - 1) as f64 / ((n[n.len() - 1] - n[0]) * 24.0))
        .collect();
    model::median(&mut r)
}

#[test]
fn cadence_prime_vs_subprime_per_hour() {
    let season = Season::new(&config(&[2, 14, 38], 1, 1)).expect("season");
    let rate = |f: u8, site: Site| {
        let s = season.star(Field(f), 0).expect("star");
        let c = s.curves.curves.iter().find(|c| c.site == Some(site) && c.band == Some(Band::I)).expect("curve");
        rate_per_hour(c)
    };
    let (p, s, w) = (rate(2, Site::Kmtc), rate(14, Site::Kmtc), rate(38, Site::Kmtc));
    assert!((3.3..4.5).contains(&p), "BLG02 KMTC {p}/hr");
    assert!((0.85..1.2).contains(&s), "BLG14 KMTC {s}/hr");
    assert!(p / s > 3.0 && p / s < 5.0);
    // Low-cadence field: ~0.2/hr means few points a night; check season totals instead.
    let n38: usize = season.star(Field(38), 0).expect("star").curves.curves.iter().map(|c| c.len()).sum();
    let n14: usize = season.star(Field(14), 0).expect("star").curves.curves.iter().map(|c| c.len()).sum();
    assert!(n38 * 3 < n14, "BLG38 {n38} vs BLG14 {n14} points");
    assert!(w.is_nan() || w < 0.5);
    // KMTA/KMTS slower than KMTC as in the real files.
    assert!(rate(14, Site::Kmta) < s);
}

#[test]
fn gaps_daily_weather_and_season_bounds() {
    let season = Season::new(&config(&[14], 1, 3)).expect("season");
    let s = season.star(Field(14), 0).expect("star");
    let y0 = astro::year_start(2025);
    for c in s.curves.curves.iter().filter(|c| c.band == Some(Band::I)) {
        let gaps: Vec<f64> = c.hjd.windows(2).map(|w| w[1] - w[0]).collect();
        let daily = gaps.iter().filter(|&&g| (0.4..1.6).contains(&g)).count();
        let multi = gaps.iter().filter(|&&g| g > 2.5).count();
        assert!(daily > 100, "{:?}: {daily} daytime gaps", c.site);
        assert!(multi >= 2, "{:?}: {multi} weather gaps > 2.5 d", c.site);
        assert!(gaps.iter().all(|&g| g > 0.0));
        let (first, last) = (c.hjd[0] - y0, c.hjd[c.len() - 1] - y0);
        assert!((45.0..75.0).contains(&first), "{:?} starts day {first}", c.site);
        assert!((270.0..300.0).contains(&last), "{:?} ends day {last}", c.site);
    }
    // V epochs only at KMTC and KMTS, ~1 per 10-15 I epochs.
    let n = |site, band| s.curves.curves.iter().find(|c| c.site == Some(site) && c.band == Some(band)).map(|c| c.len()).unwrap_or(0);
    assert_eq!(n(Site::Kmta, Band::V), 0);
    let ratio = n(Site::Kmtc, Band::I) as f64 / n(Site::Kmtc, Band::V) as f64;
    assert!((7.0..20.0).contains(&ratio), "I/V ratio {ratio}");
}

#[test]
fn noise_grows_with_mag_and_errors_are_underestimated() {
    let mut c = config(&[14], 300, 5);
    c.mix = ClassMix { microlensing: 0.0, constant: 1.0, variable: 0.0, cataclysmic: 0.0, flare: 0.0, asteroid: 0.0, artefact: 0.0 };
    let season = Season::new(&c).expect("season");
    let stars = season.field(Field(14)).expect("field");
    let mut rows: Vec<(f64, f64, f64)> = Vec::new();
    for s in &stars {
        let m = MergedCurve::from_star(&s.curves, Band::I);
        let mut f: Vec<f64> = m.flux.clone();
        let med = model::median(&mut f);
        let mut dev: Vec<f64> = m.flux.iter().map(|x| (x - med).abs()).collect();
        let scatter = model::median(&mut dev) * 1.4826;
        let mut err = m.err.clone();
        let stated = model::median(&mut err);
        rows.push((s.truth.baseline_mag, scatter / s.truth.fs.max(1e-9), scatter / stated));
    }
    let mean = |lo: f64, hi: f64, k: usize| {
        let v: Vec<f64> = rows.iter().filter(|r| r.0 >= lo && r.0 < hi).map(|r| if k == 1 { r.1 } else { r.2 }).collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    // Fractional scatter (≈ mag scatter) grows with magnitude.
    let (bright, mid, faint) = (mean(14.0, 17.0, 1), mean(17.5, 19.5, 1), mean(20.0, 21.5, 1));
    assert!(bright < mid && mid < faint, "{bright} {mid} {faint}");
    // Stated errors under-estimate the true scatter by 1-3x.
    let ratio = mean(14.0, 22.0, 2);
    assert!((1.2..3.0).contains(&ratio), "scatter/err {ratio}");
}

#[test]
fn labels_balance_and_classes() {
    let season = Season::new(&config(&[14], 600, 9)).expect("season");
    let stars = season.field(Field(14)).expect("field");
    let count = |f: &dyn Fn(&Truth) -> bool| stars.iter().filter(|s| f(&s.truth)).count();
    let events = count(&|t| t.class == Class::Microlensing);
    let yes = count(&|t| t.label == Label::Yes);
    let maybe = count(&|t| t.label == Label::Maybe);
    assert!((60..190).contains(&events), "{events} events of 600");
    assert!(yes >= 20 && yes <= events, "{yes} yes");
    assert!(maybe >= 3, "{maybe} maybe");
    assert!(count(&|t| t.label == Label::Yes && t.class != Class::Microlensing) == 0);
    // Some events are invisible (peak far outside the season, faint): labelled no.
    assert!(count(&|t| t.class == Class::Microlensing && t.label == Label::No) > 0);
    for s in &stars {
        assert!(!s.truth.label_reason.is_empty());
    }
}

#[test]
fn same_seed_same_stars_different_seed_differs() {
    let a = Season::new(&config(&[14], 5, 7)).expect("season");
    let b = Season::new(&config(&[14], 5, 7)).expect("season");
    let c = Season::new(&config(&[14], 5, 8)).expect("season");
    for i in 0..5 {
        let (x, y, z) = (a.star(Field(14), i).expect("a"), b.star(Field(14), i).expect("b"), c.star(Field(14), i).expect("c"));
        assert_eq!(format!("{:?}", x), format!("{:?}", y));
        assert_ne!(format!("{:?}", x.curves), format!("{:?}", z.curves));
    }
    // Parallel batch equals one-by-one generation.
    let batch = a.field(Field(14)).expect("field");
    assert_eq!(format!("{:?}", batch[3]), format!("{:?}", a.star(Field(14), 3).expect("star")));
}

/// Throughput figure for the report: `cargo test --release -p lensnet-stages --lib
/// simulate::tests::bench_field_throughput -- --ignored --nocapture` (prints, never asserts time).
#[test]
#[ignore]
fn bench_field_throughput() {
    let stars = std::env::var("SIM_BENCH_STARS").ok().and_then(|s| s.parse().ok()).unwrap_or(2000);
    let r = bench_simulate(&SimConfig::default(), Field(14), stars).expect("bench");
    eprintln!("BLG14: {} stars, {} points, {:.2} s, {:.0} stars/s on {} threads", r.stars, r.points, r.seconds, r.stars_per_second, r.threads);
    let r = bench_simulate(&SimConfig::default(), Field(2), stars / 4).expect("bench");
    eprintln!("BLG02: {} stars, {} points, {:.2} s, {:.0} stars/s on {} threads", r.stars, r.points, r.seconds, r.stars_per_second, r.threads);
}
