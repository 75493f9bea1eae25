//! Opening what commands share: the object store behind the configured `store.url` and the
//! photometry dataset on it.

use lensnet_stages::ingest::PhotometryStore;
use lensnet_stages::store::{open_store, OpenedStore, StoreError};

use crate::config::Config;

/// The configured object store (a local folder is created when missing).
pub fn store(cfg: &Config) -> Result<OpenedStore, StoreError> {
    open_store(&cfg.store_url, true)
}

/// The `photometry` dataset on the configured store.
pub fn photometry(cfg: &Config) -> Result<(OpenedStore, PhotometryStore), StoreError> {
    let opened = store(cfg)?;
    let photometry = PhotometryStore::new(opened.store.clone(), opened.prefix.clone());
    Ok((opened, photometry))
}
