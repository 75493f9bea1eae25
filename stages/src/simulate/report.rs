//! Calibration report: the simulator's cadence, gaps, seeing, sky, airmass and noise side by
//! side with the real KMTNet pySIS files (read with the production parser,
//! `crate::ingest::pysis::parse`).

use std::fmt::Write as _;
use std::path::Path;

use super::model::median;
use super::{ClassMix, Season, SimConfig, SimError};
use crate::ingest::normalize::SourceOverrides;
use crate::photometry::{Band, Field, Site, SiteCurve};

/// Statistics of the I-band curves of one site (pooled over stars when several).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SiteStats {
    pub nights: usize,
    pub rate_per_hour: f64,
    pub points: usize,
    /// Quantiles 50/90/99 % of gaps longer than 0.3 d.
    pub gaps: [f64; 3],
    pub fwhm: [f64; 3],
    pub sky: [f64; 4],
    pub airmass: [f64; 3],
    pub fwhm_failed: f64,
    /// Median stated flux_err of points with 19.5 < mag < 20.5.
    pub err_at_20: f64,
    /// Robust scatter / median stated error, baseline points.
    pub scatter_ratio: f64,
    /// (mag bin centre, median mag_err) for mag bins of 1 mag.
    pub mag_err: Vec<(f64, f64)>,
}

fn q(v: &[f64], p: f64) -> f64 {
    let mut w: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if w.is_empty() {
        return f64::NAN;
    }
    w.sort_by(|a, b| a.total_cmp(b));
    w[((p * w.len() as f64) as usize).min(w.len() - 1)]
}

/// Statistics of one or more curves of the same site (time sets pooled per curve).
pub fn site_stats(curves: &[&SiteCurve]) -> SiteStats {
    let mut s = SiteStats::default();
    let mut rates = Vec::new();
    let mut gaps = Vec::new();
    let (mut fwhm, mut sky, mut am, mut fail, mut e20, mut chi) =
        (Vec::new(), Vec::new(), Vec::new(), 0usize, Vec::new(), Vec::new());
    let mut mag_err: Vec<(f64, f64)> = Vec::new();
    for c in curves {
        let mut night: Vec<f64> = Vec::new();
        let flush = |n: &mut Vec<f64>, rates: &mut Vec<f64>, nights: &mut usize| {
            if !n.is_empty() {
                *nights += 1;
            }
            if n.len() >= 3 && n[n.len() - 1] - n[0] > 2.0 / 24.0 {
                rates.push((n.len() - 1) as f64 / ((n[n.len() - 1] - n[0]) * 24.0));
            }
            n.clear();
        };
        for (i, &t) in c.hjd.iter().enumerate() {
            if i > 0 {
                let g = t - c.hjd[i - 1];
                if g > 0.3 {
                    gaps.push(g);
                    flush(&mut night, &mut rates, &mut s.nights);
                }
            }
            night.push(t);
        }
        flush(&mut night, &mut rates, &mut s.nights);
        s.points += c.len();
        let mut base: Vec<f64> = c.flux.clone();
        let med = median(&mut base);
        let mut dev: Vec<f64> = c.flux.iter().map(|f| (f - med).abs()).collect();
        let mut errs = c.flux_err.clone();
        let ratio = median(&mut dev) * 1.4826 / median(&mut errs);
        chi.push(ratio);
        for i in 0..c.len() {
            if c.fwhm[i].is_finite() {
                fwhm.push(c.fwhm[i]);
            } else {
                fail += 1;
            }
            sky.push(c.sky[i]);
            am.push(c.airmass[i]);
            if c.mag[i] > 19.5 && c.mag[i] < 20.5 {
                e20.push(c.flux_err[i]);
            }
            if c.mag[i].is_finite() {
                mag_err.push((c.mag[i], c.mag_err[i]));
            }
        }
    }
    s.rate_per_hour = median(&mut rates);
    s.gaps = [q(&gaps, 0.5), q(&gaps, 0.9), q(&gaps, 0.99)];
    s.fwhm = [q(&fwhm, 0.25), q(&fwhm, 0.5), q(&fwhm, 0.75)];
    s.sky = [q(&sky, 0.25), q(&sky, 0.5), q(&sky, 0.75), q(&sky, 0.95)];
    s.airmass = [q(&am, 0.05), q(&am, 0.5), q(&am, 0.95)];
    s.fwhm_failed = fail as f64 / s.points.max(1) as f64;
    s.err_at_20 = median(&mut e20);
    s.scatter_ratio = median(&mut chi);
    s.nights /= curves.len().max(1);
    for m in [15.0, 16.0, 17.0, 18.0, 19.0, 20.0, 21.0] {
        let mut v: Vec<f64> = mag_err.iter().filter(|x| (x.0 - m).abs() < 0.5).map(|x| x.1).collect();
        if v.len() >= 3 {
            s.mag_err.push((m, median(&mut v)));
        }
    }
    s
}

/// Read the real I-band curves of a folder of pySIS files (e.g. the 2018 BLG14 season), one
/// per site.
pub fn read_real(dir: &Path) -> Result<Vec<SiteCurve>, SimError> {
    let mut out = Vec::new();
    for site in Site::ALL {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return Err(SimError::Real { path: dir.display().to_string(), reason: "cannot list folder".into() });
        };
        let mut names: Vec<String> = rd
            .flatten()
            .map(|e| e.path().display().to_string())
            .filter(|p| p.contains(site.code()) && p.ends_with("_I.pysis"))
            .collect();
        names.sort();
        for p in names {
            let text = std::fs::read(&p).map_err(|e| SimError::Real { path: p.clone(), reason: e.to_string() })?;
            let (_, o) = crate::ingest::pysis::parse(&text, 0, 1, &p, &SourceOverrides::default(), None, true)
                .map_err(|e| SimError::Real { path: p.clone(), reason: e.to_string() })?;
            let mut c = SiteCurve::new(site, Band::I);
            (c.hjd, c.flux, c.flux_err, c.mag, c.mag_err, c.fwhm, c.sky, c.airmass) =
                (o.hjd, o.flux, o.flux_err, o.mag, o.mag_err, o.fwhm, o.sky, o.airmass);
            out.push(c);
        }
    }
    Ok(out)
}

/// A text table comparing a simulated BLG14 season (`stars` constant-or-variable stars of
/// `config`'s seed and season) with the real files in `real_dir`.
pub fn report(config: &SimConfig, real_dir: &Path, stars: u64) -> Result<String, SimError> {
    let real = read_real(real_dir)?;
    let mut c = config.clone();
    c.fields = vec![Field(14)];
    c.stars = stars.max(1);
    c.mix = ClassMix { microlensing: 0.0, constant: 1.0, variable: 0.0, cataclysmic: 0.0, flare: 0.0, asteroid: 0.0, artefact: 0.0 };
    let season = Season::new(&c)?;
    let sim = season.field(Field(14))?;
    let mut out = String::new();
    let _ = writeln!(out, "simulated season {} BLG14 ({} constant stars, seed {}) vs real 2018 BLG14 ({})", c.season, c.stars, c.seed, real_dir.display());
    let _ = writeln!(out, "{:<26} {:>22} {:>22} {:>22}", "statistic (I band)", "KMTA sim | real", "KMTC sim | real", "KMTS sim | real");
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let mut push = |name: &str, vals: Vec<String>| rows.push((name.to_string(), vals));
    let mut cols: Vec<(SiteStats, SiteStats)> = Vec::new();
    for site in Site::ALL {
        let sc: Vec<&SiteCurve> = sim.iter().flat_map(|s| s.curves.curves.iter()).filter(|x| x.site == Some(site) && x.band == Some(Band::I)).collect();
        let rc: Vec<&SiteCurve> = real.iter().filter(|x| x.site == Some(site)).collect();
        // Errors near mag 20 come from the simulated stars whose baseline is near 20.
        let s20: Vec<&SiteCurve> = sim
            .iter()
            .filter(|s| (s.truth.baseline_mag - 20.0).abs() < 0.5)
            .flat_map(|s| s.curves.curves.iter())
            .filter(|x| x.site == Some(site) && x.band == Some(Band::I))
            .collect();
        let mut ss = site_stats(&sc);
        let st20 = site_stats(&s20);
        ss.err_at_20 = st20.err_at_20;
        ss.scatter_ratio = st20.scatter_ratio;
        cols.push((ss, site_stats(&rc)));
    }
    let f = |a: f64, b: f64, p: usize| format!("{a:>9.p$} | {b:<9.p$}");
    push("nights with data", cols.iter().map(|(a, b)| format!("{:>9} | {:<9}", a.nights, b.nights)).collect());
    push("points", cols.iter().map(|(a, b)| format!("{:>9} | {:<9}", a.points, b.points)).collect());
    push("median epochs/hour/night", cols.iter().map(|(a, b)| f(a.rate_per_hour, b.rate_per_hour, 2)).collect());
    for (k, name) in ["gap>0.3d q50 (d)", "gap>0.3d q90 (d)", "gap>0.3d q99 (d)"].iter().enumerate() {
        push(name, cols.iter().map(|(a, b)| f(a.gaps[k], b.gaps[k], 2)).collect());
    }
    for (k, name) in ["fwhm q25 (px)", "fwhm q50 (px)", "fwhm q75 (px)"].iter().enumerate() {
        push(name, cols.iter().map(|(a, b)| f(a.fwhm[k], b.fwhm[k], 2)).collect());
    }
    push("fwhm failed (-1.00) frac", cols.iter().map(|(a, b)| f(a.fwhm_failed, b.fwhm_failed, 3)).collect());
    for (k, name) in ["sky q25", "sky q50", "sky q75", "sky q95"].iter().enumerate() {
        push(name, cols.iter().map(|(a, b)| f(a.sky[k], b.sky[k], 0)).collect());
    }
    for (k, name) in ["secz q05", "secz q50", "secz q95"].iter().enumerate() {
        push(name, cols.iter().map(|(a, b)| f(a.airmass[k], b.airmass[k], 2)).collect());
    }
    push("flux_err at I~20", cols.iter().map(|(a, b)| f(a.err_at_20, b.err_at_20, 0)).collect());
    push("scatter/err (I~20)", cols.iter().map(|(a, b)| f(a.scatter_ratio, b.scatter_ratio, 2)).collect());
    for m in [16.0, 18.0, 19.0, 20.0] {
        let get = |s: &SiteStats| s.mag_err.iter().find(|x| x.0 == m).map(|x| x.1).unwrap_or(f64::NAN);
        push(&format!("mag_err at I={m:.0}"), cols.iter().map(|(a, b)| f(get(a), get(b), 3)).collect());
    }
    for (name, vals) in rows {
        let _ = writeln!(out, "{:<26} {:>22} {:>22} {:>22}", name, vals[0], vals[1], vals[2]);
    }
    let _ = writeln!(out, "(real mag_err at bright mags comes from the one event star; sim pools {} stars of I 14-21.5)", c.stars);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_compares_with_real_files() {
        let dir = Path::new("/work/shared/data/kmtnet/BLG14-2018-season");
        if !dir.exists() {
            return;
        }
        let text = report(&SimConfig::default(), dir, 60).expect("report");
        eprintln!("{text}");
        assert!(text.contains("median epochs/hour/night"));
        assert!(text.lines().count() > 20);
    }
}
