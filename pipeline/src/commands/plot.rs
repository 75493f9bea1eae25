//! `lensnet plot --field F --star S [--as-of T] [--season Y] --out file.png|svg`: one star's
//! light curve with the newest AlertFinder fits at or before the as-of time, for scripts and
//! papers (the same figure the star pages will show).

use std::process::ExitCode;

use anyhow::Context;
use lensnet::config::Config;
use lensnet::plot::{draw, Figure, Fits};
use lensnet::{app, db};
use lensnet_stages::ingest::{read_photometry, season_of};
use lensnet_stages::Field;
use sqlx::Row;

use crate::cli::PlotArgs;

pub async fn run(cfg: Config, args: PlotArgs) -> anyhow::Result<ExitCode> {
    let field: Field = args.field.parse().map_err(|e: String| anyhow::anyhow!(e)).context("--field")?;
    let (_, photometry) = app::photometry(&cfg).context("opening the object store")?;
    let season = match (args.season, args.as_of) {
        (Some(s), _) => s,
        (None, Some(t)) => season_of(t),
        (None, None) => {
            // The star's newest season.
            let mut seasons: Vec<i32> = photometry.partitions().await?.into_iter().filter(|k| k.field == field).map(|k| k.season).collect();
            seasons.sort();
            seasons.dedup();
            let mut found = None;
            for s in seasons.into_iter().rev() {
                if read_photometry(&photometry, s, field, None).await?.iter().any(|c| c.star.0 == args.star) {
                    found = Some(s);
                    break;
                }
            }
            found.with_context(|| format!("no photometry of star {} in field {field}", args.star))?
        }
    };
    let stars = read_photometry(&photometry, season, field, None).await?;
    let star = stars.iter().find(|s| s.star.0 == args.star).with_context(|| format!("no photometry of star {} in field {field}, season {season}", args.star))?;
    let pool = db::open(&cfg).await?;
    let rows = sqlx::query(
        "SELECT c.as_of_hjd, f.kind, f.t0, f.teff, f.regime, f.t_rise, f.slope, f.site_fluxes::text AS site_fluxes \
         FROM candidates c JOIN fits f USING (candidate_id) \
         WHERE c.field = $1 AND c.star_id = $2 AND ($3::float8 IS NULL OR c.as_of_hjd <= $3) \
         AND c.as_of_hjd = (SELECT max(as_of_hjd) FROM candidates WHERE field = $1 AND star_id = $2 AND ($3::float8 IS NULL OR as_of_hjd <= $3))",
    )
    .bind(field.to_string())
    .bind(&args.star)
    .bind(args.as_of)
    .fetch_all(&pool)
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
    let fig = Figure { star, season, as_of: args.as_of, fits: fits.clone() };
    draw(&fig, &args.out).map_err(|e| anyhow::anyhow!(e))?;
    match fits {
        Some(f) => println!("wrote {} ({} {} season {season}; fits of the candidate as of {:.2})", args.out.display(), field, args.star, f.as_of),
        None => println!("wrote {} ({} {} season {season}; no candidate: data only)", args.out.display(), field, args.star),
    }
    Ok(ExitCode::SUCCESS)
}
