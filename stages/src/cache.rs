//! A field's photometry read once and shared by the stages that need it in one run (alertfinder
//! and score), or across a whole replay, where the store does not change under the run. The
//! I-band curves merged over sites (what the AlertFinder scans) are built once with it: in a
//! replay that saves a copy and a sort of every point at every step.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::ingest::{read_photometry, IngestError, PhotometryStore};
use crate::photometry::{Band, Field, MergedCurve, StarCurves};

/// One field-season: stars sorted by id, and `merged_i[k]` the I-band curve of `stars[k]`.
#[derive(Debug, Clone, Default)]
pub struct FieldPhotometry {
    pub stars: Vec<StarCurves>,
    pub merged_i: Vec<MergedCurve>,
}

impl FieldPhotometry {
    pub fn new(stars: Vec<StarCurves>) -> FieldPhotometry {
        use rayon::prelude::*;
        let merged_i = stars.par_iter().map(|s| MergedCurve::from_star(s, Band::I)).collect();
        FieldPhotometry { stars, merged_i }
    }

    /// A digest of the photometry visible at `as_of` (epochs at or before it; all of them for
    /// `None`): per star and curve, how many epochs and the newest one's time and flux. Stored
    /// photometry only grows (ingest appends and quarantines a rewritten file; it never changes
    /// a stored row), so this changes exactly when a run at `as_of` would read different data,
    /// whatever compaction did to the parts. O(stars x curves x log epochs).
    pub fn digest(&self, as_of: Option<f64>) -> String {
        use sha2::{Digest, Sha256};
        let upto = as_of.unwrap_or(f64::INFINITY);
        let mut h = Sha256::new();
        h.update((self.stars.len() as u64).to_le_bytes());
        for s in &self.stars {
            h.update(s.star.0.as_bytes());
            h.update([0u8]);
            for c in &s.curves {
                let n = c.hjd.partition_point(|&t| t <= upto);
                h.update([c.site.map_or(0, |x| x as u8 + 1), c.band.map_or(0, |b| b as u8 + 1)]);
                h.update((n as u64).to_le_bytes());
                if n > 0 {
                    h.update(c.hjd[n - 1].to_bits().to_le_bytes());
                    h.update(c.flux[n - 1].to_bits().to_le_bytes());
                }
            }
        }
        hex::encode(h.finalize())
    }
}

/// Photometry by (season, field), whole histories; or, streaming, nothing held: the stages
/// then work bucket by bucket and read only the stars they need (the nightly path, for fields
/// of any size).
#[derive(Debug, Clone, Default)]
pub struct PhotometryCache {
    inner: Arc<Mutex<HashMap<(i32, Field), Arc<FieldPhotometry>>>>,
    /// Streaming, with this memory budget for photometry (bytes).
    streaming: Option<usize>,
}

impl PhotometryCache {
    pub fn new() -> PhotometryCache {
        PhotometryCache::default()
    }

    /// A cache that holds nothing: stages stream within `budget_bytes`.
    pub fn streaming(budget_bytes: usize) -> PhotometryCache {
        PhotometryCache { streaming: Some(budget_bytes), ..Default::default() }
    }

    /// The memory budget when streaming.
    pub fn streaming_budget(&self) -> Option<usize> {
        self.streaming
    }

    /// The whole curves of `ids`: from the cached field-season, or (streaming) read from the
    /// store, those stars only.
    pub async fn stars(&self, store: &PhotometryStore, season: i32, field: Field, ids: &[String]) -> Result<Arc<FieldPhotometry>, IngestError> {
        if self.streaming.is_none() {
            return self.get(store, season, field).await;
        }
        let stars = crate::ingest::read_stars(store, season, field, ids).await?;
        Ok(Arc::new(FieldPhotometry::new(stars)))
    }

    /// The field's photometry, read from `store` the first time.
    pub async fn get(&self, store: &PhotometryStore, season: i32, field: Field) -> Result<Arc<FieldPhotometry>, IngestError> {
        if let Some(hit) = self.lookup(season, field) {
            return Ok(hit);
        }
        // Read outside the lock: two stages asking at once at worst read twice.
        let stars = read_photometry(store, season, field, None).await?;
        let field_photometry = Arc::new(FieldPhotometry::new(stars));
        self.inner.lock().expect("photometry cache lock").insert((season, field), field_photometry.clone());
        Ok(field_photometry)
    }

    fn lookup(&self, season: i32, field: Field) -> Option<Arc<FieldPhotometry>> {
        self.inner.lock().expect("photometry cache lock").get(&(season, field)).cloned()
    }

    /// Forget everything (after new photometry was ingested).
    pub fn clear(&self) {
        self.inner.lock().expect("photometry cache lock").clear();
    }
}
