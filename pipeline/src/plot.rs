//! The light-curve figure of one star (`lensnet plot`, and later the star pages): per-site
//! difference flux against time with error bars, the three KMTNet sites in their own colours, the
//! as-of line (points after it drawn faint: the pipeline had not seen them), and the newest
//! AlertFinder fits at or before the as-of time drawn over the data: the EventFinder point-lens
//! template `f0 + f1 A(t)` per site and the broken line (flat, then rising from `t_rise`).

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use lensnet_stages::alertfinder::grid::templates;
use lensnet_stages::photometry::{Band, Site, StarCurves};

/// Fonts tried for the figures' text, in order (Debian's fonts-dejavu-core, then others).
pub const FONTS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// Registers a sans-serif font with plotters once; an error naming the fonts tried when none is
/// installed.
pub fn font_ready() -> Result<(), String> {
    static READY: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ready = *READY.get_or_init(|| {
        for f in FONTS {
            if let Ok(bytes) = std::fs::read(f) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", plotters::style::FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    });
    if ready { Ok(()) } else { Err(format!("no font for the figures' text (tried {}): install fonts-dejavu-core", FONTS.join(", "))) }
}

/// Days before the as-of time over which the point-lens template is drawn.
const FIT_SPAN_DAYS: f64 = 30.0;

/// The newest fits of a star's candidate (from `fits`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fits {
    /// The candidate's as-of time.
    pub as_of: f64,
    /// Point-lens grid: (t0, teff, regime, per-site (site code, f0, f1)).
    pub grid: Option<(f64, f64, u8, Vec<(String, f64, f64)>)>,
    /// Broken line: (t_rise, slope per day).
    pub broken: Option<(f64, f64)>,
}

/// The fits of the star's newest candidate at or before `as_of` (all candidates when None).
pub async fn newest_fits(pool: &sqlx::PgPool, field: &str, star: &str, as_of: Option<f64>) -> Result<Option<Fits>, sqlx::Error> {
    use sqlx::Row;
    let rows = sqlx::query(
        "SELECT c.as_of_hjd, f.kind, f.t0, f.teff, f.regime, f.t_rise, f.slope, f.site_fluxes::text AS site_fluxes \
         FROM candidates c JOIN fits f USING (candidate_id) \
         WHERE c.field = $1 AND c.star_id = $2 AND ($3::float8 IS NULL OR c.as_of_hjd <= $3) \
         AND c.as_of_hjd = (SELECT max(as_of_hjd) FROM candidates WHERE field = $1 AND star_id = $2 AND ($3::float8 IS NULL OR as_of_hjd <= $3))",
    )
    .bind(field)
    .bind(star)
    .bind(as_of)
    .fetch_all(pool)
    .await?;
    let mut fits: Option<Fits> = None;
    for r in rows {
        let f = fits.get_or_insert_with(|| Fits { as_of: r.get("as_of_hjd"), ..Default::default() });
        let kind: String = r.get("kind");
        if kind == "pspl_grid" {
            let sites: serde_json::Value = serde_json::from_str(&r.get::<String, _>("site_fluxes")).unwrap_or_default();
            let per_site = sites
                .as_object()
                .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.get("f0")?.as_f64()?, v.get("f1")?.as_f64()?))).collect())
                .unwrap_or_default();
            if let (Some(t0), Some(teff)) = (r.get::<Option<f64>, _>("t0"), r.get::<Option<f64>, _>("teff")) {
                f.grid = Some((t0, teff, r.get::<Option<i16>, _>("regime").unwrap_or(1) as u8, per_site));
            }
        } else if kind == "broken_line" {
            if let (Some(t), Some(s)) = (r.get::<Option<f64>, _>("t_rise"), r.get::<Option<f64>, _>("slope")) {
                f.broken = Some((t, s));
            }
        }
    }
    Ok(fits)
}

/// What the figure shows.
pub struct Figure<'a> {
    pub star: &'a StarCurves,
    pub season: i32,
    pub as_of: Option<f64>,
    pub fits: Option<Fits>,
    /// Magnitude (brighter up) instead of difference flux; the fits are drawn in flux only.
    pub magnitude: bool,
}

fn site_colour(site: Option<Site>) -> RGBColor {
    match site {
        Some(Site::Kmta) => RGBColor(31, 119, 180),
        Some(Site::Kmtc) => RGBColor(214, 39, 40),
        Some(Site::Kmts) => RGBColor(44, 160, 44),
        None => RGBColor(90, 90, 90),
    }
}

fn site_name(site: Option<Site>) -> String {
    site.map(|s| s.code().to_string()).unwrap_or_else(|| "survey".into())
}

/// The figure as SVG text of `size` pixels (for the star pages).
pub fn svg_string(fig: &Figure<'_>, size: (u32, u32)) -> Result<String, String> {
    font_ready()?;
    let mut out = String::new();
    draw_on(SVGBackend::with_string(&mut out, size).into_drawing_area(), fig)?;
    Ok(out)
}

/// The figure as PNG bytes of `size` pixels (the star pages: a few hundred kB where the SVG of
/// a prime-field season holds megabytes of points).
pub fn png_bytes(fig: &Figure<'_>, size: (u32, u32)) -> Result<Vec<u8>, String> {
    font_ready()?;
    let mut rgb = vec![0u8; (size.0 * size.1 * 3) as usize];
    draw_on(BitMapBackend::with_buffer(&mut rgb, size).into_drawing_area(), fig)?;
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, size.0, size.1);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().map_err(|e| e.to_string())?;
        w.write_image_data(&rgb).map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// Draws the figure into `path`: PNG or SVG by its extension.
pub fn draw(fig: &Figure<'_>, path: &Path) -> Result<(), String> {
    font_ready()?;
    let size = (1100, 620);
    match path.extension().and_then(|e| e.to_str()) {
        Some("svg") => draw_on(SVGBackend::new(path, size).into_drawing_area(), fig),
        Some("png") => draw_on(BitMapBackend::new(path, size).into_drawing_area(), fig),
        _ => Err(format!("{}: give a .png or .svg file", path.display())),
    }
}

fn draw_on<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, fig: &Figure<'_>) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(err)?;
    let curves: Vec<_> = fig.star.curves.iter().filter(|c| c.band != Some(Band::V) && !c.hjd.is_empty()).collect();
    if curves.is_empty() {
        return Err(format!("star {} has no I-band photometry in season {}", fig.star.star, fig.season));
    }
    // The plotted value and its error: difference flux, or magnitude negated (so that up is
    // brighter in both, and the axis labels undo the sign).
    let yv = |c: &lensnet_stages::photometry::SiteCurve, i: usize| if fig.magnitude { (-c.mag[i], c.mag_err[i]) } else { (c.flux[i], c.flux_err[i]) };
    let (mut t0, mut t1) = (f64::INFINITY, f64::NEG_INFINITY);
    let mut fluxes = Vec::new();
    for c in &curves {
        for i in 0..c.hjd.len() {
            if yv(c, i).0.is_finite() {
                t0 = t0.min(c.hjd[i]);
                t1 = t1.max(c.hjd[i]);
                fluxes.push(yv(c, i).0);
            }
        }
    }
    if fluxes.is_empty() {
        return Err(format!("star {} has no {} in season {}", fig.star.star, if fig.magnitude { "magnitudes" } else { "fluxes" }, fig.season));
    }
    // The flux range of all but the most extreme 0.3 % of points at each end: a few outliers
    // (cosmic rays, bad subtractions) would otherwise flatten the light curve.
    fluxes.sort_by(f64::total_cmp);
    let q = |p: f64| fluxes[((fluxes.len() - 1) as f64 * p).round() as usize];
    let (f0, f1) = (q(0.003), q(0.997));
    let pad = if fig.magnitude { 0.06 * (f1 - f0).max(0.05) } else { 0.06 * (f1 - f0).max(1.0) };
    let title = match fig.as_of {
        Some(a) => format!("{} {}  season {}  as of {a:.2}", fig.star.field, fig.star.star, fig.season),
        None => format!("{} {}  season {}", fig.star.field, fig.star.star, fig.season),
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(t0 - 1.0..t1 + 1.0, f0 - pad..f1 + pad)
        .map_err(err)?;
    let y_label = |v: &f64| if fig.magnitude { format!("{:.2}", -v) } else { format!("{v:.0}") };
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .x_desc("HJD - 2450000")
        .y_desc(if fig.magnitude { "magnitude (brighter up)" } else { "difference flux (brightening up)" })
        .y_label_formatter(&y_label)
        .draw()
        .map_err(err)?;
    let seen = |t: f64| fig.as_of.is_none_or(|a| t <= a);
    for c in &curves {
        let colour = site_colour(c.site);
        let faint = colour.mix(0.2);
        let pts: Vec<(f64, f64, f64)> = (0..c.hjd.len()).filter(|&i| yv(c, i).0.is_finite()).map(|i| (c.hjd[i], yv(c, i).0, yv(c, i).1)).collect();
        chart
            .draw_series(pts.iter().filter(|p| p.2.is_finite()).map(|&(t, f, e)| {
                let style = if seen(t) { colour.mix(0.45) } else { faint };
                PathElement::new(vec![(t, f - e), (t, f + e)], style.stroke_width(1))
            }))
            .map_err(err)?;
        chart
            .draw_series(pts.iter().map(|&(t, f, _)| Circle::new((t, f), 2, if seen(t) { colour.filled() } else { faint.filled() })))
            .map_err(err)?
            .label(format!("{} ({} epochs)", site_name(c.site), pts.len()))
            .legend(move |(x, y)| Circle::new((x + 6, y), 4, colour.filled()));
    }
    if let Some(fits) = fig.fits.as_ref().filter(|_| !fig.magnitude) {
        if let Some((gt0, teff, regime, sites)) = &fits.grid {
            for c in &curves {
                let code = site_name(c.site);
                let Some((_, b, a)) = sites.iter().find(|s| s.0 == code) else { continue };
                if *a == 0.0 {
                    continue;
                }
                // Over the last FIT_SPAN_DAYS before the as-of time (the grid fits the search
                // window, 20 days by default) and 10 days after: the two-parameter template is
                // not a model of the whole season, and far from its window it drifts.
                let (from, to) = ((fits.as_of - FIT_SPAN_DAYS).max(t0), (fits.as_of + 10.0).min(t1));
                if to <= from {
                    continue;
                }
                let n = 400;
                let line: Vec<(f64, f64)> = (0..=n)
                    .map(|k| {
                        let t = from + (to - from) * k as f64 / n as f64;
                        let q = 1.0 + ((t - gt0) / teff).powi(2);
                        let (a1, a2) = templates(q);
                        (t, b + a * if *regime == 2 { a2 } else { a1 })
                    })
                    .collect();
                chart.draw_series(LineSeries::new(line, site_colour(c.site).stroke_width(2))).map_err(err)?;
            }
            chart
                .draw_series(std::iter::once(PathElement::new(vec![(*gt0, f0 - pad), (*gt0, f0 - pad)], BLACK)))
                .map_err(err)?
                .label(format!("point-lens grid: t0 {gt0:.2}, t_eff {teff:.2} d"))
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], BLACK.stroke_width(2)));
        }
        if let Some((t_rise, slope)) = fits.broken {
            // Flat at each site's level before the break (median of the 20 days before it),
            // then the shared slope.
            for c in &curves {
                let mut before: Vec<f64> = (0..c.hjd.len()).filter(|&i| c.hjd[i] <= t_rise && c.hjd[i] > t_rise - 20.0 && c.flux[i].is_finite()).map(|i| c.flux[i]).collect();
                if before.is_empty() {
                    continue;
                }
                before.sort_by(f64::total_cmp);
                let level = before[before.len() / 2];
                let end = fits.as_of.min(t1);
                let style = ShapeStyle::from(&BLACK.mix(0.7)).stroke_width(1);
                chart
                    .draw_series(std::iter::once(PathElement::new(vec![(t_rise - 20.0, level), (t_rise, level), (end, level + slope * (end - t_rise))], style)))
                    .map_err(err)?;
            }
        }
    }
    if let Some(a) = fig.as_of {
        chart
            .draw_series(std::iter::once(PathElement::new(vec![(a, f0 - pad), (a, f1 + pad)], ShapeStyle::from(&BLACK).stroke_width(1))))
            .map_err(err)?
            .label(format!("as of {a:.2}"))
            .legend(|(x, y)| PathElement::new(vec![(x + 7, y - 6), (x + 7, y + 6)], BLACK));
    }
    chart.configure_series_labels().position(SeriesLabelPosition::UpperLeft).background_style(WHITE.mix(0.85)).border_style(BLACK).draw().map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lensnet_stages::photometry::{Field, SiteCurve, StarId};

    #[test]
    fn a_star_is_drawn_as_png_and_svg_with_its_fits() {
        let mk = |site: Site, phase: f64| {
            let hjd: Vec<f64> = (0..300).map(|i| 9000.0 + 0.3 * i as f64 + phase).collect();
            let flux: Vec<f64> = hjd.iter().map(|t| 500.0 / (1.0 + ((t - 9060.0) / 5.0f64).powi(2)).sqrt()).collect();
            SiteCurve { site: Some(site), band: Some(Band::I), flux_err: vec![20.0; 300], mag: vec![f64::NAN; 300], mag_err: vec![f64::NAN; 300], fwhm: vec![4.0; 300], sky: vec![900.0; 300], airmass: vec![1.2; 300], flux, hjd }
        };
        let star = StarCurves { star: StarId("S1".into()), field: Field(14), curves: vec![mk(Site::Kmta, 0.0), mk(Site::Kmtc, 0.1), mk(Site::Kmts, 0.2)] };
        let fits = Fits {
            as_of: 9055.0,
            grid: Some((9060.0, 5.0, 1, vec![("KMTA".into(), 0.0, 500.0), ("KMTC".into(), 0.0, 500.0), ("KMTS".into(), 0.0, 500.0)])),
            broken: Some((9050.0, 30.0)),
        };
        let mut fig = Figure { star: &star, season: 2020, as_of: Some(9055.0), fits: Some(fits), magnitude: false };
        let dir = tempfile::tempdir().unwrap();
        if let Ok(keep) = std::env::var("LENSNET_TEST_FIGURES") {
            draw(&fig, &Path::new(&keep).join("plot-test.png")).unwrap();
        }
        for name in ["lc.png", "lc.svg"] {
            let p = dir.path().join(name);
            draw(&fig, &p).unwrap();
            let bytes = std::fs::read(&p).unwrap();
            assert!(bytes.len() > 5000, "{name}: {} bytes", bytes.len());
        }
        let svg = std::fs::read_to_string(dir.path().join("lc.svg")).unwrap();
        assert!(svg.contains("KMTA (300 epochs)") && svg.contains("as of 9055.00") && svg.contains("point-lens grid"), "the legend names the sites, the as-of line and the fit");
        assert!(draw(&fig, &dir.path().join("lc.jpg")).unwrap_err().contains(".png or .svg"));
        let png = png_bytes(&fig, (800, 400)).unwrap();
        assert!(png.starts_with(b"\x89PNG") && png.len() > 5000);
        let inline = svg_string(&fig, (800, 400)).unwrap();
        assert!(inline.starts_with("<svg") && inline.contains("KMTA (300 epochs)"));
        // No magnitudes in this star: a clear error, not an empty figure.
        fig.magnitude = true;
        assert!(svg_string(&fig, (800, 400)).unwrap_err().contains("no magnitudes"));
    }
}
