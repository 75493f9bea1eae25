//! `lensnet plot --field F --star S [--as-of T] [--season Y] --out file.png|svg`: one star's
//! light curve with the newest AlertFinder fits at or before the as-of time, for scripts and
//! papers (the same figure the star pages will show).

use std::process::ExitCode;

use anyhow::Context;
use lensnet::config::Config;
use lensnet::plot::{draw, newest_fits, Figure};
use lensnet::{app, db};
use lensnet_stages::ingest::{read_photometry, season_of};
use lensnet_stages::Field;

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
    let fits = newest_fits(&pool, &field.to_string(), &args.star, args.as_of).await?;
    let fig = Figure { star, season, as_of: args.as_of, fits: fits.clone(), magnitude: args.magnitude };
    draw(&fig, &args.out).map_err(|e| anyhow::anyhow!(e))?;
    match fits {
        Some(f) => println!("wrote {} ({} {} season {season}; fits of the candidate as of {:.2})", args.out.display(), field, args.star, f.as_of),
        None => println!("wrote {} ({} {} season {season}; no candidate: data only)", args.out.display(), field, args.star),
    }
    Ok(ExitCode::SUCCESS)
}
