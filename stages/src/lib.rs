//! lensnet stages: the pure computation of every DAG node (simulate, ingest, alertfinder,
//! preprocess, score, publish) behind thin I/O shells. This crate never imports `pipeline`.

pub mod alertfinder;
pub mod cache;
pub mod ingest;
pub mod photometry;
#[cfg(feature = "preprocess")]
pub mod preprocess;
#[cfg(feature = "score")]
pub mod score;
pub mod simulate;
pub mod stage;
pub mod store;

pub use cache::{FieldPhotometry, PhotometryCache};
pub use photometry::{Band, Field, LightCurve, Site, SiteCurve, StarCurves, StarId};
pub use stage::{Dataset, RunCtx, Stage, StageError, StageReport};
