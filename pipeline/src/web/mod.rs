//! `lensnet web`: the follow-up coordinators' pages, server-rendered HTML and SVG (no JavaScript,
//! nothing fetched from outside) on axum over the project's tokio.
//!
//! - `/` the newest "yes" alerts, then the "maybe" queue, with thumbnails, filters and paging;
//! - `/star/{field}/{star}` a star: its light curve with the fits, verdict history, diagnosis
//!   and vetting, and (for vetters) the vetting form; `/star/{field}/{star}/lc.png` and `lc.svg` the figure;
//! - `/runs`, `/run/{id}` the audit trail; `/healthz`, `/metrics` (Prometheus text);
//! - `/login`, `/logout`, `POST /star/{field}/{star}/vet`.
//!
//! Three connections, each with the least it needs: every page reads through `lensnet_reader`;
//! labels are written through `lensnet_vetter`, which may insert vetting rows and nothing else;
//! the accounts (`web_users`, which readers cannot see) are read through the server's own
//! connection. All SQL is parameterised.

pub mod auth;
pub mod html;
mod pages;
pub mod svg;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use lensnet_stages::ingest::{read_star, PhotometryStore};
use lensnet_stages::photometry::StarCurves;
use lensnet_stages::Field;
use sqlx::PgPool;
use tokio::sync::OnceCell;
use tracing::error;

use crate::config::WebSettings;
use auth::{Session, Sessions};

/// How long a star's photometry stays cached for the pages (a list's thumbnail, then its page
/// and figure, read it once).
const CURVES_TTL: Duration = Duration::from_secs(60);
/// Stars cached at once.
const CURVES_KEPT: usize = 256;

type CurvesCell = Arc<OnceCell<Option<Arc<StarCurves>>>>;

/// What the handlers share.
pub struct WebState {
    /// `lensnet_reader`: every page.
    pub reader: PgPool,
    /// `lensnet_vetter`: INSERT INTO vetting, nothing else.
    pub vetter: PgPool,
    /// The server's own connection: `web_users` only.
    pub accounts: PgPool,
    pub photometry: PhotometryStore,
    pub settings: WebSettings,
    pub sessions: Sessions,
    curves: Mutex<HashMap<(i32, Field, String), (Instant, CurvesCell)>>,
    /// Requests served, by outcome class, for /metrics.
    pub requests: [AtomicU64; 3],
}

impl WebState {
    pub fn new(reader: PgPool, vetter: PgPool, accounts: PgPool, photometry: PhotometryStore, settings: WebSettings) -> WebState {
        WebState { reader, vetter, accounts, photometry, settings, sessions: Sessions::default(), curves: Mutex::new(HashMap::new()), requests: Default::default() }
    }

    /// One star's photometry of a season (None when the store has none), read alone (only the
    /// row groups that can hold it) and kept a minute; concurrent requests share one read.
    pub async fn star_curves(&self, season: i32, field: Field, star: &str) -> Result<Option<Arc<StarCurves>>, WebError> {
        let key = (season, field, star.to_string());
        let cell = {
            let mut map = self.curves.lock().expect("curves cache");
            let now = Instant::now();
            map.retain(|_, (at, _)| now.duration_since(*at) < CURVES_TTL);
            if !map.contains_key(&key) && map.len() >= CURVES_KEPT {
                if let Some(oldest) = map.iter().min_by_key(|(_, (at, _))| *at).map(|(k, _)| k.clone()) {
                    map.remove(&oldest);
                }
            }
            map.entry(key).or_insert_with(|| (now, Arc::new(OnceCell::new()))).1.clone()
        };
        let curves = cell
            .get_or_try_init(|| async { read_star(&self.photometry, season, field, star).await.map(|o| o.map(Arc::new)) })
            .await
            .map_err(|e| WebError::Internal(format!("reading the photometry of {star} ({field} season {season}): {e}")))?;
        Ok(curves.clone())
    }

    /// The logged-in user of a request, if any.
    pub fn session(&self, headers: &HeaderMap) -> Option<Session> {
        cookie(headers, SESSION_COOKIE).and_then(|t| self.sessions.get(&t))
    }
}

pub const SESSION_COOKIE: &str = "lensnet_session";
pub const LOGIN_CSRF_COOKIE: &str = "lensnet_login_csrf";

/// The value of cookie `name` in a request.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == name).then(|| v.to_string())
    })
}

/// A failed request: what the user sees (never internal details) and its status.
#[derive(Debug)]
pub enum WebError {
    NotFound(String),
    BadRequest(String),
    Forbidden(String),
    TooManyRequests(String),
    Unauthorized(String),
    Internal(String),
}

impl From<sqlx::Error> for WebError {
    fn from(e: sqlx::Error) -> Self {
        WebError::Internal(format!("database: {e}"))
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let (status, msg) = match self {
            WebError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            WebError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            WebError::Forbidden(m) => (StatusCode::FORBIDDEN, m),
            WebError::TooManyRequests(m) => (StatusCode::TOO_MANY_REQUESTS, m),
            WebError::Unauthorized(m) => (StatusCode::UNAUTHORIZED, m),
            WebError::Internal(m) => {
                error!(error = %m, "web request failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal error (see the server's log)".to_string())
            }
        };
        let body = html::page(&format!("{} {}", status.as_u16(), status.canonical_reason().unwrap_or("")), None, &format!("<p class=\"err\">{}</p>", html::esc(&msg)));
        (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
    }
}

/// The router of all pages.
pub fn router(state: Arc<WebState>) -> Router {
    Router::new()
        .route("/", get(pages::alerts))
        .route("/star/{field}/{star}", get(pages::star))
        .route("/star/{field}/{star}/lc.svg", get(pages::star_figure))
        .route("/star/{field}/{star}/lc.png", get(pages::star_png))
        .route("/star/{field}/{star}/vet", post(pages::vet))
        .route("/thumb/{field}/{star}", get(pages::thumb))
        .route("/runs", get(pages::runs))
        .route("/run/{run_id}", get(pages::run))
        .route("/login", get(pages::login_form).post(pages::login))
        .route("/logout", post(pages::logout))
        .route("/healthz", get(pages::healthz))
        .route("/metrics", get(pages::metrics))
        .layer(axum::middleware::from_fn_with_state(state.clone(), pages::count_and_harden))
        .with_state(state)
}

/// Serves until `shutdown` resolves.
pub async fn serve(state: Arc<WebState>, listener: tokio::net::TcpListener, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    axum::serve(listener, router(state).into_make_service_with_connect_info::<SocketAddr>()).with_graceful_shutdown(shutdown).await
}
