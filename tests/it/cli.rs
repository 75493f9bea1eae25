//! The `lensnet` binary as a user runs it: help texts, configuration checks, the local database
//! commands, and argument errors.

use std::path::Path;
use std::process::{Command, Output};

fn lensnet(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lensnet"))
        .args(args)
        .current_dir(dir)
        .env_remove("DATABASE_URL")
        .env_remove("LENSNET_CONFIG")
        .env("LENSNET_LOG", "warn")
        .output()
        .expect("lensnet runs")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn help_lists_the_subcommand_contract() {
    let dir = tempfile::tempdir().unwrap();
    let out = lensnet(dir.path(), &["--help"]);
    assert!(out.status.success());
    let help = text(&out);
    for sub in ["demo", "simulate", "ingest", "run", "serve", "replay", "db", "bench", "config"] {
        assert!(help.contains(&format!("\n  {sub} ")), "--help lacks {sub}:\n{help}");
        let sub_help = lensnet(dir.path(), &[sub, "--help"]);
        assert!(sub_help.status.success(), "{sub} --help fails");
        assert!(text(&sub_help).lines().next().is_some_and(|l| l.len() > 20), "{sub} --help has no description");
    }
    let db_help = text(&lensnet(dir.path(), &["db", "--help"]));
    for sub in ["start", "stop", "status", "url", "migrate"] {
        assert!(db_help.contains(&format!("\n  {sub} ")), "db --help lacks {sub}");
    }
}

#[test]
fn config_check_reports_every_problem_with_its_source() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("lensnet.toml"), "[store]\nurll = 1\n[score]\nbatch_size = 0\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lensnet"))
        .args(["config", "check"])
        .current_dir(dir.path())
        .env("LENSNET__SCHEDULE__MAX_PARALLEL", "0")
        .env("LENSNET__NOPE__X", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let t = text(&out);
    assert!(t.contains("4 configuration problem(s)"), "{t}");
    for needle in ["`store.urll`: unknown key", "`score.batch_size`", "`schedule.max_parallel`", "environment LENSNET__NOPE__X"] {
        assert!(t.contains(needle), "missing {needle}:\n{t}");
    }
    let ok = lensnet(tempfile::tempdir().unwrap().path(), &["config", "check"]);
    assert!(ok.status.success(), "{}", text(&ok));
}

#[test]
fn bad_arguments_are_named_and_fail() {
    let dir = tempfile::tempdir().unwrap();
    let out = lensnet(dir.path(), &["replay", "--season", "2019", "--fields", "BLG1000"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("invalid field `BLG1000`"), "{}", text(&out));
    let out = lensnet(dir.path(), &["replay", "--season", "2019", "--fields", "BLG01", "--step", "1w"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("unknown unit"), "{}", text(&out));
    let out = lensnet(dir.path(), &["run", "--field", "nope"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("--field"), "{}", text(&out));
    // Fields that KMTNet does not have, and as-of times that are not times, are refused before
    // anything runs (they panicked, or were recorded as succeeded runs).
    let out = lensnet(dir.path(), &["run", "--field", "BLG99"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("invalid field `BLG99`"), "{}", text(&out));
    for t in ["inf", "-inf", "NaN", "1e300", "-1e300", "soon"] {
        let out = lensnet(dir.path(), &["run", "--field", "BLG14", &format!("--as-of={t}")]);
        assert_eq!(out.status.code(), Some(2), "--as-of {t}: {}", text(&out));
        assert!(text(&out).contains("--as-of") && text(&out).contains(t), "--as-of {t}: {}", text(&out));
        assert!(!text(&out).contains("panicked"), "{}", text(&out));
    }
}

#[test]
fn db_start_migrate_stop_on_a_fresh_folder() {
    let dir = tempfile::tempdir_in(crate::harness::tmpfs_dir()).unwrap();
    let d = dir.path();
    let step = |args: &[&str]| {
        let o = lensnet(d, args);
        assert!(o.status.success(), "lensnet {args:?} failed:\n{}", text(&o));
        text(&o)
    };
    assert!(step(&["db", "start"]).contains("created and started"));
    assert!(step(&["db", "start"]).contains("already running"), "starting twice is harmless");
    assert!(step(&["db", "migrate"]).contains("4 migration(s) applied now"));
    assert!(step(&["db", "migrate"]).starts_with("0 migration(s) applied now"), "a second migrate changes nothing");
    let url = step(&["db", "url"]).trim().to_string();
    assert!(url.starts_with("postgres://") && url.contains("host="), "{url}");
    let tables = Command::new("psql").args([url.as_str(), "-X", "-A", "-t", "-c", "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables WHERE schemaname = 'public'"]).output();
    if let Ok(o) = tables {
        if o.status.success() {
            assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "_sqlx_migrations,candidates,fits,ingested_files,runs,stage_attempts,verdicts");
        }
    }
    assert!(step(&["db", "status"]).contains("Running"));
    assert!(step(&["db", "stop"]).contains("stopped"));
    assert!(step(&["db", "stop"]).contains("was not running"));
}
