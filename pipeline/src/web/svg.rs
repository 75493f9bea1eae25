//! Small hand-written SVG figures of the pages: a light-curve thumbnail for the alert lists
//! (a few hundred points, no text) and the verdict history of a star (binary score against the
//! as-of time, one line per model, with the two operating thresholds).

use std::fmt::Write;

use lensnet_stages::photometry::{Band, Site, StarCurves};

use super::html::esc;

pub fn site_colour(site: Option<Site>) -> &'static str {
    match site {
        Some(Site::Kmta) => "#1f77b4",
        Some(Site::Kmtc) => "#d62728",
        Some(Site::Kmts) => "#2ca02c",
        None => "#5a5a5a",
    }
}

/// A `w` x `h` thumbnail of the star's I-band difference flux, points after `as_of` faint, the
/// as-of time as a line. At most about 600 points are drawn (evenly thinned).
pub fn thumbnail(star: &StarCurves, as_of: Option<f64>, w: u32, h: u32) -> String {
    let curves: Vec<_> = star.curves.iter().filter(|c| c.band != Some(Band::V)).collect();
    let mut pts: Vec<(f64, f64, Option<Site>)> = Vec::new();
    for c in &curves {
        for i in 0..c.hjd.len() {
            if c.flux[i].is_finite() && c.hjd[i].is_finite() {
                pts.push((c.hjd[i], c.flux[i], c.site));
            }
        }
    }
    let mut out = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\"><rect width=\"{w}\" height=\"{h}\" fill=\"#fafafa\" stroke=\"#ccc\"/>");
    if pts.len() < 2 {
        out.push_str("</svg>");
        return out;
    }
    let (t0, t1) = pts.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let mut f: Vec<f64> = pts.iter().map(|p| p.1).collect();
    f.sort_by(f64::total_cmp);
    let q = |p: f64| f[((f.len() - 1) as f64 * p).round() as usize];
    let (lo, hi) = (q(0.01), q(0.995));
    let span = (hi - lo).max(1e-9);
    let x = |t: f64| 2.0 + (w as f64 - 4.0) * (t - t0) / (t1 - t0).max(1e-9);
    let y = |v: f64| 2.0 + (h as f64 - 4.0) * (1.0 - ((v - lo) / span).clamp(0.0, 1.0));
    // One path per site and visibility, a zero-length round-capped segment per point: about
    // ten bytes a point (a list of 50 thumbnails stays small).
    let stride = (pts.len() / 600).max(1);
    let mut paths: Vec<((Option<Site>, bool), String)> = Vec::new();
    for (k, p) in pts.iter().enumerate() {
        if k % stride != 0 {
            continue;
        }
        let key = (p.2, as_of.is_some_and(|a| p.0 > a));
        let i = match paths.iter().position(|(k2, _)| *k2 == key) {
            Some(i) => i,
            None => {
                paths.push((key, String::new()));
                paths.len() - 1
            }
        };
        let _ = write!(paths[i].1, "M{:.0} {:.0}h0", x(p.0), y(p.1));
    }
    for ((site, faint), d) in &paths {
        let _ = write!(out, "<path d=\"{d}\" stroke=\"{}\" stroke-width=\"2\" stroke-linecap=\"round\"{}/>", site_colour(*site), if *faint { " opacity=\"0.2\"" } else { "" });
    }
    if let Some(a) = as_of.filter(|a| *a >= t0 && *a <= t1) {
        let _ = write!(out, "<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"0\" y2=\"{h}\" stroke=\"#000\" stroke-width=\"0.7\"/>", x(a));
    }
    out.push_str("</svg>");
    out
}

/// One point of a star's verdict history.
pub struct ScorePoint {
    pub model: String,
    pub as_of: f64,
    pub score: f64,
    pub verdict: String,
}

/// Binary score against the as-of time, a line per model (short sha), thresholds dashed.
pub fn score_history(points: &[ScorePoint], purity: f64, recall: f64) -> String {
    let (w, h, l, b) = (760.0, 190.0, 46.0, 26.0);
    let mut out = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"11\">");
    if points.is_empty() {
        out.push_str("<text x=\"10\" y=\"20\">no verdicts</text></svg>");
        return out;
    }
    let (t0, t1) = points.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, c), p| (a.min(p.as_of), c.max(p.as_of)));
    let (t0, t1) = if t1 - t0 < 1.0 { (t0 - 0.5, t1 + 0.5) } else { (t0, t1) };
    let x = |t: f64| l + (w - l - 10.0) * (t - t0) / (t1 - t0);
    let y = |s: f64| 8.0 + (h - b - 8.0) * (1.0 - s.clamp(0.0, 1.0));
    let _ = write!(out, "<rect x=\"{l}\" y=\"8\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#999\"/>", w - l - 10.0, h - b - 8.0);
    for (s, label) in [(0.0, "0"), (0.5, "0.5"), (1.0, "1")] {
        let _ = write!(out, "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{label}</text>", l - 4.0, y(s) + 4.0);
    }
    for (thr, name) in [(purity, "purity"), (recall, "recall")] {
        let (x2, yy, tx, ty) = (w - 10.0, y(thr), l + 4.0, y(thr) - 3.0);
        let _ = write!(out, "<line x1=\"{l}\" x2=\"{x2}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"#888\" stroke-dasharray=\"4 3\"/><text x=\"{tx}\" y=\"{ty:.1}\" fill=\"#666\">{name} {thr:.2}</text>");
    }
    let _ = write!(out, "<text x=\"{l}\" y=\"{}\">{t0:.2}</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{t1:.2} (as of, HJD - 2450000)</text>", h - b + 12.0, w - 10.0, h - b + 12.0);
    let palette = ["#444", "#9467bd", "#ff7f0e", "#17becf", "#8c564b"];
    let mut models: Vec<&str> = points.iter().map(|p| p.model.as_str()).collect();
    models.sort();
    models.dedup();
    for (k, m) in models.iter().enumerate() {
        let colour = palette[k % palette.len()];
        let mut pts: Vec<&ScorePoint> = points.iter().filter(|p| p.model == *m).collect();
        pts.sort_by(|a, b| a.as_of.total_cmp(&b.as_of));
        let path: Vec<String> = pts.iter().map(|p| format!("{:.1},{:.1}", x(p.as_of), y(p.score))).collect();
        let _ = write!(out, "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.2\" points=\"{}\"/>", path.join(" "));
        for p in &pts {
            let fill = match p.verdict.as_str() {
                "yes" => "#d62728",
                "maybe" => "#ff7f0e",
                _ => "#bbb",
            };
            let _ = write!(out, "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.6\" fill=\"{fill}\"><title>{} as of {:.2}: {:.3} ({})</title></circle>", x(p.as_of), y(p.score), esc(&m[..m.len().min(12)]), p.as_of, p.score, esc(&p.verdict));
        }
        let _ = write!(out, "<text x=\"{}\" y=\"{}\" fill=\"{colour}\">model {}</text>", l + 130.0 * k as f64, h - 2.0, esc(&m[..m.len().min(12)]));
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use lensnet_stages::photometry::{Field, SiteCurve, StarId};

    #[test]
    fn a_thumbnail_thins_its_points_and_marks_the_as_of_time() {
        let n = 3000;
        let hjd: Vec<f64> = (0..n).map(|i| 9000.0 + 0.1 * i as f64).collect();
        let c = SiteCurve { site: Some(Site::Kmtc), band: Some(Band::I), flux: hjd.iter().map(|t| (t - 9000.0).sin()).collect(), flux_err: vec![1.0; n], mag: vec![f64::NAN; n], mag_err: vec![f64::NAN; n], fwhm: vec![4.0; n], sky: vec![1.0; n], airmass: vec![1.0; n], hjd };
        let star = StarCurves { star: StarId("S".into()), field: Field(14), curves: vec![c] };
        let svg = thumbnail(&star, Some(9100.0), 160, 48);
        let dots = svg.matches("h0").count();
        assert!((500..=600).contains(&dots), "{dots} points");
        assert!(svg.contains("<line") && svg.contains("#d62728") && svg.contains("opacity"));
        assert!(svg.len() < 12_000, "{} bytes", svg.len());
        let hist = score_history(&[ScorePoint { model: "abcdef0123456789".into(), as_of: 9000.0, score: 0.95, verdict: "yes".into() }, ScorePoint { model: "abcdef0123456789".into(), as_of: 9001.0, score: 0.2, verdict: "no".into() }], 0.9, 0.5);
        assert!(hist.contains("polyline") && hist.contains("model abcdef012345") && hist.contains("purity 0.90"));
    }
}
