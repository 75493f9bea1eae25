//! The handlers: each reads through the reader pool with parameterised SQL and renders HTML
//! (values escaped) or SVG.

use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Form;
use lensnet_stages::ingest::season_of;
use lensnet_stages::photometry::StarCurves;
use lensnet_stages::Field;
use serde::Deserialize;
use sqlx::Row;

use super::auth::{self, Role};
use super::html::{enc, esc, num, page, star_link, verdict};
use super::svg::{score_history, thumbnail, ScorePoint};
use super::{cookie, WebError, WebState, LOGIN_CSRF_COOKIE, SESSION_COOKIE};
use crate::fieldrun::now_hjd;
use crate::plot::{newest_fits, png_bytes, svg_string, Figure};

type St = State<Arc<WebState>>;

/// Counts requests for /metrics and adds the headers every page gets: no framing by other
/// sites, no content sniffing, a content policy that allows nothing from outside.
pub async fn count_and_harden(State(state): St, req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let class = match resp.status().as_u16() {
        200..=399 => 0,
        400..=499 => 1,
        _ => 2,
    };
    state.requests[class].fetch_add(1, Ordering::Relaxed);
    let h = resp.headers_mut();
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    h.insert("content-security-policy", HeaderValue::from_static("default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"));
    h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    resp
}

fn parse_field(s: &str) -> Result<Field, WebError> {
    s.parse::<Field>().map_err(|e| WebError::NotFound(format!("field `{s}`: {e}")))
}

/// An optional number from a query string (an empty form input is no value).
fn opt_f64(v: &Option<String>, what: &str) -> Result<Option<f64>, WebError> {
    match v.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(s) => s.parse::<f64>().ok().filter(|x| x.is_finite()).map(Some).ok_or_else(|| WebError::BadRequest(format!("{what}: `{s}` is not a number"))),
    }
}

fn opt_str(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

#[derive(Debug, Deserialize, Default)]
pub struct AlertQuery {
    field: Option<String>,
    from: Option<String>,
    to: Option<String>,
    page: Option<u32>,
    mpage: Option<u32>,
}

/// One row of an alert list.
struct AlertRow {
    field: String,
    star: String,
    as_of: f64,
    model: String,
    score: f32,
    p: (f32, f32, f32),
    first: Option<f64>,
    sites: Vec<String>,
}

async fn alert_rows(state: &WebState, view: &str, field: Option<&str>, from: Option<f64>, to: Option<f64>, page: u32) -> Result<(Vec<AlertRow>, bool), WebError> {
    let size = state.settings.page_size as i64;
    // `view` is one of two constants (never from the request).
    let sql = format!(
        "SELECT a.field, a.star_id, a.as_of_hjd, a.model_sha256, a.binary_score, a.p_yes, a.p_maybe, a.p_no, a.sites, \
                (SELECT min(c2.as_of_hjd) FROM candidates c2 JOIN verdicts v2 ON v2.candidate_id = c2.candidate_id \
                 WHERE c2.field = a.field AND c2.star_id = a.star_id AND v2.model_sha256 = a.model_sha256 AND v2.verdict = a.verdict_kind) AS first_hjd \
         FROM (SELECT *, '{kind}'::text AS verdict_kind FROM {view}) a \
         WHERE ($1::text IS NULL OR a.field = $1) AND ($2::float8 IS NULL OR a.as_of_hjd >= $2) AND ($3::float8 IS NULL OR a.as_of_hjd <= $3) \
         ORDER BY a.as_of_hjd DESC, a.field, a.star_id LIMIT $4 OFFSET $5",
        kind = if view == "newest_yes_alerts" { "yes" } else { "maybe" },
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(field)
        .bind(from)
        .bind(to)
        .bind(size + 1)
        .bind(size * page as i64)
        .fetch_all(&state.reader)
        .await?;
    let more = rows.len() as i64 > size;
    let out = rows
        .into_iter()
        .take(size as usize)
        .map(|r| AlertRow {
            field: r.get("field"),
            star: r.get("star_id"),
            as_of: r.get("as_of_hjd"),
            model: r.get("model_sha256"),
            score: r.get("binary_score"),
            p: (r.get("p_yes"), r.get("p_maybe"), r.get("p_no")),
            first: r.get("first_hjd"),
            sites: r.get("sites"),
        })
        .collect();
    Ok((out, more))
}

fn alert_table(rows: &[AlertRow], now: f64, first_label: &str) -> String {
    if rows.is_empty() {
        return "<p class=\"muted\">none</p>".into();
    }
    let mut t = format!("<table><tr><th>light curve</th><th>field</th><th>star</th><th>score</th><th>p(yes/maybe/no)</th><th>{first_label}</th><th>days since</th><th>newest as of</th><th>sites</th><th>model</th></tr>");
    for r in rows {
        let link = star_link(&r.field, &r.star);
        let _ = write!(
            t,
            "<tr><td><a href=\"{link}\"><img src=\"/thumb/{}/{}?as_of={}\" width=\"160\" height=\"48\" alt=\"light curve of {}\"></a></td><td>{}</td><td><a href=\"{link}\">{}</a></td>\
             <td class=\"num\">{:.3}</td><td class=\"num\">{:.2} / {:.2} / {:.2}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{:.2}</td><td>{}</td><td><code>{}</code></td></tr>",
            enc(&r.field),
            enc(&r.star),
            r.as_of,
            esc(&r.star),
            esc(&r.field),
            esc(&r.star),
            r.score,
            r.p.0,
            r.p.1,
            r.p.2,
            num(r.first, 2),
            num(r.first.map(|f| now - f), 1),
            r.as_of,
            esc(&r.sites.join(", ")),
            esc(&r.model[..r.model.len().min(12)]),
        );
    }
    t.push_str("</table>");
    t
}

fn page_links(q: &AlertQuery, key: &str, page: u32, more: bool) -> String {
    let base = format!(
        "/?field={}&from={}&to={}",
        enc(opt_str(&q.field).unwrap_or("")),
        enc(opt_str(&q.from).unwrap_or("")),
        enc(opt_str(&q.to).unwrap_or(""))
    );
    let other = if key == "page" { format!("&mpage={}", q.mpage.unwrap_or(0)) } else { format!("&page={}", q.page.unwrap_or(0)) };
    let mut s = String::from("<nav class=\"pages\">");
    if page > 0 {
        let _ = write!(s, "<a href=\"{base}{other}&{key}={}\">newer</a>", page - 1);
    }
    if more {
        let _ = write!(s, "<a href=\"{base}{other}&{key}={}\">older</a>", page + 1);
    }
    s.push_str("</nav>");
    s
}

/// `/`: the newest "yes" alerts, then the "maybe" queue.
pub async fn alerts(State(state): St, headers: HeaderMap, Query(q): Query<AlertQuery>) -> Result<Html<String>, WebError> {
    let session = state.session(&headers);
    let field = match opt_str(&q.field) {
        Some(f) => Some(parse_field(f)?.to_string()),
        None => None,
    };
    let (from, to) = (opt_f64(&q.from, "from")?, opt_f64(&q.to, "to")?);
    let (page_yes, page_maybe) = (q.page.unwrap_or(0), q.mpage.unwrap_or(0));
    let (yes, more_yes) = alert_rows(&state, "newest_yes_alerts", field.as_deref(), from, to, page_yes).await?;
    let (maybe, more_maybe) = alert_rows(&state, "needs_human", field.as_deref(), from, to, page_maybe).await?;
    let fields: Vec<String> = sqlx::query_scalar("SELECT DISTINCT field FROM candidates ORDER BY 1").fetch_all(&state.reader).await?;
    let now = now_hjd();
    let mut body = String::new();
    let _ = write!(
        body,
        "<form method=\"get\" action=\"/\">field <select name=\"field\"><option value=\"\">all</option>{}</select> \
         as of from <input name=\"from\" size=\"9\" value=\"{}\"> to <input name=\"to\" size=\"9\" value=\"{}\"> (HJD - 2450000) <button>filter</button></form>\
         <p class=\"muted\">now is HJD - 2450000 = {now:.2}; \"days since\" counts from the first flag.</p>",
        fields.iter().map(|f| format!("<option{}>{}</option>", if field.as_deref() == Some(f) { " selected" } else { "" }, esc(f))).collect::<String>(),
        esc(opt_str(&q.from).unwrap_or("")),
        esc(opt_str(&q.to).unwrap_or("")),
    );
    let _ = write!(body, "<h2 id=\"yes\">\"yes\" alerts</h2>{}{}", alert_table(&yes, now, "first yes"), page_links(&q, "page", page_yes, more_yes));
    let _ = write!(body, "<h2 id=\"maybe\">\"maybe\": a human should look</h2>{}{}", alert_table(&maybe, now, "first maybe"), page_links(&q, "mpage", page_maybe, more_maybe));
    Ok(Html(page("Alerts", session.as_ref(), &body)))
}

#[derive(Debug, Deserialize, Default)]
pub struct StarQuery {
    as_of: Option<String>,
    y: Option<String>,
}

/// The season a star page shows: that of `as_of`, else of the star's newest candidate, else the
/// newest season with the star's photometry.
async fn star_season(state: &WebState, field: Field, star: &str, as_of: Option<f64>) -> Result<i32, WebError> {
    if let Some(t) = as_of {
        return Ok(season_of(t));
    }
    let newest: Option<f64> = sqlx::query_scalar("SELECT max(as_of_hjd) FROM candidates WHERE field = $1 AND star_id = $2")
        .bind(field.to_string())
        .bind(star)
        .fetch_one(&state.reader)
        .await?;
    if let Some(t) = newest {
        return Ok(season_of(t));
    }
    let mut seasons: Vec<i32> = state.photometry.partitions().await.map_err(|e| WebError::Internal(e.to_string()))?.into_iter().filter(|k| k.field == field).map(|k| k.season).collect();
    seasons.sort();
    seasons.dedup();
    for s in seasons.into_iter().rev() {
        if state.star_curves(s, field, star).await?.is_some() {
            return Ok(s);
        }
    }
    Err(WebError::NotFound(format!("no star {star} in field {field}")))
}

async fn star_curves(state: &WebState, field: Field, star: &str, season: i32) -> Result<Option<Arc<StarCurves>>, WebError> {
    state.star_curves(season, field, star).await
}

/// The star's figure as SVG or PNG. Without `as_of`, the line is at the newest candidate (the
/// fits are that candidate's) and later points are drawn faint.
async fn figure(state: &WebState, field: Field, star: &str, as_of: Option<f64>, magnitude: bool, png: bool) -> Result<Response, WebError> {
    let season = star_season(state, field, star, as_of).await?;
    let Some(curves) = star_curves(state, field, star, season).await? else {
        return Err(WebError::NotFound(format!("no photometry of star {star} in field {field}, season {season}")));
    };
    let fits = newest_fits(&state.reader, &field.to_string(), star, as_of).await?;
    let line = as_of.or(fits.as_ref().map(|f| f.as_of));
    let fig = Figure { star: &curves, season, as_of: line, fits, magnitude };
    let cache = (header::CACHE_CONTROL, "private, max-age=60");
    if png {
        let bytes = png_bytes(&fig, (1100, 620)).map_err(WebError::NotFound)?;
        Ok(([(header::CONTENT_TYPE, "image/png"), cache], bytes).into_response())
    } else {
        let svg = svg_string(&fig, (1100, 620)).map_err(WebError::NotFound)?;
        Ok(svg_response(svg))
    }
}

fn svg_response(svg: String) -> Response {
    ([(header::CONTENT_TYPE, "image/svg+xml"), (header::CACHE_CONTROL, "private, max-age=60")], svg).into_response()
}

/// `/star/{field}/{star}/lc.svg`: the light-curve figure alone (for papers: every point).
pub async fn star_figure(State(state): St, Path((field, star)): Path<(String, String)>, Query(q): Query<StarQuery>) -> Result<Response, WebError> {
    let field = parse_field(&field)?;
    figure(&state, field, &star, opt_f64(&q.as_of, "as_of")?, q.y.as_deref() == Some("mag"), false).await
}

/// `/star/{field}/{star}/lc.png`: the figure of the star page.
pub async fn star_png(State(state): St, Path((field, star)): Path<(String, String)>, Query(q): Query<StarQuery>) -> Result<Response, WebError> {
    let field = parse_field(&field)?;
    figure(&state, field, &star, opt_f64(&q.as_of, "as_of")?, q.y.as_deref() == Some("mag"), true).await
}

/// `/thumb/{field}/{star}?as_of=T`: the list thumbnail.
pub async fn thumb(State(state): St, Path((field, star)): Path<(String, String)>, Query(q): Query<StarQuery>) -> Result<Response, WebError> {
    let field = parse_field(&field)?;
    let as_of = opt_f64(&q.as_of, "as_of")?;
    let season = star_season(&state, field, &star, as_of).await?;
    let Some(curves) = star_curves(&state, field, &star, season).await? else {
        return Err(WebError::NotFound(format!("no photometry of star {star} in field {field}, season {season}")));
    };
    Ok(svg_response(thumbnail(&curves, as_of, 160, 48)))
}

/// `/star/{field}/{star}`: everything about one star.
pub async fn star(State(state): St, headers: HeaderMap, Path((field_s, star)): Path<(String, String)>, Query(q): Query<StarQuery>) -> Result<Html<String>, WebError> {
    let session = state.session(&headers);
    let field = parse_field(&field_s)?;
    let f = field.to_string();
    let as_of = opt_f64(&q.as_of, "as_of")?;
    let magnitude = q.y.as_deref() == Some("mag");
    let history = sqlx::query(
        "SELECT as_of_hjd, candidate_id, model_sha256, verdict, binary_score, p_yes, p_maybe, p_no, threshold_purity, threshold_recall, \
                run_id, replay_id, sites FROM star_verdict_history WHERE field = $1 AND star_id = $2 ORDER BY as_of_hjd DESC, model_sha256",
    )
    .bind(&f)
    .bind(&star)
    .fetch_all(&state.reader)
    .await?;
    let newest = sqlx::query(
        "SELECT candidate_id, as_of_hjd, n_points, n_high, dchi2_broken, t_rise, sites, diagnosis::text AS diagnosis FROM candidates \
         WHERE field = $1 AND star_id = $2 AND ($3::float8 IS NULL OR as_of_hjd <= $3) ORDER BY as_of_hjd DESC LIMIT 1",
    )
    .bind(&f)
    .bind(&star)
    .bind(as_of)
    .fetch_optional(&state.reader)
    .await?;
    let vetting = sqlx::query(
        "SELECT vetter, label, reason, comment, candidate_id, model_verdict, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI') AS at \
         FROM vetting WHERE field = $1 AND star_id = $2 ORDER BY created_at DESC, vetting_id DESC",
    )
    .bind(&f)
    .bind(&star)
    .fetch_all(&state.reader)
    .await?;
    // The figure is its own request (lc.png); here only whether the star exists at all.
    let season = star_season(&state, field, &star, as_of).await?;
    let has_curves = star_curves(&state, field, &star, season).await?.is_some();
    if !has_curves && history.is_empty() {
        return Err(WebError::NotFound(format!("no star {star} in field {field}")));
    }
    let here = star_link(&f, &star);
    let query = format!("{}{}", as_of.map(|a| format!("as_of={a}&")).unwrap_or_default(), if magnitude { "y=mag" } else { "" });
    let figure = if has_curves {
        format!("<img src=\"{here}/lc.png?{query}\" width=\"1100\" height=\"620\" alt=\"light curve of {} in season {season}\">", esc(&star))
    } else {
        format!("<p class=\"err\">no photometry of star {} in field {f}, season {season}</p>", esc(&star))
    };
    let mut body = String::new();
    let as_of_q = as_of.map(|a| format!("as_of={a}&")).unwrap_or_default();
    let _ = write!(
        body,
        "<p>{} · <a href=\"{here}?{as_of_q}y=flux\">flux</a> · <a href=\"{here}?{as_of_q}y=mag\">magnitude</a> · <a href=\"{here}/lc.svg?{as_of_q}{}\">figure alone (SVG)</a>{}</p><div>{figure}</div>",
        if magnitude { "magnitude, brighter up" } else { "difference flux, brightening up" },
        if magnitude { "y=mag" } else { "" },
        as_of.map(|a| format!(" · as of {a:.2} (<a href=\"{here}\">newest</a>)")).unwrap_or_default(),
    );
    // Vetting form (vetters), or what it takes to vet.
    let newest_id: Option<String> = newest.as_ref().map(|r| r.get("candidate_id"));
    match (&session, &newest_id) {
        (Some(s), Some(cid)) if s.role == Role::Vetter => {
            let options: String = {
                let mut ids: Vec<(String, f64)> = history.iter().map(|r| (r.get::<String, _>("candidate_id"), r.get::<f64, _>("as_of_hjd"))).collect();
                ids.dedup_by(|a, b| a.0 == b.0);
                ids.iter().map(|(id, t)| format!("<option value=\"{}\"{}>as of {t:.2}</option>", esc(id), if id == cid { " selected" } else { "" })).collect()
            };
            let _ = write!(
                body,
                "<form class=\"box\" method=\"post\" action=\"{here}/vet\"><strong>Vet</strong> candidate <select name=\"candidate_id\">{options}</select> \
                 <label><input type=\"radio\" name=\"label\" value=\"yes\" required> yes (event)</label> \
                 <label><input type=\"radio\" name=\"label\" value=\"maybe\"> maybe</label> \
                 <label><input type=\"radio\" name=\"label\" value=\"no\"> no</label> \
                 reason <select name=\"reason\"><option value=\"\">–</option><option>event</option><option>variable</option><option>artefact</option><option>asteroid</option><option>other</option></select><br>\
                 <textarea name=\"comment\" rows=\"2\" cols=\"90\" maxlength=\"2000\" placeholder=\"comment\"></textarea>\
                 <input type=\"hidden\" name=\"csrf\" value=\"{}\"><br><button>save label</button></form>",
                esc(&s.csrf)
            );
        }
        (Some(_), Some(_)) => body.push_str("<p class=\"muted\">Your account is a reader's: vetting needs a vetter's account.</p>"),
        (None, Some(_)) => body.push_str("<p class=\"muted\"><a href=\"/login\">Log in</a> as a vetter to label this candidate.</p>"),
        _ => body.push_str("<p class=\"muted\">This star has no AlertFinder candidate.</p>"),
    }
    // Verdict history.
    let points: Vec<ScorePoint> = history.iter().map(|r| ScorePoint { model: r.get("model_sha256"), as_of: r.get("as_of_hjd"), score: r.get::<f32, _>("binary_score") as f64, verdict: r.get("verdict") }).collect();
    let (purity, recall) = history.first().map(|r| (r.get::<f32, _>("threshold_purity") as f64, r.get::<f32, _>("threshold_recall") as f64)).unwrap_or((0.9, 0.5));
    let _ = write!(body, "<h2>Verdict history</h2>{}", score_history(&points, purity, recall));
    if !history.is_empty() {
        body.push_str("<table><tr><th>as of</th><th>verdict</th><th>score</th><th>p(yes/maybe/no)</th><th>model</th><th>sites</th><th>run</th><th></th></tr>");
        for r in &history {
            let run: Option<uuid::Uuid> = r.get("run_id");
            let replay: Option<uuid::Uuid> = r.get("replay_id");
            let t: f64 = r.get("as_of_hjd");
            let m: String = r.get("model_sha256");
            let _ = write!(
                body,
                "<tr><td class=\"num\">{t:.2}</td><td>{}</td><td class=\"num\">{:.3}</td><td class=\"num\">{:.2} / {:.2} / {:.2}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td><a href=\"{here}?as_of={t}\">as of then</a></td></tr>",
                verdict(&r.get::<String, _>("verdict")),
                r.get::<f32, _>("binary_score"),
                r.get::<f32, _>("p_yes"),
                r.get::<f32, _>("p_maybe"),
                r.get::<f32, _>("p_no"),
                esc(&m[..m.len().min(12)]),
                esc(&r.get::<Vec<String>, _>("sites").join(", ")),
                run.map(|u| format!("<a href=\"/run/{u}\">{}</a>{}", &u.to_string()[..8], if replay.is_some() { " (replay)" } else { "" })).unwrap_or_else(|| "–".into()),
            );
        }
        body.push_str("</table>");
    }
    // Diagnosis of the newest candidate.
    if let Some(r) = &newest {
        let _ = write!(
            body,
            "<h2>Diagnosis (candidate as of {:.2})</h2><table><tr><th>points</th><td class=\"num\">{}</td><th>N_high</th><td class=\"num\">{}</td><th>Δχ² broken line</th><td class=\"num\">{:.1}</td><th>t_rise</th><td class=\"num\">{}</td><th>sites</th><td>{}</td></tr></table>",
            r.get::<f64, _>("as_of_hjd"),
            r.get::<i32, _>("n_points"),
            r.get::<i32, _>("n_high"),
            r.get::<f64, _>("dchi2_broken"),
            num(r.get("t_rise"), 2),
            esc(&r.get::<Vec<String>, _>("sites").join(", ")),
        );
        let diag: serde_json::Value = serde_json::from_str(&r.get::<String, _>("diagnosis")).unwrap_or_default();
        if let Some(map) = diag.as_object().filter(|m| !m.is_empty()) {
            body.push_str("<div class=\"cols\">");
            for (k, v) in map {
                let shown = match v {
                    serde_json::Value::Number(n) => n.as_f64().map(|x| format!("{x:.4}")).unwrap_or_else(|| n.to_string()),
                    other => other.to_string(),
                };
                let _ = write!(body, "<div><span class=\"muted\">{}</span> {}</div>", esc(k), esc(&shown));
            }
            body.push_str("</div>");
        }
    }
    // Vetting history.
    body.push_str("<h2>Vetting</h2>");
    if vetting.is_empty() {
        body.push_str("<p class=\"muted\">not vetted yet</p>");
    } else {
        body.push_str("<table><tr><th>when (UTC)</th><th>vetter</th><th>label</th><th>reason</th><th>comment</th><th>model said</th><th>candidate</th></tr>");
        for r in &vetting {
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
                esc(&r.get::<String, _>("at")),
                esc(&r.get::<String, _>("vetter")),
                verdict(&r.get::<String, _>("label")),
                esc(&r.get::<Option<String>, _>("reason").unwrap_or_default()),
                esc(&r.get::<String, _>("comment")),
                r.get::<Option<String>, _>("model_verdict").map(|v| verdict(&v)).unwrap_or_else(|| "–".into()),
                esc(&r.get::<String, _>("candidate_id")),
            );
        }
        body.push_str("</table>");
    }
    Ok(Html(page(&format!("{f} {star}"), session.as_ref(), &body)))
}

#[derive(Debug, Deserialize)]
pub struct VetForm {
    csrf: Option<String>,
    candidate_id: String,
    label: String,
    reason: Option<String>,
    comment: Option<String>,
}

/// `POST /star/{field}/{star}/vet`: a vetter's label, through the vetters' role.
pub async fn vet(State(state): St, headers: HeaderMap, Path((field_s, star)): Path<(String, String)>, Form(form): Form<VetForm>) -> Result<Response, WebError> {
    let Some(session) = state.session(&headers) else {
        return Err(WebError::Forbidden("log in as a vetter to label candidates".into()));
    };
    if session.role != Role::Vetter {
        return Err(WebError::Forbidden(format!("{} is a reader: labelling needs a vetter's account", session.user)));
    }
    if !form.csrf.as_deref().is_some_and(|t| auth::same_token(t, &session.csrf)) {
        return Err(WebError::Forbidden("the form's CSRF token is missing or wrong: reload the page and try again".into()));
    }
    let field = parse_field(&field_s)?;
    if !["yes", "maybe", "no"].contains(&form.label.as_str()) {
        return Err(WebError::BadRequest(format!("label `{}`: yes, maybe or no", form.label)));
    }
    let reason = form.reason.as_deref().map(str::trim).filter(|r| !r.is_empty());
    if let Some(r) = reason {
        if !["event", "variable", "artefact", "asteroid", "other"].contains(&r) {
            return Err(WebError::BadRequest(format!("reason `{r}`: event, variable, artefact, asteroid or other")));
        }
    }
    let comment = form.comment.unwrap_or_default();
    if comment.chars().count() > 2000 {
        return Err(WebError::BadRequest("the comment is longer than 2000 characters".into()));
    }
    // The candidate must be this star's; the label records the model verdict shown (newest).
    let shown = sqlx::query(
        "SELECT v.model_sha256, v.verdict FROM candidates c LEFT JOIN verdicts v ON v.candidate_id = c.candidate_id \
         WHERE c.candidate_id = $1 AND c.field = $2 AND c.star_id = $3 ORDER BY v.created_at DESC NULLS LAST LIMIT 1",
    )
    .bind(&form.candidate_id)
    .bind(field.to_string())
    .bind(&star)
    .fetch_optional(&state.reader)
    .await?;
    let Some(shown) = shown else {
        return Err(WebError::NotFound(format!("no candidate {} of star {star} in field {field}", form.candidate_id)));
    };
    sqlx::query(
        "INSERT INTO vetting (candidate_id, field, star_id, vetter, label, reason, comment, model_sha256, model_verdict) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&form.candidate_id)
    .bind(field.to_string())
    .bind(&star)
    .bind(&session.user)
    .bind(&form.label)
    .bind(reason)
    .bind(&comment)
    .bind(shown.get::<Option<String>, _>("model_sha256"))
    .bind(shown.get::<Option<String>, _>("verdict"))
    .execute(&state.vetter)
    .await?;
    tracing::info!(vetter = %session.user, %field, star = %star, label = %form.label, "vetting label saved");
    Ok(Redirect::to(&star_link(&field.to_string(), &star)).into_response())
}

#[derive(Debug, Deserialize, Default)]
pub struct RunsQuery {
    field: Option<String>,
    kind: Option<String>,
    page: Option<u32>,
}

/// `/runs`: the newest runs.
pub async fn runs(State(state): St, headers: HeaderMap, Query(q): Query<RunsQuery>) -> Result<Html<String>, WebError> {
    let session = state.session(&headers);
    let size = state.settings.page_size as i64;
    let page_n = q.page.unwrap_or(0);
    let rows = sqlx::query(
        "SELECT run_id, kind, field, as_of_hjd, status, error, to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') AS started, \
                extract(epoch FROM finished_at - started_at)::float8 AS seconds \
         FROM runs WHERE ($1::text IS NULL OR field = $1) AND ($2::text IS NULL OR kind = $2) ORDER BY started_at DESC, run_id LIMIT $3 OFFSET $4",
    )
    .bind(opt_str(&q.field))
    .bind(opt_str(&q.kind))
    .bind(size + 1)
    .bind(size * page_n as i64)
    .fetch_all(&state.reader)
    .await?;
    let mut body = String::from("<table><tr><th>started (UTC)</th><th>kind</th><th>field</th><th>as of</th><th>status</th><th>seconds</th><th>error</th></tr>");
    for r in rows.iter().take(size as usize) {
        let id: uuid::Uuid = r.get("run_id");
        let _ = write!(
            body,
            "<tr><td><a href=\"/run/{id}\">{}</a></td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
            esc(&r.get::<String, _>("started")),
            esc(&r.get::<String, _>("kind")),
            esc(&r.get::<Option<String>, _>("field").unwrap_or_default()),
            num(r.get("as_of_hjd"), 2),
            esc(&r.get::<String, _>("status")),
            num(r.get("seconds"), 1),
            esc(&r.get::<Option<String>, _>("error").unwrap_or_default()),
        );
    }
    body.push_str("</table><nav class=\"pages\">");
    let base = format!("/runs?field={}&kind={}", enc(opt_str(&q.field).unwrap_or("")), enc(opt_str(&q.kind).unwrap_or("")));
    if page_n > 0 {
        let _ = write!(body, "<a href=\"{base}&page={}\">newer</a>", page_n - 1);
    }
    if rows.len() as i64 > size {
        let _ = write!(body, "<a href=\"{base}&page={}\">older</a>", page_n + 1);
    }
    body.push_str("</nav>");
    Ok(Html(page("Runs", session.as_ref(), &body)))
}

/// `/run/{id}`: a run's audit trail.
pub async fn run(State(state): St, headers: HeaderMap, Path(id): Path<String>) -> Result<Html<String>, WebError> {
    let session = state.session(&headers);
    let id: uuid::Uuid = id.parse().map_err(|_| WebError::NotFound(format!("`{id}` is not a run id")))?;
    let Some(r) = sqlx::query(
        "SELECT kind, field, as_of_hjd, replay_id, config_hash, model_sha256, status, error, \
                to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') AS started, to_char(finished_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') AS finished \
         FROM runs WHERE run_id = $1",
    )
    .bind(id)
    .fetch_optional(&state.reader)
    .await?
    else {
        return Err(WebError::NotFound(format!("no run {id}")));
    };
    let mut body = String::new();
    let _ = write!(
        body,
        "<table><tr><th>run</th><td><code>{id}</code></td></tr><tr><th>kind</th><td>{}</td></tr><tr><th>field</th><td>{}</td></tr><tr><th>as of</th><td>{}</td></tr>\
         <tr><th>status</th><td>{}</td></tr><tr><th>started / finished (UTC)</th><td>{} / {}</td></tr><tr><th>replay</th><td>{}</td></tr>\
         <tr><th>configuration</th><td><code>{}</code></td></tr><tr><th>model</th><td><code>{}</code></td></tr><tr><th>error</th><td class=\"err\">{}</td></tr></table>",
        esc(&r.get::<String, _>("kind")),
        esc(&r.get::<Option<String>, _>("field").unwrap_or_default()),
        num(r.get("as_of_hjd"), 3),
        esc(&r.get::<String, _>("status")),
        esc(&r.get::<String, _>("started")),
        esc(&r.get::<Option<String>, _>("finished").unwrap_or_default()),
        r.get::<Option<uuid::Uuid>, _>("replay_id").map(|u| u.to_string()).unwrap_or_else(|| "–".into()),
        esc(&r.get::<String, _>("config_hash")),
        esc(&r.get::<Option<String>, _>("model_sha256").unwrap_or_default()),
        esc(&r.get::<Option<String>, _>("error").unwrap_or_default()),
    );
    let attempts = sqlx::query(
        "SELECT stage, field, attempt, status, rows_in, rows_out, duration_ms, inputs::text AS inputs, outputs::text AS outputs, error, retryable, execution_provider \
         FROM stage_attempts WHERE run_id = $1 ORDER BY started_at, stage, attempt",
    )
    .bind(id)
    .fetch_all(&state.reader)
    .await?;
    body.push_str("<h2>Stages</h2><table><tr><th>stage</th><th>attempt</th><th>status</th><th>rows in</th><th>rows out</th><th>ms</th><th>inputs</th><th>outputs</th><th>provider</th><th>error</th></tr>");
    for a in &attempts {
        let _ = write!(
            body,
            "<tr><td>{}</td><td class=\"num\">{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td><code>{}</code></td><td><code>{}</code></td><td>{}</td><td class=\"err\">{}{}</td></tr>",
            esc(&a.get::<String, _>("stage")),
            a.get::<i32, _>("attempt"),
            esc(&a.get::<String, _>("status")),
            a.get::<Option<i64>, _>("rows_in").map(|v| v.to_string()).unwrap_or_default(),
            a.get::<Option<i64>, _>("rows_out").map(|v| v.to_string()).unwrap_or_default(),
            a.get::<Option<i64>, _>("duration_ms").map(|v| v.to_string()).unwrap_or_default(),
            esc(&a.get::<String, _>("inputs")),
            esc(&a.get::<String, _>("outputs")),
            esc(&a.get::<Option<String>, _>("execution_provider").unwrap_or_default()),
            esc(&a.get::<Option<String>, _>("error").unwrap_or_default()),
            match a.get::<Option<bool>, _>("retryable") {
                Some(true) => " (retryable)",
                _ => "",
            },
        );
    }
    body.push_str("</table>");
    Ok(Html(page(&format!("Run {}", &id.to_string()[..8]), session.as_ref(), &body)))
}

fn session_cookie(state: &WebState, value: &str, max_age: u64) -> String {
    format!("{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{}", if state.settings.secure_cookies { "; Secure" } else { "" })
}

/// `GET /login`: the form, with a fresh double-submit CSRF token.
pub async fn login_form(State(state): St, headers: HeaderMap) -> Response {
    login_page(&state, &headers, None, StatusCode::OK)
}

fn login_page(state: &WebState, headers: &HeaderMap, error: Option<&str>, status: StatusCode) -> Response {
    let token = auth::token();
    let body = format!(
        "{}<form class=\"box\" method=\"post\" action=\"/login\"><label>user <input name=\"user\" autocomplete=\"username\" required></label> \
         <label>password <input name=\"password\" type=\"password\" autocomplete=\"current-password\" required></label>\
         <input type=\"hidden\" name=\"csrf\" value=\"{token}\"> <button>log in</button></form>\
         <p class=\"muted\">Accounts are made by an operator with <code>lensnet user add NAME --role vetter</code>.</p>",
        error.map(|e| format!("<p class=\"err\">{}</p>", esc(e))).unwrap_or_default()
    );
    let cookie = format!("{LOGIN_CSRF_COOKIE}={token}; Path=/login; HttpOnly; SameSite=Strict; Max-Age=3600{}", if state.settings.secure_cookies { "; Secure" } else { "" });
    let session = state.session(headers);
    (status, [(header::SET_COOKIE, cookie), (header::CONTENT_TYPE, "text/html; charset=utf-8".into())], page("Log in", session.as_ref(), &body)).into_response()
}

#[derive(Debug, Deserialize)]
pub struct LoginForm {
    user: String,
    password: String,
    csrf: Option<String>,
}

/// `POST /login`.
pub async fn login(State(state): St, ConnectInfo(addr): ConnectInfo<SocketAddr>, headers: HeaderMap, Form(form): Form<LoginForm>) -> Result<Response, WebError> {
    let expected = cookie(&headers, LOGIN_CSRF_COOKIE);
    if !matches!((&form.csrf, &expected), (Some(a), Some(b)) if auth::same_token(a, b)) {
        return Err(WebError::Forbidden("the login form's CSRF token is missing or wrong: open /login again".into()));
    }
    let user = form.user.trim().to_string();
    if state.sessions.limited(&user, addr.ip(), state.settings.login_attempts_per_minute) {
        return Err(WebError::TooManyRequests("too many failed logins: wait a minute".into()));
    }
    match auth::check_login(&state.accounts, &user, &form.password).await.map_err(|e| WebError::Internal(e.to_string()))? {
        Some(role) => {
            let (token, _) = state.sessions.create(&user, role, state.settings.session);
            tracing::info!(user = %user, role = role.as_str(), "logged in");
            let mut resp = Redirect::to("/").into_response();
            let c = session_cookie(&state, &token, state.settings.session.as_secs());
            resp.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&c).map_err(|e| WebError::Internal(e.to_string()))?);
            Ok(resp)
        }
        None => {
            state.sessions.failed(&user, addr.ip());
            tracing::warn!(user = %user, client = %addr.ip(), "failed login");
            Ok(login_page(&state, &headers, Some("wrong user name or password"), StatusCode::UNAUTHORIZED))
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct LogoutForm {
    csrf: Option<String>,
}

/// `POST /logout`.
pub async fn logout(State(state): St, headers: HeaderMap, Form(form): Form<LogoutForm>) -> Result<Response, WebError> {
    if let (Some(token), Some(s)) = (cookie(&headers, SESSION_COOKIE), state.session(&headers)) {
        if !form.csrf.as_deref().is_some_and(|t| auth::same_token(t, &s.csrf)) {
            return Err(WebError::Forbidden("the form's CSRF token is missing or wrong".into()));
        }
        state.sessions.remove(&token);
    }
    let mut resp = Redirect::to("/").into_response();
    let c = session_cookie(&state, "", 0);
    resp.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&c).map_err(|e| WebError::Internal(e.to_string()))?);
    Ok(resp)
}

/// `/healthz`: 200 when the reader can query the database.
pub async fn healthz(State(state): St) -> Response {
    match sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&state.reader).await {
        Ok(_) => (StatusCode::OK, "ok\n").into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "health check: database unreachable");
            (StatusCode::SERVICE_UNAVAILABLE, "database unreachable\n").into_response()
        }
    }
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// `/metrics`: Prometheus text format.
pub async fn metrics(State(state): St) -> Result<Response, WebError> {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, rows: Vec<(String, f64)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in rows {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    let runs: Vec<(String, String, i64)> = sqlx::query_as("SELECT kind, status, count(*) FROM runs GROUP BY 1, 2 ORDER BY 1, 2").fetch_all(&state.reader).await?;
    metric("lensnet_runs", "gauge", "Runs recorded, by kind and status.", runs.into_iter().map(|(k, s, n)| (format!("{{kind=\"{}\",status=\"{}\"}}", label(&k), label(&s)), n as f64)).collect());
    let last: Option<f64> = sqlx::query_scalar("SELECT extract(epoch FROM max(finished_at))::float8 FROM runs WHERE status = 'succeeded'").fetch_one(&state.reader).await?;
    metric("lensnet_last_successful_run_timestamp_seconds", "gauge", "When the newest successful run finished (Unix time).", last.map(|t| (String::new(), t)).into_iter().collect());
    let verdicts: Vec<(String, i64)> = sqlx::query_as("SELECT verdict, count(*) FROM verdicts GROUP BY 1 ORDER BY 1").fetch_all(&state.reader).await?;
    metric("lensnet_verdicts", "gauge", "Model verdicts recorded, by verdict.", verdicts.into_iter().map(|(v, n)| (format!("{{verdict=\"{}\"}}", label(&v)), n as f64)).collect());
    let yes: i64 = sqlx::query_scalar("SELECT count(*) FROM newest_yes_alerts").fetch_one(&state.reader).await?;
    let maybe: i64 = sqlx::query_scalar("SELECT count(*) FROM needs_human").fetch_one(&state.reader).await?;
    metric("lensnet_alert_stars", "gauge", "Stars with a \"yes\" alert, and stars whose newest verdict is \"maybe\".", vec![("{list=\"yes\"}".into(), yes as f64), ("{list=\"maybe\"}".into(), maybe as f64)]);
    let stages: Vec<(String, String, i64, f64)> =
        sqlx::query_as("SELECT stage, status, count(*), coalesce(sum(duration_ms), 0)::float8 / 1000.0 FROM stage_attempts GROUP BY 1, 2 ORDER BY 1, 2").fetch_all(&state.reader).await?;
    let mut count = Vec::new();
    let mut sum = Vec::new();
    for (st, status, n, s) in stages {
        let l = format!("{{stage=\"{}\",status=\"{}\"}}", label(&st), label(&status));
        count.push((l.clone(), n as f64));
        sum.push((l, s));
    }
    metric("lensnet_stage_attempts", "gauge", "Stage attempts, by stage and status.", count);
    metric("lensnet_stage_duration_seconds_total", "gauge", "Time spent in stage attempts, by stage and status.", sum);
    let deliveries: Vec<(String, i64)> = sqlx::query_as("SELECT status, count(*) FROM webhook_deliveries GROUP BY 1 ORDER BY 1").fetch_all(&state.reader).await?;
    metric("lensnet_webhook_deliveries", "gauge", "Webhook POSTs, by outcome.", deliveries.into_iter().map(|(s, n)| (format!("{{status=\"{}\"}}", label(&s)), n as f64)).collect());
    let labels: Vec<(String, i64)> = sqlx::query_as("SELECT label, count(*) FROM vetting GROUP BY 1 ORDER BY 1").fetch_all(&state.reader).await?;
    metric("lensnet_vetting_labels", "gauge", "Vetters' labels, by label.", labels.into_iter().map(|(s, n)| (format!("{{label=\"{}\"}}", label(&s)), n as f64)).collect());
    let req = [("ok", 0), ("client_error", 1), ("server_error", 2)].map(|(n, i)| (format!("{{class=\"{n}\"}}"), state.requests[i].load(Ordering::Relaxed) as f64));
    metric("lensnet_web_requests_total", "counter", "Requests this server answered, by class.", req.to_vec());
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], out).into_response())
}
