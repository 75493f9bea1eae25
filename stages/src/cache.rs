//! A field's photometry read once and shared by the stages that need it in one run (alertfinder
//! and score), or across a whole replay, where the store does not change under the run.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::ingest::{read_photometry, IngestError, PhotometryStore};
use crate::photometry::{Field, StarCurves};

/// Photometry by (season, field), whole histories, stars sorted by id.
#[derive(Debug, Clone, Default)]
pub struct PhotometryCache {
    inner: Arc<Mutex<HashMap<(i32, Field), Arc<Vec<StarCurves>>>>>,
}

impl PhotometryCache {
    pub fn new() -> PhotometryCache {
        PhotometryCache::default()
    }

    /// The field's stars, read from `store` the first time.
    pub async fn get(&self, store: &PhotometryStore, season: i32, field: Field) -> Result<Arc<Vec<StarCurves>>, IngestError> {
        if let Some(hit) = self.lookup(season, field) {
            return Ok(hit);
        }
        // Read outside the lock: two stages asking at once at worst read twice.
        let stars = Arc::new(read_photometry(store, season, field, None).await?);
        self.inner.lock().expect("photometry cache lock").insert((season, field), stars.clone());
        Ok(stars)
    }

    fn lookup(&self, season: i32, field: Field) -> Option<Arc<Vec<StarCurves>>> {
        self.inner.lock().expect("photometry cache lock").get(&(season, field)).cloned()
    }

    /// Forget everything (after new photometry was ingested).
    pub fn clear(&self) {
        self.inner.lock().expect("photometry cache lock").clear();
    }
}
