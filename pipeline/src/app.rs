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

/// The scorer of the configured model (or `model`, when given): one ONNX Runtime session.
pub fn scorer(cfg: &Config, model: Option<&std::path::Path>) -> Result<lensnet_stages::score::Scorer, lensnet_stages::score::ScoreError> {
    use lensnet_stages::score::{find_model, ExecutionProvider, ScoreOptions, Scorer, Thresholds};
    let model = find_model(model.or(cfg.model.as_deref()))?;
    let opts = ScoreOptions {
        model,
        ort_library: cfg.ort_library.clone(),
        provider: match cfg.provider {
            crate::config::Provider::Cpu => ExecutionProvider::Cpu,
            crate::config::Provider::Cuda => ExecutionProvider::Cuda,
        },
        cuda_fallback: cfg.cuda_fallback,
        batch_size: cfg.batch_size,
        // Unset, the model's own operating point (else the default, 0.95: lensnet-v2's).
        thresholds: Thresholds::new(cfg.threshold_purity.unwrap_or(Thresholds::default().purity), cfg.threshold_recall)?,
        model_threshold: cfg.threshold_purity.is_none(),
        intra_threads: None,
        hold: cfg.hold,
    };
    Scorer::new(&opts)
}

/// A field runner over the configured store, inbox and database, scoring with `scorer`.
pub fn field_runner(
    cfg: &Config,
    pool: sqlx::PgPool,
    scorer: std::sync::Arc<lensnet_stages::score::Scorer>,
) -> Result<crate::fieldrun::FieldRunner, crate::fieldrun::FieldRunError> {
    let opened = store(cfg)?;
    let pool_for_notify = pool.clone();
    let score_stats = lensnet_stages::score::stage::ScoreStage::stats_of(&scorer)?;
    let format = match cfg.ingest_format {
        crate::config::InputFormat::Auto => lensnet_stages::ingest::Format::Auto,
        crate::config::InputFormat::Pysis => lensnet_stages::ingest::Format::Pysis,
        crate::config::InputFormat::Diapl => lensnet_stages::ingest::Format::Diapl,
        crate::config::InputFormat::Ogle => lensnet_stages::ingest::Format::Ogle,
        crate::config::InputFormat::Columns => lensnet_stages::ingest::Format::Columns,
    };
    Ok(crate::fieldrun::FieldRunner {
        ledger: std::sync::Arc::new(crate::ledger::PgLedger::new(pool.clone())),
        pool,
        store: opened.store,
        root: opened.prefix,
        scorer,
        inbox: cfg.inbox.clone(),
        ingest: crate::fieldrun::ingest_options(format),
        config_hash: cfg.hash.clone(),
        retry: crate::runner::RetryPolicy::default(),
        ingest_lock: Default::default(),
        lock_sessions: Default::default(),
        score_stats,
        alert_thresholds: cfg.alert_thresholds.clone(),
        stream_budget_bytes: cfg.stream_budget_bytes,
        replay_whole_field_max_rows: cfg.replay_whole_field_max_rows,
        notifier: Some(std::sync::Arc::new(
            crate::notify::Notifier::new(pool_for_notify, cfg.notify.clone(), cfg.web.base_url.clone()).map_err(|e| crate::fieldrun::FieldRunError::Notify(e.to_string()))?,
        )),
    })
}
