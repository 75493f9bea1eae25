//! A simulated field written straight into the photometry dataset (`lensnet simulate --store`):
//! no pySIS text, no parsing, bucket by bucket in bounded memory, so that a 10⁶-star field
//! season (or any range of its nights) can be built on a small machine for the field-scale
//! benchmarks.
//!
//! The stars are those of [`super::Season::star`] (the same seed draws the same star: class,
//! event parameters, reference flux, error underestimate), but the noise comes from one stream
//! per (star, site, band, epoch) instead of one per star, so that any range of nights gives the
//! same rows as the whole season restricted to it: the nightly benchmark writes "tonight" on
//! its own and gets the rows a whole-season build would hold. The rows are therefore not the
//! rows of the pySIS files `lensnet simulate --out` writes for the same seed.
//!
//! Part names derive from (seed, season, field, site, bucket, chunk, nights), so a re-run
//! writes the same objects and commits nothing twice.

use std::ops::Range;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray, UInt32Array};
use rayon::prelude::*;

use super::{mag_of, model, noise, rng_for, star_id, Season, SimError};
use crate::ingest::{bucket_of, part_name, photometry_schema, IngestError, PartCodec, PartitionKey, PhotometryStore};
use crate::photometry::{Band, Field};

/// Rows a chunk of stars may hold before it is written (bounds memory: about 100 bytes a row
/// while it is built, per site).
pub const CHUNK_ROWS: usize = 2_000_000;

/// What [`simulate_to_store`] wrote.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoreSimReport {
    pub stars: u64,
    pub rows: u64,
    pub parts: u64,
    pub buckets: u32,
    /// Day range written (days since the season's first night).
    pub first_day: u32,
    pub end_day: u32,
    /// Seconds spent encoding and writing parts and committing them (the simulation excluded):
    /// what ingesting the same rows costs once they are parsed.
    pub write_seconds: f64,
}

/// The first night of the season's schedule of `field` (floor of its first epoch, any site).
pub fn season_first_night(season: &Season, field: Field) -> Result<f64, SimError> {
    let (sched, _) = season.schedule(field)?;
    Ok(sched.sites.iter().filter_map(|s| s.epochs.first()).map(|e| e.hjd.floor()).fold(f64::INFINITY, f64::min))
}

/// One row before it becomes Arrow columns.
#[derive(Clone, Copy)]
struct Row {
    star: u32,
    band: Band,
    hjd: f64,
    flux: f64,
    err: f64,
    mag: f64,
    mag_err: f64,
    fwhm: f64,
    sky: f64,
    airmass: f64,
}

/// The rows of star `index` at epochs in `[t_from, t_to)`, per site (in `sites` order), each
/// sorted by (time, band).
fn star_rows(season: &Season, field: Field, index: u64, local: u32, t_from: f64, t_to: f64, sites: &[crate::photometry::Site]) -> Result<Vec<Vec<Row>>, SimError> {
    let cfg = &season.config;
    let (sched, ctx) = season.schedule(field)?;
    let mut rng = rng_for(cfg.seed, &[0x57A2, cfg.season as u64, field.0 as u64, index]);
    let star = model::draw_star(&mut rng, &cfg.mix, ctx, sched);
    let base = star.baseline_flux();
    let mut out: Vec<Vec<Row>> = vec![Vec::new(); sites.len()];
    for ss in &sched.sites {
        let vscale = match ss.band {
            Band::I => 1.0,
            Band::V => 10f64.powf(-0.4 * star.color_vi),
        };
        // The same two draws per curve, in the same order, as the in-memory simulator.
        let fref = base * vscale * (0.05 * noise::gauss(&mut rng)).exp();
        let under = (1.6f64.ln() + 0.18 * noise::gauss(&mut rng)).exp().clamp(1.1, 3.0);
        let Some(k) = sites.iter().position(|s| *s == ss.site) else { continue };
        let first = ss.epochs.partition_point(|e| e.hjd < t_from);
        for (j, e) in ss.epochs.iter().enumerate().skip(first) {
            if e.hjd >= t_to {
                break;
            }
            let mut nrng = rng_for(cfg.seed, &[0x5707, cfg.season as u64, field.0 as u64, index, ss.site.index() as u64, ss.band as u64, j as u64]);
            let f = star.flux(e, ss.site, ss.band, ctx);
            let (obs, err) = noise::observe(&mut nrng, e, f, under);
            let delta = obs - fref;
            let (mag, mag_err) = if ss.band == Band::I { mag_of(fref + delta, err) } else { (f64::NAN, f64::NAN) };
            out[k].push(Row {
                star: local,
                band: ss.band,
                hjd: e.hjd,
                flux: delta,
                err,
                mag,
                mag_err,
                fwhm: if e.fwhm_ok { e.fwhm } else { f64::NAN },
                sky: e.sky,
                airmass: e.airmass,
            });
        }
    }
    for rows in &mut out {
        rows.sort_by(|a, b| a.hjd.total_cmp(&b.hjd).then((a.band as u8).cmp(&(b.band as u8))));
    }
    Ok(out)
}

fn batch_of(rows: &[Row], ids: &[String], source: &str) -> Result<RecordBatch, IngestError> {
    let f = |g: &dyn Fn(&Row) -> f64| -> ArrayRef { Arc::new(Float64Array::from_iter_values(rows.iter().map(g))) };
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| ids[r.star as usize].as_str()))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.band.code()))),
        f(&|r| r.hjd),
        f(&|r| r.flux),
        f(&|r| r.err),
        f(&|r| r.mag),
        f(&|r| r.mag_err),
        f(&|r| r.fwhm),
        f(&|r| r.sky),
        f(&|r| r.airmass),
        f(&|_| f64::NAN),
        f(&|_| f64::NAN),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|_| source))),
        Arc::new(UInt32Array::from_iter_values(rows.iter().map(|_| 0u32))),
    ];
    Ok(RecordBatch::try_new(photometry_schema(), cols)?)
}

/// Errors of the store simulation.
#[derive(Debug, thiserror::Error)]
pub enum StoreSimError {
    #[error(transparent)]
    Sim(#[from] SimError),
    #[error(transparent)]
    Store(#[from] IngestError),
}

impl StoreSimError {
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreSimError::Sim(e) => e.is_retryable(),
            StoreSimError::Store(e) => e.is_retryable(),
        }
    }
}

/// Simulate stars `0..season.config.stars` of `field` on the days `days` (since the season's
/// first night; `None`: the whole season) and write them into `out`, bucket by bucket, each
/// bucket in chunks of at most about [`CHUNK_ROWS`] rows per site. The caller holds the store's
/// writer lock.
pub async fn simulate_to_store(season: &Season, field: Field, days: Option<Range<u32>>, out: &PhotometryStore) -> Result<StoreSimReport, StoreSimError> {
    let cfg = &season.config;
    let first_night = season_first_night(season, field)?;
    let days = days.unwrap_or(0..400);
    let (t_from, t_to) = (first_night + days.start as f64, first_night + days.end as f64);
    let out = out.with_bucket_hint(out.bucket_hint.max(cfg.stars));
    let layout = out.write_layout(cfg.season, field).await?;
    let buckets = layout.map_or(1, |l| l.buckets);
    let (sched, _) = season.schedule(field)?;
    let mut sites: Vec<crate::photometry::Site> = sched.sites.iter().map(|s| s.site).collect();
    sites.sort_by_key(|s| s.index());
    sites.dedup();
    // Rows a star holds in the range (the schedule is the same for every star).
    let per_star: usize = sched.sites.iter().map(|s| s.epochs.iter().filter(|e| e.hjd >= t_from && e.hjd < t_to).count()).max().unwrap_or(0).max(1);
    let chunk_stars = (CHUNK_ROWS / per_star).max(1);
    // Star indices by bucket, in id order (ids are zero-padded, so index order is id order).
    let mut by_bucket: Vec<Vec<u64>> = vec![Vec::new(); buckets as usize];
    for i in 0..cfg.stars {
        let b = layout.map_or(0, |l| bucket_of(&star_id(field, i).0, l.buckets));
        by_bucket[b as usize].push(i);
    }
    let mut report = StoreSimReport { stars: cfg.stars, buckets, first_day: days.start, end_day: days.end, ..Default::default() };
    let source = format!("simulate:seed={}", cfg.seed);
    for (b, members) in by_bucket.iter().enumerate() {
        let mut staged: Vec<Vec<crate::ingest::PartInfo>> = vec![Vec::new(); sites.len()];
        for (c, chunk) in members.chunks(chunk_stars).enumerate() {
            let ids: Vec<String> = chunk.iter().map(|&i| star_id(field, i).0).collect();
            let per_star_rows: Vec<Vec<Vec<Row>>> = chunk
                .par_iter()
                .enumerate()
                .map(|(k, &i)| star_rows(season, field, i, k as u32, t_from, t_to, &sites))
                .collect::<Result<_, _>>()?;
            // The sites' parts are encoded and written at once (one task each).
            let w = std::time::Instant::now();
            let mut tasks = Vec::new();
            for (s, site) in sites.iter().enumerate() {
                let rows: Vec<Row> = per_star_rows.iter().flat_map(|r| r[s].iter().copied()).collect();
                if rows.is_empty() {
                    continue;
                }
                let batch = batch_of(&rows, &ids, &source)?;
                drop(rows);
                let key = PartitionKey { season: cfg.season, field, site: site.code().to_string(), bucket: layout.map(|_| b as u32) };
                let name = part_name(format!("simulate\n{}\n{}\n{field}\n{}\n{b}\n{c}\n{}..{}\n{}", cfg.seed, cfg.season, site.code(), days.start, days.end, cfg.stars).as_bytes());
                let o = out.clone();
                tasks.push((s, tokio::spawn(async move { o.stage_part_with(&key, &name, &batch, PartCodec::Snappy).await })));
            }
            drop(per_star_rows);
            for (s, t) in tasks {
                let info = t.await.map_err(|e| IngestError::Corrupt { path: String::new(), reason: format!("a write task died: {e}") })??;
                report.rows += info.rows;
                report.parts += 1;
                staged[s].push(info);
            }
            report.write_seconds += w.elapsed().as_secs_f64();
        }
        for (s, site) in sites.iter().enumerate() {
            if staged[s].is_empty() {
                continue;
            }
            let key = PartitionKey { season: cfg.season, field, site: site.code().to_string(), bucket: layout.map(|_| b as u32) };
            let w = std::time::Instant::now();
            out.commit_parts(&key, &staged[s]).await?;
            report.write_seconds += w.elapsed().as_secs_f64();
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::read_photometry;
    use crate::simulate::SimConfig;

    fn store(dir: &std::path::Path) -> PhotometryStore {
        let o = crate::store::open_store(dir.to_str().unwrap(), true).unwrap();
        PhotometryStore::new(o.store, o.prefix)
    }

    #[tokio::test]
    async fn a_night_range_is_the_whole_season_restricted_and_the_seed_fixes_the_rows() {
        let cfg = SimConfig { season: 2025, fields: vec![Field(14)], stars: 40, seed: 3, ..SimConfig::default() };
        let season = Season::new(&cfg).unwrap();
        let (a, b, c) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let whole = simulate_to_store(&season, Field(14), Some(0..30), &store(a.path())).await.unwrap();
        simulate_to_store(&season, Field(14), Some(0..20), &store(b.path())).await.unwrap();
        simulate_to_store(&season, Field(14), Some(20..30), &store(b.path())).await.unwrap();
        // Twice the same: nothing is committed twice.
        simulate_to_store(&season, Field(14), Some(20..30), &store(b.path())).await.unwrap();
        let again = simulate_to_store(&season, Field(14), Some(0..30), &store(c.path())).await.unwrap();
        let shape = |r: &StoreSimReport| (r.stars, r.rows, r.parts, r.buckets, r.first_day, r.end_day);
        assert_eq!(shape(&whole), shape(&again));
        assert!(whole.rows > 40 * 30, "{whole:?}");
        let read = |d: &std::path::Path| {
            let s = store(d);
            async move { read_photometry(&s, 2025, Field(14), None).await.unwrap() }
        };
        let (wa, wb, wc) = (read(a.path()).await, read(b.path()).await, read(c.path()).await);
        assert_eq!(wa.len(), 40);
        // (NaN magnitudes: compare the printed values.)
        let show = |v: &Vec<crate::photometry::StarCurves>| format!("{v:?}");
        assert!(show(&wa) == show(&wb), "two night ranges give the rows of their union");
        assert!(show(&wa) == show(&wc));
        // The stars are the simulator's: the event star's truth shows in its rows.
        let sim = season.star(Field(14), 7).unwrap();
        assert_eq!(wa[7].star, sim.curves.star);
        let n_rows: usize = wa.iter().flat_map(|s| s.curves.iter()).map(|c| c.len()).sum();
        assert_eq!(n_rows as u64, whole.rows);
    }

    /// A store of the first layout (no buckets) is read as one bucket, keeps its layout for new
    /// parts, and `migrate_field` rewrites it into buckets without changing what readers get.
    #[tokio::test]
    async fn a_first_layout_store_migrates_to_buckets() {
        let cfg = SimConfig { season: 2025, fields: vec![Field(14)], stars: 60, seed: 5, ..SimConfig::default() };
        let season = Season::new(&cfg).unwrap();
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let bucketed = store(a.path()).with_bucket_hint(20_000);
        simulate_to_store(&season, Field(14), Some(0..20), &bucketed).await.unwrap();
        assert_eq!(bucketed.layout(2025, Field(14)).await.unwrap().map(|l| l.buckets), Some(4));
        // The same rows as first-layout partitions, one part per bucket of the bucketed store.
        let legacy = store(b.path());
        for k in bucketed.field_partitions(2025, Field(14)).await.unwrap() {
            let batches = bucketed.read_partition(&k).await.unwrap();
            let batch = arrow::compute::concat_batches(&photometry_schema(), &batches).unwrap();
            let lk = PartitionKey { bucket: None, ..k.clone() };
            let name = part_name(format!("{k}").as_bytes());
            let info = legacy.stage_part(&lk, &name, &batch).await.unwrap();
            legacy.commit_parts(&lk, &[info]).await.unwrap();
        }
        let show = |v: Vec<crate::photometry::StarCurves>| format!("{v:?}");
        let want = show(read_photometry(&bucketed, 2025, Field(14), None).await.unwrap());
        assert_eq!(show(read_photometry(&legacy, 2025, Field(14), None).await.unwrap()), want);
        assert_eq!(legacy.write_layout(2025, Field(14)).await.unwrap(), None, "a first-layout field-season stays so");
        let (rows, buckets) = legacy.migrate_field(2025, Field(14)).await.unwrap().unwrap();
        assert_eq!(buckets, 1, "60 stars: one bucket");
        assert!(rows > 0);
        let fresh = store(b.path());
        assert!(fresh.field_partitions(2025, Field(14)).await.unwrap().iter().all(|k| k.bucket == Some(0)));
        assert_eq!(show(read_photometry(&fresh, 2025, Field(14), None).await.unwrap()), want);
        assert!(!b.path().join("photometry/season=2025/field=BLG14/site=KMTC/_manifest.json").exists());
        assert_eq!(fresh.migrate_field(2025, Field(14)).await.unwrap(), None, "nothing left to migrate");
        let one = read_stars_of(&fresh, "BLG14.0000007").await;
        assert_eq!(one.len(), 1);
    }

    async fn read_stars_of(s: &PhotometryStore, id: &str) -> Vec<crate::photometry::StarCurves> {
        crate::ingest::read_stars(s, 2025, Field(14), &[id.to_string()]).await.unwrap()
    }
}
