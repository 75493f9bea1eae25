//! Export training rows from a labelled archive of real light curves (issue 12; see
//! `preprocess::real`): real events and variables of the archive's training half as the
//! production alertfinder finds them, and events injected into its event stars' other seasons.
//!
//! Usage: cargo run -p lensnet-stages --features preprocess --example export_real --
//!        INBOX LABELS_CSV STATS_JSON OUT_PARQUET [SEED] [INJECTIONS_PER_SEASON]
//!        [NEGATIVE_VARIANTS]
//! INBOX holds one folder per star (as `../shared/data/real-dev/inbox`). Only the stars of the
//! training half (`half_of`: sha256("lensnet split " + star)[0] even) are read: their folders are
//! ingested, as `lensnet ingest` does, into a fresh store beside OUT_PARQUET (`<OUT>.store/`).

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int32Array, StringArray, UInt64Array};
use lensnet_stages::ingest::{read_photometry, PhotometryStore};
use lensnet_stages::preprocess::real::{real_rows, RealLabel, RealOptions, RealRow};
use lensnet_stages::preprocess::{parquet::TensorWriter, prepare, PreprocessStats};
use sha2::{Digest, Sha256};

fn training_half(star: &str) -> bool {
    Sha256::digest(format!("lensnet split {star}").as_bytes())[0] & 1 == 0
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        eprintln!("usage: export_real INBOX LABELS_CSV STATS_JSON OUT_PARQUET [SEED] [INJECTIONS_PER_SEASON] [NEGATIVE_VARIANTS]");
        std::process::exit(2);
    }
    let started = std::time::Instant::now();
    let stats = PreprocessStats::from_json(&std::fs::read_to_string(&args[3])?)?;
    let mut opts = RealOptions { seed: args.get(5).map(|s| s.parse()).transpose()?.unwrap_or(12), ..RealOptions::default() };
    if let Some(n) = args.get(6) {
        opts.injections_per_season = n.parse()?;
    }
    if let Some(n) = args.get(7) {
        opts.negative_variants = n.parse()?;
    }
    // star,class,type,survey,followup,field,peak_hjd,files
    let mut labels = Vec::new();
    for (i, line) in std::fs::read_to_string(&args[2])?.lines().enumerate().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() < 7 {
            return Err(format!("{} line {}: expected 8 columns", args[2], i + 1).into());
        }
        if !training_half(f[0]) {
            continue;
        }
        let is_event = f[1] == "event" || f[1] == "binary_event";
        labels.push(RealLabel { star: f[0].into(), is_event, kind: f[2].into(), peak: f[6].parse().ok() });
    }
    // The training half's folders, linked into one folder and ingested into a fresh store.
    let store_dir = std::path::PathBuf::from(format!("{}.store", args[4]));
    let links = std::path::PathBuf::from(format!("{}.inbox", args[4]));
    let _ = std::fs::remove_dir_all(&store_dir);
    let _ = std::fs::remove_dir_all(&links);
    std::fs::create_dir_all(&store_dir)?;
    std::fs::create_dir_all(&links)?;
    let wanted: std::collections::HashSet<&str> = labels.iter().map(|l| l.star.as_str()).collect();
    for e in std::fs::read_dir(&args[1])? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if e.file_type()?.is_dir() && wanted.contains(name.as_str()) {
            std::os::unix::fs::symlink(e.path().canonicalize()?, links.join(&name))?;
        }
    }
    let store: Arc<dyn object_store::ObjectStore> = Arc::new(object_store::local::LocalFileSystem::new_with_prefix(&store_dir)?);
    let photometry = PhotometryStore::new(store, object_store::path::Path::from(""));
    let opts_ingest = lensnet_stages::ingest::IngestOptions { compaction: Some(Default::default()), ..Default::default() };
    let report = lensnet_stages::ingest::ingest_location(links.to_str().ok_or("non-UTF-8 path")?, &photometry, &lensnet_stages::ingest::MemoryLedger::new(), &opts_ingest).await?;
    eprintln!("ingested {} files ({} quarantined, {} failed) in {:.1} s", report.files.len(), report.quarantined(), report.failed(), started.elapsed().as_secs_f64());
    let mut pairs: Vec<_> = photometry.partitions().await?.into_iter().map(|k| (k.season, k.field)).collect();
    pairs.sort();
    pairs.dedup();
    let mut stars = Vec::new();
    for (season, field) in pairs {
        stars.extend(read_photometry(&photometry, season, field, None).await?);
    }
    eprintln!("{} training-half labels, {} (star, season) curves read", labels.len(), stars.len());
    let rows: Vec<RealRow> = real_rows(stars, &labels, &opts);
    let mut by: BTreeMap<String, usize> = BTreeMap::new();
    for r in &rows {
        *by.entry(format!("{} {} {}", r.source, r.kind, r.label.name())).or_default() += 1;
    }
    let mut w = TensorWriter::new(std::path::Path::new(&args[4]), &stats);
    for chunk in rows.chunks(2000) {
        let cands: Vec<_> = chunk.iter().map(RealRow::candidate).collect();
        let p = prepare(&cands, &stats)?;
        let s = |f: &dyn Fn(&RealRow) -> String| -> ArrayRef { Arc::new(chunk.iter().map(|r| Some(f(r))).collect::<StringArray>()) };
        let x = |f: &dyn Fn(&RealRow) -> f64| -> ArrayRef { Arc::new(chunk.iter().map(f).collect::<Float64Array>()) };
        let extra: Vec<(String, ArrayRef)> = vec![
            ("class".into(), s(&|r| r.kind.clone())),
            ("subtype".into(), s(&|r| r.source.to_string())),
            ("season".into(), Arc::new(chunk.iter().map(|r| r.season).collect::<Int32Array>())),
            ("sim_seed".into(), Arc::new(chunk.iter().map(|_| 0u64).collect::<UInt64Array>())),
            ("now".into(), x(&|r| r.now)),
            ("t0".into(), x(&|r| r.t0)),
            ("te".into(), x(&|r| r.te)),
            ("u0".into(), x(&|r| r.u0)),
        ];
        w.write(&p, extra)?;
    }
    w.close()?;
    println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "rows": rows.len(), "by": by, "seconds": started.elapsed().as_secs_f64() }))?);
    Ok(())
}
