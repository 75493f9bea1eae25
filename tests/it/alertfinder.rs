//! The alertfinder stage on a simulated, ingested season: clear events are flagged at their
//! peak, constant stars are not, a re-run of the same as_of rewrites identical output, and the
//! watermark narrows the next search to stars with new epochs.

use std::sync::Arc;

use lensnet::ledger::PgLedger;
use lensnet_stages::alertfinder::stage::{candidates_path, read_candidates, AlertFinderStage};
use lensnet_stages::alertfinder::N_DIAGNOSIS;
use lensnet_stages::ingest::{ingest_location, IngestOptions, PhotometryStore};
use lensnet_stages::simulate::{write_season, Class, ClassMix, Label, Season, SimConfig};
use lensnet_stages::{Field, RunCtx, Stage};
use object_store::local::LocalFileSystem;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::harness::TestDb;

#[tokio::test]
async fn simulated_events_are_flagged_at_peak_and_constant_stars_are_not() {
    let db = TestDb::new().await;
    let ledger = PgLedger::new(db.pool.clone());
    let mix = ClassMix { microlensing: 0.6, constant: 0.4, variable: 0.0, cataclysmic: 0.0, flare: 0.0, asteroid: 0.0, artefact: 0.0 };
    let cfg = SimConfig { fields: vec![Field(14)], stars: 80, seed: 11, mix, ..Default::default() };
    let dir = tempfile::tempdir().unwrap();
    write_season(&cfg, &dir.path().join("season")).unwrap();
    let lake = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new_with_prefix(lake.path()).unwrap());
    let photometry = PhotometryStore::new(store.clone(), "".into());
    let report = ingest_location(dir.path().join("season").to_str().unwrap(), &photometry, &ledger, &IngestOptions::default()).await.unwrap();
    assert_eq!(report.failed() + report.quarantined(), 0);

    let season = Season::new(&cfg).unwrap();
    let truths: Vec<_> = (0..cfg.stars).map(|i| season.star(Field(14), i).unwrap().truth).collect();
    let stage = AlertFinderStage::default();
    let ctx = |as_of: f64| RunCtx { run_id: "t".into(), field: Field(14), season: 2025, as_of: Some(as_of), store: store.clone(), root: "".into() };

    // Each clear, point-lens-like event with a baseline before its rise, looked at on the day of
    // its peak. (Events peaking within weeks of the season start have no baseline yet, and
    // events much longer than the 20-day search window rise before it: KMTNet finds those
    // from earlier seasons' baselines, which a one-season simulation does not have.)
    let season_start = season.star(Field(14), 0).unwrap().curves.curves.iter().flat_map(|c| c.hjd.iter().copied()).fold(f64::INFINITY, f64::min);
    let yes: Vec<_> = truths
        .iter()
        .filter(|t| t.class == Class::Microlensing && t.label == Label::Yes)
        .filter(|t| t.t0 > season_start + 30.0 && t.te <= 30.0 && matches!(t.subtype, "pspl" | "fspl"))
        .collect();
    assert!(yes.len() >= 3, "the mix gives clear events ({} yes)", yes.len());
    let mut flagged = 0;
    for t in &yes {
        let as_of = t.t0.floor() + 0.99;
        stage.run(&ctx(as_of)).await.unwrap();
        let rows = read_candidates(store.as_ref(), &"".into(), 2025, Field(14), as_of).await.unwrap();
        if rows.iter().any(|r| r.star == t.star_id.0 && r.status == "candidate") {
            flagged += 1;
        }
        for r in rows.iter().filter(|r| r.status == "candidate") {
            let truth = truths.iter().find(|x| x.star_id.0 == r.star).unwrap();
            assert_ne!(truth.class, Class::Constant, "constant star {} flagged at {as_of}", r.star);
            assert_eq!(r.diagnosis.len(), N_DIAGNOSIS, "the whole diagnosis list, history included");
            assert!(r.bl_delta_chi2 >= 250.0);
        }
    }
    assert!(flagged * 10 >= yes.len() * 7, "at least 70 % of clear events flagged at peak: {flagged} of {}", yes.len());

    // Re-running an as_of rewrites the same bytes (idempotent, resumable).
    let as_of = yes[0].t0.floor() + 0.99;
    let path = candidates_path(&"".into(), 2025, Field(14), as_of);
    let before = store.get(&path).await.unwrap().bytes().await.unwrap();
    stage.run(&ctx(as_of)).await.unwrap();
    let after = store.get(&path).await.unwrap().bytes().await.unwrap();
    assert_eq!(before, after);

    // Step by a day after the latest run: only stars with new epochs are searched.
    let latest = yes.iter().map(|t| t.t0.floor() + 0.99).fold(f64::MIN, f64::max);
    let next = stage.run(&ctx(latest + 1.0)).await.unwrap();
    let full = stage.run(&RunCtx { as_of: Some(latest + 1.0), ..ctx(latest + 1.0) }).await.unwrap();
    assert!(next.rows_in <= cfg.stars && full.rows_in == next.rows_in, "same as_of, same search");
}
