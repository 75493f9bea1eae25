//! HTML helpers of the pages: escaping (every value from the database or the request goes
//! through [`esc`]), the page frame with its inline style sheet (nothing is fetched from
//! outside; no JavaScript), and links.

use std::fmt::Write;

use super::auth::Session;

/// Escapes text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a query value or path segment.
pub fn enc(s: &str) -> String {
    crate::notify::path_segment(s)
}

/// The link of a star's page.
pub fn star_link(field: &str, star: &str) -> String {
    format!("/star/{}/{}", enc(field), enc(star))
}

const STYLE: &str = "body{font-family:sans-serif;margin:0;color:#222;background:#fff}\
header{background:#1d2b3a;color:#fff;padding:8px 16px;display:flex;gap:18px;align-items:center}\
header a{color:#cde;text-decoration:none}header .who{margin-left:auto}\
main{padding:12px 16px}table{border-collapse:collapse;margin:8px 0}\
th,td{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:middle;font-size:14px}\
th{background:#f0f3f6}td.num{text-align:right;font-variant-numeric:tabular-nums}\
.yes{color:#b00;font-weight:bold}.maybe{color:#c60}.no{color:#777}\
form.inline{display:inline}.box{border:1px solid #ccc;padding:8px 12px;margin:10px 0;max-width:900px}\
.err{color:#b00}.muted{color:#777}nav.pages a{margin-right:10px}\
input,select,textarea,button{font-size:14px}.cols{column-count:4;font-size:13px;max-width:1100px}.cols div{break-inside:avoid}";

/// A whole page: header with the navigation and the user, then `body`.
pub fn page(title: &str, session: Option<&Session>, body: &str) -> String {
    let who = match session {
        Some(s) => format!(
            "<span class=\"who\">{} ({})</span><form class=\"inline\" method=\"post\" action=\"/logout\"><input type=\"hidden\" name=\"csrf\" value=\"{}\"><button>log out</button></form>",
            esc(&s.user),
            s.role.as_str(),
            esc(&s.csrf)
        ),
        None => "<a class=\"who\" href=\"/login\">log in</a>".into(),
    };
    let mut out = String::with_capacity(body.len() + 2000);
    let _ = write!(
        out,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{} · lensnet</title><style>{STYLE}</style></head><body>\
         <header><strong>lensnet</strong><a href=\"/\">alerts</a><a href=\"/runs\">runs</a><a href=\"/metrics\">metrics</a>{who}</header><main><h1>{}</h1>{body}</main></body></html>",
        esc(title),
        esc(title)
    );
    out
}

/// A verdict word with its class.
pub fn verdict(v: &str) -> String {
    format!("<span class=\"{0}\">{0}</span>", esc(v))
}

/// Optional number with `d` decimals, or a dash.
pub fn num(v: Option<f64>, d: usize) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:.d$}"),
        _ => "–".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped() {
        assert_eq!(esc("<script>alert('x')</script>&\""), "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;");
        assert_eq!(star_link("BLG14", "a b/c"), "/star/BLG14/a%20b%2Fc");
        assert!(page("t<", None, "").contains("<title>t&lt; · lensnet</title>"));
    }
}
