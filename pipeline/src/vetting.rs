//! Vetting feeds training: the candidates that vetters labelled (table `vetting`), each with
//! the newest label of every vetter, become training rows through the production preprocess
//! (`lensnet_stages::preprocess::vetted`).
//!
//! A candidate whose vetters disagree (their newest labels differ) is left out and counted;
//! a candidate whose photometry is no longer in the store is left out and named.

use std::collections::BTreeMap;
use std::path::Path;

use lensnet_stages::ingest::{read_photometry, season_of, PhotometryStore};
use lensnet_stages::photometry::StarCurves;
use lensnet_stages::preprocess::vetted::{diag_from_json, write_vetted, VettedRow};
use lensnet_stages::preprocess::PreprocessStats;
use lensnet_stages::simulate::Label;
use lensnet_stages::Field;
use serde::Serialize;
use sqlx::{PgPool, Row};

#[derive(Debug, thiserror::Error)]
pub enum VettingError {
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("reading the photometry of {field} season {season}: {message}")]
    Photometry { field: String, season: i32, message: String },
    #[error("field `{0}` of a vetted candidate is not a KMTNet field")]
    Field(String),
    #[error("writing the tensors: {0}")]
    Preprocess(#[from] lensnet_stages::preprocess::PreprocessError),
}

/// What an export did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VettedSummary {
    pub tensors: String,
    pub rows: usize,
    pub by_label: BTreeMap<String, usize>,
    /// Candidates whose vetters disagree (left out).
    pub disagreements: usize,
    /// Candidates without photometry in the store (left out), by id.
    pub missing_photometry: Vec<String>,
}

/// The newest label of each vetter per candidate, one row per candidate whose vetters agree.
pub async fn vetted_rows(pool: &PgPool) -> Result<(Vec<VettedRow>, usize), VettingError> {
    let rows = sqlx::query(
        "WITH newest AS ( \
             SELECT DISTINCT ON (candidate_id, vetter) candidate_id, vetter, label, reason FROM vetting \
             ORDER BY candidate_id, vetter, created_at DESC, vetting_id DESC) \
         SELECT n.candidate_id, c.field, c.star_id, c.as_of_hjd, c.diagnosis::text AS diagnosis, \
                array_agg(DISTINCT n.label) AS labels, string_agg(DISTINCT n.vetter, ',') AS vetters, \
                coalesce(string_agg(DISTINCT n.reason, ','), '') AS reasons \
         FROM newest n JOIN candidates c ON c.candidate_id = n.candidate_id \
         GROUP BY n.candidate_id, c.field, c.star_id, c.as_of_hjd, c.diagnosis::text \
         ORDER BY c.field, c.star_id, c.as_of_hjd",
    )
    .fetch_all(pool)
    .await?;
    let mut out = Vec::new();
    let mut disagree = 0;
    for r in rows {
        let labels: Vec<String> = r.get("labels");
        if labels.len() != 1 {
            disagree += 1;
            continue;
        }
        let label = match labels[0].as_str() {
            "yes" => Label::Yes,
            "maybe" => Label::Maybe,
            _ => Label::No,
        };
        let now: f64 = r.get("as_of_hjd");
        let reasons: String = r.get("reasons");
        out.push(VettedRow {
            candidate_id: r.get("candidate_id"),
            star: r.get("star_id"),
            field: r.get("field"),
            season: season_of(now),
            now,
            diag: diag_from_json(&r.get::<String, _>("diagnosis")),
            label,
            reason: if reasons.is_empty() { "vetted".into() } else { reasons },
            vetters: r.get("vetters"),
        });
    }
    Ok((out, disagree))
}

/// Builds `<out>/tensors.parquet` from the vetted candidates.
pub async fn export_vetted(pool: &PgPool, photometry: &PhotometryStore, stats: &PreprocessStats, out: &Path) -> Result<VettedSummary, VettingError> {
    let (rows, disagreements) = vetted_rows(pool).await?;
    let mut by_partition: BTreeMap<(i32, String), Vec<VettedRow>> = BTreeMap::new();
    for r in rows {
        by_partition.entry((r.season, r.field.clone())).or_default().push(r);
    }
    let mut curves: Vec<StarCurves> = Vec::new();
    let mut keep: Vec<(VettedRow, usize)> = Vec::new();
    let mut summary = VettedSummary { disagreements, ..Default::default() };
    for ((season, field), rows) in by_partition {
        let f: Field = field.parse().map_err(|_| VettingError::Field(field.clone()))?;
        let stars = read_photometry(photometry, season, f, None).await.map_err(|e| VettingError::Photometry { field: field.clone(), season, message: e.to_string() })?;
        for r in rows {
            match stars.iter().position(|s| s.star.0 == r.star) {
                Some(i) => {
                    curves.push(stars[i].clone());
                    keep.push((r, curves.len() - 1));
                }
                None => summary.missing_photometry.push(r.candidate_id.clone()),
            }
        }
    }
    let pairs: Vec<(VettedRow, &StarCurves)> = keep.into_iter().map(|(r, i)| (r, &curves[i])).collect();
    for (r, _) in &pairs {
        *summary.by_label.entry(r.label.name().to_string()).or_default() += 1;
    }
    let path = out.join("tensors.parquet");
    summary.rows = if pairs.is_empty() { 0 } else { write_vetted(&path, &pairs, stats)? };
    summary.tensors = path.display().to_string();
    Ok(summary)
}
