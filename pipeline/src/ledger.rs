//! The ingest file ledger on PostgreSQL (`ingested_files`): one row per input file, upserted by
//! path, so that re-ingesting adds nothing and grown files add only their new lines.

use async_trait::async_trait;
use lensnet_stages::ingest::ledger::{db_text, FileLedger, FileStatus, LedgerEntry, LedgerError, WriterLock};
use sha2::{Digest, Sha256};
use sqlx::postgres::{PgPool, PgRow};
use sqlx::Row;

/// [`FileLedger`] backed by the `ingested_files` table.
#[derive(Debug, Clone)]
pub struct PgLedger {
    pool: PgPool,
}

impl PgLedger {
    pub fn new(pool: PgPool) -> PgLedger {
        PgLedger { pool }
    }
}

fn backend(e: sqlx::Error) -> LedgerError {
    // Not retryable errors still surface as `Unavailable` only when the database itself is the
    // problem; a constraint violation means a bad row.
    if crate::db::is_transient(&e) {
        LedgerError::Unavailable(e.to_string())
    } else {
        LedgerError::Invalid { path: String::new(), reason: e.to_string() }
    }
}

fn to_i64(path: &str, what: &str, v: u64) -> Result<i64, LedgerError> {
    i64::try_from(v).map_err(|_| LedgerError::Invalid { path: path.into(), reason: format!("{what} {v} exceeds bigint") })
}

fn to_u64(path: &str, what: &str, v: i64) -> Result<u64, LedgerError> {
    u64::try_from(v).map_err(|_| LedgerError::Invalid { path: path.into(), reason: format!("negative {what} {v}") })
}

fn decode(row: &PgRow) -> Result<LedgerEntry, LedgerError> {
    let path: String = row.try_get("path").map_err(backend)?;
    let g = |e: sqlx::Error| LedgerError::Invalid { path: path.clone(), reason: e.to_string() };
    let status: String = row.try_get("status").map_err(g)?;
    let flux_sign: i16 = row.try_get("flux_sign").map_err(g)?;
    Ok(LedgerEntry {
        size_bytes: to_u64(&path, "size_bytes", row.try_get("size_bytes").map_err(g)?)?,
        sha256: row.try_get("sha256").map_err(g)?,
        seen_sha256: row.try_get("seen_sha256").map_err(g)?,
        ingested_bytes: to_u64(&path, "ingested_bytes", row.try_get("ingested_bytes").map_err(g)?)?,
        lines: to_u64(&path, "lines", row.try_get("lines").map_err(g)?)?,
        rows: to_u64(&path, "rows", row.try_get("rows").map_err(g)?)?,
        skipped_lines: to_u64(&path, "skipped_lines", row.try_get("skipped_lines").map_err(g)?)?,
        last_line: row.try_get("last_line").map_err(g)?,
        status: FileStatus::parse(&status)
            .ok_or_else(|| LedgerError::Invalid { path: path.clone(), reason: format!("unknown status {status}") })?,
        reason: row.try_get("reason").map_err(g)?,
        format: row.try_get("format").map_err(g)?,
        star: row.try_get("star_id").map_err(g)?,
        field: row.try_get("field").map_err(g)?,
        site: row.try_get("site").map_err(g)?,
        band: row.try_get("band").map_err(g)?,
        flux_sign: if flux_sign < 0 { -1 } else { 1 },
        time_system: row.try_get("time_system").map_err(g)?,
        baseline_flux: row.try_get("baseline_flux").map_err(g)?,
        mag_zp: row.try_get("mag_zp").map_err(g)?,
        path,
    })
}

#[async_trait]
impl FileLedger for PgLedger {
    async fn lookup(&self, path: &str) -> Result<Option<LedgerEntry>, LedgerError> {
        let row = sqlx::query("SELECT * FROM ingested_files WHERE path = $1")
            .bind(path)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.as_ref().map(decode).transpose()
    }

    async fn record(&self, e: &LedgerEntry) -> Result<(), LedgerError> {
        sqlx::query(
            "INSERT INTO ingested_files (path, format, star_id, field, site, band, size_bytes, sha256, seen_sha256, \
                 ingested_bytes, lines, rows, last_line, status, reason, flux_sign, time_system, baseline_flux, mag_zp, skipped_lines) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20) \
             ON CONFLICT (path) DO UPDATE SET format = EXCLUDED.format, star_id = EXCLUDED.star_id, \
                 field = EXCLUDED.field, site = EXCLUDED.site, band = EXCLUDED.band, size_bytes = EXCLUDED.size_bytes, \
                 sha256 = EXCLUDED.sha256, seen_sha256 = EXCLUDED.seen_sha256, ingested_bytes = EXCLUDED.ingested_bytes, \
                 lines = EXCLUDED.lines, rows = EXCLUDED.rows, last_line = EXCLUDED.last_line, status = EXCLUDED.status, \
                 reason = EXCLUDED.reason, flux_sign = EXCLUDED.flux_sign, time_system = EXCLUDED.time_system, \
                 baseline_flux = EXCLUDED.baseline_flux, mag_zp = EXCLUDED.mag_zp, \
                 skipped_lines = EXCLUDED.skipped_lines, updated_at = now()",
        )
        .bind(&e.path)
        .bind(&e.format)
        .bind(&e.star)
        .bind(&e.field)
        .bind(&e.site)
        .bind(&e.band)
        .bind(to_i64(&e.path, "size_bytes", e.size_bytes)?)
        .bind(&e.sha256)
        .bind(&e.seen_sha256)
        .bind(to_i64(&e.path, "ingested_bytes", e.ingested_bytes)?)
        .bind(to_i64(&e.path, "lines", e.lines)?)
        .bind(to_i64(&e.path, "rows", e.rows)?)
        .bind(db_text(&e.last_line))
        .bind(e.status.as_str())
        .bind(e.reason.as_deref().map(db_text))
        .bind(i16::from(e.flux_sign))
        .bind(&e.time_system)
        .bind(e.baseline_flux)
        .bind(e.mag_zp)
        .bind(to_i64(&e.path, "skipped_lines", e.skipped_lines)?)
        .execute(&self.pool)
        .await
        .map_err(|err| match backend(err) {
            LedgerError::Invalid { reason, .. } => LedgerError::Invalid { path: e.path.clone(), reason },
            other => other,
        })?;
        Ok(())
    }

    async fn find_content(&self, sha256: &str, len: u64, except: &str) -> Result<Option<String>, LedgerError> {
        sqlx::query_scalar(
            "SELECT path FROM ingested_files WHERE sha256 = $1 AND ingested_bytes = $2 AND path <> $3 \
             AND status = 'ingested' AND rows > 0 ORDER BY path LIMIT 1",
        )
        .bind(sha256)
        .bind(to_i64(except, "ingested_bytes", len)?)
        .bind(except)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)
    }

    /// `pg_advisory_lock` on a connection detached from the pool, held by the returned guard:
    /// it waits while another process (on any host using this database) holds it, and a killed
    /// writer's session closes and frees it.
    async fn lock_writer(&self, store: &str) -> Result<WriterLock, LedgerError> {
        let mut conn = self.pool.acquire().await.map_err(backend)?.detach();
        sqlx::query("SELECT pg_advisory_lock($1)").bind(writer_lock_key(store)).execute(&mut conn).await.map_err(backend)?;
        Ok(WriterLock::holding(Box::new(std::sync::Mutex::new(conn))))
    }
}

/// The advisory-lock key of a store's writer lock (stable across processes and hosts).
pub fn writer_lock_key(store: &str) -> i64 {
    let h = Sha256::digest(format!("lensnet store writer {store}").as_bytes());
    i64::from_be_bytes(h[..8].try_into().expect("8 bytes"))
}
