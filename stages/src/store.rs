//! Opening an object store from a location string: a local directory (default), `file://`,
//! `memory://` (tests), `s3://` with the `s3` feature (on in the binary), and with `cloud` `gs://`
//! and `az://`/`abfs://`,
//! configured from the usual environment variables (`AWS_*`, `GOOGLE_*`, `AZURE_*`).

use std::sync::Arc;

use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::ObjectStore;

/// Why a store could not be opened; never retryable except a transient local I/O error.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open store `{location}`: {reason}")]
    Location { location: String, reason: String },
    #[error("cannot open store `{location}`: {source}")]
    ObjectStore { location: String, source: object_store::Error },
    #[error("cannot create local store directory `{location}`: {source}")]
    Io { location: String, source: std::io::Error },
}

impl StoreError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Io { .. })
    }
}

/// A store and the prefix inside it that the location names.
#[derive(Debug, Clone)]
pub struct OpenedStore {
    pub store: Arc<dyn ObjectStore>,
    /// Prefix inside `store` (empty for a local directory, which becomes the store's root).
    pub prefix: Path,
    /// The location normalized for logs and ledger keys (`/abs/dir`, `s3://bucket/prefix`).
    pub location: String,
}

/// Opens `location` as a directory-like root. A local directory is created when missing
/// (`create_local`), so that `lensnet ingest` can write into a fresh lake.
pub fn open_store(location: &str, create_local: bool) -> Result<OpenedStore, StoreError> {
    let err = |reason: String| StoreError::Location { location: location.to_string(), reason };
    if location == "memory://" || location.starts_with("memory://") {
        return Ok(OpenedStore {
            store: Arc::new(InMemory::new()),
            prefix: Path::from(location.trim_start_matches("memory://")),
            location: location.to_string(),
        });
    }
    let local = if let Some(rest) = location.strip_prefix("file://") {
        Some(rest.to_string())
    } else if location.contains("://") {
        None
    } else {
        Some(location.to_string())
    };
    if let Some(dir) = local {
        let dir = std::path::PathBuf::from(dir);
        if create_local {
            std::fs::create_dir_all(&dir)
                .map_err(|source| StoreError::Io { location: location.to_string(), source })?;
        }
        let abs = std::fs::canonicalize(&dir)
            .map_err(|source| StoreError::Io { location: location.to_string(), source })?;
        let fs = LocalFileSystem::new_with_prefix(&abs)
            .map_err(|source| StoreError::ObjectStore { location: location.to_string(), source })?;
        return Ok(OpenedStore {
            store: Arc::new(fs),
            prefix: Path::default(),
            location: abs.to_string_lossy().into_owned(),
        });
    }
    let url = url::Url::parse(location).map_err(|e| err(e.to_string()))?;
    open_cloud(&url, location)
}

#[cfg(feature = "s3")]
fn open_cloud(url: &url::Url, location: &str) -> Result<OpenedStore, StoreError> {
    use object_store::aws::AmazonS3Builder;
    use object_store::RetryConfig;
    let os = |source| StoreError::ObjectStore { location: location.to_string(), source };
    // Retries ride out a restarting or briefly unreachable server (connection refused or reset,
    // 5xx, throttling): up to 10 tries with exponential backoff, for at most 3 minutes.
    let retry = RetryConfig { max_retries: 10, retry_timeout: std::time::Duration::from_secs(180), ..RetryConfig::default() };
    let store: Arc<dyn ObjectStore> = match url.scheme() {
        "s3" | "s3a" => Arc::new(AmazonS3Builder::from_env().with_url(location).with_retry(retry).build().map_err(os)?),
        #[cfg(feature = "cloud")]
        "gs" => Arc::new(object_store::gcp::GoogleCloudStorageBuilder::from_env().with_url(location).with_retry(retry).build().map_err(os)?),
        #[cfg(feature = "cloud")]
        "az" | "azure" | "abfs" | "abfss" => Arc::new(object_store::azure::MicrosoftAzureBuilder::from_env().with_url(location).with_retry(retry).build().map_err(os)?),
        other => {
            return Err(StoreError::Location {
                location: location.to_string(),
                reason: format!("unsupported scheme `{other}` (s3; gs and az with the `cloud` feature)"),
            })
        }
    };
    let prefix = Path::parse(url.path().trim_start_matches('/')).map_err(|e| StoreError::Location {
        location: location.to_string(),
        reason: e.to_string(),
    })?;
    Ok(OpenedStore { store, prefix, location: location.trim_end_matches('/').to_string() })
}

#[cfg(not(feature = "s3"))]
fn open_cloud(url: &url::Url, location: &str) -> Result<OpenedStore, StoreError> {
    Err(StoreError::Location {
        location: location.to_string(),
        reason: format!("`{}://` needs lensnet-stages built with the `s3` feature (the lensnet binary has it)", url.scheme()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_local_and_memory_and_refuses_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("lake");
        let o = open_store(sub.to_str().unwrap(), true).unwrap();
        assert!(sub.is_dir());
        assert_eq!(o.prefix, Path::default());
        assert!(open_store("memory://", false).is_ok());
        let e = open_store("ftp://x/y", false).unwrap_err();
        assert!(!e.is_retryable());
        #[cfg(not(feature = "s3"))]
        assert!(open_store("s3://bucket/p", false).unwrap_err().to_string().contains("s3"));
    }
}
