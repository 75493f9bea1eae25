//! Development driver: run the production alertfinder stage (history state included) day by day
//! over every (season, field) of an ingested store and print what became a candidate, per label
//! group. It measures the AlertFinder alone (no model), in seconds instead of a full
//! `lensnet evaluate`; the figures that count are `evaluate`'s.
//!
//! Usage: cargo run -p lensnet-stages --example scan_archive -- STORE_DIR LABELS_CSV [PARAMS_JSON]
//! (STORE_DIR is written to: use a copy of an evaluate store's `photometry/`.) PARAMS_JSON is an
//! `AlertParams` object (missing keys take their defaults) applied to every field.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use lensnet_stages::alertfinder::stage::{find_candidates_with, read_candidates};
use lensnet_stages::alertfinder::AlertParams;
use lensnet_stages::cache::PhotometryCache;
use lensnet_stages::ingest::{season_of, PhotometryStore};
use lensnet_stages::stage::RunCtx;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: scan_archive STORE_DIR LABELS_CSV [PARAMS_JSON]");
        std::process::exit(2);
    }
    let params: AlertParams = match args.get(3) {
        Some(j) => serde_json::from_str(j)?,
        None => AlertParams::default(),
    };
    let store: Arc<dyn object_store::ObjectStore> = Arc::new(object_store::local::LocalFileSystem::new_with_prefix(&args[1])?);
    let root = object_store::path::Path::from("");
    let photometry = PhotometryStore::new(store.clone(), root.clone());
    let mut pairs: Vec<(i32, lensnet_stages::Field)> = photometry.partitions().await?.into_iter().map(|k| (k.season, k.field)).collect();
    pairs.sort();
    pairs.dedup();
    let cache = PhotometryCache::default();
    // star -> season -> first candidate as_of
    let mut first: HashMap<String, BTreeMap<i32, f64>> = HashMap::new();
    let started = std::time::Instant::now();
    for (season, field) in &pairs {
        let fp = cache.get(&photometry, *season, *field).await?;
        let times: Vec<f64> = fp.stars.iter().flat_map(|s| s.curves.iter()).flat_map(|c| c.hjd.iter().copied()).filter(|t| t.is_finite()).collect();
        let (lo, hi) = times.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &t| (a.min(t), b.max(t)));
        if !lo.is_finite() {
            continue;
        }
        let mut k = 1.0;
        loop {
            let t = lo.floor() + k;
            let ctx = RunCtx { run_id: format!("{season}-{field}-{t}"), field: *field, season: *season, as_of: Some(t), store: store.clone(), root: root.clone() };
            find_candidates_with(&ctx, &params, Some(&cache)).await?;
            for c in read_candidates(store.as_ref(), &root, *season, *field, t).await? {
                if c.status == "candidate" {
                    first.entry(c.star.clone()).or_default().entry(*season).or_insert(t);
                }
            }
            if t >= hi {
                break;
            }
            k += 1.0;
        }
        cache.clear();
        eprintln!("{season} {field}: done ({:.0} s)", started.elapsed().as_secs_f64());
    }
    // Labels: star,class,type,survey,followup,field,peak_hjd,files
    let text = std::fs::read_to_string(&args[2])?;
    let mut ev: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
    let mut ne: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let stored: std::collections::HashSet<String> = {
        let mut s = std::collections::HashSet::new();
        for (season, field) in &pairs {
            for st in cache.get(&photometry, *season, *field).await?.stars.iter() {
                s.insert(st.star.0.clone());
            }
        }
        s
    };
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() < 7 || !stored.contains(f[0]) {
            continue;
        }
        let got = first.get(f[0]);
        if f[1].contains("event") && f[1] != "nonevent" {
            let Ok(peak) = f[6].parse::<f64>() else { continue };
            let e = ev.entry(f[3].to_string()).or_default();
            e.0 += 1;
            if let Some(&t) = got.and_then(|g| g.get(&season_of(peak))) {
                e.1 += 1;
                if t < peak {
                    e.2 += 1;
                }
            }
        } else {
            let e = ne.entry(f[2].to_string()).or_default();
            e.0 += 1;
            if got.is_some() {
                e.1 += 1;
            }
        }
    }
    println!("params {}", serde_json::to_string(&params)?);
    let (mut n, mut a, mut b) = (0, 0, 0);
    for (k, (x, y, z)) in &ev {
        println!("event {k}: {x} stars, candidate in the peak season {y}, before the peak {z}");
        (n, a, b) = (n + x, a + y, b + z);
    }
    println!("EVENTS {n}: candidate {a} ({:.1} %), before peak {b} ({:.1} %)", 100.0 * a as f64 / n as f64, 100.0 * b as f64 / n as f64);
    let (mut n, mut a) = (0, 0);
    for (k, (x, y)) in &ne {
        if *y > 0 {
            println!("nonevent {k}: {x} stars, ever a candidate {y}");
        }
        (n, a) = (n + x, a + y);
    }
    let dn = ne.get("dwarf_nova").copied().unwrap_or_default();
    println!("NONEVENTS {n}: ever a candidate {a} ({:.1} %); dwarf novae {} of {}", 100.0 * a as f64 / n as f64, dn.1, dn.0);
    eprintln!("scan_archive finished in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
