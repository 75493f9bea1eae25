//! `lensnet evaluate --input DIR --labels labels.csv [--model FILE] [--out DIR]`: a survey team
//! checks a model on its own labelled archive. The archive is ingested into the evaluation's own
//! store (under `--out`) and database (`<name>_evaluate` on the same server), so production
//! tables are never touched; every (season, field) that holds data is replayed day by day as if
//! live through the production path (the same field runner as `lensnet run`); the figures are
//! printed and written as report.md, report.json and two PNG figures.

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use lensnet::config::{Config, DatabaseSource};
use lensnet::evaluate::{evaluate, half_of, outcomes, read_labels, to_markdown, write_plots, Half};
use lensnet::replay::{parse_step, replay, ReplayOptions};
use lensnet::{app, db};
use lensnet_stages::ingest::{season_of, PhotometryStore};
use lensnet_stages::Field;

use super::replay::{ingest_all, progress_printer};
use crate::cli::EvaluateArgs;

pub async fn run(cfg: Config, args: EvaluateArgs) -> anyhow::Result<ExitCode> {
    let started = std::time::Instant::now();
    let step_days = parse_step(&args.step).map_err(|e| anyhow::anyhow!(e)).context("--step")?;
    let mut labels = read_labels(&args.labels)?;
    let half: Option<Half> = args.half.as_deref().map(str::parse).transpose().map_err(|e: String| anyhow::anyhow!(e))?;
    if let Some(h) = half {
        labels.retain(|l| half_of(&l.star) == h);
    }
    anyhow::ensure!(!labels.is_empty(), "{} labels no star", args.labels.display());
    // Every labelled star must be in the archive (a folder of that name).
    let mut folders = std::collections::BTreeMap::new();
    collect_folders(&args.input, &mut folders).with_context(|| format!("reading {}", args.input.display()))?;
    let missing: Vec<String> = labels.iter().filter(|l| !folders.contains_key(&l.star)).map(|l| format!("{} (line {})", l.star, l.line)).collect();
    if !missing.is_empty() {
        anyhow::bail!(
            "{} names {} star(s) that {} does not hold (no folder of that name): {}",
            args.labels.display(),
            missing.len(),
            args.input.display(),
            missing.iter().take(10).cloned().collect::<Vec<_>>().join(", ") + if missing.len() > 10 { ", ..." } else { "" }
        );
    }
    let name = args.input.canonicalize().ok().and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned())).unwrap_or_else(|| "archive".into());
    let out = args.out.clone().unwrap_or_else(|| cfg.data_dir.join("evaluate").join(&name));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let out = out.canonicalize()?;

    // Its own store and database: the production tables are never touched.
    let mut ecfg = cfg.clone();
    ecfg.store_url = format!("file://{}", out.join("store").display());
    // One database per --out folder (its ledger belongs to that folder's store): running the
    // same evaluation again resumes it, another folder starts afresh.
    let tag = &lensnet::fieldrun::uuid_of(&out.display().to_string()).simple().to_string()[..8];
    let db_name = match &cfg.database {
        DatabaseSource::Local { name, .. } => format!("{name}_evaluate_{tag}"),
        DatabaseSource::Url(_) => format!("lensnet_evaluate_{tag}"),
    };
    let fresh_store = !out.join("store").exists();
    let pool = db::open_named(&ecfg, &db_name).await?;
    if fresh_store {
        // The database belongs to this folder's store: when the store is gone (the folder was
        // deleted and is used again), its ledger and results go too, or nothing would be
        // ingested into the new store.
        let tables: Vec<String> =
            sqlx::query_scalar("SELECT quote_ident(tablename) FROM pg_tables WHERE schemaname = current_schema() AND tablename <> '_sqlx_migrations'").fetch_all(&pool).await?;
        if !tables.is_empty() {
            sqlx::query(sqlx::AssertSqlSafe(format!("TRUNCATE {} CASCADE", tables.join(", ")))).execute(&pool).await?;
        }
    }
    let scorer = Arc::new(app::scorer(&ecfg, args.model.as_deref()).context("loading the model")?);
    let m = scorer.model();
    let th = scorer.thresholds();
    let whose = match (ecfg.threshold_purity, &m.threshold_purity) {
        (Some(_), _) => "configured",
        (None, Some(_)) => "the model's own",
        (None, None) => "the default",
    };
    println!(
        "evaluate   {} labelled stars in {}; model {} (sha256 {}); yes at binary >= {} ({whose}), maybe at >= {}",
        labels.len(),
        args.input.display(),
        m.path.display(),
        &m.sha256[..12],
        th.purity,
        th.recall
    );
    println!("           store {}, database {db_name}", out.join("store").display());
    let runner = app::field_runner(&ecfg, pool, scorer).context("setting up the field runner")?;
    let input = match half {
        None => args.input.clone(),
        Some(h) => {
            // Only the half's stars: a folder of links to their folders.
            let links = out.join(format!("input-{}", if h == Half::Validation { "validation" } else { "training" }));
            let _ = std::fs::remove_dir_all(&links);
            std::fs::create_dir_all(&links)?;
            for l in &labels {
                let target = folders[&l.star].canonicalize()?;
                std::os::unix::fs::symlink(&target, links.join(&l.star)).with_context(|| format!("linking {}", target.display()))?;
            }
            links
        }
    };
    ingest_all(&runner, &input.display().to_string()).await?;

    // Every (season, field) that holds data, replayed as if live.
    let photometry = PhotometryStore::new(runner.store.clone(), runner.root.clone());
    let mut pairs: BTreeSet<(i32, Field)> = BTreeSet::new();
    for k in photometry.partitions().await? {
        pairs.insert((k.season, k.field));
    }
    let seasons: BTreeSet<i32> = pairs.iter().map(|p| p.0).collect();
    let mut histories = Vec::new();
    let progress = progress_printer();
    for (i, &season) in seasons.iter().enumerate() {
        let fields: Vec<Field> = pairs.iter().filter(|p| p.0 == season).map(|p| p.1).collect();
        eprintln!("season {season} ({} of {}): {}", i + 1, seasons.len(), fields.iter().map(|f| f.to_string()).collect::<Vec<_>>().join(", "));
        let opts = ReplayOptions { season, fields, step_days, kind: "replay" };
        let result = replay(&runner, &opts, &progress).await.with_context(|| format!("replaying season {season}"))?;
        histories.push((season, result.stars));
    }
    let flagged = outcomes(&histories);
    let mut e = evaluate(&labels, &flagged, season_of, runner.model_sha256(), pairs.iter().map(|(s, f)| (*s, f.to_string())).collect());
    e.step_days = step_days;
    let md = to_markdown(&e);
    println!();
    print!("{md}");
    std::fs::write(out.join("report.md"), &md)?;
    std::fs::write(out.join("report.json"), serde_json::to_vec_pretty(&e)?)?;
    let mut written = vec![out.join("report.md"), out.join("report.json")];
    match write_plots(&e, &out) {
        Ok(files) => written.extend(files),
        Err(err) => eprintln!("warning: figures not drawn: {err}"),
    }
    println!();
    println!("wrote {}", written.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "));
    println!("evaluate finished in {:.1} s", started.elapsed().as_secs_f64());
    Ok(ExitCode::SUCCESS)
}

/// Every folder under `dir` by name (star folders may sit at any depth; the first found wins).
/// Symbolic links to folders are followed, as ingest follows them (an archive assembled from links
/// must pass the label check that its ingest would pass); a folder reached twice is read once.
fn collect_folders(dir: &std::path::Path, out: &mut std::collections::BTreeMap<String, std::path::PathBuf>) -> std::io::Result<()> {
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if !seen.insert(d.canonicalize()?) {
            continue;
        }
        let mut children: Vec<std::fs::DirEntry> = std::fs::read_dir(&d)?.collect::<Result<_, _>>()?;
        children.sort_by_key(|e| e.file_name());
        // Depth-first in name order: pushed in reverse so the first name is read first.
        for e in children.into_iter().rev() {
            // metadata() follows links; a dangling link is not a folder.
            if std::fs::metadata(e.path()).map(|m| m.is_dir()).unwrap_or(false) {
                stack.push(e.path());
            }
        }
        if d != dir {
            if let Some(name) = d.file_name() {
                out.entry(name.to_string_lossy().into_owned()).or_insert_with(|| d.clone());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::collect_folders;

    #[test]
    fn star_folders_behind_symbolic_links_are_found_and_a_link_loop_ends() {
        let tmp = tempfile::tempdir().unwrap();
        let archive = tmp.path().join("archive");
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::create_dir_all(archive.join("ogle/OGLE-A")).unwrap();
        std::fs::create_dir_all(elsewhere.join("KMT-B")).unwrap();
        std::fs::write(elsewhere.join("KMT-B/lc.pysis"), "x").unwrap();
        // A linked star folder, a linked folder of stars, a loop and a dangling link.
        std::os::unix::fs::symlink(elsewhere.join("KMT-B"), archive.join("KMT-B")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, archive.join("more")).unwrap();
        std::os::unix::fs::symlink(&archive, archive.join("ogle/back")).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("gone"), archive.join("gone")).unwrap();
        let mut found = std::collections::BTreeMap::new();
        collect_folders(&archive, &mut found).unwrap();
        let names: Vec<&str> = found.keys().map(String::as_str).collect();
        assert_eq!(names, ["KMT-B", "OGLE-A", "more", "ogle"]);
        assert_eq!(found["KMT-B"], archive.join("KMT-B"));
    }
}
