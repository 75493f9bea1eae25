//! Ingest end to end with the PostgreSQL ledger: the real KMTNet files and a simulated season,
//! re-ingest (no duplicates), a grown file (only new rows), malformed files (quarantined, named,
//! nothing lost), and the `lensnet ingest` command.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use lensnet::ledger::PgLedger;
use lensnet_stages::ingest::store::row_keys;
use lensnet_stages::ingest::{ingest_location, read_photometry, FileOutcome, IngestOptions, PartitionKey, PhotometryStore};
use lensnet_stages::Field;
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use sqlx::Row;

use crate::harness::{walk_ext, TestDb};

pub fn shared_data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/kmtnet")
}

fn local_store(dir: &Path) -> PhotometryStore {
    let fs = LocalFileSystem::new_with_prefix(dir).expect("local store");
    PhotometryStore::new(Arc::new(fs), StorePath::from(""))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

async fn all_keys(store: &PhotometryStore) -> Vec<(String, String, u64)> {
    let mut keys = Vec::new();
    for p in store.partitions().await.unwrap() {
        keys.extend(row_keys(&store.read_partition(&p).await.unwrap()).unwrap());
    }
    keys
}

#[tokio::test]
async fn real_files_ingest_once_grow_and_quarantine_with_the_pg_ledger() {
    let db = TestDb::new().await;
    let ledger = PgLedger::new(db.pool.clone());
    let inbox = tempfile::tempdir().unwrap();
    let lake = tempfile::tempdir().unwrap();
    copy_dir(&shared_data(), inbox.path());
    let store = local_store(lake.path());
    let opts = IngestOptions::default();
    let input = inbox.path().to_str().unwrap();

    // Real files: every data line becomes a row, once.
    let data_lines: u64 = walk_ext(inbox.path(), "pysis")
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap().lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#')).count() as u64)
        .sum();
    let first = ingest_location(input, &store, &ledger, &opts).await.unwrap();
    assert_eq!(first.files.len(), 11);
    assert_eq!(first.rows_added(), data_lines);
    assert_eq!(first.failed() + first.quarantined(), 0);
    let keys = all_keys(&store).await;
    assert_eq!(keys.len() as u64, data_lines);

    // Re-ingest: nothing added.
    let again = ingest_location(input, &store, &ledger, &opts).await.unwrap();
    assert_eq!(again.rows_added(), 0);
    assert!(again.files.iter().all(|f| f.outcome == FileOutcome::Unchanged));
    assert_eq!(all_keys(&store).await, keys);

    // A file that grew by two epochs adds exactly those.
    let grown = inbox.path().join("KB180003/KMTC14_I.pysis");
    let mut text = std::fs::read_to_string(&grown).unwrap();
    // These files carry five columns (HJD, Δflux, flux_err, mag, mag_err): append in kind.
    text.push_str("8211.50000    -1950.0000      120.0000   19.1290  0.040000\n");
    text.push_str("8211.60000    -1990.0000      121.0000   19.1070  0.040100\n");
    std::fs::write(&grown, text).unwrap();
    let appended = ingest_location(input, &store, &ledger, &opts).await.unwrap();
    assert_eq!(appended.rows_added(), 2, "{:?}", appended.files.iter().filter(|f| f.outcome != FileOutcome::Unchanged).collect::<Vec<_>>());
    assert_eq!(all_keys(&store).await.len() as u64, data_lines + 2);

    // A malformed file is quarantined, named with its line, and the rest goes on.
    std::fs::create_dir_all(inbox.path().join("BAD01")).unwrap();
    std::fs::write(inbox.path().join("BAD01/KMTS14_I.pysis"), "# HJD\n8200.1 1 2 20 0.1 4 800 1.2\n8200.2 oops\n").unwrap();
    std::fs::create_dir_all(inbox.path().join("NEW01")).unwrap();
    std::fs::write(inbox.path().join("NEW01/KMTA14_I.pysis"), "# HJD\n8200.1 1 2 20 0.1 4 800 1.2\n8200.2 3 2 20 0.1 4 800 1.2\n").unwrap();
    let mixed = ingest_location(input, &store, &ledger, &opts).await.unwrap();
    assert_eq!(mixed.quarantined(), 1);
    assert_eq!(mixed.rows_added(), 2, "the good new file still goes in");
    let row = sqlx::query("SELECT status, reason FROM ingested_files WHERE path LIKE '%BAD01/KMTS14_I.pysis'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(row.get::<String, _>("status"), "quarantined");
    let reason: String = row.get("reason");
    assert!(reason.contains("line 3") && reason.contains("KMTS14_I.pysis"), "{reason}");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM ingested_files WHERE status = 'ingested'").fetch_one(&db.pool).await.unwrap();
    assert_eq!(n, 12);
    assert_eq!(all_keys(&store).await.len() as u64, data_lines + 4, "nothing lost, nothing duplicated");

    // Read back as the next stage does: brightening positive on the real event.
    let stars = read_photometry(&store, 2018, Field(14), None).await.unwrap();
    let season_star = stars.iter().find(|s| s.star.0 == "BLG14-2018-season").expect("season star");
    let kmtc = season_star.curves.iter().find(|c| c.site.map(|s| s.code()) == Some("KMTC") && c.band.map(|b| b.code()) == Some("I")).unwrap();
    let peak = kmtc.flux.iter().cloned().fold(f64::MIN, f64::max);
    assert!((peak - 189_538.0).abs() < 1.0, "brightest epoch is +189538 after ingest, got {peak}");
    let parts = store.partitions().await.unwrap();
    assert!(parts.contains(&PartitionKey { season: 2018, field: Field(12), site: "KMTA".into(), bucket: Some(0) }));

    // polars reads the part files as they are: every row once, the documented columns, sorted.
    use polars::prelude::{ParquetReader, SerReader};
    let mut polars_rows = 0;
    for part in walk_ext(lake.path(), "parquet") {
        assert!(part.to_string_lossy().contains("/photometry/season="), "{}", part.display());
        let df = ParquetReader::new(std::fs::File::open(&part).unwrap()).finish().unwrap();
        let names: Vec<String> = df.get_column_names().iter().map(|n| n.to_string()).collect();
        assert_eq!(&names[..4], ["star", "band", "hjd", "flux"], "{}", part.display());
        let hjd: Vec<f64> = df.column("hjd").unwrap().f64().unwrap().into_no_null_iter().collect();
        let stars = df.column("star").unwrap().str().unwrap();
        let star: Vec<String> = (0..df.height()).map(|i| stars.get(i).unwrap_or_default().to_string()).collect();
        assert!((1..hjd.len()).all(|i| (&star[i - 1], hjd[i - 1]) <= (&star[i], hjd[i])), "sorted by star, hjd: {}", part.display());
        polars_rows += df.height() as u64;
    }
    assert_eq!(polars_rows, data_lines + 4);
}

#[tokio::test]
async fn lensnet_ingest_command_reports_and_is_idempotent() {
    let db = TestDb::new().await;
    let Some(url) = db.url() else { return };
    let dir = tempfile::tempdir().unwrap();
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_lensnet"))
            .args(["ingest", "--input", shared_data().join("KB180003").to_str().unwrap()])
            .current_dir(dir.path())
            .env("DATABASE_URL", &url)
            .env("LENSNET_LOG", "warn")
            .output()
            .unwrap()
    };
    let first = run();
    let out = String::from_utf8_lossy(&first.stdout).to_string();
    assert!(first.status.success(), "{out}{}", String::from_utf8_lossy(&first.stderr));
    assert!(out.contains("6 file(s): 702 rows added, 0 unchanged, 0 quarantined, 0 failed"), "{out}");
    let second = String::from_utf8_lossy(&run().stdout).to_string();
    assert!(second.contains("6 file(s): 0 rows added, 6 unchanged"), "{second}");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM ingested_files").fetch_one(&db.pool).await.unwrap();
    assert_eq!(n, 6);
}

/// Every stored row as (star, band, hjd bits, flux bits), sorted: the store's content.
async fn store_rows(store: &PhotometryStore) -> Vec<(String, String, u64)> {
    let mut keys = all_keys(store).await;
    keys.sort();
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_ingests_at_once_into_one_store_lose_and_duplicate_nothing() {
    use lensnet_stages::simulate::{write_season, SimConfig};
    let season = tempfile::tempdir().unwrap();
    let cfg = SimConfig { fields: vec![Field(14)], stars: 40, seed: 3, ..Default::default() };
    write_season(&cfg, season.path()).unwrap();
    // Two halves of the season, by star, into the same partitions.
    let halves = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut stars: Vec<PathBuf> = std::fs::read_dir(season.path().join("BLG14")).unwrap().flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect();
    stars.sort();
    assert_eq!(stars.len(), 40);
    for (i, p) in stars.iter().enumerate() {
        copy_dir(p, &halves[i % 2].path().join("BLG14").join(p.file_name().unwrap()));
    }
    // Reference: the two halves one after the other.
    let ref_db = TestDb::new().await;
    let ref_lake = tempfile::tempdir().unwrap();
    let reference = local_store(ref_lake.path());
    let ledger = PgLedger::new(ref_db.pool.clone());
    for h in &halves {
        ingest_location(h.path().to_str().unwrap(), &reference, &ledger, &IngestOptions::default()).await.unwrap();
    }
    let expected = store_rows(&reference).await;
    assert!(expected.len() > 10_000, "{}", expected.len());

    for trial in 0..3 {
        let db = TestDb::new().await;
        let Some(url) = db.url() else { return };
        let work = tempfile::tempdir().unwrap();
        let spawn = |h: &tempfile::TempDir| {
            Command::new(env!("CARGO_BIN_EXE_lensnet"))
                .args(["ingest", "--input", h.path().to_str().unwrap()])
                .current_dir(work.path())
                .env("DATABASE_URL", &url)
                .env("LENSNET_LOG", "warn")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        };
        let a = spawn(&halves[0]);
        std::thread::sleep(std::time::Duration::from_millis(100 * trial));
        let b = spawn(&halves[1]);
        for c in [a, b] {
            let o = c.wait_with_output().unwrap();
            assert!(o.status.success(), "trial {trial}: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        }
        let store = local_store(&work.path().join(".lensnet/store"));
        assert_eq!(store_rows(&store).await, expected, "trial {trial}: the same rows as one ingest after the other");
        let files: i64 = sqlx::query_scalar("SELECT count(*) FROM ingested_files WHERE status = 'ingested'").fetch_one(&db.pool).await.unwrap();
        let ref_files: i64 = sqlx::query_scalar("SELECT count(*) FROM ingested_files WHERE status = 'ingested'").fetch_one(&ref_db.pool).await.unwrap();
        assert_eq!(files, ref_files);
        let check = Command::new(env!("CARGO_BIN_EXE_lensnet"))
            .args(["store", "check"])
            .current_dir(work.path())
            .env("DATABASE_URL", &url)
            .env("LENSNET_LOG", "warn")
            .output()
            .unwrap();
        assert!(check.status.success(), "trial {trial}: {}", String::from_utf8_lossy(&check.stdout));
        // Both were audited as ingest runs.
        let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM runs WHERE kind = 'ingest' AND status = 'succeeded'").fetch_one(&db.pool).await.unwrap();
        assert_eq!(runs, 2);
    }
}

/// What each input of `tests/fixtures/bad` must be quarantined for: (ledger path suffix, words
/// the reason must hold).
const BAD: &[(&str, &[&str])] = &[
    ("truncated_gzip/KMTC14_I.pysis.gz", &["KMTC14_I.pysis.gz", "gzip"]),
    ("binary/KMTC14_I.pysis", &["KMTC14_I.pysis"]),
    ("nul_byte/KMTC14_I.pysis", &["KMTC14_I.pysis", "line 4"]),
    ("huge_line/KMTC14_I.pysis", &["KMTC14_I.pysis", "line 11"]),
    ("absurd_flux/KMTC14_I.pysis", &["line 7", "implausible flux"]),
    ("absurd_error/KMTC14_I.pysis", &["line 9", "implausible flux error"]),
    ("absurd_time/KMTC14_I.pysis", &["KMTC14_I.pysis", "outside every known system"]),
    ("mixed_times/KMTC14_I.pysis", &["KMTC14_I.pysis", "mix"]),
    ("short_line/KMTC14_I.pysis", &["line 13", "columns"]),
    ("not_a_number/KMTC14_I.pysis", &["line 13", "not a number", "12.3.4"]),
    ("bad_names/KMTC99_I.pysis", &["field", "`99`"]),
    ("bad_names/KMTX14_I.pysis", &["site", "`X`"]),
    ("bad_names/KMTC14_R.pysis", &["band", "`R`"]),
    ("bomb/KMTC14_I.pysis.gz", &["too large", "expands past"]),
    ("ogle_no_field/OGLE-2019-BLG-0001/phot.dat", &["phot.dat", "field"]),
    ("broken_sidecar/EXT0001/lc.txt", &["lc.columns.toml"]),
];

#[tokio::test]
async fn an_adversarial_corpus_is_quarantined_and_the_good_files_are_stored() {
    let db = TestDb::new().await;
    let Some(url) = db.url() else { return };
    let work = tempfile::tempdir().unwrap();
    let inbox = work.path().join("inbox");
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/bad"), &inbox);
    std::fs::remove_file(inbox.join("README.md")).unwrap();
    std::fs::remove_file(inbox.join("make.py")).unwrap();
    // Good files beside them, one set in a folder whose name has quotes and URL characters.
    copy_dir(&shared_data().join("KB180003"), &inbox.join("KB180003"));
    let odd = inbox.join("KB it's #1 %41 & co");
    std::fs::create_dir_all(&odd).unwrap();
    std::fs::copy(shared_data().join("BLG14-2018-season/KMTA14_I.pysis"), odd.join("KMTA14_I.pysis")).unwrap();
    let good_rows: u64 = walk_ext(&inbox.join("KB180003"), "pysis").iter().chain(walk_ext(&odd, "pysis").iter()).map(|p| data_lines(p)).sum();
    // What git cannot hold: a FIFO (would block a reader), a symlink loop, a link to the inbox.
    assert!(Command::new("mkfifo").arg(inbox.join("KB180003/KMTS99_I.pysis")).status().unwrap().success());
    std::os::unix::fs::symlink("self-loop", inbox.join("self-loop")).unwrap();
    std::os::unix::fs::symlink(&inbox, inbox.join("KB180003/back")).unwrap();

    let run = || {
        Command::new(env!("CARGO_BIN_EXE_lensnet"))
            .args(["ingest", "--input", inbox.to_str().unwrap()])
            .current_dir(work.path())
            .env("DATABASE_URL", &url)
            .env("LENSNET_LOG", "error")
            .output()
            .unwrap()
    };
    let first = run();
    let out = format!("{}{}", String::from_utf8_lossy(&first.stdout), String::from_utf8_lossy(&first.stderr));
    assert!(first.status.success(), "one bad entry must not fail the ingest:\n{out}");
    assert!(!out.contains("panicked"), "{out}");
    for needle in ["skipped      ", "self-loop", "KMTS99_I.pysis: not a regular file", "back"] {
        assert!(out.contains(needle), "missing {needle:?}:\n{out}");
    }
    let rows = sqlx::query("SELECT path, status, reason, rows FROM ingested_files").fetch_all(&db.pool).await.unwrap();
    let find = |suffix: &str| rows.iter().find(|r| r.get::<String, _>("path").ends_with(suffix));
    for (suffix, words) in BAD {
        let r = find(suffix).unwrap_or_else(|| panic!("{suffix} has no ledger row:\n{out}"));
        let (status, reason): (String, Option<String>) = (r.get("status"), r.get("reason"));
        let reason = reason.unwrap_or_default();
        assert_eq!(status, "quarantined", "{suffix}: {reason}");
        for w in *words {
            assert!(reason.contains(w), "{suffix}: {w:?} not in {reason:?}");
        }
        assert!(reason.len() < 600, "{suffix}: a reason stays short ({} bytes)", reason.len());
    }
    let empty = find("empty/KMTC14_I.pysis").expect("the empty file is recorded");
    assert_eq!(empty.get::<i64, _>("rows"), 0);
    let stored: i64 = rows.iter().filter(|r| r.get::<String, _>("status") == "ingested").map(|r| r.get::<i64, _>("rows")).sum();
    assert_eq!(stored as u64, good_rows, "every good row is stored:\n{out}");
    let store = local_store(&work.path().join(".lensnet/store"));
    assert_eq!(all_keys(&store).await.len() as u64, good_rows);
    // Each quarantined input has its copy and reason on the store.
    let quarantined = walk_all(&work.path().join(".lensnet/store/quarantine")).into_iter().filter(|p| p.to_string_lossy().ends_with(".reason.txt")).count();
    assert_eq!(quarantined, BAD.len());

    // Again: nothing new, nothing failed, nothing copied twice.
    let second = run();
    let out2 = String::from_utf8_lossy(&second.stdout).to_string();
    assert!(second.status.success(), "{out2}");
    assert!(out2.contains("0 rows added") && out2.contains("0 quarantined, 0 failed"), "{out2}");
}

fn data_lines(p: &Path) -> u64 {
    std::fs::read_to_string(p).unwrap().lines().filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#')).count() as u64
}

fn walk_all(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() { out.extend(walk_all(&p)) } else { out.push(p) }
    }
    out
}

#[tokio::test]
async fn store_check_finds_debris_and_repair_mends_it() {
    let db = TestDb::new().await;
    let Some(url) = db.url() else { return };
    let work = tempfile::tempdir().unwrap();
    let cmd = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_lensnet")).args(args).current_dir(work.path()).env("DATABASE_URL", &url).env("LENSNET_LOG", "warn").output().unwrap()
    };
    let first = cmd(&["ingest", "--input", shared_data().join("BLG14-2018-season").to_str().unwrap()]);
    assert!(first.status.success());
    assert!(cmd(&["store", "check"]).status.success(), "a fresh ingest leaves a clean store");
    // Debris: an unlisted part (a crashed writer's), and a listed part deleted behind our back.
    let store = local_store(&work.path().join(".lensnet/store"));
    let kmta = PartitionKey { season: 2018, field: Field(14), site: "KMTA".into(), bucket: Some(0) };
    let kmtc = PartitionKey { season: 2018, field: Field(14), site: "KMTC".into(), bucket: Some(0) };
    let dir = work.path().join(".lensnet/store").join(store.partition_dir(&kmta).as_ref());
    std::fs::write(dir.join("part-00000000deadbeef.parquet"), b"not parquet").unwrap();
    let lost = store.read_manifest(&kmtc).await.unwrap().files[0].name.clone();
    std::fs::remove_file(work.path().join(".lensnet/store").join(store.partition_dir(&kmtc).as_ref()).join(&lost)).unwrap();
    let check = cmd(&["store", "check"]);
    let out = String::from_utf8_lossy(&check.stdout).to_string();
    assert_eq!(check.status.code(), Some(1), "{out}");
    assert!(out.contains("site=KMTA/bucket=0000: 1 orphan part(s)") && out.contains("part-00000000deadbeef.parquet"), "{out}");
    assert!(out.contains("site=KMTC/bucket=0000: 1 listed part(s) missing"), "{out}");
    let repair = cmd(&["store", "repair"]);
    let out = String::from_utf8_lossy(&repair.stdout).to_string();
    assert!(repair.status.success(), "{out}");
    assert!(out.contains("1 orphan(s) deleted") && out.contains("1 lost part(s) dropped") && out.contains("ingest the files"), "{out}");
    assert!(cmd(&["store", "check"]).status.success(), "clean after repair");
    assert!(store.read_partition(&kmtc).await.is_ok(), "the partition reads again");
}

#[tokio::test]
async fn lensnet_plot_draws_a_stored_star_and_names_a_missing_one() {
    let db = TestDb::new().await;
    let Some(url) = db.url() else { return };
    let work = tempfile::tempdir().unwrap();
    let cmd = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_lensnet")).args(args).current_dir(work.path()).env("DATABASE_URL", &url).env("LENSNET_LOG", "warn").output().unwrap()
    };
    assert!(cmd(&["ingest", "--input", shared_data().join("KB180003").to_str().unwrap()]).status.success());
    for (name, magic) in [("kb.png", &b"\x89PNG"[..]), ("kb.svg", &b"<svg"[..])] {
        let out = work.path().join(name);
        let o = cmd(&["plot", "--field", "BLG14", "--star", "KB180003", "--as-of", "8200", "--out", out.to_str().unwrap()]);
        assert!(o.status.success(), "{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        assert!(String::from_utf8_lossy(&o.stdout).contains("season 2018; no candidate: data only"));
        assert!(std::fs::read(&out).unwrap().starts_with(magic), "{name}");
    }
    let o = cmd(&["plot", "--field", "BLG14", "--star", "KB999999", "--out", work.path().join("x.png").to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no photometry of star KB999999 in field BLG14"), "{}", String::from_utf8_lossy(&o.stderr));
}
