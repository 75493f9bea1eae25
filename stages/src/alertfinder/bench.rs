//! Throughput benchmark of the AlertFinder's numeric core, for `lensnet bench alertfinder`.
//!
//! Per-core figures come from plain single-threaded iteration with one [`Scratch`]; the batch
//! figure uses [`scan_batch`] on rayon's global pool. The curves are season-long synthetic ones
//! from [`super::synth`] (240 nights, 10-hour nights, 10 % of site-nights lost): a high-cadence
//! field (4 epochs an hour per site, ~26k points) and a low-cadence one (0.2 an hour, ~1.3k).

use std::fmt;
use std::time::Instant;

use serde::Serialize;

use super::synth::{generate, Pspl, SynthSpec};
use super::grid::{search_grid_with, Kernel, SitePoints};
use super::{scan_batch, scan_star, AlertParams, Scratch, Status};
use crate::photometry::{LightCurve, MergedCurve};

/// Figures of one field cadence.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchRow {
    pub label: String,
    pub cadence_per_hour: f64,
    /// Mean points per season-long light curve.
    pub points_per_curve: f64,
    /// Pre-selection + broken line (forced on every star), one core.
    pub curves_per_s: f64,
    pub points_per_s: f64,
    /// The same over all cores with `scan_batch` (rayon's global pool).
    pub batch_curves_per_s: f64,
    pub threads: usize,
    /// Candidates through the whole scan including the EventFinder grid, one core, with the
    /// kernel that [`Kernel::detect`] picks.
    pub grid_candidates_per_s: f64,
    /// The grid alone on the same candidates, one core, per kernel this CPU runs.
    pub grid_by_kernel: Vec<(String, f64)>,
}

/// The benchmark's answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchFigures {
    pub rows: Vec<BenchRow>,
}

impl fmt::Display for BenchFigures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<26} {:>9} {:>12} {:>14} {:>16} {:>14}",
            "field", "points", "curves/s/core", "Mpoints/s/core", "curves/s (batch)", "grid cand/s/core"
        )?;
        for r in &self.rows {
            writeln!(
                f,
                "{:<26} {:>9.0} {:>12.0} {:>14.1} {:>11.0} ({:>2}t) {:>14.1}",
                r.label,
                r.points_per_curve,
                r.curves_per_s,
                r.points_per_s / 1e6,
                r.batch_curves_per_s,
                r.threads,
                r.grid_candidates_per_s
            )?;
        }
        writeln!(f, "grid alone, candidates/s/core by kernel (the scan uses {:?}):", Kernel::detect())?;
        for r in &self.rows {
            let by: Vec<String> = r.grid_by_kernel.iter().map(|(k, v)| format!("{k} {v:.1}")).collect();
            writeln!(f, "  {:<24} {}", r.label, by.join(", "))?;
        }
        Ok(())
    }
}

fn season(cadence: f64) -> SynthSpec {
    SynthSpec { night_hours: 10.0, weather_loss: 0.1, ..SynthSpec::season(cadence) }
}

/// Run the benchmark on `n_curves` distinct quiet curves and `n_candidates` event curves per
/// cadence, each set timed for at least `min_seconds` (repeating the set as needed).
pub fn bench(n_curves: usize, n_candidates: usize, min_seconds: f64) -> BenchFigures {
    let mut rows = Vec::new();
    for (label, cadence, params) in [
        ("high cadence (4/h/site)", 4.0, AlertParams::high_cadence()),
        ("low cadence (0.2/h/site)", 0.2, AlertParams::low_cadence()),
    ] {
        let spec = season(cadence);
        let now = spec.season_start + spec.season_days;
        let since = now - 1.0;
        let quiet: Vec<MergedCurve> = (0..n_curves.max(1) as u64).map(|s| generate(&spec, s)).collect();
        let views: Vec<LightCurve<'_>> = quiet.iter().map(MergedCurve::view).collect();
        let points: usize = views.iter().map(LightCurve::len).sum();
        let forced = AlertParams { fit_all: true, ..params.clone() };

        let mut scratch = Scratch::default();
        let mut done = 0usize;
        let mut sink = 0.0;
        let start = Instant::now();
        while done == 0 || start.elapsed().as_secs_f64() < min_seconds {
            for v in &views {
                let r = scan_star(v, now, since, &forced, &mut scratch);
                sink += r.broken_line.map_or(0.0, |b| b.delta_chi2);
            }
            done += 1;
        }
        let secs = start.elapsed().as_secs_f64();
        let curves_per_s = (done * views.len()) as f64 / secs;
        let points_per_s = (done * points) as f64 / secs;

        let mut done = 0usize;
        let start = Instant::now();
        while done == 0 || start.elapsed().as_secs_f64() < min_seconds {
            sink += scan_batch(&views, now, since, &forced).len() as f64;
            done += 1;
        }
        let batch_curves_per_s = (done * views.len()) as f64 / start.elapsed().as_secs_f64();

        // Candidates: an event peaking a day after `now`, strong enough to pass everywhere.
        let events: Vec<MergedCurve> = (0..n_candidates.max(1) as u64)
            .map(|s| {
                let te = 10.0 + 5.0 * (s % 5) as f64;
                let ev = Pspl { t0: now + 1.0, te, u0: 0.1, fs: 300.0 };
                generate(&SynthSpec { event: Some(ev), ..spec.clone() }, 1000 + s)
            })
            .collect();
        let mut done = 0usize;
        let mut n_cand = 0usize;
        let start = Instant::now();
        while done == 0 || start.elapsed().as_secs_f64() < min_seconds {
            for e in &events {
                let r = scan_star(&e.view(), now, since, &params, &mut scratch);
                n_cand += (r.status == Status::Candidate && r.grid.is_some()) as usize;
            }
            done += 1;
        }
        let grid_candidates_per_s = n_cand as f64 / start.elapsed().as_secs_f64();

        // The grid alone, per kernel, on the candidates' own points.
        let pts: Vec<SitePoints> = events
            .iter()
            .filter_map(|e| {
                let r = scan_star(&e.view(), now, since, &params, &mut scratch);
                (r.status == Status::Candidate).then(|| scratch.pts.clone())
            })
            .collect();
        let mut grid_by_kernel = Vec::new();
        for k in Kernel::available() {
            let mut done = 0usize;
            let start = Instant::now();
            while !pts.is_empty() && (done == 0 || start.elapsed().as_secs_f64() < min_seconds) {
                for p in &pts {
                    sink += search_grid_with(k, p, now, &params.grid).map_or(0.0, |g| g.delta_chi2);
                }
                done += 1;
            }
            grid_by_kernel.push((format!("{k:?}"), (done * pts.len()) as f64 / start.elapsed().as_secs_f64()));
        }
        std::hint::black_box(sink);
        rows.push(BenchRow {
            label: label.to_string(),
            cadence_per_hour: cadence,
            points_per_curve: points as f64 / views.len() as f64,
            curves_per_s,
            points_per_s,
            batch_curves_per_s,
            threads: rayon::current_num_threads(),
            grid_candidates_per_s,
            grid_by_kernel,
        });
    }
    BenchFigures { rows }
}

#[cfg(test)]
mod tests {
    /// `cargo test --release -p lensnet-stages --lib alertfinder::bench -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn bench_alertfinder() {
        let figures = super::bench(20, 10, 2.0);
        eprintln!("{figures}");
    }

    #[test]
    fn bench_runs_and_counts_candidates() {
        let f = super::bench(1, 1, 0.0);
        assert_eq!(f.rows.len(), 2);
        assert!(f.rows.iter().all(|r| r.grid_candidates_per_s > 0.0 && r.points_per_curve > 1000.0));
    }
}
