//! Alert webhooks. After each live field run, the field's new "yes" alerts go into an outbox
//! (`alert_notifications`, one row per field, star and model: the first "yes"), and every alert
//! not yet delivered is POSTed as JSON (Slack-compatible `text` plus a structured `alert`) to
//! each configured receiver, with retries; every try is a row of `webhook_deliveries`. A failing
//! receiver never fails or blocks a run: the run is finished (and its lock released) before
//! delivery starts, each POST has a timeout, a run spends at most a bounded time delivering, and
//! what is left undelivered is tried again after the next run, up to `max_attempts` in all.
//!
//! Two processes delivering at once (a scheduled and a one-off run) never send the same try
//! twice: a try is claimed by inserting its row first (primary key: alert, receiver, attempt),
//! and the sender that loses the insert leaves it.

use std::time::{Duration, Instant};

use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::{PgPool, Row};
use tracing::{info, warn};

use crate::config::{NotifySettings, Secret};

/// Run kinds whose alerts are sent (`replay` too when `notify.on_replay`).
pub const LIVE_KINDS: [&str; 2] = ["run", "serve"];

/// How long one run may spend delivering before it leaves the rest to the next run.
pub const DELIVERY_BUDGET: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("database error while notifying: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("cannot build the webhook HTTP client: {0}")]
    Client(String),
}

/// What one call of [`Notifier::after_run`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delivered {
    /// Alerts added to the outbox now.
    pub queued: u64,
    /// POSTs that a receiver accepted (2xx).
    pub delivered: u64,
    /// POSTs that failed (error, timeout or non-2xx status).
    pub failed: u64,
}

/// Delivers the alerts of the configured webhooks.
pub struct Notifier {
    pool: PgPool,
    http: reqwest::Client,
    settings: NotifySettings,
    /// Where the star pages are (`web.base_url`), for the links in the messages.
    base_url: String,
}

/// The receiver as stored: scheme and host only (webhook URLs carry their secret in the path).
pub fn redacted_target(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => format!("{}://{}{}/…", u.scheme(), u.host_str().unwrap_or("?"), u.port().map(|p| format!(":{p}")).unwrap_or_default()),
        Err(_) => "<invalid url>".into(),
    }
}

fn target_key(url: &str) -> String {
    hex::encode(Sha256::digest(url.as_bytes()))
}

/// Percent-encodes one path segment of a link.
pub fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Notifier {
    pub fn new(pool: PgPool, settings: NotifySettings, base_url: String) -> Result<Notifier, NotifyError> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .user_agent(concat!("lensnet/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| NotifyError::Client(e.to_string()))?;
        Ok(Notifier { pool, http, settings, base_url })
    }

    /// Whether anything is configured to receive alerts.
    pub fn has_receivers(&self) -> bool {
        !self.settings.webhooks.is_empty()
    }

    /// Whether runs of `kind` notify.
    pub fn notifies(&self, kind: &str) -> bool {
        LIVE_KINDS.contains(&kind) || (self.settings.on_replay && kind == "replay")
    }

    /// Queue the field's new "yes" alerts of notifying runs, then deliver what is pending.
    /// Errors are logged, never returned: a run's outcome does not depend on its receivers.
    pub async fn after_run(&self, field: &str) -> Delivered {
        match self.try_after_run(field).await {
            Ok(d) => d,
            Err(e) => {
                warn!(field, error = %e, "alert notifications failed; they are retried after the next run");
                Delivered::default()
            }
        }
    }

    async fn try_after_run(&self, field: &str) -> Result<Delivered, NotifyError> {
        let mut kinds: Vec<&str> = LIVE_KINDS.to_vec();
        if self.settings.on_replay {
            kinds.push("replay");
        }
        let queued = enqueue(&self.pool, field, &kinds, self.settings.max_age_hours).await?;
        let mut out = Delivered { queued, ..Default::default() };
        if self.settings.webhooks.is_empty() {
            return Ok(out);
        }
        let pending = sqlx::query(
            "SELECT n.field, n.star_id, n.model_sha256, n.candidate_id, n.run_id, n.as_of_hjd, n.binary_score, c.sites, \
                    f.t0, f.teff \
             FROM alert_notifications n \
             JOIN candidates c ON c.candidate_id = n.candidate_id \
             LEFT JOIN fits f ON f.candidate_id = n.candidate_id AND f.kind = 'pspl_grid' \
             WHERE n.field = $1 AND n.created_at > now() - make_interval(hours => $2) \
             ORDER BY n.created_at, n.star_id",
        )
        .bind(field)
        .bind(self.settings.max_age_hours as i32)
        .fetch_all(&self.pool)
        .await?;
        let deadline = Instant::now() + DELIVERY_BUDGET;
        for row in pending {
            for url in &self.settings.webhooks {
                if Instant::now() >= deadline {
                    info!(field, "alert delivery budget spent; the rest goes after the next run");
                    return Ok(out);
                }
                let (d, f) = self.deliver(&row, url, deadline).await?;
                out.delivered += d;
                out.failed += f;
            }
        }
        if out.queued + out.delivered + out.failed > 0 {
            info!(field, queued = out.queued, delivered = out.delivered, failed = out.failed, "alert notifications");
        }
        Ok(out)
    }

    /// The message for one alert.
    pub fn message(&self, row: &sqlx::postgres::PgRow) -> serde_json::Value {
        let field: String = row.get("field");
        let star: String = row.get("star_id");
        let score: f32 = row.get("binary_score");
        let as_of: f64 = row.get("as_of_hjd");
        let link = format!("{}/star/{}/{}", self.base_url, path_segment(&field), path_segment(&star));
        let t0: Option<f64> = row.get("t0");
        let teff: Option<f64> = row.get("teff");
        let sites: Vec<String> = row.get("sites");
        let model: String = row.get("model_sha256");
        let peak = match (t0, teff) {
            (Some(t0), Some(te)) => format!(", point-lens grid t0 {t0:.2}, t_eff {te:.1} d"),
            _ => String::new(),
        };
        json!({
            "text": format!("lensnet: new microlensing alert {field} {star}: score {score:.3} as of HJD' {as_of:.2}{peak} (sites {}). <{link}|star page>", sites.join(", ")),
            "alert": {
                "field": field,
                "star_id": star,
                "candidate_id": row.get::<String, _>("candidate_id"),
                "as_of_hjd": as_of,
                "binary_score": score,
                "model_sha256": model,
                "run_id": row.get::<Option<uuid::Uuid>, _>("run_id"),
                "sites": sites,
                "t0": t0,
                "teff": teff,
                "url": link,
            }
        })
    }

    /// Tries one alert at one receiver (up to `attempts_per_run` times, `max_attempts` in all);
    /// (delivered, failed) POSTs.
    async fn deliver(&self, row: &sqlx::postgres::PgRow, url: &Secret, deadline: Instant) -> Result<(u64, u64), NotifyError> {
        let field: String = row.get("field");
        let star: String = row.get("star_id");
        let model: String = row.get("model_sha256");
        let key = target_key(url.expose());
        let past = sqlx::query(
            "SELECT coalesce(max(attempt), 0) AS attempts, bool_or(status = 'delivered') AS delivered FROM webhook_deliveries \
             WHERE field = $1 AND star_id = $2 AND model_sha256 = $3 AND target_sha256 = $4",
        )
        .bind(&field)
        .bind(&star)
        .bind(&model)
        .bind(&key)
        .fetch_one(&self.pool)
        .await?;
        if past.get::<Option<bool>, _>("delivered").unwrap_or(false) {
            return Ok((0, 0));
        }
        let mut attempt: i32 = past.get("attempts");
        let body = self.message(row);
        let (mut ok, mut bad) = (0, 0);
        for k in 0..self.settings.attempts_per_run {
            if attempt as u32 >= self.settings.max_attempts || Instant::now() >= deadline {
                break;
            }
            if k > 0 {
                tokio::time::sleep(Duration::from_millis(500 << (k - 1).min(4))).await;
            }
            attempt += 1;
            // Claim the try: the loser of a race with another sender leaves this alert alone.
            let claimed = sqlx::query(
                "INSERT INTO webhook_deliveries (field, star_id, model_sha256, target_sha256, attempt, target, status, error) \
                 VALUES ($1, $2, $3, $4, $5, $6, 'failed', 'sending (the sender stopped before it finished)') ON CONFLICT DO NOTHING",
            )
            .bind(&field)
            .bind(&star)
            .bind(&model)
            .bind(&key)
            .bind(attempt)
            .bind(redacted_target(url.expose()))
            .execute(&self.pool)
            .await?
            .rows_affected();
            if claimed == 0 {
                return Ok((ok, bad));
            }
            let (status, http_status, error) = match self.http.post(url.expose()).json(&body).send().await {
                Ok(resp) if resp.status().is_success() => ("delivered", Some(resp.status().as_u16() as i32), None),
                Ok(resp) => ("failed", Some(resp.status().as_u16() as i32), Some(format!("receiver answered {}", resp.status()))),
                // reqwest's errors name the URL: keep only the receiver's host.
                Err(e) => ("failed", None, Some(describe(&e, url.expose()))),
            };
            sqlx::query(
                "UPDATE webhook_deliveries SET status = $6, http_status = $7, error = $8, attempted_at = now() \
                 WHERE field = $1 AND star_id = $2 AND model_sha256 = $3 AND target_sha256 = $4 AND attempt = $5",
            )
            .bind(&field)
            .bind(&star)
            .bind(&model)
            .bind(&key)
            .bind(attempt)
            .bind(status)
            .bind(http_status)
            .bind(&error)
            .execute(&self.pool)
            .await?;
            if status == "delivered" {
                ok += 1;
                break;
            }
            bad += 1;
            warn!(field, star = %star, target = %redacted_target(url.expose()), attempt, error = error.as_deref().unwrap_or(""), "webhook delivery failed");
        }
        Ok((ok, bad))
    }
}

/// A reqwest error without the URL (it carries the webhook's secret).
fn describe(e: &reqwest::Error, url: &str) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_request() {
        "request failed"
    } else {
        "failed"
    };
    let mut detail = String::new();
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(s) = src {
        detail = s.to_string();
        src = s.source();
    }
    format!("{kind}: {}", detail.replace(url, &redacted_target(url)))
}

/// Adds the field's first live "yes" of each (star, model) to the outbox, if not there yet;
/// returns how many were added. Looks at verdicts of the last `max_age_hours` only.
pub async fn enqueue(pool: &PgPool, field: &str, kinds: &[&str], max_age_hours: u64) -> Result<u64, sqlx::Error> {
    let kinds: Vec<String> = kinds.iter().map(|s| s.to_string()).collect();
    Ok(sqlx::query(
        "INSERT INTO alert_notifications (field, star_id, model_sha256, candidate_id, run_id, as_of_hjd, binary_score) \
         SELECT DISTINCT ON (c.field, c.star_id, v.model_sha256) c.field, c.star_id, v.model_sha256, c.candidate_id, v.run_id, c.as_of_hjd, v.binary_score \
         FROM verdicts v \
         JOIN candidates c ON c.candidate_id = v.candidate_id \
         JOIN runs r ON r.run_id = v.run_id \
         WHERE v.verdict = 'yes' AND c.field = $1 AND r.kind = ANY($2) AND v.created_at > now() - make_interval(hours => $3) \
         ORDER BY c.field, c.star_id, v.model_sha256, c.as_of_hjd \
         ON CONFLICT DO NOTHING",
    )
    .bind(field)
    .bind(&kinds)
    .bind(max_age_hours as i32)
    .execute(pool)
    .await?
    .rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stored_receiver_has_no_secret() {
        assert_eq!(redacted_target("https://hooks.slack.com/services/T000/B000/XXXXSECRET"), "https://hooks.slack.com/…");
        assert_eq!(redacted_target("http://127.0.0.1:9999/hook?token=abc"), "http://127.0.0.1:9999/…");
        assert_eq!(path_segment("BLG14-K 0042/x"), "BLG14-K%200042%2Fx");
    }
}
