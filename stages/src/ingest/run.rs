//! The ingest driver: one input file at a time through plan (read, gunzip, compare with the
//! ledger, parse) → stage (write part files) → commit (swap manifests) → record (ledger row),
//! with quarantine for bad files and compaction at the end of a batch.
//!
//! The steps are public so that tests can stop between them to simulate a crash: a crash after
//! `stage` leaves only unlisted parts (invisible); after `commit` the rows are visible and the
//! ledger is behind, so the next run re-plans the same bytes, derives the same part names and
//! commits nothing new.

use std::collections::BTreeMap;
use std::io::Read;

use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use sha2::{Digest, Sha256};

use crate::ingest::columns::ColumnsSpec;
use crate::ingest::error::{IngestError, ParseError};
use crate::ingest::ledger::{FileLedger, FileStatus, LedgerEntry};
use crate::ingest::normalize::{Observations, SourceOverrides};
use crate::ingest::store::{observations_batch, part_name, Compacted, CompactionPolicy, PartInfo, PartitionKey, PhotometryStore};
use crate::ingest::text::Scan;
use crate::ingest::time::season_of;
use crate::ingest::{parse_any, Format};

/// Options of one ingest run (the CLI fills them from flags and configuration).
#[derive(Debug, Clone, Default)]
pub struct IngestOptions {
    pub format: Format,
    /// Metadata that wins over file and folder names.
    pub overrides: SourceOverrides,
    /// Column mapping for `Format::Columns` given by flags; a `NAME.columns.toml` sidecar next to
    /// a file wins over it for that file.
    pub columns: Option<ColumnsSpec>,
    /// Parse a final line without a line end instead of deferring it (inputs known complete).
    pub accept_unterminated_tail: bool,
    /// Compact touched partitions at the end of the run (`None`: never).
    pub compaction: Option<CompactionPolicy>,
    /// Only files of this field (by their KMTNet name, `KMTC14_I.pysis`); files whose name
    /// carries no field are read by every field's run (the ledger makes that harmless).
    pub only_field: Option<crate::photometry::Field>,
}

/// What happened to one input file.
#[derive(Debug, Clone, PartialEq)]
pub enum FileOutcome {
    /// Same bytes as last time: nothing to do.
    Unchanged,
    /// New rows written (0 when only blank/comment lines were added); `skipped` blank and comment
    /// lines (including commented-out epochs) were read and counted; `deferred_line` names a
    /// final unterminated line left for the next run.
    Ingested { rows: u64, skipped: u64, deferred_line: Option<u64> },
    /// A malformed line or unreadable file: copied to `copy`, nothing written from it.
    Quarantined { reason: String, copy: String },
    /// The already-ingested prefix changed: copied to `copy`, nothing written.
    Conflict { reason: String, copy: String },
    /// A store or ledger failure; the file is retried by the next run.
    Failed { error: String, retryable: bool },
}

#[derive(Debug, Clone, PartialEq)]
pub struct FileReport {
    /// Ledger key of the file.
    pub path: String,
    pub outcome: FileOutcome,
}

/// The result of a batch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IngestReport {
    pub files: Vec<FileReport>,
    pub compactions: Vec<Compacted>,
    /// Unlisted part objects removed from the partitions this run wrote.
    pub orphans_removed: usize,
    /// Entries of the input that could not be listed (a symlink loop, an unreadable folder),
    /// with the reason; the other inputs are ingested.
    pub skipped_entries: Vec<String>,
}

impl IngestReport {
    pub fn rows_added(&self) -> u64 {
        self.files
            .iter()
            .map(|f| match f.outcome {
                FileOutcome::Ingested { rows, .. } => rows,
                _ => 0,
            })
            .sum()
    }

    pub fn count(&self, pred: impl Fn(&FileOutcome) -> bool) -> usize {
        self.files.iter().filter(|f| pred(&f.outcome)).count()
    }

    pub fn quarantined(&self) -> usize {
        self.count(|o| matches!(o, FileOutcome::Quarantined { .. } | FileOutcome::Conflict { .. }))
    }

    pub fn failed(&self) -> usize {
        self.count(|o| matches!(o, FileOutcome::Failed { .. }))
    }
}

/// The first step's decision.
#[derive(Debug)]
pub enum Plan {
    Unchanged,
    /// Copy `text` aside and record `entry` (status quarantined or conflict).
    Quarantine { entry: LedgerEntry, text: Vec<u8> },
    Write(Prepared),
}

/// Parsed rows, split by partition, with the ledger row to record once they are committed.
#[derive(Debug)]
pub struct Prepared {
    pub entry: LedgerEntry,
    pub deferred_line: Option<u64>,
    pub skipped: u64,
    pub parts: Vec<(PartitionKey, String, arrow::array::RecordBatch)>,
    /// The file's text (kept only for a first look, to quarantine it as a copy).
    pub text: Vec<u8>,
    /// The Δflux sign is the format's default (no magnitudes to measure it from, no earlier
    /// ingest): [`sign_from_i_band`] may still decide it from the star's I band.
    pub sign_unmeasured: bool,
}

/// Parts written but not yet listed.
#[derive(Debug)]
pub struct Staged {
    pub entry: LedgerEntry,
    pub deferred_line: Option<u64>,
    pub skipped: u64,
    pub parts: Vec<(PartitionKey, PartInfo)>,
}

pub fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// A gzip input may expand to at most this many times its size …
pub const GUNZIP_MAX_RATIO: u64 = 100;
/// … and never past this many bytes (a prime-field season of one star is a few MB of text).
pub const GUNZIP_MAX_BYTES: u64 = 512 << 20;

fn gunzip_limit(compressed: usize) -> u64 {
    (compressed as u64).saturating_mul(GUNZIP_MAX_RATIO).clamp(16 << 20, GUNZIP_MAX_BYTES)
}

/// Gunzips `.gz` inputs (by name or magic bytes); other inputs are returned as they are, with
/// the expansion bounded (see [`GUNZIP_MAX_RATIO`]).
pub fn decode(key: &str, raw: &[u8]) -> Result<Vec<u8>, ParseError> {
    if !(key.ends_with(".gz") || raw.starts_with(&[0x1f, 0x8b])) {
        return Ok(raw.to_vec());
    }
    let limit = gunzip_limit(raw.len());
    let mut out = Vec::with_capacity(raw.len() * 4);
    match flate2::read::MultiGzDecoder::new(raw).take(limit + 1).read_to_end(&mut out) {
        Ok(_) if out.len() as u64 > limit => Err(ParseError::TooLarge {
            file: key.rsplit('/').next().unwrap_or(key).to_string(),
            reason: format!(
                "it expands past {limit} bytes from {} compressed (at most {GUNZIP_MAX_RATIO}x, {GUNZIP_MAX_BYTES} bytes): not a photometry file, or one to split",
                raw.len()
            ),
        }),
        Ok(_) => Ok(out),
        Err(e) => Err(ParseError::Invalid {
            file: key.rsplit('/').next().unwrap_or(key).to_string(),
            line: out.iter().filter(|&&b| b == b'\n').count() as u64 + 1,
            reason: format!("cannot decompress gzip: {e}"),
        }),
    }
}

fn fresh_entry(key: &str, format: Format) -> LedgerEntry {
    LedgerEntry {
        path: key.to_string(),
        size_bytes: 0,
        sha256: sha256_hex(b""),
        seen_sha256: String::new(),
        ingested_bytes: 0,
        lines: 0,
        rows: 0,
        skipped_lines: 0,
        last_line: String::new(),
        status: FileStatus::Ingested,
        reason: None,
        format: format.name().to_string(),
        star: None,
        field: None,
        site: None,
        band: None,
        flux_sign: 1,
        time_system: String::new(),
        baseline_flux: None,
        mag_zp: None,
    }
}

/// Changes whenever ingest's rules change what it accepts: quarantined files are then read again.
pub const INGEST_RULES: &str = "lensnet-ingest-rules/2";

/// What a quarantined file's ledger row keeps as `seen_sha256`: its bytes' hash under these rules.
fn quarantine_seen(seen: &str) -> String {
    sha256_hex(format!("{seen}\n{INGEST_RULES}").as_bytes())
}

/// Quarantines `raw` (the file `key`) for `reason` found before parsing (its sidecar), unless
/// the same bytes were already looked at.
fn quarantine_plan(key: &str, raw: &[u8], prior: Option<LedgerEntry>, opts: &IngestOptions, reason: String) -> Plan {
    // Seen under this reason: once the sidecar is mended the file's own bytes are new again.
    let seen = sha256_hex(&[raw, b"\0", reason.as_bytes()].concat());
    if prior.as_ref().is_some_and(|p| p.seen_sha256 == quarantine_seen(&seen) && p.status == FileStatus::Quarantined) {
        return Plan::Unchanged;
    }
    let mut e = prior.unwrap_or_else(|| fresh_entry(key, opts.format.resolve(key, true)));
    e.seen_sha256 = seen;
    e.size_bytes = raw.len() as u64;
    e.status = FileStatus::Quarantined;
    e.reason = Some(reason);
    Plan::Quarantine { entry: e, text: raw.to_vec() }
}

/// Step 1: decide what to do with the bytes `raw` of the input `key`.
pub async fn plan(
    key: &str,
    raw: &[u8],
    sidecar: Option<&ColumnsSpec>,
    ledger: &dyn FileLedger,
    opts: &IngestOptions,
) -> Result<Plan, IngestError> {
    let prior = ledger.lookup(key).await?;
    plan_with_prior(key, raw, sidecar, prior, opts)
}

/// [`plan`] once the ledger's row of `key` is known: pure computation (decode, parse, the
/// part batches), so that several files can be planned in parallel.
pub fn plan_with_prior(
    key: &str,
    raw: &[u8],
    sidecar: Option<&ColumnsSpec>,
    prior: Option<LedgerEntry>,
    opts: &IngestOptions,
) -> Result<Plan, IngestError> {
    let format = opts.format.resolve(key, sidecar.is_some() || opts.columns.is_some());
    let seen = sha256_hex(raw);
    if let Some(p) = &prior {
        // `seen_sha256` of a gzip input is taken over the compressed bytes, so an unchanged
        // archive is skipped without inflating it.
        // A quarantined file is looked at again when the ingest rules changed (a newer lensnet
        // may read what an older one could not).
        let unchanged = if p.status == FileStatus::Quarantined { p.seen_sha256 == quarantine_seen(&seen) } else { p.seen_sha256 == seen };
        if unchanged {
            return Ok(Plan::Unchanged);
        }
    }
    let mut base = prior.clone().unwrap_or_else(|| fresh_entry(key, format));
    base.seen_sha256 = seen.clone();
    base.size_bytes = raw.len() as u64;
    let quarantine = |mut e: LedgerEntry, status: FileStatus, reason: String, text: Vec<u8>| {
        e.status = status;
        e.reason = Some(reason);
        Plan::Quarantine { entry: e, text }
    };
    let text = match decode(key, raw) {
        Ok(t) => t,
        Err(e) => return Ok(quarantine(base, FileStatus::Quarantined, e.to_string(), raw.to_vec())),
    };
    base.size_bytes = text.len() as u64;
    let (start, first_line, prior_ok) = match &prior {
        Some(p) if p.ingested_bytes > 0 => {
            let ib = usize::try_from(p.ingested_bytes).unwrap_or(usize::MAX);
            if text.len() < ib || sha256_hex(&text[..ib]) != p.sha256 {
                let reason = format!(
                    "the first {ib} bytes, already ingested, changed (sha256 differs): the file was rewritten, not appended to"
                );
                return Ok(quarantine(base, FileStatus::Conflict, reason, text));
            }
            (ib, p.lines + 1, prior.as_ref())
        }
        _ => (0, 1, None),
    };
    let parsed = parse_any(format, &text, start, first_line, key, &opts.overrides, sidecar.or(opts.columns.as_ref()), prior_ok, opts.accept_unterminated_tail);
    let (scan, obs) = match parsed {
        Ok(v) => v,
        Err(e) => return Ok(quarantine(base, FileStatus::Quarantined, e.to_string(), text)),
    };
    let mut prepared = prepare(key, base, &text, start, &scan, &obs)?;
    if start == 0 {
        // Kept (moved, not copied) for a first look: a copy of an ingested file is quarantined.
        prepared.text = text;
    }
    Ok(Plan::Write(prepared))
}

fn prepare(key: &str, mut e: LedgerEntry, text: &[u8], start: usize, scan: &Scan, obs: &Observations) -> Result<Prepared, IngestError> {
    let chunk_sha = sha256_hex(&text[start..scan.end]);
    let mut by_season: BTreeMap<i32, Vec<usize>> = BTreeMap::new();
    for (i, &t) in obs.hjd.iter().enumerate() {
        by_season.entry(season_of(t)).or_default().push(i);
    }
    let mut parts = Vec::new();
    for (season, rows) in by_season {
        // The bucket is resolved when the part is staged (it needs the store's layout).
        let pk = PartitionKey { season, field: obs.meta.field, site: obs.meta.site.clone(), bucket: None };
        let name = part_name(format!("{key}\n{start}\n{}\n{chunk_sha}\n{season}", scan.end).as_bytes());
        parts.push((pk, name, observations_batch(obs, key, &rows)?));
    }
    e.status = FileStatus::Ingested;
    let mut notes: Vec<String> = Vec::new();
    if let Some(l) = scan.deferred_line {
        notes.push(format!("line {l} has no line end yet; deferred to the next run"));
    }
    let conflicts: Vec<&(u32, u32, bool)> = obs.repeated.iter().filter(|r| r.2).collect();
    let duplicates = obs.repeated.len() - conflicts.len();
    if duplicates > 0 {
        notes.push(format!("{duplicates} line(s) repeat an earlier epoch exactly and were not stored again"));
    }
    if let Some((line, of, _)) = conflicts.first() {
        notes.push(format!(
            "{} line(s) give an epoch already given with other values (first: line {line} repeats the time of line {of}); the first value of each epoch is kept",
            conflicts.len()
        ));
    }
    e.reason = (!notes.is_empty()).then(|| notes.join("; "));
    e.sha256 = sha256_hex(&text[..scan.end]);
    e.ingested_bytes = scan.end as u64;
    e.lines += scan.lines;
    e.skipped_lines += scan.skipped + obs.repeated.len() as u64;
    e.rows += obs.len() as u64;
    if let Some(l) = &scan.last_line {
        e.last_line = l.clone();
    }
    e.star = Some(obs.meta.star.0.clone());
    e.field = Some(obs.meta.field.name());
    e.site = Some(obs.meta.site.clone());
    e.band = Some(obs.meta.band.code().to_string());
    // Sign and time system are only fixed once there was data to decide them from.
    if e.rows > 0 {
        e.flux_sign = obs.flux_sign;
        e.time_system = obs.time_system.name().to_string();
        e.baseline_flux = obs.baseline_flux.is_finite().then_some(obs.baseline_flux);
        e.mag_zp = obs.mag_zp.is_finite().then_some(obs.mag_zp);
    }
    let first_look = start == 0;
    Ok(Prepared {
        entry: e,
        deferred_line: scan.deferred_line,
        skipped: scan.skipped,
        parts,
        text: Vec::new(),
        sign_unmeasured: first_look && obs.sign_source == crate::ingest::normalize::SignSource::FormatDefault && !obs.is_empty(),
    })
}

impl Prepared {
    /// Step 2: write the part files (invisible until committed).
    pub async fn stage(self, out: &PhotometryStore) -> Result<Staged, IngestError> {
        let mut parts = Vec::with_capacity(self.parts.len());
        let star = self.entry.star.clone().unwrap_or_default();
        for (pk, name, batch) in &self.parts {
            let pk = out.partition_for(pk.season, pk.field, &pk.site, &star).await?;
            parts.push((pk.clone(), out.stage_part(&pk, name, batch).await?));
        }
        Ok(Staged { entry: self.entry, deferred_line: self.deferred_line, skipped: self.skipped, parts })
    }
}

impl Staged {
    /// Step 3: list the parts in their manifests (each partition swapped atomically). Returns the
    /// ledger row to record.
    pub async fn commit(self, out: &PhotometryStore) -> Result<(LedgerEntry, FileOutcome), IngestError> {
        for (pk, info) in &self.parts {
            out.commit_parts(pk, std::slice::from_ref(info)).await?;
        }
        let outcome = self.outcome();
        Ok((self.entry, outcome))
    }

    /// What the file's report says once its parts are committed.
    pub fn outcome(&self) -> FileOutcome {
        FileOutcome::Ingested { rows: self.parts.iter().map(|p| p.1.rows).sum(), skipped: self.skipped, deferred_line: self.deferred_line }
    }
}

/// The regular files under `root` (following symlinks to files and folders, each folder once),
/// as `/`-separated paths relative to it, and the entries that could not be read, with why.
fn list_local(root: &std::path::Path) -> (Vec<String>, Vec<String>) {
    let mut files = Vec::new();
    let mut skipped = Vec::new();
    let mut seen_dirs = std::collections::HashSet::new();
    let mut stack: Vec<(std::path::PathBuf, String)> = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        match std::fs::canonicalize(&dir) {
            Ok(c) => {
                if !seen_dirs.insert(c) {
                    skipped.push(format!("{}: a symlink loop or a second link to a folder already read", dir.display()));
                    continue;
                }
            }
            Err(e) => {
                skipped.push(format!("{}: {e}", dir.display()));
                continue;
            }
        }
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) => {
                skipped.push(format!("{}: {e}", dir.display()));
                continue;
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    skipped.push(format!("{}: {e}", dir.display()));
                    continue;
                }
            };
            let path = entry.path();
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                skipped.push(format!("{}: the name is not UTF-8", path.display()));
                continue;
            };
            let child = if rel.is_empty() { name.clone() } else { format!("{rel}/{name}") };
            match std::fs::metadata(&path) {
                Ok(m) if m.is_dir() => stack.push((path, child)),
                Ok(m) if m.is_file() => {
                    if Path::parse(&child).is_ok() {
                        files.push(child);
                    } else {
                        skipped.push(format!("{}: not a valid object name", path.display()));
                    }
                }
                // FIFOs, sockets, devices: never read (a FIFO would block the run).
                Ok(_) => skipped.push(format!("{}: not a regular file", path.display())),
                Err(e) => skipped.push(format!("{}: {e}", path.display())),
            }
        }
    }
    files.sort();
    skipped.sort();
    (files, skipped)
}

/// (hjd, flux) of every row of a prepared file, sorted by time.
fn epochs_of(p: &Prepared) -> Vec<(f64, f64)> {
    let mut v = Vec::new();
    for (_, _, b) in &p.parts {
        let col = |n: &str| b.column_by_name(n).and_then(|c| c.as_any().downcast_ref::<arrow::array::Float64Array>().cloned());
        if let (Some(h), Some(f)) = (col("hjd"), col("flux")) {
            v.extend(h.values().iter().copied().zip(f.values().iter().copied()));
        }
    }
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    v
}

/// Keeps the I band of the star being read (files come in name order, a star's files together),
/// so memory holds one star's I band, not the run's.
fn remember_i_band(p: &Prepared, i_band: &mut std::collections::HashMap<(String, String), Vec<(f64, f64)>>) {
    if i_band.keys().next().is_some_and(|(star, _)| Some(star) != p.entry.star.as_ref()) {
        i_band.clear();
    }
    if p.entry.band.as_deref() == Some("I") && !p.sign_unmeasured {
        if let (Some(star), Some(site)) = (&p.entry.star, &p.entry.site) {
            i_band.entry((star.clone(), site.clone())).or_default().extend(epochs_of(p));
        }
    }
}

/// Epochs of the two bands closer than this (days) are compared; KMTNet takes its V frames
/// between I frames of the same field.
const BAND_PAIR_DAYS: f64 = 0.05;

/// The sign of a V file without magnitudes, from its star's I band at the same site (planned in
/// this run, else stored): the two bands of one star brighten together, so a V Δflux that
/// anti-correlates with the I band (|r| > 0.3 over at least 10 pairs) was written with the other
/// convention and is negated. Too few pairs, or no clear correlation: the format's default stays.
async fn sign_from_i_band(
    p: &mut Prepared,
    planned: &std::collections::HashMap<(String, String), Vec<(f64, f64)>>,
    out: &PhotometryStore,
) -> Result<(), IngestError> {
    let (Some(star), Some(site)) = (p.entry.star.clone(), p.entry.site.clone()) else { return Ok(()) };
    let v = epochs_of(p);
    let mut i = planned.get(&(star.clone(), site.clone())).cloned().unwrap_or_default();
    if i.is_empty() {
        for (pk, _, _) in &p.parts {
            // The partition the star's stored rows are in (the parts' own keys are resolved
            // to a bucket only when they are staged).
            let bucket = out.layout(pk.season, pk.field).await?.map(|l| crate::ingest::bucket_of(&star, l.buckets));
            let pk = PartitionKey { bucket, ..pk.clone() };
            for b in out.read_partition(&pk).await? {
                let stars = b.column_by_name("star").and_then(|c| c.as_any().downcast_ref::<arrow::array::StringArray>().cloned());
                let bands = b.column_by_name("band").and_then(|c| c.as_any().downcast_ref::<arrow::array::StringArray>().cloned());
                let col = |n: &str| b.column_by_name(n).and_then(|c| c.as_any().downcast_ref::<arrow::array::Float64Array>().cloned());
                if let (Some(st), Some(bd), Some(h), Some(f)) = (stars, bands, col("hjd"), col("flux")) {
                    for k in 0..b.num_rows() {
                        if st.value(k) == star && bd.value(k) == "I" {
                            i.push((h.value(k), f.value(k)));
                        }
                    }
                }
            }
        }
        i.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    let mut j = 0;
    for &(t, fv) in &v {
        while j + 1 < i.len() && (i[j + 1].0 - t).abs() <= (i[j].0 - t).abs() {
            j += 1;
        }
        if let Some(&(ti, fi)) = i.get(j) {
            if (ti - t).abs() <= BAND_PAIR_DAYS && fv.is_finite() && fi.is_finite() {
                xs.push(fv);
                ys.push(fi);
            }
        }
    }
    if xs.len() < 10 {
        return Ok(());
    }
    match crate::ingest::normalize::pearson(&xs, &ys) {
        Some(r) if r < -crate::ingest::normalize::SIGN_MIN_ABS_CORR => {
            tracing::info!(star = %star, site = %site, r, pairs = xs.len(), "V-band sign taken from the I band: negated");
            let mut parts = Vec::with_capacity(p.parts.len());
            for (pk, name, b) in std::mem::take(&mut p.parts) {
                let idx = b.schema().index_of("flux").expect("photometry schema has flux");
                let f = b.column(idx).as_any().downcast_ref::<arrow::array::Float64Array>().expect("flux is Float64");
                let neg: arrow::array::ArrayRef = std::sync::Arc::new(arrow::array::Float64Array::from_iter_values(f.values().iter().map(|x| -x)));
                let mut cols = b.columns().to_vec();
                cols[idx] = neg;
                parts.push((pk, name, arrow::array::RecordBatch::try_new(b.schema(), cols)?));
            }
            p.parts = parts;
            p.entry.flux_sign = -p.entry.flux_sign;
        }
        _ => {}
    }
    Ok(())
}

/// A file seen for the first time whose text is exactly that of a file already ingested (or
/// planned earlier in this run) under another name, a moved file or a `.gz` copy beside the
/// original, is quarantined as a copy instead of storing every epoch twice.
async fn copy_of_ingested(
    key: &str,
    prepared: Prepared,
    ledger: &dyn FileLedger,
    contents: &mut std::collections::HashMap<(String, u64), String>,
) -> Result<Plan, IngestError> {
    let e = &prepared.entry;
    // Only a first look (nothing of this file stored before) with data can be a copy.
    if e.rows == 0 || prepared.text.is_empty() {
        return Ok(Plan::Write(prepared));
    }
    let id = (e.sha256.clone(), e.ingested_bytes);
    let other = match contents.get(&id) {
        Some(k) if k != key => Some(k.clone()),
        _ => ledger.find_content(&id.0, id.1, key).await?,
    };
    let Some(other) = other else {
        contents.insert(id, key.to_string());
        return Ok(Plan::Write(prepared));
    };
    let mut entry = prepared.entry;
    let reason = format!("the same text as {other}, which is ingested: a copy (moved, or compressed beside it) is not stored twice");
    entry.status = FileStatus::Quarantined;
    entry.reason = Some(reason);
    entry.rows = 0;
    entry.lines = 0;
    entry.ingested_bytes = 0;
    entry.sha256 = sha256_hex(b"");
    entry.skipped_lines = 0;
    Ok(Plan::Quarantine { entry, text: prepared.text })
}

/// A file's store or ledger failure, logged; the next run retries the file.
fn failed_file(key: &str, e: &IngestError) -> FileOutcome {
    tracing::error!(file = %key, error = %e, retryable = e.is_retryable(), "ingest of file failed");
    FileOutcome::Failed { error: e.to_string(), retryable: e.is_retryable() }
}

/// Files whose parts [`ingest_location`] commits together: one manifest swap per partition for
/// the whole group instead of one per file. Per-file commits made a first bulk ingest quadratic
/// (every file rewrote a manifest listing all the files before it).
pub const COMMIT_GROUP_FILES: usize = 512;

/// Commit a group of staged files (index into the report, staged parts) and record their ledger
/// rows in order; a file whose partition commit or ledger row fails is reported `Failed` and
/// retried by the next run (its part names are deterministic, so a retry lists nothing twice).
async fn commit_group(
    group: Vec<(usize, Staged)>,
    out: &PhotometryStore,
    ledger: &dyn FileLedger,
    report: &mut IngestReport,
    touched: &mut Vec<PartitionKey>,
) {
    let mut by_partition: BTreeMap<PartitionKey, (Vec<PartInfo>, Vec<usize>)> = BTreeMap::new();
    for (g, (_, staged)) in group.iter().enumerate() {
        for (pk, info) in &staged.parts {
            let e = by_partition.entry(pk.clone()).or_default();
            e.0.push(info.clone());
            e.1.push(g);
        }
    }
    // Per file of the group: the first commit failure of one of its partitions.
    let mut failed: Vec<Option<FileOutcome>> = vec![None; group.len()];
    for (pk, (infos, members)) in by_partition {
        match out.commit_parts(&pk, &infos).await {
            Ok(_) => touched.push(pk),
            Err(e) => {
                tracing::error!(partition = %out.partition_dir(&pk), error = %e, files = members.len(), "manifest commit failed");
                let outcome = FileOutcome::Failed { error: format!("commit of {}: {e}", out.partition_dir(&pk)), retryable: e.is_retryable() };
                for g in members {
                    failed[g].get_or_insert_with(|| outcome.clone());
                }
            }
        }
    }
    for ((idx, staged), fail) in group.into_iter().zip(failed) {
        report.files[idx].outcome = match fail {
            Some(f) => f,
            None => match ledger.record(&staged.entry).await {
                Ok(()) => staged.outcome(),
                Err(e) => failed_file(&report.files[idx].path, &IngestError::from(e)),
            },
        };
    }
}

/// All steps for one file's bytes.
pub async fn ingest_bytes(
    key: &str,
    raw: &[u8],
    sidecar: Option<&ColumnsSpec>,
    out: &PhotometryStore,
    ledger: &dyn FileLedger,
    opts: &IngestOptions,
) -> Result<(FileOutcome, Vec<PartitionKey>), IngestError> {
    let p = plan(key, raw, sidecar, ledger, opts).await?;
    execute(key, p, out, ledger).await
}

/// Steps 2 and 3 of one file's plan: quarantine, or stage and commit its parts; then its ledger row.
async fn execute(key: &str, plan: Plan, out: &PhotometryStore, ledger: &dyn FileLedger) -> Result<(FileOutcome, Vec<PartitionKey>), IngestError> {
    match plan {
        Plan::Unchanged => Ok((FileOutcome::Unchanged, vec![])),
        Plan::Quarantine { mut entry, text } => {
            let bytes_sha = entry.seen_sha256.clone();
            if entry.status == FileStatus::Quarantined {
                entry.seen_sha256 = quarantine_seen(&bytes_sha);
            }
            let reason = entry.reason.clone().unwrap_or_default();
            let copy = out.quarantine(key, &bytes_sha, &text, &reason).await?;
            tracing::warn!(file = key, reason = %reason, copy = %copy, "input quarantined");
            ledger.record(&entry).await?;
            Ok((
                if entry.status == FileStatus::Conflict {
                    FileOutcome::Conflict { reason, copy }
                } else {
                    FileOutcome::Quarantined { reason, copy }
                },
                vec![],
            ))
        }
        Plan::Write(p) => {
            let keys: Vec<PartitionKey> = p.parts.iter().map(|x| x.0.clone()).collect();
            let (entry, outcome) = p.stage(out).await?.commit(out).await?;
            ledger.record(&entry).await?;
            Ok((outcome, keys))
        }
    }
}

/// True for names ingest reads (possibly `.gz`): `.pysis`, `.pysis5`, `.diapl`, OGLE
/// `phot.dat`/`.dat` (`.pysis.dat` is pySIS), and
/// anything with a columns mapping.
pub fn is_input_name(name: &str, has_mapping: bool) -> bool {
    let n = name.strip_suffix(".gz").unwrap_or(name);
    if n.ends_with(".columns.toml") || n.starts_with('.') || n.starts_with('_') {
        return false;
    }
    n.ends_with(".pysis") || n.ends_with(".pysis5") || n.ends_with(".diapl") || n.ends_with(".dat") || has_mapping
}

/// Compacts (with `policy`; `None`: no compaction) every partition of `only_field` (every
/// field when `None`) and of `touched`, then removes their debris, under the store's writer
/// lock (`_held`). Returns the compactions and the orphan parts removed.
///
/// Every partition of the fields in scope, not only those written now: a run killed between
/// its commits and its compaction, or during a compaction's deletes, leaves debris that no
/// later write would touch.
pub async fn compact_locked(
    out: &PhotometryStore,
    policy: Option<&CompactionPolicy>,
    only_field: Option<crate::photometry::Field>,
    touched: &[PartitionKey],
    _held: &crate::ingest::ledger::WriterLock,
) -> Result<(Vec<Compacted>, usize), IngestError> {
    let mut in_scope = out.partitions().await?;
    in_scope.retain(|k| only_field.is_none_or(|f| f == k.field) || touched.contains(k));
    let mut compactions = Vec::new();
    if let Some(policy) = policy {
        // Two partitions at a time (each merge holds at most one full part).
        let runs = in_scope.iter().cloned().map(|k| {
            let (o, p) = (out.clone(), *policy);
            async move { tokio::spawn(async move { o.compact(&k, &p).await }).await }
        });
        let done: Vec<_> = futures::stream::iter(runs).buffered(2).collect().await;
        for r in done {
            if let Some(c) = r.map_err(|e| IngestError::Corrupt { path: String::new(), reason: format!("a compaction task died: {e}") })?? {
                compactions.push(c);
            }
        }
    }
    // Under the writer lock every unlisted part is debris (a crashed run's staged part, a
    // crashed compaction's leftovers): remove it so that glob readers see each row once.
    let mut orphans = 0;
    for k in &in_scope {
        orphans += out.remove_orphans(k).await?;
    }
    Ok((compactions, orphans))
}

/// [`compact_locked`] for `field` (every field when `None`), taking the store's writer lock
/// through `ledger` (waiting for an ingest that holds it).
pub async fn compact_field(out: &PhotometryStore, ledger: &dyn FileLedger, policy: &CompactionPolicy, field: Option<crate::photometry::Field>) -> Result<(Vec<Compacted>, usize), IngestError> {
    let writer = ledger.lock_writer(&out.identity()).await?;
    compact_locked(out, Some(policy), field, &[], &writer).await
}

/// Ingests every input under `input` (a local file or directory, or a store URL) into `out`.
/// A bad file is quarantined and the batch goes on; a store or ledger failure of one file is
/// reported as `Failed` and the batch goes on too (the next run retries that file).
pub async fn ingest_location(
    input: &str,
    out: &PhotometryStore,
    ledger: &dyn FileLedger,
    opts: &IngestOptions,
) -> Result<IngestReport, IngestError> {
    // One writer per store, across processes and hosts, from the first staged part to the last
    // compaction: a second ingest waits here.
    let writer = ledger.lock_writer(&out.identity()).await?;
    ingest_location_locked(input, out, ledger, opts, &writer).await
}

/// [`ingest_location`] for a caller that already holds the store's writer lock (`_held`).
pub async fn ingest_location_locked(
    input: &str,
    out: &PhotometryStore,
    ledger: &dyn FileLedger,
    opts: &IngestOptions,
    _held: &crate::ingest::ledger::WriterLock,
) -> Result<IngestReport, IngestError> {
    let local = std::path::Path::new(input);
    let (root, only) = if !input.contains("://") && local.is_file() {
        let parent = local.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
        (parent.to_string_lossy().into_owned(), local.file_name().map(|n| n.to_string_lossy().into_owned()))
    } else {
        (input.to_string(), None)
    };
    let opened = crate::store::open_store(&root, false)
        .map_err(|e| IngestError::StoreUrl { location: input.to_string(), reason: e.to_string() })?;
    // One bad entry (a symlink loop, a file we may not read) is reported and skipped; it never
    // hides the other inputs.
    let mut report = IngestReport::default();
    let mut names: Vec<Path> = if input.contains("://") && !input.starts_with("file://") {
        let listed: Vec<object_store::Result<object_store::ObjectMeta>> = opened.store.list(Some(&opened.prefix)).collect().await;
        let mut names = Vec::with_capacity(listed.len());
        for m in listed {
            match m {
                Ok(m) => names.push(m.location),
                Err(e) => report.skipped_entries.push(crate::ingest::ledger::db_text(&e.to_string())),
            }
        }
        names
    } else {
        // Our own walk of a local folder: object_store's stops at the first entry it cannot
        // read (a symlink loop anywhere made ingest take no file at all).
        let (rel, skipped) = list_local(std::path::Path::new(&opened.location));
        report.skipped_entries.extend(skipped.iter().map(|e| crate::ingest::ledger::db_text(e)));
        rel.iter().filter_map(|r| Path::parse(r).ok()).collect()
    };
    for e in &report.skipped_entries {
        tracing::warn!(input = %input, entry = %e, "input entry skipped");
    }
    names.sort();
    let all: std::collections::HashSet<String> = names.iter().map(|p| p.to_string()).collect();
    let mut touched: Vec<PartitionKey> = Vec::new();
    // The inputs, in name order: (object path, ledger key, sidecar path).
    let mut inputs: Vec<(Path, String, Option<String>)> = Vec::new();
    for path in names {
        let rel = path.to_string();
        let name = path.filename().unwrap_or_default().to_string();
        if let Some(o) = &only {
            if &name != o {
                continue;
            }
        }
        let sidecar_path = [format!("{rel}.columns.toml"), format!("{}.columns.toml", rel.rsplit_once('.').map(|x| x.0).unwrap_or(&rel))]
            .into_iter()
            .find(|p| all.contains(p));
        if !is_input_name(&name, sidecar_path.is_some() || (opts.columns.is_some() && only.is_some())) {
            continue;
        }
        if let Some(want) = opts.only_field {
            let stem = name.split('.').next().unwrap_or_default();
            if crate::ingest::pysis::kmtnet_name(stem).is_some_and(|(_, f, _)| f != want) {
                continue;
            }
        }
        let key = format!("{}/{}", opened.location.trim_end_matches('/'), rel.strip_prefix(opened.prefix.as_ref()).unwrap_or(&rel).trim_start_matches('/'));
        inputs.push((path, key, sidecar_path));
    }
    // A field-season written for the first time gets its bucket count from the field's size:
    // each input file is one star's curve at one site in one band, about four files a star
    // (three sites' I band, and V).
    let hinted;
    let out = if out.bucket_hint == 0 {
        hinted = out.with_bucket_hint((inputs.len() as u64).div_ceil(4));
        &hinted
    } else {
        out
    };
    // In batches: read each file and its ledger row, parse the batch in parallel (the CPU-bound
    // part), then stage the files' parts one after the other in name order. Every
    // COMMIT_GROUP_FILES files (and at the end) the staged parts are listed in their manifests,
    // one swap per partition, and then the files' ledger rows are recorded in name order: a crash
    // before a ledger row leaves its file to the next run, which stages the same part names and
    // lists nothing twice.
    let batch_len = 4 * rayon::current_num_threads().max(1);
    // I-band photometry planned in this run, by (star, site): for V files without magnitudes.
    let mut i_band: std::collections::HashMap<(String, String), Vec<(f64, f64)>> = std::collections::HashMap::new();
    // Content of the files this run writes from their first byte: (sha256, length) -> key.
    let mut contents: std::collections::HashMap<(String, u64), String> = std::collections::HashMap::new();
    let mut group: Vec<(usize, Staged)> = Vec::new();
    for batch in inputs.chunks(batch_len) {
        let mut fetched = Vec::with_capacity(batch.len());
        for (path, key, sidecar_path) in batch {
            let r: Result<(bytes::Bytes, Result<Option<ColumnsSpec>, ParseError>, Option<LedgerEntry>), IngestError> = async {
                let sidecar = match sidecar_path {
                    Some(p) => {
                        let b = opened.store.get(&Path::from(p.as_str())).await?.bytes().await?;
                        // A broken sidecar is a property of the bytes: the file is quarantined
                        // with the reason (not failed, which would be retried for ever).
                        ColumnsSpec::from_toml(&String::from_utf8_lossy(&b)).map(Some).map_err(|e| ParseError::Mapping {
                            file: p.rsplit('/').next().unwrap_or(p).to_string(),
                            reason: e.to_string().trim().replace('\n', " "),
                        })
                    }
                    None => Ok(None),
                };
                let raw = opened.store.get(path).await?.bytes().await?;
                let prior = ledger.lookup(key).await?;
                Ok((raw, sidecar, prior))
            }
            .await;
            fetched.push(r);
        }
        let plans: Vec<Result<Plan, IngestError>> = {
            use rayon::prelude::*;
            batch
                .par_iter()
                .zip(fetched.into_par_iter())
                .map(|((_, key, _), f)| {
                    f.and_then(|(raw, sidecar, prior)| match sidecar {
                        Ok(sidecar) => plan_with_prior(key, &raw, sidecar.as_ref(), prior, opts),
                        Err(e) => Ok(quarantine_plan(key, &raw, prior, opts, e.to_string())),
                    })
                })
                .collect()
        };
        for ((_, key, _), p) in batch.iter().zip(plans) {
            let p = match p {
                Ok(Plan::Write(prepared)) => copy_of_ingested(key, prepared, ledger, &mut contents).await,
                other => other,
            };
            let p = match p {
                Ok(Plan::Write(mut prepared)) => {
                    remember_i_band(&prepared, &mut i_band);
                    if prepared.sign_unmeasured && prepared.entry.band.as_deref() == Some("V") {
                        if let Err(e) = sign_from_i_band(&mut prepared, &i_band, out).await {
                            tracing::warn!(file = %key, error = %e, "cannot compare with the I band; keeping the format's sign");
                        }
                    }
                    Ok(Plan::Write(prepared))
                }
                other => other,
            };
            // Files to write are staged now and committed with their group; the others are
            // done at once (quarantine and its ledger row touch no manifest).
            let result = match p {
                Ok(Plan::Write(prepared)) => match prepared.stage(out).await {
                    Ok(staged) => {
                        group.push((report.files.len(), staged));
                        report.files.push(FileReport { path: key.clone(), outcome: FileOutcome::Unchanged });
                        continue;
                    }
                    Err(e) => Err(e),
                },
                Ok(p) => execute(key, p, out, ledger).await,
                Err(e) => Err(e),
            };
            let outcome = match result {
                Ok((o, keys)) => {
                    touched.extend(keys);
                    o
                }
                Err(e) => failed_file(key, &e),
            };
            report.files.push(FileReport { path: key.clone(), outcome });
        }
        if group.len() >= COMMIT_GROUP_FILES {
            commit_group(std::mem::take(&mut group), out, ledger, &mut report, &mut touched).await;
        }
    }
    commit_group(group, out, ledger, &mut report, &mut touched).await;
    touched.sort();
    touched.dedup();
    let (compactions, orphans) = compact_locked(out, opts.compaction.as_ref(), opts.only_field, &touched, _held).await?;
    report.compactions = compactions;
    report.orphans_removed += orphans;
    tracing::info!(
        files = report.files.len(),
        rows = report.rows_added(),
        quarantined = report.quarantined(),
        failed = report.failed(),
        "ingest finished"
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use object_store::memory::InMemory;

    use super::*;
    use crate::ingest::ledger::MemoryLedger;
    use crate::ingest::store::{read_photometry, row_keys, total_rows};
    use crate::photometry::Field;

    const DATA: &str = "/work/shared/data/kmtnet";

    fn mem_store() -> PhotometryStore {
        PhotometryStore::new(Arc::new(InMemory::new()), Path::from("lake"))
    }

    fn local_store(dir: &std::path::Path) -> PhotometryStore {
        let o = crate::store::open_store(dir.to_str().unwrap(), true).unwrap();
        PhotometryStore::new(o.store, o.prefix)
    }

    fn data_lines(text: &str) -> u64 {
        text.lines().filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#')).count() as u64
    }

    fn all_real_rows() -> u64 {
        crate::ingest::pysis::tests::real_files().iter().map(|f| data_lines(&std::fs::read_to_string(f).unwrap())).sum()
    }

    async fn all_batches(out: &PhotometryStore) -> Vec<arrow::array::RecordBatch> {
        let mut v = Vec::new();
        for k in out.partitions().await.unwrap() {
            v.extend(out.read_partition(&k).await.unwrap());
        }
        v
    }

    fn assert_unique(keys: &[(String, String, u64)]) {
        let mut k = keys.to_vec();
        k.sort();
        let n = k.len();
        k.dedup();
        assert_eq!(k.len(), n, "duplicate rows");
    }

    #[tokio::test]
    async fn real_files_ingest_once_on_local_fs_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let out = local_store(dir.path());
        let ledger = MemoryLedger::new();
        let opts = IngestOptions::default();
        let r = ingest_location(DATA, &out, &ledger, &opts).await.unwrap();
        assert_eq!(r.files.len(), 11, "{:?}", r.files);
        assert_eq!(r.quarantined() + r.failed(), 0, "{:?}", r.files);
        assert_eq!(r.rows_added(), all_real_rows());
        let keys = out.partitions().await.unwrap();
        let sites: Vec<String> = keys.iter().map(|k| format!("{}/{}/{}", k.season, k.field, k.site)).collect();
        assert_eq!(sites.len(), 6, "{sites:?}"); // 2018 × {BLG12, BLG14} × 3 sites
        assert!(dir.path().join("photometry/season=2018/field=BLG14/site=KMTC/bucket=0000/_manifest.json").is_file());

        // Again: nothing new, and no duplicates.
        let r2 = ingest_location(DATA, &out, &ledger, &opts).await.unwrap();
        assert!(r2.files.iter().all(|f| f.outcome == FileOutcome::Unchanged), "{:?}", r2.files);
        let batches = all_batches(&out).await;
        assert_eq!(total_rows(&batches) as u64, all_real_rows());
        assert_unique(&row_keys(&batches).unwrap());

        // The reader: both stars of BLG14, brightening positive, sorted, full history with `since`.
        let stars = read_photometry(&out, 2018, Field(14), None).await.unwrap();
        let names: Vec<&str> = stars.iter().map(|s| s.star.0.as_str()).collect();
        assert_eq!(names, vec!["BLG14-2018-season", "KB180003"]);
        let season = &stars[0];
        assert_eq!(season.curves.len(), 5); // KMTA I, KMTC I, KMTC V, KMTS I, KMTS V
        let kmtc_i = season.curves.iter().find(|c| c.site == Some(crate::photometry::Site::Kmtc) && c.band == Some(crate::photometry::Band::I)).unwrap();
        let peak = kmtc_i.flux.iter().fold(f64::MIN, |a, &b| a.max(b));
        assert!((peak - 189_538.0).abs() < 1.0, "{peak}");
        for c in &season.curves {
            assert!(c.hjd.windows(2).all(|w| w[0] <= w[1]));
        }
        let late = read_photometry(&out, 2018, Field(14), Some(8300.0)).await.unwrap();
        assert_eq!(late.len(), 1, "KB180003 was cut at 8210");
        assert_eq!(late[0].curves.iter().map(|c| c.len()).sum::<usize>(), season.curves.iter().map(|c| c.len()).sum::<usize>());

        // Ledger rows carry what growth detection needs.
        let e = ledger.entries();
        assert_eq!(e.len(), 11);
        let c = e.iter().find(|e| e.path.ends_with("BLG14-2018-season/KMTC14_I.pysis")).unwrap();
        assert_eq!((c.status, c.flux_sign, c.time_system.as_str(), c.lines), (FileStatus::Ingested, -1, "hjd-2450000", 1221));
        assert_eq!(c.rows, 1220);
        assert_eq!(c.ingested_bytes, c.size_bytes);
    }

    #[tokio::test]
    async fn parquet_files_read_back_with_the_parquet_crate() {
        let dir = tempfile::tempdir().unwrap();
        let out = local_store(dir.path());
        let f = format!("{DATA}/BLG14-2018-season/KMTC14_I.pysis");
        ingest_location(&f, &out, &MemoryLedger::new(), &IngestOptions::default()).await.unwrap();
        let part_dir = dir.path().join("photometry/season=2018/field=BLG14/site=KMTC/bucket=0000");
        let part = std::fs::read_dir(&part_dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "parquet"))
            .unwrap();
        let file = std::fs::File::open(&part).unwrap();
        let b = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
        let md = b.metadata().clone();
        assert_eq!(b.schema().fields(), crate::ingest::store::photometry_schema().fields());
        assert_eq!(b.schema().metadata().get("lensnet.format").map(String::as_str), Some("lensnet-photometry/1"));
        let rg = md.row_group(0);
        assert!(matches!(rg.column(2).compression(), parquet::basic::Compression::SNAPPY), "a staged part is Snappy");
        assert_eq!(rg.sorting_columns().map(|s| s.len()), Some(3));
        let batches: Vec<_> = b.build().unwrap().collect::<Result<_, _>>().unwrap();
        assert_eq!(total_rows(&batches), 1220);
        let hjd = batches[0].column(2).as_any().downcast_ref::<arrow::array::Float64Array>().unwrap();
        assert!(hjd.values().windows(2).all(|w| w[0] <= w[1]));
    }

    #[tokio::test]
    async fn grown_file_adds_only_new_epochs_and_partial_lines_wait() {
        let text = std::fs::read_to_string(format!("{DATA}/BLG14-2018-season/KMTS14_I.pysis")).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let key = "/inbox/BLG14-2018-season/KMTS14_I.pysis";
        let out = mem_store();
        let ledger = MemoryLedger::new();
        let opts = IngestOptions::default();
        // Night 1: header + 300 epochs and a half-written line.
        let mut v1 = lines[..301].join("\n") + "\n";
        v1.push_str(&lines[301][..10]);
        let (o1, _) = ingest_bytes(key, v1.as_bytes(), None, &out, &ledger, &opts).await.unwrap();
        assert_eq!(o1, FileOutcome::Ingested { rows: 300, skipped: 1, deferred_line: Some(302) });
        // Same bytes again: unchanged.
        let (o, _) = ingest_bytes(key, v1.as_bytes(), None, &out, &ledger, &opts).await.unwrap();
        assert_eq!(o, FileOutcome::Unchanged);
        // Night 2: the whole file.
        let (o2, _) = ingest_bytes(key, text.as_bytes(), None, &out, &ledger, &opts).await.unwrap();
        assert_eq!(o2, FileOutcome::Ingested { rows: 714 - 300, skipped: 0, deferred_line: None });
        let batches = all_batches(&out).await;
        assert_eq!(total_rows(&batches), 714);
        assert_unique(&row_keys(&batches).unwrap());
        let e = ledger.lookup(key).await.unwrap().unwrap();
        assert_eq!((e.rows, e.lines, e.ingested_bytes), (714, 715, text.len() as u64));
        assert_eq!(e.last_line, lines[714]);
        // Appended epochs keep the sign and line numbers of the original file.
        let stars = read_photometry(&out, 2018, Field(14), None).await.unwrap();
        let flux = &stars[0].curves[0].flux;
        let peak = flux.iter().fold(f64::MIN, |a, &b| a.max(b));
        assert!(peak > 10_000.0, "brightening stays positive after the append: {peak}");
    }

    #[tokio::test]
    async fn malformed_and_rewritten_files_are_quarantined_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = dir.path().join("inbox/KB180003");
        std::fs::create_dir_all(&inbox).unwrap();
        let good = std::fs::read_to_string(format!("{DATA}/KB180003/KMTC14_I.pysis")).unwrap();
        std::fs::write(inbox.join("KMTC14_I.pysis"), &good).unwrap();
        let mut bad: Vec<&str> = good.lines().collect();
        bad[16] = "8171.2 1 2 3";
        let bad = bad.join("\n") + "\n";
        std::fs::write(inbox.join("KMTA14_I.pysis"), &bad).unwrap();
        std::fs::write(inbox.join("KMTS14_I.pysis"), b"\x00\x01garbage\xff\n").unwrap();
        let out = local_store(&dir.path().join("lake"));
        let ledger = MemoryLedger::new();
        let input = dir.path().join("inbox");
        let r = ingest_location(input.to_str().unwrap(), &out, &ledger, &IngestOptions::default()).await.unwrap();
        assert_eq!(r.files.len(), 3);
        assert_eq!(r.quarantined(), 2);
        assert_eq!(r.rows_added(), 169);
        let q = r.files.iter().find(|f| f.path.ends_with("KMTA14_I.pysis")).unwrap();
        let FileOutcome::Quarantined { reason, copy } = &q.outcome else { panic!("{q:?}") };
        assert_eq!(reason, "cannot parse line 17 of KMTA14_I.pysis: expected 5 columns, found 4");
        // Nothing lost: the bytes and the reason are in the store, the ledger says why.
        let copied = dir.path().join("lake").join(copy);
        assert_eq!(std::fs::read_to_string(&copied).unwrap(), bad);
        assert!(std::fs::read_to_string(copied.with_file_name("KMTA14_I.pysis.reason.txt")).unwrap().contains("line 17"));
        let e = ledger.lookup(&q.path).await.unwrap().unwrap();
        assert_eq!((e.status, e.rows), (FileStatus::Quarantined, 0));
        // Unchanged bad files are not copied again; a fixed file is ingested.
        let r2 = ingest_location(input.to_str().unwrap(), &out, &ledger, &IngestOptions::default()).await.unwrap();
        assert_eq!(r2.count(|o| *o == FileOutcome::Unchanged), 3);
        // (KMTA's own file: KMTC's text under KMTA's name would be a copy of an ingested file.)
        let fixed = std::fs::read_to_string(format!("{DATA}/KB180003/KMTA14_I.pysis")).unwrap();
        std::fs::write(inbox.join("KMTA14_I.pysis"), &fixed).unwrap();
        let r3 = ingest_location(input.to_str().unwrap(), &out, &ledger, &IngestOptions::default()).await.unwrap();
        assert_eq!(r3.rows_added(), data_lines(&fixed));
        // A rewritten (not appended) file is a conflict: nothing written.
        std::fs::write(inbox.join("KMTC14_I.pysis"), good.replacen("8168.83125", "8168.83126", 1)).unwrap();
        let r4 = ingest_location(input.to_str().unwrap(), &out, &ledger, &IngestOptions::default()).await.unwrap();
        let c = r4.files.iter().find(|f| f.path.ends_with("KMTC14_I.pysis")).unwrap();
        assert!(matches!(&c.outcome, FileOutcome::Conflict { reason, .. } if reason.contains("rewritten")), "{c:?}");
        assert_eq!(r4.rows_added(), 0);
    }

    #[tokio::test]
    async fn crash_between_steps_leaves_nothing_visible_and_next_run_completes() {
        let text = std::fs::read(format!("{DATA}/KB180003/KMTA12_I.pysis")).unwrap();
        let key = "/in/KB180003/KMTA12_I.pysis";
        let out = mem_store();
        let ledger = MemoryLedger::new();
        let opts = IngestOptions::default();
        // Crash after staging: parts exist, no manifest lists them.
        let Plan::Write(p) = plan(key, &text, None, &ledger, &opts).await.unwrap() else { panic!() };
        let staged = p.stage(&out).await.unwrap();
        drop(staged);
        assert!(read_photometry(&out, 2018, Field(12), None).await.unwrap().is_empty());
        assert_eq!(total_rows(&all_batches(&out).await), 0);
        let (o, _) = ingest_bytes(key, &text, None, &out, &ledger, &opts).await.unwrap();
        // 5 epochs of this file are commented out (`#8177.23803 …`): skipped and counted.
        assert_eq!(o, FileOutcome::Ingested { rows: 296, skipped: 6, deferred_line: None });
        // Crash after commit, before the ledger: the next run commits nothing new.
        let key2 = "/in/KB180003/KMTC12_I.pysis";
        let text2 = std::fs::read(format!("{DATA}/KB180003/KMTC12_I.pysis")).unwrap();
        let Plan::Write(p) = plan(key2, &text2, None, &ledger, &opts).await.unwrap() else { panic!() };
        p.stage(&out).await.unwrap().commit(&out).await.unwrap();
        assert!(ledger.lookup(key2).await.unwrap().is_none());
        let (o, _) = ingest_bytes(key2, &text2, None, &out, &ledger, &opts).await.unwrap();
        assert!(matches!(o, FileOutcome::Ingested { .. }));
        let batches = all_batches(&out).await;
        assert_eq!(total_rows(&batches) as u64, 296 + data_lines(&String::from_utf8_lossy(&text2)));
        assert_unique(&row_keys(&batches).unwrap());
    }

    #[tokio::test]
    async fn a_run_commits_its_files_together_and_records_each() {
        // The season folder: KMTC and KMTS hold two files each (I and V), KMTA one.
        let dir = tempfile::tempdir().unwrap();
        let out = local_store(dir.path());
        let ledger = MemoryLedger::new();
        let r = ingest_location(&format!("{DATA}/BLG14-2018-season"), &out, &ledger, &IngestOptions::default()).await.unwrap();
        assert_eq!(r.files.len(), 5);
        assert!(r.files.iter().all(|f| matches!(f.outcome, FileOutcome::Ingested { rows, .. } if rows > 0)), "{r:?}");
        assert!(r.files.windows(2).all(|w| w[0].path < w[1].path), "reported in name order");
        for site in ["KMTA", "KMTC", "KMTS"] {
            let m = out.read_manifest(&PartitionKey { season: 2018, field: Field(14), site: site.into(), bucket: Some(0) }).await.unwrap();
            assert_eq!(m.generation, 1, "{site}: one manifest swap for the whole run");
            assert_eq!(m.files.len(), if site == "KMTA" { 1 } else { 2 });
        }
        for f in &r.files {
            assert_eq!(ledger.lookup(&f.path).await.unwrap().unwrap().status, FileStatus::Ingested);
        }
        let again = ingest_location(&format!("{DATA}/BLG14-2018-season"), &out, &ledger, &IngestOptions::default()).await.unwrap();
        assert_eq!(again.count(|o| *o == FileOutcome::Unchanged), 5);
    }

    /// KMTA14_I.pysis ingested as it grew over five nights: five parts in one partition.
    async fn five_nights_of_kmta() -> (PhotometryStore, PartitionKey) {
        let text = std::fs::read_to_string(format!("{DATA}/BLG14-2018-season/KMTA14_I.pysis")).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let key = "/in/BLG14-2018-season/KMTA14_I.pysis";
        let out = mem_store();
        let ledger = MemoryLedger::new();
        for end in [100, 300, 500, 700, lines.len()] {
            let v = lines[..end].join("\n") + "\n";
            ingest_bytes(key, v.as_bytes(), None, &out, &ledger, &IngestOptions::default()).await.unwrap();
        }
        (out, PartitionKey { season: 2018, field: Field(14), site: "KMTA".into(), bucket: Some(0) })
    }

    #[tokio::test]
    async fn compaction_is_tiered_and_leaves_full_parts_alone() {
        let (out, pk) = five_nights_of_kmta().await;
        let before = out.read_manifest(&pk).await.unwrap();
        let rows: Vec<u64> = before.files.iter().map(|f| f.rows).collect();
        assert_eq!(rows.iter().sum::<u64>(), 889);
        // Merged runs of at most 450 rows, in manifest order; a part alone in its run stays.
        let policy = CompactionPolicy { max_parts: 4, small_part_bytes: 1 << 30, target_part_rows: 450, hold_days: 0.0, period_days: 0.0 };
        let c = out.compact(&pk, &policy).await.unwrap().unwrap();
        let after = out.read_manifest(&pk).await.unwrap();
        let mut want = Vec::new();
        let (mut run, mut n) = (0u64, 0);
        for &r in &rows {
            if n > 0 && run + r > 450 {
                want.push(run);
                (run, n) = (0, 0);
            }
            run += r;
            n += 1;
        }
        want.push(run);
        assert!(want.len() >= 2, "the fixture makes more than one run: {rows:?}");
        assert_eq!(after.files.iter().map(|f| f.rows).collect::<Vec<_>>(), want, "parts of {rows:?}");
        assert!(after.files.iter().all(|f| f.rows <= 450 || before.files.iter().any(|b| b.name == f.name)));
        assert_eq!(c.new_parts.len(), after.files.iter().filter(|f| !before.files.iter().any(|b| b.name == f.name)).count());
        let batches = out.read_partition(&pk).await.unwrap();
        assert_eq!(total_rows(&batches), 889);
        assert_unique(&row_keys(&batches).unwrap());
        // Nothing left to merge: the open parts cannot pair within the target.
        let again = out.compact(&pk, &CompactionPolicy { max_parts: 1, ..policy }).await.unwrap();
        assert!(again.is_none(), "{again:?}");
        // Full parts are never rewritten.
        let full = CompactionPolicy { max_parts: 1, small_part_bytes: 1 << 30, target_part_rows: 1, hold_days: 0.0, period_days: 0.0 };
        assert!(out.compact(&pk, &full).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn compaction_merges_sorted_and_retires_old_parts() {
        let (out, pk) = five_nights_of_kmta().await;
        let before = out.read_manifest(&pk).await.unwrap();
        assert_eq!(before.files.len(), 5);
        let policy = CompactionPolicy { max_parts: 4, small_part_bytes: 0, ..Default::default() };
        let c = out.compact(&pk, &policy).await.unwrap().unwrap();
        assert_eq!((c.merged_parts, c.rows, c.deleted), (5, 889, 5));
        let after = out.read_manifest(&pk).await.unwrap();
        assert_eq!(after.files.len(), 1);
        assert_eq!(after.retired.len(), 5);
        let merged = out.store.get(&out.partition_dir(&pk).join(after.files[0].name.as_str())).await.unwrap().bytes().await.unwrap();
        let md = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(merged).unwrap().metadata().clone();
        assert!(matches!(md.row_group(0).column(2).compression(), parquet::basic::Compression::ZSTD(_)), "a compacted part is zstd");
        let batches = out.read_partition(&pk).await.unwrap();
        assert_eq!(total_rows(&batches), 889);
        assert_unique(&row_keys(&batches).unwrap());
        // Committing a retired part (a crashed run replayed) adds nothing.
        assert_eq!(out.commit_parts(&pk, &before.files[..1]).await.unwrap(), 0);
        // Below the policy: nothing to do.
        assert!(out.compact(&pk, &policy).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn header_only_first_look_does_not_fix_the_sign() {
        let text = std::fs::read_to_string(format!("{DATA}/BLG14-2018-season/KMTC14_I.pysis")).unwrap();
        let header = text.lines().next().unwrap().to_string() + "\n";
        let key = "/in/BLG14-2018-season/KMTC14_I.pysis";
        let (out, ledger, opts) = (mem_store(), MemoryLedger::new(), IngestOptions::default());
        let (o, _) = ingest_bytes(key, header.as_bytes(), None, &out, &ledger, &opts).await.unwrap();
        assert_eq!(o, FileOutcome::Ingested { rows: 0, skipped: 1, deferred_line: None });
        let e = ledger.lookup(key).await.unwrap().unwrap();
        assert!(e.flux_sign == 1 || e.flux_sign == -1, "the SQL column only takes ±1");
        ingest_bytes(key, text.as_bytes(), None, &out, &ledger, &opts).await.unwrap();
        assert_eq!(ledger.lookup(key).await.unwrap().unwrap().flux_sign, -1);
        let stars = read_photometry(&out, 2018, Field(14), None).await.unwrap();
        let peak = stars[0].curves[0].flux.iter().fold(f64::MIN, |a, &b| a.max(b));
        assert!((peak - 189_538.0).abs() < 1.0, "{peak}");
    }

    #[tokio::test]
    async fn gzip_input_equals_plain_input() {
        use std::io::Write;
        let text = std::fs::read(format!("{DATA}/KB180003/KMTS14_I.pysis")).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&text).unwrap();
        let gz = gz.finish().unwrap();
        let out = mem_store();
        let ledger = MemoryLedger::new();
        let (o, _) = ingest_bytes("/in/KB180003/KMTS14_I.pysis.gz", &gz, None, &out, &ledger, &IngestOptions::default()).await.unwrap();
        assert_eq!(o, FileOutcome::Ingested { rows: 56, skipped: 1, deferred_line: None });
        // A truncated archive is quarantined with a reason, not half-read.
        let (o, _) = ingest_bytes("/in/KB180003/KMTS12_I.pysis.gz", &gz[..gz.len() / 2], None, &out, &ledger, &IngestOptions::default()).await.unwrap();
        assert!(matches!(&o, FileOutcome::Quarantined { reason, .. } if reason.contains("gzip")), "{o:?}");
    }

    #[tokio::test]
    async fn sidecar_columns_file_drives_generic_ingest() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("moa/MB19001");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("lc.txt"), "# hjd flux err\n8600.1 100.0 5.0\n8600.2 180.0 5.0\n8600.3 100.0 5.0\n").unwrap();
        std::fs::write(d.join("lc.columns.toml"), "time = 1\nvalue = 2\nkind = \"flux\"\nerror = 3\nfield = \"BLG02\"\nsite = \"MOA\"\n").unwrap();
        let out = mem_store();
        let r = ingest_location(dir.path().join("moa").to_str().unwrap(), &out, &MemoryLedger::new(), &IngestOptions::default()).await.unwrap();
        assert_eq!(r.files.len(), 1, "{:?}", r.files);
        assert_eq!(r.rows_added(), 3);
        let stars = read_photometry(&out, 2019, Field(2), None).await.unwrap();
        assert_eq!(stars[0].star.0, "MB19001");
        assert_eq!(stars[0].curves[0].site, None);
        assert_eq!(stars[0].curves[0].flux, vec![0.0, 80.0, 0.0]);
    }

    // ---- hostile inputs and concurrent writers (issue 13) ----

    fn kb_text(name: &str) -> String {
        std::fs::read_to_string(format!("{DATA}/KB180003/{name}")).unwrap()
    }

    #[tokio::test]
    async fn a_symlink_loop_or_a_fifo_skips_that_entry_and_the_rest_is_ingested() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = dir.path().join("inbox");
        std::fs::create_dir_all(inbox.join("KB180003")).unwrap();
        std::fs::create_dir_all(inbox.join("zz")).unwrap();
        std::fs::write(inbox.join("KB180003/KMTC14_I.pysis"), kb_text("KMTC14_I.pysis")).unwrap();
        std::os::unix::fs::symlink("loop", inbox.join("aa-loop")).unwrap();
        std::fs::rename(inbox.join("aa-loop"), inbox.join("loop")).unwrap();
        std::os::unix::fs::symlink(&inbox, inbox.join("zz/up")).unwrap();
        let fifo = inbox.join("KB180003/KMTS14_I.pysis");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let out = mem_store();
        let r = ingest_location(inbox.to_str().unwrap(), &out, &MemoryLedger::new(), &IngestOptions::default()).await.unwrap();
        assert_eq!(r.rows_added(), 169, "{r:?}");
        assert_eq!(r.files.len(), 1, "{r:?}");
        let skipped = r.skipped_entries.join("\n");
        assert!(skipped.contains("loop"), "{skipped}");
        assert!(skipped.contains("KMTS14_I.pysis: not a regular file"), "{skipped}");
        assert!(skipped.contains("zz/up"), "{skipped}");
    }

    #[tokio::test]
    async fn absurd_values_and_nul_bytes_are_quarantined_with_file_and_line() {
        let good = kb_text("KMTC14_I.pysis");
        let lines: Vec<&str> = good.lines().collect();
        let cases: Vec<(&str, String, &str)> = vec![
            ("huge flux", { let mut l = lines.clone(); let f: Vec<&str> = l[5].split_whitespace().collect(); let bad = format!("{} 1e308 {}", f[0], f[2..].join(" ")); l[5] = Box::leak(bad.into_boxed_str()); l.join("\n") + "\n" }, "line 6"),
            // (`inf`, `nan` and negative errors are the pipelines' "not measured": missing values.)
            ("huge error", { let mut l = lines.clone(); let f: Vec<&str> = l[3].split_whitespace().collect(); let bad = format!("{} {} 1e300 {}", f[0], f[1], f[3..].join(" ")); l[3] = Box::leak(bad.into_boxed_str()); l.join("\n") + "\n" }, "line 4"),
            ("nul byte", { let mut t = good.clone(); t.insert(t.find('\n').unwrap() + 3, '\0'); t }, "line 2"),
        ];
        for (what, text, line) in cases {
            let out = mem_store();
            let (o, _) = ingest_bytes("/in/KB180003/KMTC14_I.pysis", text.as_bytes(), None, &out, &MemoryLedger::new(), &IngestOptions::default()).await.unwrap();
            let FileOutcome::Quarantined { reason, .. } = &o else { panic!("{what}: {o:?}") };
            assert!(reason.contains(line) && reason.contains("KMTC14_I.pysis"), "{what}: {reason}");
            assert_eq!(total_rows(&all_batches(&out).await), 0, "{what}: nothing stored");
        }
    }

    #[tokio::test]
    async fn a_gzip_bomb_is_refused_before_it_is_inflated() {
        use std::io::Write;
        let line = "8168.83125 -18.79 6.56 19.96 0.011 4.91 1030.6 1.25\n";
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(b"# hjd dflux err mag merr fwhm sky secz\n").unwrap();
        for _ in 0..(40 << 20) / line.len() {
            gz.write_all(line.as_bytes()).unwrap();
        }
        let gz = gz.finish().unwrap();
        assert!(gz.len() < 1 << 20, "{}", gz.len());
        let (o, _) = ingest_bytes("/in/KB180003/KMTC14_I.pysis.gz", &gz, None, &mem_store(), &MemoryLedger::new(), &IngestOptions::default()).await.unwrap();
        assert!(matches!(&o, FileOutcome::Quarantined { reason, .. } if reason.contains("too large") && reason.contains("expands past")), "{o:?}");
    }

    #[tokio::test]
    async fn repeated_epochs_are_stored_once_and_noted() {
        let good = kb_text("KMTC14_I.pysis");
        let mut lines: Vec<String> = good.lines().map(str::to_string).collect();
        let dup = lines[4].clone();
        let f: Vec<String> = lines[7].split_whitespace().map(str::to_string).collect();
        let conflicting = format!("{} 12345.0 {}", f[0], f[2..].join(" "));
        lines.insert(20, dup);
        lines.insert(30, conflicting);
        let text = lines.join("\n") + "\n";
        let ledger = MemoryLedger::new();
        let out = mem_store();
        let (o, _) = ingest_bytes("/in/KB180003/KMTC14_I.pysis", text.as_bytes(), None, &out, &ledger, &IngestOptions::default()).await.unwrap();
        assert!(matches!(o, FileOutcome::Ingested { rows: 169, .. }), "{o:?}");
        let batches = all_batches(&out).await;
        assert_unique(&row_keys(&batches).unwrap());
        let e = ledger.lookup("/in/KB180003/KMTC14_I.pysis").await.unwrap().unwrap();
        let reason = e.reason.unwrap();
        assert!(reason.contains("1 line(s) repeat an earlier epoch exactly"), "{reason}");
        assert!(reason.contains("first: line 31 repeats the time of line 8"), "{reason}");
    }

    #[tokio::test]
    async fn a_moved_copy_or_a_gz_beside_the_original_is_not_stored_twice() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let text = kb_text("KMTC14_I.pysis");
        let a = dir.path().join("night1/KB180003");
        std::fs::create_dir_all(&a).unwrap();
        std::fs::write(a.join("KMTC14_I.pysis"), &text).unwrap();
        let out = mem_store();
        let ledger = MemoryLedger::new();
        let r = ingest_location(dir.path().to_str().unwrap(), &out, &ledger, &IngestOptions::default()).await.unwrap();
        assert_eq!(r.rows_added(), 169);
        // Moved to another folder, and a .gz copy beside it.
        let b = dir.path().join("archive/KB180003");
        std::fs::create_dir_all(&b).unwrap();
        std::fs::rename(a.join("KMTC14_I.pysis"), b.join("KMTC14_I.pysis")).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(text.as_bytes()).unwrap();
        std::fs::write(b.join("KMTC14_I.pysis.gz"), gz.finish().unwrap()).unwrap();
        let r = ingest_location(dir.path().to_str().unwrap(), &out, &ledger, &IngestOptions::default()).await.unwrap();
        assert_eq!(r.rows_added(), 0, "{r:?}");
        assert_eq!(r.quarantined(), 2, "{r:?}");
        assert!(r.files.iter().all(|f| matches!(&f.outcome, FileOutcome::Quarantined { reason, .. } if reason.contains("the same text as"))), "{r:?}");
        assert_eq!(total_rows(&all_batches(&out).await), 169);
    }

    #[tokio::test]
    async fn concurrent_manifest_swaps_lose_no_part() {
        // No writer lock here: the compare-and-swap alone (InMemory has conditional puts).
        let out = mem_store();
        let pk = PartitionKey { season: 2018, field: Field(14), site: "KMTC".into(), bucket: Some(0) };
        let mut tasks = Vec::new();
        for w in 0..8 {
            let out = out.clone();
            let pk = pk.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..10 {
                    let info = PartInfo { name: format!("part-{w:02}{i:014}.parquet"), rows: 1, bytes: 1, min_hjd: 0.0, max_hjd: 0.0 };
                    out.commit_parts(&pk, &[info]).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let m = out.read_manifest(&pk).await.unwrap();
        assert_eq!(m.files.len(), 80, "every writer's parts are listed");
    }

    #[tokio::test]
    async fn compaction_deletes_only_what_it_merged_and_orphans_go_under_the_lock() {
        let (out, pk) = five_nights_of_kmta().await;
        // Another writer's staged, not yet committed part.
        let text = std::fs::read_to_string(format!("{DATA}/BLG14-2018-season/KMTA14_I.pysis")).unwrap();
        let Plan::Write(p) = plan("/other/KMTA14_I.pysis", text.as_bytes(), None, &MemoryLedger::new(), &IngestOptions::default()).await.unwrap() else { panic!() };
        let staged = p.stage(&out).await.unwrap();
        let name = staged.parts[0].1.name.clone();
        let policy = CompactionPolicy { max_parts: 1, small_part_bytes: 1 << 30, target_part_rows: 1_000_000, hold_days: 0.0, period_days: 0.0 };
        out.compact(&pk, &policy).await.unwrap().unwrap();
        let h = out.inspect(&pk, &policy).await.unwrap();
        assert_eq!(h.orphans, vec![name.clone()], "the other writer's part survives compaction");
        assert!(h.lost.is_empty());
        assert_eq!(out.remove_orphans(&pk).await.unwrap(), 1);
        assert!(out.inspect(&pk, &policy).await.unwrap().is_clean());
        // A listed part deleted behind our back is found and dropped by repair.
        let listed = out.read_manifest(&pk).await.unwrap().files[0].name.clone();
        out.store.delete(&out.partition_dir(&pk).join(listed.as_str())).await.unwrap();
        assert_eq!(out.inspect(&pk, &policy).await.unwrap().lost.len(), 1);
        assert_eq!(out.drop_lost(&pk).await.unwrap().len(), 1);
        assert!(out.read_partition(&pk).await.unwrap().is_empty());
    }

    /// A V-band file in the 6-column layout (no magnitudes) from an I-band pySIS text: the same
    /// brightening at 0.6 of the amplitude, 0.01 d later; `flipped` writes it brightening-positive.
    fn v_from_i(i_text: &str, flipped: bool) -> String {
        let mut out = String::from("# HJD \\Delta_flux flux_err fwhm sky secz\n");
        for l in i_text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
            let f: Vec<f64> = l.split_whitespace().map(|x| x.parse().unwrap()).collect();
            let d = if flipped { -0.6 * f[1] } else { 0.6 * f[1] };
            out.push_str(&format!("{:.5} {:.4} {:.4} 4.5 1000.0 1.2\n", f[0] + 0.01, d, f[2] * 0.8));
        }
        out
    }

    async fn v_correlation(out: &PhotometryStore) -> f64 {
        let stars = read_photometry(out, 2018, Field(14), None).await.unwrap();
        let c = |b| stars[0].curves.iter().find(|c| c.band == Some(b)).unwrap().clone();
        let (i, v) = (c(crate::photometry::Band::I), c(crate::photometry::Band::V));
        let n = i.len().min(v.len());
        crate::ingest::normalize::pearson(&i.flux[..n], &v.flux[..n]).unwrap()
    }

    #[tokio::test]
    async fn a_v_file_without_magnitudes_takes_its_sign_from_the_i_band() {
        let i_text = kb_text("KMTC14_I.pysis");
        for flipped in [false, true] {
            // Together with its I file, and alone in a later run (the I band read from the store).
            for later in [false, true] {
                let dir = tempfile::tempdir().unwrap();
                let star = dir.path().join("in/KB180003");
                std::fs::create_dir_all(&star).unwrap();
                std::fs::write(star.join("KMTC14_I.pysis"), &i_text).unwrap();
                let out = mem_store();
                let ledger = MemoryLedger::new();
                let input = dir.path().join("in");
                if later {
                    ingest_location(input.to_str().unwrap(), &out, &ledger, &IngestOptions::default()).await.unwrap();
                }
                std::fs::write(star.join("KMTC14_V.pysis"), v_from_i(&i_text, flipped)).unwrap();
                let r = ingest_location(input.to_str().unwrap(), &out, &ledger, &IngestOptions::default()).await.unwrap();
                assert_eq!(r.quarantined() + r.failed(), 0, "{r:?}");
                let rho = v_correlation(&out).await;
                assert!(rho > 0.9, "flipped {flipped}, later {later}: V brightens with I (r = {rho})");
                let e = ledger.entries().into_iter().find(|e| e.path.ends_with("_V.pysis")).unwrap();
                assert_eq!(e.flux_sign, if flipped { 1 } else { -1 }, "flipped {flipped}, later {later}");
            }
        }
    }

    #[tokio::test]
    async fn instrumental_magnitudes_far_from_the_zero_point_are_data() {
        // MACHO's instrumental magnitudes sit near -8: a total flux of ~1e14 on the zp-28 scale.
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("MACHO_1.1.1");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("lc.csv"), "49000.1,-8.10,0.02\n49001.1,-8.12,0.02\n49002.1,-8.05,0.02\n").unwrap();
        std::fs::write(d.join("lc.csv.columns.toml"), "time = 1\ntime_system = \"mjd\"\nvalue = 2\nkind = \"mag\"\nerror = 3\ndelimiter = \",\"\nfield = \"BLG20\"\nsite = \"KMTC\"\n").unwrap();
        let r = ingest_location(dir.path().to_str().unwrap(), &mem_store(), &MemoryLedger::new(), &IngestOptions::default()).await.unwrap();
        assert_eq!((r.rows_added(), r.quarantined()), (3, 0), "{r:?}");
    }

    #[tokio::test]
    async fn a_quarantined_file_is_read_again_when_the_rules_change() {
        let out = mem_store();
        let ledger = MemoryLedger::new();
        let text = kb_text("KMTC14_I.pysis");
        let key = "/in/KB180003/KMTC14_I.pysis";
        // A row quarantined by an older lensnet: its seen hash is the plain hash of the bytes.
        let mut e = fresh_entry(key, Format::Pysis);
        e.status = FileStatus::Quarantined;
        e.reason = Some("an older rule".into());
        e.seen_sha256 = sha256_hex(text.as_bytes());
        ledger.record(&e).await.unwrap();
        let (o, _) = ingest_bytes(key, text.as_bytes(), None, &out, &ledger, &IngestOptions::default()).await.unwrap();
        assert!(matches!(o, FileOutcome::Ingested { rows: 169, .. }), "{o:?}");
        // Quarantined under the current rules: unchanged bytes are not looked at again.
        let bad = text.replacen("8168.83125", "8168.83125 x", 1);
        let k2 = "/in/KB180003/KMTA14_I.pysis";
        let (o, _) = ingest_bytes(k2, bad.as_bytes(), None, &out, &ledger, &IngestOptions::default()).await.unwrap();
        assert!(matches!(o, FileOutcome::Quarantined { .. }), "{o:?}");
        let (o, _) = ingest_bytes(k2, bad.as_bytes(), None, &out, &ledger, &IngestOptions::default()).await.unwrap();
        assert_eq!(o, FileOutcome::Unchanged);
    }

    mod properties {
        use super::*;
        use crate::ingest::normalize::{HJD_RANGE, MAX_ABS_FLUX};
        use proptest::prelude::*;

        fn real() -> &'static [u8] {
            static T: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
            T.get_or_init(|| std::fs::read(format!("{DATA}/KB180003/KMTC14_I.pysis")).unwrap())
        }

        /// Every name a parser is chosen by: pySIS, DIAPL, OGLE, generic columns (sidecar), `.gz`.
        const KEYS: [&str; 5] = ["/i/KB1/KMTC14_I.pysis", "/i/KB1/KMTC14_I.diapl", "/i/OB1/phot.dat", "/i/EX1/lc.txt", "/i/KB1/KMTA14_I.pysis.gz"];

        fn check(key: &str, bytes: &[u8]) -> Result<(), TestCaseError> {
            let sidecar = ColumnsSpec::from_toml("time = 1\nvalue = 2\nkind = \"flux\"\nerror = 3\nfield = \"BLG02\"\nsite = \"MOA\"\n").unwrap();
            let opts = IngestOptions { overrides: SourceOverrides { field: key.contains("phot.dat").then_some(Field(14)), ..Default::default() }, ..Default::default() };
            let side = key.ends_with("lc.txt").then_some(&sidecar);
            let first = plan_with_prior(key, bytes, side, None, &opts);
            let again = plan_with_prior(key, bytes, side, None, &opts);
            match (&first, &again) {
                (Ok(Plan::Write(p)), Ok(Plan::Write(q))) => {
                    let names: Vec<&String> = p.parts.iter().map(|x| &x.1).collect();
                    prop_assert_eq!(names, q.parts.iter().map(|x| &x.1).collect::<Vec<_>>(), "deterministic part names");
                    let mut rows = 0u64;
                    for (_, _, b) in &p.parts {
                        rows += b.num_rows() as u64;
                        let hjd = b.column_by_name("hjd").unwrap().as_any().downcast_ref::<arrow::array::Float64Array>().unwrap();
                        let flux = b.column_by_name("flux").unwrap().as_any().downcast_ref::<arrow::array::Float64Array>().unwrap();
                        prop_assert!(hjd.values().windows(2).all(|w| w[0] < w[1]), "sorted, one row per epoch");
                        prop_assert!(hjd.values().iter().all(|&t| (HJD_RANGE.0..=HJD_RANGE.1).contains(&t)));
                        // Difference flux is on the zp-28 scale and bounded; fluxes derived from
                        // magnitudes (OGLE) or total fluxes (the sidecar's) only finite.
                        let bound = if key.contains("phot.dat") || key.ends_with("lc.txt") { f64::MAX } else { MAX_ABS_FLUX };
                        prop_assert!(flux.values().iter().all(|&f| f.is_nan() || f.abs() <= bound));
                    }
                    prop_assert_eq!(rows, p.entry.rows);
                }
                (Ok(Plan::Quarantine { entry, .. }), Ok(Plan::Quarantine { .. })) => {
                    let reason = entry.reason.clone().unwrap_or_default();
                    prop_assert!(!reason.is_empty() && reason.len() < 2000, "a short reason: {}", reason.len());
                }
                (Ok(Plan::Unchanged), _) => prop_assert!(false, "no prior: never unchanged"),
                (Err(e), _) => prop_assert!(false, "a parse never fails the batch: {e}"),
                _ => prop_assert!(false, "planning is deterministic"),
            }
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

            #[test]
            fn any_bytes_under_any_parser_plan_without_panic(k in 0usize..5, bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
                check(KEYS[k], &bytes)?;
            }

            #[test]
            fn a_real_file_with_random_edits_plans_without_panic(
                k in 0usize..4,
                edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..12),
                cut in any::<prop::sample::Index>(),
            ) {
                let mut t = real().to_vec();
                for (at, b) in &edits {
                    let i = at.index(t.len());
                    t[i] = *b;
                }
                t.truncate(cut.index(t.len() + 1));
                check(KEYS[k], &t)?;
            }

            #[test]
            fn real_lines_with_absurd_numbers_are_never_stored(line in 1usize..100, col in 0usize..5, v in prop_oneof![Just(1e308), Just(-1e300), Just(1e11), Just(-2e10), Just(5e10)]) {
                let text = String::from_utf8_lossy(real()).to_string();
                let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
                let mut f: Vec<String> = lines[line].split_whitespace().map(str::to_string).collect();
                f[col] = format!("{v:e}");
                lines[line] = f.join(" ");
                check(KEYS[0], (lines.join("\n") + "\n").as_bytes())?;
            }
        }
    }
}
