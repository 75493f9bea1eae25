//! `lensnet simulate` as a user runs it (byte-identical output for a seed, the report against
//! the real KMTNet files), and a simulated season going through ingest.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use lensnet::ledger::PgLedger;
use lensnet_stages::ingest::{ingest_location, read_photometry, IngestOptions, PhotometryStore};
use lensnet_stages::Field;
use object_store::local::LocalFileSystem;

use crate::harness::TestDb;

fn simulate(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lensnet"))
        .arg("simulate")
        .args(args)
        .current_dir(dir)
        .env("LENSNET_LOG", "warn")
        .output()
        .unwrap()
}

fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.strip_prefix(dir).unwrap().display().to_string(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn same_seed_gives_byte_identical_seasons_and_the_report_compares_with_real_data() {
    let dir = tempfile::tempdir().unwrap();
    let args = |out: &'static str, seed: &'static str| ["--season", "2025", "--fields", "BLG02,BLG14", "--stars", "12", "--seed", seed, "--out", out];
    for (out, seed) in [("a", "7"), ("b", "7"), ("c", "8")] {
        let o = simulate(dir.path(), &args(out, seed));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let (a, b, c) = (tree(&dir.path().join("a")), tree(&dir.path().join("b")), tree(&dir.path().join("c")));
    assert!(a.iter().any(|(p, _)| p == "truth.parquet"));
    assert!(a.iter().any(|(p, _)| p.ends_with("BLG14.0000003/KMTC14_I.pysis")), "{:?}", a.iter().map(|x| &x.0).take(5).collect::<Vec<_>>());
    assert_eq!(a, b, "same seed, same bytes");
    assert_ne!(a, c, "another seed, another season");

    let real = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/kmtnet/BLG14-2018-season");
    let o = simulate(dir.path(), &["--report", "--stars", "60", "--real", real.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for needle in ["KMTA", "KMTC", "KMTS", "epochs/hour", "gap", "fwhm", "sky", "secz", "scatter/err"] {
        assert!(text.contains(needle), "report lacks {needle}:\n{text}");
    }
    let none = simulate(dir.path(), &[]);
    assert!(!none.status.success(), "simulate without --out or --report refuses");
}

#[tokio::test]
async fn a_simulated_season_ingests_completely_and_once() {
    let db = TestDb::new().await;
    let ledger = PgLedger::new(db.pool.clone());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("season");
    let cfg = lensnet_stages::simulate::SimConfig { fields: vec![Field(14)], stars: 6, seed: 3, ..Default::default() };
    let summary = lensnet_stages::simulate::write_season(&cfg, &out).unwrap();
    let lake = tempfile::tempdir().unwrap();
    let store = PhotometryStore::new(Arc::new(LocalFileSystem::new_with_prefix(lake.path()).unwrap()), "".into());
    let input = out.to_str().unwrap();
    let first = ingest_location(input, &store, &ledger, &IngestOptions::default()).await.unwrap();
    assert_eq!(first.failed(), 0);
    assert_eq!(first.quarantined(), 0, "{:?}", first.files);
    assert_eq!(first.rows_added(), summary.points, "every simulated epoch is stored");
    let again = ingest_location(input, &store, &ledger, &IngestOptions::default()).await.unwrap();
    assert_eq!(again.rows_added(), 0);
    let stars = read_photometry(&store, 2025, Field(14), None).await.unwrap();
    assert_eq!(stars.len(), 6);
    assert!(stars.iter().all(|s| s.curves.len() >= 3), "three sites per star");
}

/// A star read alone (only the row groups whose `star` statistics can hold it) is exactly that
/// star of the whole field-season, in compacted parts of several row groups and in the small
/// parts of a later night alike; an unknown star is None.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_star_read_alone_equals_that_star_of_the_whole_field() {
    use lensnet_stages::ingest::{read_star, CompactionPolicy};
    use lensnet_stages::photometry::StarCurves;
    let db = TestDb::new().await;
    let ledger = PgLedger::new(db.pool.clone());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("season");
    // BLG02 (prime cadence): 30 stars are about 100k epochs per site, two or more row groups.
    let cfg = lensnet_stages::simulate::SimConfig { fields: vec![Field(2)], stars: 30, seed: 5, ..Default::default() };
    lensnet_stages::simulate::write_season(&cfg, &out).unwrap();
    let lake = tempfile::tempdir().unwrap();
    let store = PhotometryStore::new(Arc::new(LocalFileSystem::new_with_prefix(lake.path()).unwrap()), "".into());
    let opts = IngestOptions { compaction: Some(CompactionPolicy::default()), ..IngestOptions::default() };
    ingest_location(out.to_str().unwrap(), &store, &ledger, &opts).await.unwrap();
    let key = lensnet_stages::ingest::PartitionKey { season: 2025, field: Field(2), site: "KMTC".into(), bucket: Some(0) };
    let rows: u64 = store.read_manifest(&key).await.unwrap().files.iter().map(|p| p.rows).sum();
    assert!(rows > 2 * lensnet_stages::ingest::store::ROW_GROUP_ROWS as u64, "{rows} rows: several row groups");
    let all = read_photometry(&store, 2025, Field(2), None).await.unwrap();
    assert_eq!(all.len(), 30);
    for s in &all {
        let alone = read_star(&store, 2025, Field(2), &s.star.0).await.unwrap().expect("the star is there");
        // Bit for bit (missing values are NaN, which == would call different).
        let bits = |c: &StarCurves| -> Vec<(Option<String>, Option<String>, Vec<[u64; 8]>)> {
            c.curves
                .iter()
                .map(|k| {
                    let rows = (0..k.hjd.len()).map(|i| [k.hjd[i], k.flux[i], k.flux_err[i], k.mag[i], k.mag_err[i], k.fwhm[i], k.sky[i], k.airmass[i]].map(f64::to_bits)).collect();
                    (k.site.map(|x| x.code().to_string()), k.band.map(|b| format!("{b:?}")), rows)
                })
                .collect()
        };
        assert_eq!(alone.star, s.star);
        assert!(bits(&alone) == bits(s), "{} read alone differs", s.star.0);
    }
    assert!(read_star(&store, 2025, Field(2), "BLG02.9999999").await.unwrap().is_none());
    assert!(read_star(&store, 2024, Field(2), &all[0].star.0).await.unwrap().is_none(), "no such season");
}
