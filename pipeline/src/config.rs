//! Configuration: embedded defaults, then one TOML file, then `LENSNET__SECTION__KEY`
//! environment variables; resolved once into validated types, with every problem reported
//! together. Secrets (the database URL) come from the environment or a file and are never logged.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use lensnet_stages::Field;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use toml::{Table, Value};

/// The embedded defaults; every key a user may set appears here.
pub const DEFAULTS_TOML: &str = include_str!("defaults.toml");
/// Environment variable prefix for overrides: `LENSNET__STORE__URL`.
pub const ENV_PREFIX: &str = "LENSNET__";

/// The configuration as written (after layering), before validation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub paths: RawPaths,
    pub database: RawDatabase,
    pub store: RawStore,
    pub ingest: RawIngest,
    pub schedule: RawSchedule,
    pub alertfinder: RawAlertFinder,
    pub score: RawScore,
    pub web: RawWeb,
    pub notify: RawNotify,
    pub stream: RawStream,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawStream {
    /// Photometry a streaming stage holds at once (MiB).
    pub memory_mb: u64,
    /// A replay holds a field-season in memory when its photometry has at most this many rows,
    /// and streams it otherwise; live runs always stream.
    pub replay_whole_field_max_rows: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPaths {
    /// Folder for everything lensnet writes locally.
    pub data_dir: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDatabase {
    /// File holding the database URL (one line); empty = only DATABASE_URL.
    pub url_file: String,
    /// Database name in the local cluster.
    pub local_name: String,
    /// Folder of the local cluster; empty = `<data_dir>/pg`.
    pub local_dir: String,
    /// Pool size.
    pub max_connections: u32,
    /// Connection timeout in seconds.
    pub connect_timeout_s: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    /// Object store root (local folder or URL); empty = `<data_dir>/store`.
    pub url: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIngest {
    /// Inbox folder or URL; empty = `<data_dir>/inbox`.
    pub inbox: String,
    /// Input format: auto, pysis, diapl, ogle or columns.
    pub format: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSchedule {
    /// Cron expression with seconds.
    pub cron: String,
    /// Fields that `serve` runs.
    pub fields: Vec<String>,
    /// Field runs at once.
    pub max_parallel: usize,
    /// Per-field schedules that replace `cron` for their field: `"BLG01=0 */5 * * * *"`.
    pub field_cron: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlertFinder {
    /// Fields that use the high-cadence thresholds.
    pub high_cadence_fields: Vec<String>,
    pub high_n_high: usize,
    pub high_delta_chi2: f64,
    pub low_n_high: usize,
    pub low_delta_chi2: f64,
    /// Per-field thresholds: `"BLG04=7,300"`.
    pub field_thresholds: Vec<String>,
    /// Search window (days).
    pub window_days: f64,
    /// Sigma of a high point.
    pub high_sigma: f64,
    /// Bin width of the binned pre-selection (days); 0 = off.
    pub bin_days: f64,
    /// Baselines from each star's history (earlier seasons included).
    pub history: bool,
    pub min_history_nights: usize,
    /// Report a star whose history holds an ended brightening as recurrent, not as a candidate.
    pub recurrent_veto: bool,
    /// Cadence adaptation of the window, N_high and the broken-line threshold.
    pub min_window_points: usize,
    pub max_window_days: f64,
    pub min_n_high: usize,
    pub ref_window_points: usize,
    pub min_delta_chi2: f64,
    /// In a season's first weeks, the broken line rises from the history's level.
    pub anchor_history: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScore {
    /// ONNX model path; empty = newest committed model.
    pub model: String,
    /// ONNX Runtime shared library; empty = $ORT_DYLIB_PATH, else `.ort/lib/libonnxruntime.so`.
    pub ort_library: String,
    /// Execution provider: cpu or cuda.
    pub provider: String,
    /// On CUDA failure: error or fallback.
    pub on_cuda_failure: String,
    /// Sequences per call.
    pub batch_size: usize,
    /// High-purity threshold on the binary score; unset: the model's own operating point
    /// (`lensnet.threshold_purity` in its metadata), else 0.95.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold_purity: Option<f64>,
    /// High-recall threshold on the binary score.
    pub threshold_recall: f64,
    /// A "yes" that rose at least `fast_rise_min_mag` within this many days is kept as "maybe"
    /// (0 = off).
    pub fast_rise_max_days: f64,
    pub fast_rise_min_mag: f64,
    /// A "yes" whose brightening has been high on fewer nights in a row than this is kept as
    /// "maybe" (0 or 1 = off).
    pub min_high_nights: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawWeb {
    /// Address `lensnet web` listens on (host:port).
    pub bind: String,
    /// The pages' address as users reach them (links in notifications); empty = http://<bind>.
    pub base_url: String,
    /// Mark the session cookie `Secure` (browsers then send it over https and to localhost only).
    pub secure_cookies: bool,
    /// Hours a login lasts.
    pub session_hours: u64,
    /// Rows per page of the alert lists.
    pub page_size: usize,
    /// Failed logins allowed per minute, per user name and per client address.
    pub login_attempts_per_minute: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawNotify {
    /// File with the webhook URLs to POST new "yes" alerts to, one per line (URLs carry their
    /// secret, so they come from this file or the LENSNET_WEBHOOK_URLS environment variable,
    /// never from this file's text); empty = none.
    pub webhooks_file: String,
    /// Seconds before one POST gives up.
    pub timeout_s: u64,
    /// Tries per receiver within one run (with 0.5 s, 1 s, ... between them).
    pub attempts_per_run: u32,
    /// Tries per receiver in all (later runs retry what is left undelivered).
    pub max_attempts: u32,
    /// Alerts older than this (hours) are not sent any more.
    pub max_age_hours: u64,
    /// Notify for replays too (off: a replay of a past season should not page anyone).
    pub on_replay: bool,
}

/// Input file formats that ingest understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InputFormat {
    Auto,
    Pysis,
    Diapl,
    Ogle,
    Columns,
}

impl FromStr for InputFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "auto" => InputFormat::Auto,
            "pysis" => InputFormat::Pysis,
            "diapl" => InputFormat::Diapl,
            "ogle" => InputFormat::Ogle,
            "columns" => InputFormat::Columns,
            other => return Err(format!("unknown format `{other}` (expected auto, pysis, diapl, ogle or columns)")),
        })
    }
}

/// Execution provider for ONNX Runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Cpu,
    Cuda,
}

/// A secret string that never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Where the database comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseSource {
    /// An external server (DATABASE_URL or `database.url_file`).
    Url(Secret),
    /// The local cluster that lensnet manages under `dir`.
    Local { dir: PathBuf, name: String },
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub database: DatabaseSource,
    pub max_connections: u32,
    pub connect_timeout_s: u64,
    /// Object store root: a URL (`file:///abs/path`, `s3://...`).
    pub store_url: String,
    pub inbox: String,
    pub ingest_format: InputFormat,
    pub schedule: cron::Schedule,
    /// Fields with their own schedule (`schedule.field_cron`); the others use `schedule`.
    pub field_schedules: std::collections::BTreeMap<Field, cron::Schedule>,
    pub schedule_fields: Vec<Field>,
    pub max_parallel: usize,
    pub model: Option<PathBuf>,
    /// ONNX Runtime library path as configured (None = $ORT_DYLIB_PATH or `.ort/lib`).
    pub ort_library: Option<PathBuf>,
    pub provider: Provider,
    pub cuda_fallback: bool,
    pub batch_size: usize,
    /// None: the model's declared operating point (see [`lensnet_stages::score::ScoreOptions`]).
    pub threshold_purity: Option<f64>,
    pub threshold_recall: f64,
    /// The checks that keep a "yes" as "maybe" (`score.fast_rise_*`, `score.min_high_nights`).
    pub hold: lensnet_stages::score::HoldParams,
    /// AlertFinder parameters by field.
    pub alert_thresholds: lensnet_stages::alertfinder::stage::FieldThresholds,
    /// `lensnet web` settings.
    pub web: WebSettings,
    /// Alert webhooks.
    pub notify: NotifySettings,
    /// Streaming stages: memory budget (bytes) and the replays' whole-field limit (rows).
    pub stream_budget_bytes: usize,
    pub replay_whole_field_max_rows: u64,
    /// The layered raw configuration, for `config show` and the audit hash.
    pub raw: RawConfig,
    /// sha256 of the canonical raw configuration (secrets excluded): goes into audit rows.
    pub hash: String,
}

/// `[web]`, validated.
#[derive(Debug, Clone)]
pub struct WebSettings {
    pub bind: std::net::SocketAddr,
    /// Without a trailing slash.
    pub base_url: String,
    pub secure_cookies: bool,
    pub session: std::time::Duration,
    pub page_size: usize,
    pub login_attempts_per_minute: u32,
}

/// `[notify]`, validated, with the webhook URLs (secrets).
#[derive(Debug, Clone)]
pub struct NotifySettings {
    pub webhooks: Vec<Secret>,
    pub timeout: std::time::Duration,
    pub attempts_per_run: u32,
    pub max_attempts: u32,
    pub max_age_hours: u64,
    pub on_replay: bool,
}

/// One configuration problem; `config check` prints all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Where the value came from: the file path, `environment LENSNET__X__Y`, or `defaults`.
    pub source: String,
    /// Dotted key, e.g. `score.batch_size`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.source, self.message)
        } else {
            write!(f, "{}: `{}`: {}", self.source, self.key, self.message)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{} configuration problem(s):\n{}", .0.len(), .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<ConfigProblem>),
}

impl ConfigError {
    pub fn problems(&self) -> &[ConfigProblem] {
        match self {
            ConfigError::Invalid(p) => p,
        }
    }

    /// Configuration errors need a human: a retry cannot help.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// Inputs to configuration loading, so that tests need not touch the process environment.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// Path of the TOML file, if any (from --config or LENSNET_CONFIG).
    pub file: Option<PathBuf>,
    /// Environment variables (name, value).
    pub env: Vec<(String, String)>,
}

impl Sources {
    /// The process's own: `--config` flag if given, else LENSNET_CONFIG, else `./lensnet.toml` if
    /// it exists; the process environment.
    pub fn from_process(flag: Option<PathBuf>) -> Sources {
        let file = flag
            .or_else(|| std::env::var_os("LENSNET_CONFIG").map(PathBuf::from))
            .or_else(|| Some(PathBuf::from("lensnet.toml")).filter(|p| p.exists()));
        Sources { file, env: std::env::vars().collect() }
    }

    fn var(&self, name: &str) -> Option<&str> {
        self.env.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

impl Config {
    /// The schedule of `field`: its own from `schedule.field_cron`, else `schedule.cron`.
    pub fn schedule_for(&self, field: Field) -> &cron::Schedule {
        self.field_schedules.get(&field).unwrap_or(&self.schedule)
    }

    /// Load and validate; every problem is reported together.
    pub fn load(sources: &Sources) -> Result<Config, ConfigError> {
        let mut problems = Vec::new();
        let mut merged: Table = DEFAULTS_TOML.parse().expect("embedded defaults are valid TOML");
        // The keys a source may set: the defaults', and the optional keys (no default value).
        let mut reference = merged.clone();
        for (section, key, like) in &OPTIONAL_KEYS {
            if let Some(Value::Table(t)) = reference.get_mut(*section) {
                t.insert(key.to_string(), like.clone());
            }
        }

        if let Some(path) = &sources.file {
            let source = path.display().to_string();
            match std::fs::read_to_string(path) {
                Err(e) => problems.push(ConfigProblem { source, key: String::new(), message: format!("cannot read: {e}") }),
                Ok(text) => match text.parse::<Table>() {
                    Err(e) => problems.push(ConfigProblem {
                        source,
                        key: String::new(),
                        message: format!("invalid TOML: {}", e.to_string().trim()),
                    }),
                    Ok(table) => overlay(&mut merged, &reference, &table, "", &source, &mut problems),
                },
            }
        }

        for (name, value) in &sources.env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else { continue };
            let source = format!("environment {name}");
            let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
            if path.len() != 2 || path.iter().any(|p| p.is_empty()) {
                problems.push(ConfigProblem {
                    source,
                    key: path.join("."),
                    message: "expected LENSNET__SECTION__KEY".into(),
                });
                continue;
            }
            let mut t = Table::new();
            let mut inner = Table::new();
            inner.insert(path[1].clone(), env_value(value, reference.get(&path[0]).and_then(|s| s.get(&path[1]))));
            t.insert(path[0].clone(), Value::Table(inner));
            overlay(&mut merged, &reference, &t, "", &source, &mut problems);
        }

        let raw: Option<RawConfig> = match RawConfig::deserialize(Value::Table(merged.clone())) {
            Ok(r) => Some(r),
            Err(e) => {
                problems.push(ConfigProblem { source: "configuration".into(), key: String::new(), message: e.to_string() });
                None
            }
        };
        let Some(raw) = raw else { return Err(ConfigError::Invalid(problems)) };
        match resolve(raw, sources, &mut problems) {
            Some(cfg) if problems.is_empty() => Ok(cfg),
            _ => Err(ConfigError::Invalid(problems)),
        }
    }

    /// The resolved configuration as TOML, secrets excluded.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(&self.raw).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }

    /// Where the project's Parquet datasets live, for stages that need a local folder.
    pub fn local_store_dir(&self) -> Option<PathBuf> {
        self.store_url.strip_prefix("file://").map(PathBuf::from)
    }
}

/// Keys without a default (unset means something of its own), with a value of their type:
/// `score.threshold_purity` unset is each model's own operating point.
const OPTIONAL_KEYS: [(&str, &str, Value); 1] = [("score", "threshold_purity", Value::Float(0.95))];

/// Copy `over` onto `merged`, reporting keys unknown to `reference` with their source.
fn overlay(merged: &mut Table, reference: &Table, over: &Table, prefix: &str, source: &str, problems: &mut Vec<ConfigProblem>) {
    for (k, v) in over {
        let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        match (reference.get(k), v) {
            (None, _) => {
                let known: Vec<&str> = reference.keys().map(|s| s.as_str()).collect();
                problems.push(ConfigProblem {
                    source: source.into(),
                    key,
                    message: format!("unknown key (known here: {})", known.join(", ")),
                });
            }
            (Some(Value::Table(rt)), Value::Table(ot)) => {
                let mt = merged.entry(k.clone()).or_insert_with(|| Value::Table(Table::new()));
                if let Value::Table(mt) = mt {
                    overlay(mt, rt, ot, &key, source, problems);
                }
            }
            (Some(Value::Table(_)), _) => problems.push(ConfigProblem {
                source: source.into(),
                key,
                message: "expected a section (table)".into(),
            }),
            (Some(r), v) => match type_mismatch(r, v) {
                // Reported here, with its source, so that every type error shows at once (the
                // typed deserialisation after the merge would stop at the first).
                Some(message) => problems.push(ConfigProblem { source: source.into(), key, message }),
                None => {
                    merged.insert(k.clone(), v.clone());
                }
            },
        }
    }
}

/// Why `v` cannot replace the default `like`: a different TOML type (an integer where a float
/// is expected is fine).
fn type_mismatch(like: &Value, v: &Value) -> Option<String> {
    let name = |v: &Value| match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a number",
        Value::Boolean(_) => "true or false",
        Value::Datetime(_) => "a date",
        Value::Array(_) => "a list",
        Value::Table(_) => "a section",
    };
    let ok = match (like, v) {
        (Value::Float(_), Value::Integer(_)) => true,
        (Value::Array(a), Value::Array(b)) => match a.first() {
            Some(first) => b.iter().all(|x| type_mismatch(first, x).is_none()),
            None => true,
        },
        (a, b) => std::mem::discriminant(a) == std::mem::discriminant(b),
    };
    (!ok).then(|| format!("expected {}, found {} ({v})", name(like), name(v)))
}

/// An environment value typed like the default it overrides.
fn env_value(raw: &str, like: Option<&Value>) -> Value {
    match like {
        Some(Value::String(_)) | None => Value::String(raw.to_string()),
        Some(Value::Array(_)) => {
            Value::Array(raw.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| Value::String(s.into())).collect())
        }
        Some(_) => {
            // Integers, floats and booleans parse as TOML literals; anything else stays a string
            // so that the type error names the key.
            format!("v = {raw}").parse::<Table>().ok().and_then(|mut t| t.remove("v")).unwrap_or(Value::String(raw.into()))
        }
    }
}

fn resolve(raw: RawConfig, sources: &Sources, problems: &mut Vec<ConfigProblem>) -> Option<Config> {
    let mut bad = |key: &str, message: String| {
        problems.push(ConfigProblem { source: "configuration".into(), key: key.into(), message })
    };
    let data_dir = PathBuf::from(&raw.paths.data_dir);
    if raw.paths.data_dir.trim().is_empty() {
        bad("paths.data_dir", "must not be empty".into());
    }

    let database = if let Some(url) = sources.var("DATABASE_URL").filter(|u| !u.trim().is_empty()) {
        DatabaseSource::Url(Secret(url.trim().to_string()))
    } else if !raw.database.url_file.is_empty() {
        match std::fs::read_to_string(&raw.database.url_file) {
            Ok(s) if !s.trim().is_empty() => DatabaseSource::Url(Secret(s.trim().to_string())),
            Ok(_) => {
                bad("database.url_file", format!("{} is empty", raw.database.url_file));
                DatabaseSource::Local { dir: PathBuf::new(), name: String::new() }
            }
            Err(e) => {
                bad("database.url_file", format!("cannot read {}: {e}", raw.database.url_file));
                DatabaseSource::Local { dir: PathBuf::new(), name: String::new() }
            }
        }
    } else {
        let dir = if raw.database.local_dir.is_empty() { data_dir.join("pg") } else { PathBuf::from(&raw.database.local_dir) };
        DatabaseSource::Local { dir: absolute(&dir), name: raw.database.local_name.clone() }
    };
    if !raw.database.local_name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') || raw.database.local_name.is_empty() {
        bad("database.local_name", "use letters, digits and underscores".into());
    }
    if raw.database.max_connections == 0 {
        bad("database.max_connections", "must be at least 1".into());
    }

    let store_url = if raw.store.url.is_empty() {
        file_url(&data_dir.join("store"))
    } else if raw.store.url.contains("://") {
        let scheme = raw.store.url.split("://").next().unwrap_or_default();
        if !["file", "s3", "s3a", "gs", "az", "abfs", "abfss", "memory"].contains(&scheme) {
            bad("store.url", format!("unsupported scheme `{scheme}` (file, s3, gs, az or memory)"));
        }
        raw.store.url.clone()
    } else {
        file_url(Path::new(&raw.store.url))
    };
    let inbox = if raw.ingest.inbox.is_empty() { data_dir.join("inbox").display().to_string() } else { raw.ingest.inbox.clone() };
    let ingest_format = raw.ingest.format.parse().unwrap_or_else(|m| {
        bad("ingest.format", m);
        InputFormat::Auto
    });

    let schedule = match cron::Schedule::from_str(&raw.schedule.cron) {
        Ok(s) => Some(s),
        Err(e) => {
            bad("schedule.cron", format!("invalid cron expression `{}`: {e}", raw.schedule.cron));
            None
        }
    };
    let mut schedule_fields = Vec::new();
    let mut seen = BTreeSet::new();
    for f in &raw.schedule.fields {
        match f.parse::<Field>() {
            Ok(field) if seen.insert(field) => schedule_fields.push(field),
            Ok(field) => bad("schedule.fields", format!("{field} listed twice")),
            Err(m) => bad("schedule.fields", m),
        }
    }
    if raw.schedule.max_parallel == 0 {
        bad("schedule.max_parallel", "must be at least 1".into());
    }
    let mut field_schedules = std::collections::BTreeMap::new();
    for entry in &raw.schedule.field_cron {
        let Some((f, expr)) = entry.split_once('=') else {
            bad("schedule.field_cron", format!("`{entry}` is not FIELD=CRON (e.g. \"BLG01=0 */5 * * * *\")"));
            continue;
        };
        match (f.parse::<Field>(), cron::Schedule::from_str(expr.trim())) {
            (Ok(field), Ok(sched)) => {
                if field_schedules.insert(field, sched).is_some() {
                    bad("schedule.field_cron", format!("{field} has two schedules"));
                }
            }
            (Err(m), _) => bad("schedule.field_cron", m),
            (_, Err(e)) => bad("schedule.field_cron", format!("invalid cron expression `{}` for {f}: {e}", expr.trim())),
        }
    }

    let model = (!raw.score.model.is_empty()).then(|| PathBuf::from(&raw.score.model));
    let provider = match raw.score.provider.as_str() {
        "cpu" => Provider::Cpu,
        "cuda" => Provider::Cuda,
        other => {
            bad("score.provider", format!("unknown provider `{other}` (expected cpu or cuda)"));
            Provider::Cpu
        }
    };
    let cuda_fallback = match raw.score.on_cuda_failure.as_str() {
        "error" => false,
        "fallback" => true,
        other => {
            bad("score.on_cuda_failure", format!("unknown policy `{other}` (expected error or fallback)"));
            false
        }
    };
    if raw.score.batch_size == 0 {
        bad("score.batch_size", "must be at least 1".into());
    }
    let purity = raw.score.threshold_purity.map(|p| ("score.threshold_purity", p));
    for (key, v) in purity.into_iter().chain([("score.threshold_recall", raw.score.threshold_recall)]) {
        if !(0.0..=1.0).contains(&v) {
            bad(key, format!("{v} is not a probability in [0, 1]"));
        }
    }
    if !(raw.score.fast_rise_max_days >= 0.0 && raw.score.fast_rise_max_days.is_finite()) {
        bad("score.fast_rise_max_days", format!("{} must be a number of days >= 0 (0 turns the check off)", raw.score.fast_rise_max_days));
    }
    if !(raw.score.fast_rise_min_mag > 0.0 && raw.score.fast_rise_min_mag.is_finite()) {
        bad("score.fast_rise_min_mag", format!("{} must be a magnitude > 0", raw.score.fast_rise_min_mag));
    }
    if raw.score.threshold_purity.is_some_and(|p| raw.score.threshold_recall > p) {
        bad("score.threshold_recall", "the high-recall threshold must not exceed the high-purity one".into());
    }

    let alert_thresholds = alert_thresholds(&raw.alertfinder, &mut bad);

    let (web, notify) = web_and_notify(&raw, sources, &mut bad);
    if raw.stream.memory_mb < 16 {
        bad("stream.memory_mb", "must be at least 16".into());
    }

    // What decides the results: the pages' and webhooks' settings are left out, so that
    // changing them does not make new run ids.
    let hash = {
        let mut value = toml::Value::try_from(&raw).unwrap_or(toml::Value::Table(Table::new()));
        if let Some(t) = value.as_table_mut() {
            t.remove("web");
            t.remove("notify");
            // Streaming changes how much is held at once, never what is found.
            t.remove("stream");
        }
        let canonical = toml::to_string(&value).unwrap_or_default();
        hex::encode(Sha256::digest(canonical.as_bytes()))
    };
    Some(Config {
        data_dir,
        database,
        max_connections: raw.database.max_connections,
        connect_timeout_s: raw.database.connect_timeout_s,
        store_url,
        inbox,
        ingest_format,
        schedule: schedule?,
        field_schedules,
        schedule_fields,
        max_parallel: raw.schedule.max_parallel,
        model,
        ort_library: (!raw.score.ort_library.is_empty()).then(|| PathBuf::from(&raw.score.ort_library)),
        provider,
        cuda_fallback,
        batch_size: raw.score.batch_size,
        threshold_purity: raw.score.threshold_purity,
        threshold_recall: raw.score.threshold_recall,
        hold: lensnet_stages::score::HoldParams {
            fast_rise: lensnet_stages::score::FastRiseParams {
                max_rise_days: raw.score.fast_rise_max_days,
                min_amplitude_mag: raw.score.fast_rise_min_mag,
                ..Default::default()
            },
            min_high_nights: raw.score.min_high_nights,
        },
        alert_thresholds,
        web,
        notify,
        stream_budget_bytes: (raw.stream.memory_mb.max(1) as usize) << 20,
        replay_whole_field_max_rows: raw.stream.replay_whole_field_max_rows,
        raw,
        hash,
    })
}

/// `[web]` and `[notify]`, with the webhook URLs from `notify.webhooks_file` and
/// LENSNET_WEBHOOK_URLS (whitespace- or comma-separated).
fn web_and_notify(raw: &RawConfig, sources: &Sources, bad: &mut impl FnMut(&str, String)) -> (WebSettings, NotifySettings) {
    let w = &raw.web;
    let bind = match w.bind.parse::<std::net::SocketAddr>() {
        Ok(a) => a,
        Err(_) => {
            bad("web.bind", format!("`{}` is not host:port (e.g. 127.0.0.1:8080)", w.bind));
            std::net::SocketAddr::from(([127, 0, 0, 1], 8080))
        }
    };
    let base_url = if w.base_url.trim().is_empty() { format!("http://{bind}") } else { w.base_url.trim().trim_end_matches('/').to_string() };
    if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
        bad("web.base_url", format!("`{base_url}` must start with http:// or https://"));
    }
    if w.session_hours == 0 {
        bad("web.session_hours", "must be at least 1".into());
    }
    if !(1..=1000).contains(&w.page_size) {
        bad("web.page_size", "must be between 1 and 1000".into());
    }
    if w.login_attempts_per_minute == 0 {
        bad("web.login_attempts_per_minute", "must be at least 1".into());
    }
    let web = WebSettings {
        bind,
        base_url,
        secure_cookies: w.secure_cookies,
        session: std::time::Duration::from_secs(w.session_hours * 3600),
        page_size: w.page_size,
        login_attempts_per_minute: w.login_attempts_per_minute,
    };
    let n = &raw.notify;
    let mut urls: Vec<String> = Vec::new();
    if !n.webhooks_file.is_empty() {
        match std::fs::read_to_string(&n.webhooks_file) {
            Ok(text) => urls.extend(text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from)),
            Err(e) => bad("notify.webhooks_file", format!("cannot read {}: {e}", n.webhooks_file)),
        }
    }
    if let Some(v) = sources.var("LENSNET_WEBHOOK_URLS") {
        urls.extend(v.split(|c: char| c.is_whitespace() || c == ',').filter(|s| !s.is_empty()).map(String::from));
    }
    for (i, u) in urls.iter().enumerate() {
        if !(u.starts_with("http://") || u.starts_with("https://")) {
            // Not the URL itself: it is a secret.
            bad("notify.webhooks", format!("webhook {} does not start with http:// or https://", i + 1));
        }
    }
    urls.sort();
    urls.dedup();
    if n.timeout_s == 0 {
        bad("notify.timeout_s", "must be at least 1".into());
    }
    if n.attempts_per_run == 0 || n.max_attempts < n.attempts_per_run {
        bad("notify.max_attempts", "attempts_per_run must be at least 1 and max_attempts at least attempts_per_run".into());
    }
    let notify = NotifySettings {
        webhooks: urls.into_iter().map(Secret).collect(),
        timeout: std::time::Duration::from_secs(n.timeout_s),
        attempts_per_run: n.attempts_per_run,
        max_attempts: n.max_attempts,
        max_age_hours: n.max_age_hours,
        on_replay: n.on_replay,
    };
    (web, notify)
}

/// The AlertFinder's parameters by field from `[alertfinder]`.
fn alert_thresholds(a: &RawAlertFinder, bad: &mut impl FnMut(&str, String)) -> lensnet_stages::alertfinder::stage::FieldThresholds {
    use lensnet_stages::alertfinder::{stage::FieldThresholds, AlertParams};
    let mut t = FieldThresholds::default();
    for (key, ok, what) in [
        ("alertfinder.high_n_high", a.high_n_high >= 1, "must be at least 1"),
        ("alertfinder.low_n_high", a.low_n_high >= 1, "must be at least 1"),
        ("alertfinder.high_delta_chi2", a.high_delta_chi2.is_finite() && a.high_delta_chi2 >= 0.0, "must be a finite number >= 0"),
        ("alertfinder.low_delta_chi2", a.low_delta_chi2.is_finite() && a.low_delta_chi2 >= 0.0, "must be a finite number >= 0"),
        ("alertfinder.window_days", a.window_days.is_finite() && a.window_days > 0.0, "must be a positive number of days"),
        ("alertfinder.high_sigma", a.high_sigma.is_finite() && a.high_sigma > 0.0, "must be positive"),
        ("alertfinder.bin_days", a.bin_days.is_finite() && a.bin_days >= 0.0, "must be 0 (off) or a positive number of days"),
        ("alertfinder.min_history_nights", a.min_history_nights >= 1, "must be at least 1"),
        ("alertfinder.max_window_days", a.max_window_days.is_finite() && a.max_window_days > 0.0, "must be a positive number of days"),
        ("alertfinder.min_n_high", a.min_n_high >= 1, "must be at least 1"),
        ("alertfinder.min_delta_chi2", a.min_delta_chi2.is_finite() && a.min_delta_chi2 >= 0.0, "must be a finite number >= 0"),
    ] {
        if !ok {
            bad(key, what.into());
        }
    }
    let common = |base: AlertParams| AlertParams {
        window_days: a.window_days,
        high_sigma: a.high_sigma,
        bin_days: a.bin_days,
        use_history: a.history,
        min_history_nights: a.min_history_nights,
        recurrent_veto: a.recurrent_veto,
        min_window_points: a.min_window_points,
        max_window_days: a.max_window_days,
        min_n_high: a.min_n_high,
        ref_window_points: a.ref_window_points,
        min_delta_chi2: a.min_delta_chi2,
        anchor_history: a.anchor_history,
        ..base
    };
    t.high = common(AlertParams { n_high: a.high_n_high, delta_chi2_min: a.high_delta_chi2, ..AlertParams::high_cadence() });
    t.low = common(AlertParams { n_high: a.low_n_high, delta_chi2_min: a.low_delta_chi2, ..AlertParams::low_cadence() });
    t.high_cadence_fields.clear();
    for f in &a.high_cadence_fields {
        match f.parse::<Field>() {
            Ok(field) if t.high_cadence_fields.insert(field) => {}
            Ok(field) => bad("alertfinder.high_cadence_fields", format!("{field} listed twice")),
            Err(m) => bad("alertfinder.high_cadence_fields", m),
        }
    }
    for entry in &a.field_thresholds {
        let key = "alertfinder.field_thresholds";
        let parsed = entry.split_once('=').and_then(|(f, v)| {
            let (n, d) = v.split_once(',')?;
            Some((f.trim(), n.trim().parse::<usize>().ok()?, d.trim().parse::<f64>().ok()?))
        });
        let Some((f, n, d)) = parsed else {
            bad(key, format!("`{entry}` is not FIELD=N_HIGH,DELTA_CHI2 (e.g. \"BLG04=7,300\")"));
            continue;
        };
        let field = match f.parse::<Field>() {
            Ok(field) => field,
            Err(m) => {
                bad(key, m);
                continue;
            }
        };
        if n == 0 || !(d.is_finite() && d >= 0.0) {
            bad(key, format!("`{entry}`: N_HIGH must be at least 1 and DELTA_CHI2 a finite number >= 0"));
            continue;
        }
        let p = AlertParams { n_high: n, delta_chi2_min: d, ..t.by_cadence(field).clone() };
        if t.per_field.insert(field, p).is_some() {
            bad(key, format!("{field} has two entries"));
        }
    }
    t
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().map(|d| d.join(p)).unwrap_or_else(|_| p.to_path_buf())
    }
}

fn file_url(p: &Path) -> String {
    format!("file://{}", absolute(p).display())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Sources {
        Sources { file: None, env: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() }
    }

    #[test]
    fn defaults_alone_are_valid() {
        let cfg = Config::load(&env(&[])).expect("defaults valid");
        assert_eq!(cfg.batch_size, 256);
        assert_eq!(cfg.schedule_fields, vec![Field(2), Field(14)]);
        assert!(cfg.store_url.starts_with("file:///"));
        assert!(matches!(cfg.database, DatabaseSource::Local { .. }));
    }

    #[test]
    fn the_purity_threshold_is_the_models_unless_configured() {
        let cfg = Config::load(&env(&[])).unwrap();
        assert_eq!((cfg.threshold_purity, cfg.threshold_recall), (None, 0.5), "unset by default: each model's own");
        let cfg = Config::load(&env(&[("LENSNET__SCORE__THRESHOLD_PURITY", "0.9")])).unwrap();
        assert_eq!(cfg.threshold_purity, Some(0.9));
        assert_ne!(cfg.hash, Config::load(&env(&[])).unwrap().hash, "a configured threshold is part of the audited configuration");
        let err = Config::load(&env(&[("LENSNET__SCORE__THRESHOLD_PURITY", "0.4")])).unwrap_err().to_string();
        assert!(err.contains("`score.threshold_recall`"), "recall above the configured purity: {err}");
        assert!(Config::load(&env(&[("LENSNET__SCORE__THRESHOLD_RECALL", "0.85")])).is_ok(), "the model's own purity is checked when the model loads");
    }

    #[test]
    fn alertfinder_thresholds_by_cadence_and_per_field() {
        let cfg = Config::load(&env(&[])).unwrap();
        let t = &cfg.alert_thresholds;
        assert_eq!((t.for_field(Field(2)).n_high, t.for_field(Field(2)).delta_chi2_min), (10, 400.0));
        assert_eq!((t.for_field(Field(14)).n_high, t.for_field(Field(14)).delta_chi2_min), (5, 250.0));
        assert_eq!(*t, lensnet_stages::alertfinder::stage::FieldThresholds::default(), "the defaults are KMTNet's");

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("lensnet.toml");
        std::fs::write(&file, "[alertfinder]\nfield_thresholds = [\"BLG04=7,300\", \"BLG42=12,500\"]\nlow_delta_chi2 = 200.0\nbin_days = 0.1\n").unwrap();
        let cfg = Config::load(&Sources { file: Some(file.clone()), env: vec![("LENSNET__ALERTFINDER__HIGH_N_HIGH".into(), "8".into())] }).unwrap();
        let t = &cfg.alert_thresholds;
        let p4 = t.for_field(Field(4));
        assert_eq!((p4.n_high, p4.delta_chi2_min, p4.bin_days), (7, 300.0, 0.1));
        assert_eq!((t.for_field(Field(42)).n_high, t.for_field(Field(42)).delta_chi2_min), (12, 500.0));
        assert_eq!((t.for_field(Field(2)).n_high, t.for_field(Field(2)).delta_chi2_min), (8, 400.0), "environment over defaults");
        assert_eq!(t.for_field(Field(14)).delta_chi2_min, 200.0);
        assert_ne!(cfg.hash, Config::load(&env(&[])).unwrap().hash, "thresholds are part of the audited configuration");

        std::fs::write(&file, "[alertfinder]\nfield_thresholds = [\"BLG04=7\", \"BLGX=5,250\", \"BLG05=0,250\", \"BLG06=5,1\", \"BLG06=5,2\"]\nwindow_days = 0.0\nhigh_cadence_fields = [\"XYZ\"]\n").unwrap();
        let err = Config::load(&Sources { file: Some(file), env: vec![] }).unwrap_err().to_string();
        for needle in ["`BLG04=7` is not FIELD=N_HIGH,DELTA_CHI2", "BLGX", "`BLG05=0,250`: N_HIGH must be at least 1", "BLG06 has two entries", "`alertfinder.window_days`", "`alertfinder.high_cadence_fields`"] {
            assert!(err.contains(needle), "missing {needle:?} in {err}");
        }
    }

    #[test]
    fn type_errors_are_reported_together_with_their_sources() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("lensnet.toml");
        std::fs::write(&file, "[score]\nbatch_size = \"big\"\n[schedule]\nfields = \"BLG02\"\nmax_parallel = 1.5\n[alertfinder]\nwindow_days = 30\n").unwrap();
        let err = Config::load(&Sources { file: Some(file.clone()), env: vec![("LENSNET__SCORE__THRESHOLD_PURITY".into(), "high".into())] })
            .unwrap_err()
            .to_string();
        for needle in ["`score.batch_size`", "`schedule.fields`", "`schedule.max_parallel`", "`score.threshold_purity`", "expected an integer, found a string"] {
            assert!(err.contains(needle), "missing {needle:?} in {err}");
        }
        assert!(!err.contains("window_days"), "an integer where a number is expected is fine: {err}");
    }

    #[test]
    fn raw_config_covers_every_default_key() {
        // The defaults file and the structs must agree, or deny_unknown_fields would reject
        // the defaults themselves; serialising back gives the same key tree.
        let table: Table = DEFAULTS_TOML.parse().unwrap();
        let raw = RawConfig::deserialize(Value::Table(table.clone())).unwrap();
        let back: Table = toml::to_string(&raw).unwrap().parse().unwrap();
        for (section, v) in &table {
            let keys: BTreeSet<_> = v.as_table().unwrap().keys().collect();
            let back_keys: BTreeSet<_> = back[section].as_table().unwrap().keys().collect();
            assert_eq!(keys, back_keys, "section {section}");
        }
    }

    #[test]
    fn env_overrides_with_types() {
        let cfg = Config::load(&env(&[
            ("LENSNET__SCORE__BATCH_SIZE", "64"),
            ("LENSNET__SCHEDULE__FIELDS", "BLG01, BLG42"),
            ("LENSNET__STORE__URL", "s3://bucket/lensnet"),
        ]))
        .unwrap();
        assert_eq!(cfg.batch_size, 64);
        assert_eq!(cfg.schedule_fields, vec![Field(1), Field(42)]);
        assert_eq!(cfg.store_url, "s3://bucket/lensnet");
    }

    #[test]
    fn per_field_schedules_replace_the_default_and_bad_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("lensnet.toml");
        std::fs::write(&file, "[schedule]\nfield_cron = [\"BLG01=0 */5 * * * *\"]\n").unwrap();
        let cfg = Config::load(&Sources { file: Some(file.clone()), env: vec![] }).unwrap();
        let from = chrono::DateTime::parse_from_rfc3339("2026-06-01T00:01:00Z").unwrap().with_timezone(&chrono::Utc);
        let next = |f: Field| cfg.schedule_for(f).after(&from).next().unwrap().to_rfc3339();
        assert_eq!(next(Field(1)), "2026-06-01T00:05:00+00:00");
        assert_eq!(next(Field(14)), "2026-06-01T00:15:00+00:00", "the default every-15-minutes schedule");
        std::fs::write(&file, "[schedule]\nfield_cron = [\"BLG01 0 * * * * *\", \"BLG02=nope\", \"XX=0 * * * * *\"]\n").unwrap();
        let err = Config::load(&Sources { file: Some(file), env: vec![] }).unwrap_err();
        assert_eq!(err.problems().len(), 3, "{err}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("lensnet.toml");
        std::fs::write(&file, "[store]\nurll = \"x\"\n[score]\nprovider = \"tpu\"\nthreshold_purity = 1.5\n[nonsense]\na = 1\n").unwrap();
        let sources = Sources {
            file: Some(file.clone()),
            env: vec![("LENSNET__SCHEDULE__CRON".into(), "not a cron".into()), ("LENSNET__SCORE__BOGUS".into(), "1".into())],
        };
        let err = Config::load(&sources).unwrap_err();
        let text = err.to_string();
        for needle in ["`store.urll`: unknown key", "`nonsense`: unknown key", "environment LENSNET__SCORE__BOGUS", "`score.provider`", "`score.threshold_purity`", "`schedule.cron`"] {
            assert!(text.contains(needle), "missing {needle} in:\n{text}");
        }
        assert!(text.contains(&file.display().to_string()));
        assert_eq!(err.problems().len(), 6, "{text}");
    }

    #[test]
    fn database_url_is_secret_and_comes_from_environment() {
        let cfg = Config::load(&env(&[("DATABASE_URL", "postgres://u:hunter2@db/x")])).unwrap();
        assert!(matches!(&cfg.database, DatabaseSource::Url(s) if s.expose().contains("hunter2")));
        assert!(!format!("{cfg:?}").contains("hunter2"));
        assert!(!cfg.to_toml().contains("hunter2"));
    }

    #[test]
    fn wrong_type_in_file_names_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "[score]\nbatch_size = \"many\"\n").unwrap();
        let err = Config::load(&Sources { file: Some(file), env: vec![] }).unwrap_err().to_string();
        assert!(err.contains("batch_size"), "{err}");
    }
}
