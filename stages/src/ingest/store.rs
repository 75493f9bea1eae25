//! The `photometry` dataset on an object store: Hive-partitioned Parquet part files (Snappy as staged, zstd once compacted) made
//! visible only through a per-partition `_manifest.json`, plus the reader and the compaction.
//!
//! # Layout
//! ```text
//! <root>/photometry/season=2018/field=BLG14/site=KMTC/_manifest.json
//! <root>/photometry/season=2018/field=BLG14/site=KMTC/part-<16 hex>.parquet
//! <root>/quarantine/<16 hex of the file's sha256>/<file name>            (copy of a bad input)
//! <root>/quarantine/<16 hex of the file's sha256>/<file name>.reason.txt
//! ```
//! `season` is the calendar year of the epoch (UTC), `field` the KMTNet field name, `site` the
//! KMTNet site code (or the survey's name, e.g. `OGLE`, for other inputs).
//!
//! # Schema of every part file (columns in this order; partition keys are NOT repeated inside)
//! | column | type | meaning |
//! | --- | --- | --- |
//! | `star` | Utf8 | star id (`KB180003`, `BLG14.0001234`) |
//! | `band` | Utf8 | `I` or `V` |
//! | `hjd` | Float64 | HJD - 2450000, days |
//! | `flux` | Float64 | difference flux, **brightening positive**, pySIS units (mag zp 28) |
//! | `flux_err` | Float64 | 1σ error of `flux` |
//! | `mag` | Float64 | magnitude as given by the source (NaN if none) |
//! | `mag_err` | Float64 | its error |
//! | `fwhm` | Float64 | seeing FWHM, pixels (NaN if not measured) |
//! | `sky` | Float64 | sky background, counts |
//! | `airmass` | Float64 | sec z |
//! | `baseline_flux` | Float64 | the source's baseline total flux on the zp-28 scale (NaN if unknown): total = baseline + flux |
//! | `quality` | Float64 | source quality flag (DIAPL), NaN otherwise |
//! | `source` | Utf8 | input location the row came from |
//! | `source_line` | UInt32 | 1-based line in that input |
//!
//! Missing values are NaN, never null, and no column is nullable. Rows are sorted by
//! (`star`, `hjd`, `band`); the files declare that order in their sorting-columns metadata. DuckDB
//! (`read_parquet('…/photometry/**/*.parquet', hive_partitioning = true)`), polars
//! (`scan_parquet(…, hive_partitioning=True)`) and pandas/pyarrow read them as they are.
//!
//! # Visibility, crashes and idempotency
//! A part file is written first (one put or a multipart upload that becomes visible whole), then
//! the partition's manifest is replaced by one atomic put; the file ledger row is written last.
//! Readers (ours, and anyone who wants a consistent view) read only the parts the manifest lists.
//! Part names are derived from the content they hold (source, byte range, its hash), so a run
//! that crashed after writing a part rewrites the same object, and committing a name already
//! listed (or retired by a compaction) is a no-op. A bare glob over the directory can briefly see
//! an unlisted part after a crash or before a compaction's cleanup; `remove_orphans` (run by
//! every ingest at its end and by `lensnet store repair`) removes those.
//!
//! # Concurrent writers
//! Writers hold the store's writer lock (`FileLedger::lock_writer`: a PostgreSQL advisory lock,
//! so it holds across processes and hosts) for a whole ingest. On top of it every manifest swap
//! is a compare-and-swap where the backend has conditional puts (S3, memory: `PutMode::Update`
//! on the version read; a first manifest with `PutMode::Create`); a lost race re-reads and
//! re-applies the change. Compaction deletes only the parts it retired itself, and orphans are
//! removed only under the writer lock, so no part that another writer staged is ever deleted.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Float64Array, RecordBatch, StringArray, UInt32Array};
use arrow::compute::{concat_batches, take_record_batch};
use arrow::datatypes::{DataType, Field as ArrowField, Schema, SchemaRef};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::async_writer::AsyncArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::{KeyValue, SortingColumn};
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ingest::error::IngestError;
use crate::ingest::normalize::Observations;
use crate::photometry::{Band, Field, Site, SiteCurve, StarCurves, StarId};

/// Version tag written into manifests and Parquet key-value metadata.
pub const FORMAT_VERSION: &str = "lensnet-photometry/1";
pub const MANIFEST: &str = "_manifest.json";

/// The Arrow schema of a part file (see the module docs).
pub fn photometry_schema() -> SchemaRef {
    let f = |n: &str, t: DataType| ArrowField::new(n, t, false);
    Arc::new(Schema::new(vec![
        f("star", DataType::Utf8),
        f("band", DataType::Utf8),
        f("hjd", DataType::Float64),
        f("flux", DataType::Float64),
        f("flux_err", DataType::Float64),
        f("mag", DataType::Float64),
        f("mag_err", DataType::Float64),
        f("fwhm", DataType::Float64),
        f("sky", DataType::Float64),
        f("airmass", DataType::Float64),
        f("baseline_flux", DataType::Float64),
        f("quality", DataType::Float64),
        f("source", DataType::Utf8),
        f("source_line", DataType::UInt32),
    ]))
}

/// One Hive partition: (season, field, site) and, in the bucketed layout, the star bucket
/// (`None`: a partition of the first layout, which has no bucket level).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionKey {
    pub season: i32,
    pub field: Field,
    pub site: String,
    pub bucket: Option<u32>,
}

impl std::fmt::Display for PartitionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "season={}/field={}/site={}", self.season, self.field.name(), self.site)?;
        if let Some(b) = self.bucket {
            write!(f, "/bucket={b:04}")?;
        }
        Ok(())
    }
}

/// The layout of one field-season: how many star buckets its partitions are split into.
/// Written once, by the first writer of the field-season (`_layout.json` beside the site
/// folders), and never changed; a field-season with first-layout partitions and no layout
/// file stays in the first layout until `lensnet store migrate` rewrites it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub buckets: u32,
}

pub const LAYOUT: &str = "_layout.json";
pub const LAYOUT_FORMAT: &str = "lensnet-layout/1";
/// Stars a bucket holds at most (up to [`MAX_BUCKETS`] buckets): small enough that a bucket's
/// night, state and windows fit a stage's memory budget, large enough that a small field is one
/// bucket. The count is `ceil(stars / BUCKET_STARS)`, not a power of two: so every field of at
/// least six buckets has buckets of 4,166 to 5,000 stars, and a run's working set (two buckets
/// at a time) is the same for 10⁵ stars as for 10⁶ (powers of two left buckets anywhere between
/// 4k and 8k stars: 5k at 10⁴, 7.8k at 10⁶). Stores made before keep the count in their layout.
pub const BUCKET_STARS: u64 = 5_000;
pub const MAX_BUCKETS: u32 = 1024;

/// What [`PhotometryStore::read_new_rows`] read: the rows in range, each batch with its
/// partition's site, and each partition's counts.
#[derive(Debug, Clone, Default)]
pub struct NewRows {
    pub batches: Vec<(String, RecordBatch)>,
    pub counts: Vec<(PartitionKey, NewRowCounts)>,
}

/// One partition's rows as [`PhotometryStore::read_new_rows`] saw them: stored in all (its
/// manifest), read in the range `(since, upto]`, and after `upto`. Stored rows only grow (a
/// compaction rewrites the same rows), so `stored - in_range - after` (the rows up to `since`)
/// grows between two runs only when rows older than a site's watermark arrived: a late night.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NewRowCounts {
    pub stored: u64,
    pub in_range: u64,
    pub after: u64,
}

impl NewRowCounts {
    /// The partition's rows up to its `since`.
    pub fn up_to_since(&self) -> u64 {
        self.stored.saturating_sub(self.in_range + self.after)
    }
}

/// What [`PhotometryStore::star_rows`] finds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StarRows {
    /// Per star: rows stored, and rows with an epoch in the range asked.
    pub stars: BTreeMap<String, (u64, u64)>,
    /// Per site: the newest epoch in the range.
    pub site_max: BTreeMap<String, f64>,
}

/// The bucket count for a field of about `stars` stars.
pub fn buckets_for(stars: u64) -> u32 {
    stars.div_ceil(BUCKET_STARS).clamp(1, MAX_BUCKETS as u64) as u32
}

/// A star's bucket: FNV-1a (64 bit) of its id modulo the bucket count, the same on every
/// machine and in every season.
pub fn bucket_of(star: &str, buckets: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in star.as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % buckets.max(1) as u64) as u32
}

#[derive(Debug, Serialize, Deserialize)]
struct LayoutFile {
    format: String,
    buckets: u32,
}

/// A listed part file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartInfo {
    /// File name inside the partition directory.
    pub name: String,
    pub rows: u64,
    pub bytes: u64,
    pub min_hjd: f64,
    pub max_hjd: f64,
}

/// The partition's list of live parts. Replaced whole, by one put, on every change.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    /// Incremented on every replacement (for logs and for readers that cache).
    pub generation: u64,
    pub files: Vec<PartInfo>,
    /// Names merged away by compaction; committing one again is a no-op, so a re-run of a crashed
    /// ingest cannot resurrect rows that a compaction already holds.
    #[serde(default)]
    pub retired: Vec<String>,
}

/// When and how far a partition is compacted. Compaction is tiered: parts of
/// `target_part_rows` rows or more are full and never rewritten; the others are merged, in
/// manifest order, into parts of at most about `target_part_rows` rows, a night's parts only
/// with those of the same `period_days` until closed periods are gathered ([`plan_merges`]).
/// So a nightly ingest rewrites at most one period's nights on most nights (one full part on the
/// few that gather), not the season so far; a partition lists at most about `max_parts` parts;
/// and a merge holds at most one target part in memory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CompactionPolicy {
    /// Compact when a partition lists more than this many parts (then closed periods are
    /// gathered too, [`plan_merges`]) …
    pub max_parts: usize,
    /// … or at least two parts of which one is smaller than this many bytes.
    pub small_part_bytes: u64,
    /// Rows of a full part.
    pub target_part_rows: u64,
    /// Parts that start within this many days of the partition's newest epoch are recent: they
    /// are merged only with each other, and only while small, never into older parts, so that a nightly run finds
    /// the night's points in a few small parts instead of inside season-long ones (its reads
    /// are then the night's data). 0: no distinction.
    pub hold_days: f64,
    /// Parts spanning less than this many days merge only with those that start in the same
    /// period of this many days ([`plan_merges`]). 0: no periods (one open part grows to
    /// `target_part_rows`).
    pub period_days: f64,
}

impl Default for CompactionPolicy {
    fn default() -> Self {
        CompactionPolicy { max_parts: 8, small_part_bytes: 1 << 20, target_part_rows: 2_000_000, hold_days: 2.0, period_days: 8.0 }
    }
}

/// The merges a compaction of `m` makes under `policy`: groups of part indices (two or more
/// each), every group one new part. Parts of `target_part_rows` rows or more are full and stay.
/// Of the others:
/// - recent parts (starting within `hold_days` of the partition's newest epoch) merge only with
///   each other, and only while small;
/// - short parts (spanning less than `period_days`: a night's, a few nights' ingest) merge with
///   the short parts that start in the same period of `period_days` (`floor(min_hjd /
///   period_days)`), so a night's part joins a part of at most one period's nights and a nightly
///   ingest rewrites at most that much, however long the season so far (merging into one growing
///   part of up to `target_part_rows` rows rewrote the season's open part every night);
/// - long parts (an archive file's season) merge with each other, and so do the short parts of
///   closed periods (ended more than `hold_days` ago) when the partition lists more than
///   `max_parts` parts: a season's period parts are gathered into long ones every few periods,
///   so that a reader opens at most about `max_parts` parts however long the season;
/// each group in manifest order, in runs of at most `target_part_rows` rows.
pub fn plan_merges(m: &Manifest, policy: &CompactionPolicy) -> Vec<Vec<usize>> {
    let target = policy.target_part_rows.max(1);
    let open: Vec<usize> = (0..m.files.len()).filter(|&i| m.files[i].rows < target).collect();
    let small = |i: usize| m.files[i].bytes < policy.small_part_bytes;
    let crowded = m.files.len() > policy.max_parts;
    if !(open.len() >= 2 && (crowded || open.iter().any(|&i| small(i)))) {
        return Vec::new();
    }
    let newest = m.files.iter().map(|p| p.max_hjd).fold(f64::NEG_INFINITY, f64::max);
    #[derive(PartialEq, Clone, Copy)]
    enum Group {
        Recent,
        Period(i64),
        Long,
    }
    let group_of = |i: usize| {
        let f = &m.files[i];
        if policy.hold_days > 0.0 && f.min_hjd > newest - policy.hold_days {
            return small(i).then_some(Group::Recent);
        }
        if policy.period_days > 0.0 && f.min_hjd.is_finite() && f.max_hjd.is_finite() && f.max_hjd - f.min_hjd < policy.period_days {
            let period = (f.min_hjd / policy.period_days).floor();
            let closed = (period + 1.0) * policy.period_days + policy.hold_days.max(0.0) <= newest;
            if !(crowded && closed) {
                return Some(Group::Period(period as i64));
            }
        }
        Some(Group::Long)
    };
    let mut groups: Vec<(Group, Vec<usize>)> = Vec::new();
    for &i in &open {
        let Some(g) = group_of(i) else { continue };
        match groups.iter_mut().find(|(h, _)| *h == g) {
            Some((_, v)) => v.push(i),
            None => groups.push((g, vec![i])),
        }
    }
    let mut chunks: Vec<Vec<usize>> = Vec::new();
    for (_, members) in groups {
        let (mut chunk, mut rows) = (Vec::new(), 0u64);
        for i in members {
            let r = m.files[i].rows;
            if !chunk.is_empty() && rows + r > target {
                chunks.push(std::mem::take(&mut chunk));
                rows = 0;
            }
            chunk.push(i);
            rows += r;
        }
        chunks.push(chunk);
    }
    chunks.retain(|c| c.len() >= 2);
    chunks
}

/// Tries of a manifest compare-and-swap before giving up.
const MANIFEST_RETRIES: usize = 16;

/// What `lensnet store check` finds in a partition.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionHealth {
    pub key: PartitionKey,
    /// Parts the manifest lists.
    pub parts: usize,
    pub rows: u64,
    /// Part objects that no manifest lists (a glob read would see them twice or wrongly).
    pub orphans: Vec<String>,
    /// Listed parts whose object is missing (every read of the partition fails).
    pub lost: Vec<PartInfo>,
    /// The partition has small parts that compaction would merge.
    pub needs_compaction: bool,
}

impl PartitionHealth {
    pub fn is_clean(&self) -> bool {
        self.orphans.is_empty() && self.lost.is_empty() && !self.needs_compaction
    }
}

/// What a compaction did.
#[derive(Debug, Clone, PartialEq)]
pub struct Compacted {
    pub key: PartitionKey,
    /// Parts merged (now retired).
    pub merged_parts: usize,
    /// Rows in the new parts.
    pub rows: u64,
    pub new_parts: Vec<String>,
    pub deleted: usize,
}

/// The photometry dataset under `root` in `store`.
#[derive(Debug, Clone)]
pub struct PhotometryStore {
    pub store: Arc<dyn ObjectStore>,
    pub root: Path,
    /// Stars a writer expects in a field-season that has no layout yet (sets its bucket count).
    pub bucket_hint: u64,
    /// Layouts read so far (they never change once written), and the layout new parts of a
    /// field-season are written in (`None`: the first layout), decided once per process.
    layouts: Arc<std::sync::Mutex<HashMap<(i32, Field), Layout>>>,
    writing: Arc<std::sync::Mutex<HashMap<(i32, Field), Option<Layout>>>>,
    /// Rows decoded by this store's readers (its clones included): what a benchmark reports.
    rows_read: Arc<std::sync::atomic::AtomicU64>,
    /// Of the rows read for chosen stars ([`Self::read_stars_from`]), those of the stars and
    /// times asked for (the rest: other stars' rows in the same pages).
    rows_wanted: Arc<std::sync::atomic::AtomicU64>,
    /// Bytes of part objects that this store's readers asked the object store for (footers,
    /// page indexes, pages; a whole object where a reader gets it whole): what a run pays an
    /// object store for, where rows decoded are what it pays in CPU.
    bytes_read: Arc<std::sync::atomic::AtomicU64>,
}

/// How a part is compressed: the small parts that each file's commit adds use Snappy, because
/// parquet's zstd codec builds a new compression (and, to read, decompression) context per
/// column chunk, which was a quarter of a bulk ingest's CPU; compaction writes zstd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartCodec {
    Snappy,
    Zstd,
}

/// Rows per row group: parts are sorted by star, so the `star` column's statistics let a reader
/// of one star ([`read_star`]) fetch only the row groups that can hold it (about 20 stars of a
/// prime field per group).
pub const ROW_GROUP_ROWS: usize = 65_536;
/// Rows per data page (at most): the unit a reader of chosen stars fetches and decodes. A
/// night's part holds about 7 rows of each star per site, so a page of 256 rows holds about 35
/// stars, one of 1,024 about 150 (stop 43: at 10⁵ stars the searched stars' pages then cost
/// 0.5x the night's rows against 1.7x). The parquet writer closes a page only between write
/// batches, so the write batch is the page size too (until stop 43 it was the default 1,024,
/// and a smaller limit had no effect).
pub const DATA_PAGE_ROWS: usize = 256;

/// The columns written with a dictionary: few distinct values a part. Every other column is
/// written without one. A column chunk's dictionary page precedes its data pages, and a reader
/// of any page of the chunk fetches it: the default writer kept a dictionary for every column
/// while it stayed under 1 MB, so each per-row value column (`flux`, `mag`, …) carried a
/// dictionary of all its values, and a search that read a few stars' pages of a part fetched
/// most of the part (stop 43: 3.2x the night's bytes at 10⁵ stars for 0.02x of wanted rows).
/// `star` is sorted and repeats in runs, and is written with `DELTA_BYTE_ARRAY` (each value
/// stored as the length of the prefix it shares with the previous one and the rest), which
/// needs no dictionary page.
const DICTIONARY_COLUMNS: [&str; 2] = ["band", "source"];

fn writer_props(codec: PartCodec) -> Result<WriterProperties, IngestError> {
    use parquet::file::properties::EnabledStatistics;
    use parquet::schema::types::ColumnPath;
    let compression = match codec {
        PartCodec::Snappy => Compression::SNAPPY,
        PartCodec::Zstd => Compression::ZSTD(ZstdLevel::try_new(3)?),
    };
    let mut props = WriterProperties::builder().set_dictionary_enabled(false);
    for c in DICTIONARY_COLUMNS {
        props = props.set_column_dictionary_enabled(ColumnPath::from(c), true);
    }
    Ok(props
        .set_column_encoding(ColumnPath::from("star"), parquet::basic::Encoding::DELTA_BYTE_ARRAY)
        .set_compression(compression)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        // Small pages, each with its `star` and `hjd` bounds in the page index (the columns a
        // reader of chosen stars selects pages by; the others keep row-group statistics only):
        // a reader of a few stars fetches and decodes the pages that hold them.
        .set_data_page_row_count_limit(DATA_PAGE_ROWS)
        .set_write_batch_size(DATA_PAGE_ROWS)
        .set_statistics_enabled(EnabledStatistics::Chunk)
        .set_column_statistics_enabled(ColumnPath::from("star"), EnabledStatistics::Page)
        .set_column_statistics_enabled(ColumnPath::from("hjd"), EnabledStatistics::Page)
        .set_sorting_columns(Some(vec![
            SortingColumn { column_idx: 0, descending: false, nulls_first: false },
            SortingColumn { column_idx: 2, descending: false, nulls_first: false },
            SortingColumn { column_idx: 1, descending: false, nulls_first: false },
        ]))
        .set_key_value_metadata(Some(vec![
            KeyValue::new("lensnet.format".to_string(), FORMAT_VERSION.to_string()),
            KeyValue::new("lensnet.time".to_string(), "hjd = HJD - 2450000 (days)".to_string()),
            KeyValue::new(
                "lensnet.flux".to_string(),
                "difference flux, brightening positive; mag zero point 28".to_string(),
            ),
        ]))
        .build())
}

/// Builds the record batch of observations (one source file), sorted by (star, hjd, band).
pub fn observations_batch(obs: &Observations, source: &str, rows: &[usize]) -> Result<RecordBatch, IngestError> {
    let mut idx: Vec<usize> = rows.to_vec();
    idx.sort_by(|&a, &b| obs.hjd[a].total_cmp(&obs.hjd[b]));
    let pick = |v: &[f64]| -> ArrayRef { Arc::new(Float64Array::from_iter_values(idx.iter().map(|&i| v[i]))) };
    let n = idx.len();
    let star: ArrayRef = Arc::new(StringArray::from_iter_values(std::iter::repeat_n(obs.meta.star.0.as_str(), n)));
    let band: ArrayRef = Arc::new(StringArray::from_iter_values(std::iter::repeat_n(obs.meta.band.code(), n)));
    let baseline: ArrayRef = Arc::new(Float64Array::from(vec![obs.baseline_flux; n]));
    let src: ArrayRef = Arc::new(StringArray::from_iter_values(std::iter::repeat_n(source, n)));
    let line: ArrayRef = Arc::new(UInt32Array::from_iter_values(idx.iter().map(|&i| obs.line[i])));
    Ok(RecordBatch::try_new(
        photometry_schema(),
        vec![
            star,
            band,
            pick(&obs.hjd),
            pick(&obs.flux),
            pick(&obs.flux_err),
            pick(&obs.mag),
            pick(&obs.mag_err),
            pick(&obs.fwhm),
            pick(&obs.sky),
            pick(&obs.airmass),
            baseline,
            pick(&obs.quality),
            src,
            line,
        ],
    )?)
}

/// Sorts any photometry batch by (star, hjd, band), stably (rows with the same key keep their
/// order).
///
/// The three key columns are encoded once in arrow's row format, whose bytes compare as the
/// columns do (lexicographically, floats in total order), and the row indices are sorted on
/// those bytes with the standard library's stable sort. A compaction's input is its parts
/// concatenated, each already sorted: the stable sort finds those runs and merges them (n log k
/// comparisons for k parts), and each comparison is one memcmp. `lexsort_to_indices` sorted from
/// scratch with three dynamically dispatched column comparisons per step: about a fifth of a
/// nightly compaction's time (perf, `bench field` at 10⁵ stars).
pub fn sort_batch(batch: &RecordBatch) -> Result<RecordBatch, IngestError> {
    use arrow::row::{RowConverter, SortField};
    let keys = [0usize, 2, 1];
    let converter = RowConverter::new(keys.iter().map(|&i| SortField::new(batch.schema().field(i).data_type().clone())).collect())?;
    let rows = converter.convert_columns(&keys.map(|i| batch.column(i).clone()))?;
    let mut idx: Vec<u32> = (0..batch.num_rows() as u32).collect();
    idx.sort_by(|&a, &b| rows.row(a as usize).cmp(&rows.row(b as usize)));
    Ok(take_record_batch(batch, &UInt32Array::from(idx))?)
}

fn f64_col<'a>(b: &'a RecordBatch, name: &str) -> Result<&'a Float64Array, IngestError> {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<Float64Array>())
        .ok_or_else(|| IngestError::Corrupt { path: String::new(), reason: format!("column {name} is not Float64") })
}

fn str_col<'a>(b: &'a RecordBatch, name: &str) -> Result<&'a StringArray, IngestError> {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        .ok_or_else(|| IngestError::Corrupt { path: String::new(), reason: format!("column {name} is not Utf8") })
}

/// A part name from the bytes that identify its content.
pub fn part_name(seed: &[u8]) -> String {
    let h = Sha256::digest(seed);
    format!("part-{}.parquet", &hex::encode(h)[..16])
}

impl PhotometryStore {
    pub fn new(store: Arc<dyn ObjectStore>, root: Path) -> Self {
        PhotometryStore { store, root, bucket_hint: 0, layouts: Default::default(), writing: Default::default(), rows_read: Default::default(), rows_wanted: Default::default(), bytes_read: Default::default() }
    }

    /// Rows decoded so far by readers of this store.
    pub fn rows_read(&self) -> u64 {
        self.rows_read.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Of [`Self::rows_read`], the rows of the stars and times that readers of chosen stars
    /// asked for ([`Self::read_stars_from`]: a nightly search's windows); the others came with
    /// them in the pages that hold them.
    pub fn rows_wanted(&self) -> u64 {
        self.rows_wanted.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Bytes of part objects fetched so far by readers of this store.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn count_bytes(&self, n: u64) {
        self.bytes_read.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// A ranged reader of one part object that counts what it fetches.
    pub(crate) fn range_reader(&self, path: Path, size: u64, page_index: bool) -> RangeReader {
        RangeReader { store: self.store.clone(), path, size, page_index, bytes_read: self.bytes_read.clone() }
    }

    fn count_rows(&self, batches: &[RecordBatch]) {
        let n: usize = batches.iter().map(RecordBatch::num_rows).sum();
        self.rows_read.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// Rows, distinct stars and the epoch range of a field-season from its manifests and its
    /// parts' `star` column (one bucket at a time): what a streaming replay plans with.
    pub async fn field_summary(&self, season: i32, field: Field) -> Result<(u64, usize, f64, f64), IngestError> {
        let (mut rows, mut stars, mut lo, mut hi) = (0u64, 0usize, f64::INFINITY, f64::NEG_INFINITY);
        for (_, keys) in self.bucket_groups(season, field).await? {
            let mut ids: std::collections::HashSet<String> = std::collections::HashSet::new();
            for key in &keys {
                for p in self.read_manifest(key).await?.files {
                    rows += p.rows;
                    lo = lo.min(p.min_hjd);
                    hi = hi.max(p.max_hjd);
                    let bytes = self.store.get(&self.partition_dir(key).join(p.name.as_str())).await?.bytes().await?;
                    self.count_bytes(bytes.len() as u64);
                    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes)?;
                    let mask = parquet::arrow::ProjectionMask::roots(builder.parquet_schema(), [0]);
                    for b in builder.with_projection(mask).with_batch_size(64 * 1024).build()? {
                        let b = b?;
                        let col = str_col(&b, "star")?;
                        for i in 0..b.num_rows() {
                            if !ids.contains(col.value(i)) {
                                ids.insert(col.value(i).to_string());
                            }
                        }
                    }
                }
            }
            stars += ids.len();
        }
        Ok((rows, stars, lo, hi))
    }

    /// Rows listed by the manifests of a field-season.
    pub async fn field_rows(&self, season: i32, field: Field) -> Result<u64, IngestError> {
        let mut rows = 0;
        for key in self.field_partitions(season, field).await? {
            rows += self.read_manifest(&key).await?.files.iter().map(|p| p.rows).sum::<u64>();
        }
        Ok(rows)
    }

    /// The partitions of a field-season grouped by bucket (`None`: the first layout), in
    /// bucket order: the unit the streaming stages work in.
    pub async fn bucket_groups(&self, season: i32, field: Field) -> Result<Vec<(Option<u32>, Vec<PartitionKey>)>, IngestError> {
        let mut groups: BTreeMap<Option<u32>, Vec<PartitionKey>> = BTreeMap::new();
        for k in self.field_partitions(season, field).await? {
            groups.entry(k.bucket).or_default().push(k);
        }
        Ok(groups.into_iter().collect())
    }

    /// The rows of each partition with an epoch in `(since, upto]`, its `since` given with it
    /// (its site's watermark) (columns star, band, hjd, flux, flux_err, fwhm, sky), reading only
    /// the parts whose time range can hold one, each paired with its partition's site, and each
    /// partition's row counts ([`NewRowCounts`], from the same manifest). What a nightly run
    /// reads of the photometry besides the stars it then searches.
    pub async fn read_new_rows(&self, keys: &[(PartitionKey, f64)], upto: f64) -> Result<NewRows, IngestError> {
        let mut jobs = Vec::new();
        let mut counts = Vec::with_capacity(keys.len());
        for (i, (key, since)) in keys.iter().enumerate() {
            let since = *since;
            let m = self.read_manifest(key).await?;
            let mut c = NewRowCounts { stored: m.files.iter().map(|p| p.rows).sum(), ..Default::default() };
            for p in &m.files {
                if p.max_hjd > since && p.min_hjd <= upto {
                    jobs.push((i, key.clone(), p.name.clone(), since));
                } else if p.min_hjd > upto {
                    c.after += p.rows;
                }
            }
            counts.push((key.clone(), c));
        }
        // A task per part, so that the decoding runs on every worker thread; two at a time, so
        // that a bucket holds two parts' bytes and batches, not all of its parts' at once.
        use futures::StreamExt;
        let reads = jobs.into_iter().map(|(i, key, name, since)| {
            let me = self.clone();
            tokio::spawn(async move { me.read_new_part(&key, &name, since, upto).await.map(|r| (i, r)) })
        });
        let mut out = NewRows { batches: Vec::new(), counts };
        let mut done = futures::stream::iter(reads).buffered(2);
        while let Some(r) = done.next().await {
            let (i, (batches, in_range, after)) = r.map_err(|e| IngestError::Corrupt { path: String::new(), reason: format!("a read task died: {e}") })??;
            out.counts[i].1.in_range += in_range;
            out.counts[i].1.after += after;
            out.batches.extend(batches);
        }
        Ok(out)
    }

    /// One part's rows in `(since, upto]` (with its site), how many, and how many after `upto`.
    async fn read_new_part(&self, key: &PartitionKey, name: &str, since: f64, upto: f64) -> Result<(Vec<(String, RecordBatch)>, u64, u64), IngestError> {
        let path = self.partition_dir(key).join(name);
        let bytes = self.store.get(&path).await?.bytes().await?;
        self.count_bytes(bytes.len() as u64);
        let builder = ParquetRecordBatchReaderBuilder::try_new(bytes)?;
        let mask = parquet::arrow::ProjectionMask::roots(builder.parquet_schema(), [0, 1, 2, 3, 4, 7, 8]);
        let reader = builder.with_projection(mask).with_batch_size(64 * 1024).build()?;
        let (mut out, mut in_range, mut after) = (Vec::new(), 0u64, 0u64);
        for b in reader {
            let b = b?;
            self.count_rows(std::slice::from_ref(&b));
            let hjd = f64_col(&b, "hjd")?;
            after += hjd.values().iter().filter(|&&t| t > upto).count() as u64;
            let mask: arrow::array::BooleanArray = (0..b.num_rows()).map(|i| Some(hjd.value(i) > since && hjd.value(i) <= upto)).collect();
            let f = arrow::compute::filter_record_batch(&b, &mask)?;
            if f.num_rows() > 0 {
                in_range += f.num_rows() as u64;
                out.push((key.site.clone(), f));
            }
        }
        Ok((out, in_range, after))
    }

    /// The whole curves of the stars `ids` (sorted, unique) in the partitions `keys`, reading
    /// only the row groups whose `star` statistics can hold one of them. Stars sorted by id, as
    /// [`read_photometry`] gives them.
    pub async fn read_stars_in(&self, keys: &[PartitionKey], ids: &[String], field: Field) -> Result<Vec<StarCurves>, IngestError> {
        self.read_stars_with(keys, ids, field, false, f64::INFINITY).await
    }

    /// [`Self::read_stars_in`]; with `search_columns`, only the columns the alertfinder's
    /// search uses (star, band, hjd, flux, flux_err, fwhm, sky; the others are NaN); only the
    /// rows up to `upto` (the parts that start after it are not opened: what a replay step asks).
    pub async fn read_stars_with(&self, keys: &[PartitionKey], ids: &[String], field: Field, search_columns: bool, upto: f64) -> Result<Vec<StarCurves>, IngestError> {
        self.read_stars_from(keys, ids, None, field, search_columns, upto).await
    }

    /// [`Self::read_stars_with`], each star `ids[i]` from `from[i]` on (its rows with `hjd >=
    /// from[i]`; `-inf`: all): a part that ends before every star's start is not opened, nor
    /// a page whose `hjd` bounds end before it (issue 14: a search reads a star's recent rows).
    pub async fn read_stars_from(&self, keys: &[PartitionKey], ids: &[String], from: Option<&[f64]>, field: Field, search_columns: bool, upto: f64) -> Result<Vec<StarCurves>, IngestError> {
        let mut stars: BTreeMap<String, HashMap<(String, String), SiteCurve>> = BTreeMap::new();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        if from.is_some_and(|f| f.len() != ids.len()) {
            return Err(IngestError::Corrupt { path: String::new(), reason: "read_stars_from: one start per star".into() });
        }
        let earliest = from.map_or(f64::NEG_INFINITY, |f| f.iter().copied().fold(f64::INFINITY, f64::min));
        let mut jobs = Vec::new();
        for key in keys {
            let m = self.read_manifest(key).await?;
            for p in m.files.into_iter().filter(|p| p.min_hjd <= upto && !(p.max_hjd < earliest)) {
                jobs.push((key.clone(), p));
            }
        }
        // One task per part (decoding on every worker thread), at most a few at a time.
        let ids: Arc<Vec<String>> = Arc::new(ids.to_vec());
        let from: Option<Arc<Vec<f64>>> = from.map(|f| Arc::new(f.to_vec()));
        let reads = jobs.iter().cloned().map(|(key, part)| {
            let (me, ids, from) = (self.clone(), ids.clone(), from.clone());
            async move {
                tokio::spawn(async move { me.read_part_for_stars(&key, &part, &ids, from.as_deref().map(|v| v.as_slice()), search_columns, upto).await })
                    .await
                    .map_err(|e| IngestError::Corrupt { path: String::new(), reason: format!("a read task died: {e}") })?
            }
        });
        let results: Vec<Result<Vec<RecordBatch>, IngestError>> = futures::stream::iter(reads).buffered(8).collect().await;
        for (batches, (key, _)) in results.into_iter().zip(&jobs) {
            for b in batches? {
                absorb_batch(&mut stars, &key.site, &b)?;
            }
        }
        Ok(finish_stars(stars, field, None))
    }

    async fn read_part_for_stars(&self, key: &PartitionKey, part: &PartInfo, ids: &[String], from: Option<&[f64]>, search_columns: bool, upto: f64) -> Result<Vec<RecordBatch>, IngestError> {
        let path = self.partition_dir(key).join(part.name.as_str());
        let reader = self.range_reader(path, part.bytes, true);
        let builder = parquet::arrow::ParquetRecordBatchStreamBuilder::new(reader).await?;
        let holds = |lo: &[u8], hi: &[u8]| {
            let k = ids.partition_point(|id| id.as_bytes() < lo);
            k < ids.len() && ids[k].as_bytes() <= hi
        };
        let groups: Vec<usize> = builder
            .metadata()
            .row_groups()
            .iter()
            .enumerate()
            .filter(|(_, rg)| match rg.column(0).statistics().map(|s| (s.min_bytes_opt(), s.max_bytes_opt())) {
                Some((Some(lo), Some(hi))) => holds(lo, hi),
                _ => true,
            })
            .map(|(i, _)| i)
            .collect();
        if groups.is_empty() {
            return Ok(Vec::new());
        }
        // Within the groups, only the pages whose `star` bounds can hold one of the stars
        // (every page when the part has no page index: parts written before it).
        let md = builder.metadata().clone();
        let mut ranges: Vec<std::ops::Range<usize>> = Vec::new();
        let mut offset = 0usize;
        for &g in &groups {
            let n = md.row_group(g).num_rows() as usize;
            let pi = md.page_index_for_row_group(g);
            // The `star` pages that can hold a wanted star, with their bounds.
            let mut by_star: Vec<(std::ops::Range<usize>, Option<(Vec<u8>, Vec<u8>)>)> = Vec::new();
            match (pi.column_index(0), pi.offset_index(0)) {
                (Some(parquet::file::page_index::column_index::ColumnIndexMetaData::BYTE_ARRAY(ci)), Some(oi)) => {
                    let locs = oi.page_locations();
                    for p in 0..locs.len() {
                        let start = locs[p].first_row_index as usize;
                        let end = locs.get(p + 1).map_or(n, |l| l.first_row_index as usize);
                        match (ci.min_value(p), ci.max_value(p)) {
                            (Some(lo), Some(hi)) if holds(lo, hi) => by_star.push((start..end, Some((lo.to_vec(), hi.to_vec())))),
                            (Some(_), Some(_)) => {}
                            _ => by_star.push((start..end, None)),
                        }
                    }
                }
                _ => by_star.push((0..n, None)),
            }
            let mut keep: Vec<std::ops::Range<usize>> = by_star.iter().map(|(r, _)| r.clone()).collect();
            // Of those, not the `hjd` pages (their own row bounds) that end before the start of
            // every wanted star that the overlapping `star` pages can hold.
            if let (Some(from), Some(parquet::file::page_index::column_index::ColumnIndexMetaData::DOUBLE(ci)), Some(oi)) = (from, pi.column_index(2), pi.offset_index(2)) {
                let locs = oi.page_locations();
                let mut by_time: Vec<std::ops::Range<usize>> = Vec::new();
                let mut k = 0;
                for p in 0..locs.len() {
                    let start = locs[p].first_row_index as usize;
                    let end = locs.get(p + 1).map_or(n, |l| l.first_row_index as usize);
                    let Some(&hi_t) = ci.max_value(p) else {
                        by_time.push(start..end);
                        continue;
                    };
                    while k < by_star.len() && by_star[k].0.end <= start {
                        k += 1;
                    }
                    // The earliest start of the wanted stars in the star pages over these rows.
                    let mut first = f64::INFINITY;
                    let mut j = k;
                    while j < by_star.len() && by_star[j].0.start < end {
                        match &by_star[j].1 {
                            Some((lo, hi)) => {
                                let a = ids.partition_point(|id| id.as_bytes() < lo.as_slice());
                                let b = ids.partition_point(|id| id.as_bytes() <= hi.as_slice());
                                first = from[a..b].iter().copied().fold(first, f64::min);
                            }
                            None => first = f64::NEG_INFINITY,
                        }
                        j += 1;
                    }
                    if !(hi_t < first) {
                        by_time.push(start..end);
                    }
                }
                keep = intersect_ranges(&keep, &by_time);
            }
            ranges.extend(keep.into_iter().map(|r| offset + r.start..offset + r.end));
            offset += n;
        }
        let selection = parquet::arrow::arrow_reader::RowSelection::from_consecutive_ranges(ranges.into_iter(), offset);
        let builder = if search_columns {
            let mask = parquet::arrow::ProjectionMask::roots(builder.parquet_schema(), [0, 1, 2, 3, 4, 7, 8]);
            builder.with_projection(mask)
        } else {
            builder
        };
        // Each batch is cut down to the wanted stars' rows as it is decoded: the pages that hold
        // them hold about 20 other stars' rows each, and a part's selected pages decoded at once
        // were most of a screened-in search's memory (92 MB of a 10⁶-star field's nightly run).
        let mut stream = builder.with_row_groups(groups).with_row_selection(selection).with_batch_size(8 * 1024).build()?;
        let mut out = Vec::new();
        while let Some(b) = stream.try_next().await? {
            self.count_rows(std::slice::from_ref(&b));
            let col = str_col(&b, "star")?;
            let hjd = f64_col(&b, "hjd")?;
            let mut keep = arrow::array::BooleanBufferBuilder::new(b.num_rows());
            for (id, run) in star_runs(col) {
                let (wanted, start) = match ids.binary_search_by(|x| x.as_str().cmp(id)) {
                    Ok(k) => (true, from.map_or(f64::NEG_INFINITY, |f| f[k])),
                    Err(_) => (false, f64::NEG_INFINITY),
                };
                for r in run {
                    let t = hjd.value(r);
                    keep.append(wanted && !(t > upto) && !(t < start));
                }
            }
            let mask = arrow::array::BooleanArray::new(keep.finish(), None);
            self.rows_wanted.fetch_add(mask.true_count() as u64, std::sync::atomic::Ordering::Relaxed);
            let f = arrow::compute::filter_record_batch(&b, &mask)?;
            if f.num_rows() > 0 {
                out.push(f);
            }
        }
        Ok(out)
    }

    /// Every star of the partitions `keys` with its stored rows, in total and with an epoch in
    /// `(since, upto]`, and each site's newest epoch in that range, reading only the `star` and
    /// `hjd` columns one batch at a time: how a nightly run without a screening state lists a
    /// bucket's stars without holding its rows.
    pub async fn star_rows(&self, keys: &[PartitionKey], since: f64, upto: f64) -> Result<StarRows, IngestError> {
        let mut jobs = Vec::new();
        for key in keys {
            let m = self.read_manifest(key).await?;
            for p in m.files.into_iter().filter(|p| p.min_hjd <= upto) {
                jobs.push((key.clone(), p));
            }
        }
        let reads = jobs.into_iter().map(|(key, part)| {
            let me = self.clone();
            async move {
                tokio::spawn(async move {
                    let path = me.partition_dir(&key).join(part.name.as_str());
                    let reader = me.range_reader(path, part.bytes, false);
                    let builder = parquet::arrow::ParquetRecordBatchStreamBuilder::new(reader).await?;
                    let mask = parquet::arrow::ProjectionMask::roots(builder.parquet_schema(), [0, 2]);
                    let mut stream = builder.with_projection(mask).with_batch_size(64 * 1024).build()?;
                    let mut out = StarRows::default();
                    while let Some(b) = stream.try_next().await? {
                        me.count_rows(std::slice::from_ref(&b));
                        let (star, hjd) = (str_col(&b, "star")?, f64_col(&b, "hjd")?);
                        // Rows are sorted by star: one map entry per run of a star's rows.
                        for (id, run) in star_runs(star) {
                            let total = run.len() as u64;
                            let mut within = 0u64;
                            for t in run.map(|r| hjd.value(r)) {
                                if t > since && t <= upto {
                                    within += 1;
                                    let m = out.site_max.entry(key.site.clone()).or_insert(f64::NEG_INFINITY);
                                    *m = m.max(t);
                                }
                            }
                            let e = out.stars.entry(id.to_string()).or_default();
                            e.0 += total;
                            e.1 += within;
                        }
                    }
                    Ok::<_, IngestError>(out)
                })
                .await
                .map_err(|e| IngestError::Corrupt { path: String::new(), reason: format!("a read task died: {e}") })?
            }
        });
        let parts: Vec<Result<StarRows, IngestError>> = futures::stream::iter(reads).buffer_unordered(4).collect().await;
        let mut out = StarRows::default();
        for p in parts {
            let p = p?;
            for (k, (a, b)) in p.stars {
                let e = out.stars.entry(k).or_default();
                e.0 += a;
                e.1 += b;
            }
            for (k, v) in p.site_max {
                let m = out.site_max.entry(k).or_insert(f64::NEG_INFINITY);
                *m = m.max(v);
            }
        }
        Ok(out)
    }

    /// The same store, creating new field-seasons with the bucket count for `stars` stars.
    pub fn with_bucket_hint(&self, stars: u64) -> Self {
        PhotometryStore { bucket_hint: stars, ..self.clone() }
    }

    fn field_dir(&self, season: i32, field: Field) -> Path {
        self.root.clone().join("photometry").join(format!("season={season}")).join(format!("field={}", field.name()))
    }

    /// The layout of a field-season, if it has one (`None`: nothing stored yet, or only
    /// partitions of the first layout).
    pub async fn layout(&self, season: i32, field: Field) -> Result<Option<Layout>, IngestError> {
        if let Some(l) = self.layouts.lock().expect("layouts lock").get(&(season, field)) {
            return Ok(Some(*l));
        }
        let path = self.field_dir(season, field).join(LAYOUT);
        let l = match self.store.get(&path).await {
            Ok(r) => {
                let f: LayoutFile = serde_json::from_slice(&r.bytes().await?)?;
                if f.format != LAYOUT_FORMAT || f.buckets == 0 {
                    return Err(IngestError::Corrupt { path: path.to_string(), reason: format!("layout `{}` with {} buckets, expected `{LAYOUT_FORMAT}`", f.format, f.buckets) });
                }
                Some(Layout { buckets: f.buckets })
            }
            Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        if let Some(l) = l {
            self.layouts.lock().expect("layouts lock").insert((season, field), l);
        }
        Ok(l)
    }

    /// The layout new parts of a field-season are written in: its layout file; else, when it
    /// already holds first-layout partitions, the first layout (`None`); else a new layout for
    /// [`Self::bucket_hint`] stars, written once (the first of two racing writers wins).
    pub async fn write_layout(&self, season: i32, field: Field) -> Result<Option<Layout>, IngestError> {
        if let Some(l) = self.writing.lock().expect("layouts lock").get(&(season, field)) {
            return Ok(*l);
        }
        let l = self.decide_layout(season, field).await?;
        self.writing.lock().expect("layouts lock").insert((season, field), l);
        Ok(l)
    }

    async fn decide_layout(&self, season: i32, field: Field) -> Result<Option<Layout>, IngestError> {
        if let Some(l) = self.layout(season, field).await? {
            return Ok(Some(l));
        }
        let legacy = self.field_partitions(season, field).await?.iter().any(|k| k.bucket.is_none());
        if legacy {
            return Ok(None);
        }
        let path = self.field_dir(season, field).join(LAYOUT);
        let body = serde_json::to_vec_pretty(&LayoutFile { format: LAYOUT_FORMAT.into(), buckets: buckets_for(self.bucket_hint) })?;
        match self.store.put_opts(&path, PutPayload::from(body.clone()), PutOptions::from(PutMode::Create)).await {
            Ok(_) | Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {}
            Err(object_store::Error::NotImplemented { .. }) => {
                self.store.put(&path, PutPayload::from(body)).await?;
            }
            Err(e) => return Err(e.into()),
        }
        self.layout(season, field).await
    }

    /// The partition a star's rows of (season, field, site) go to.
    pub async fn partition_for(&self, season: i32, field: Field, site: &str, star: &str) -> Result<PartitionKey, IngestError> {
        let bucket = self.write_layout(season, field).await?.map(|l| bucket_of(star, l.buckets));
        Ok(PartitionKey { season, field, site: site.to_string(), bucket })
    }

    /// A name of this store that is the same in every process and on every host that opens it
    /// (the backend with its bucket or folder, and the root): the key of its writer lock.
    pub fn identity(&self) -> String {
        format!("{}/{}", self.store, self.root)
    }

    pub fn partition_dir(&self, key: &PartitionKey) -> Path {
        let site = self.field_dir(key.season, key.field).join(format!("site={}", key.site));
        match key.bucket {
            Some(b) => site.join(format!("bucket={b:04}")),
            None => site,
        }
    }

    /// Writes a part file (not yet visible: no manifest lists it). Rewriting the same `name`
    /// replaces the object with identical content.
    pub async fn stage_part(&self, key: &PartitionKey, name: &str, batch: &RecordBatch) -> Result<PartInfo, IngestError> {
        self.stage_part_with(key, name, batch, PartCodec::Snappy).await
    }

    /// [`Self::stage_part`] with a chosen codec.
    pub async fn stage_part_with(&self, key: &PartitionKey, name: &str, batch: &RecordBatch, codec: PartCodec) -> Result<PartInfo, IngestError> {
        let path = self.partition_dir(key).join(name);
        let writer = object_store::buffered::BufWriter::new(self.store.clone(), path.clone());
        let mut w = AsyncArrowWriter::try_new(writer, batch.schema(), Some(writer_props(codec)?))?;
        w.write(batch).await?;
        w.close().await?;
        let bytes = self.store.head(&path).await?.size;
        let hjd = f64_col(batch, "hjd")?;
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for v in hjd.values().iter() {
            lo = lo.min(*v);
            hi = hi.max(*v);
        }
        Ok(PartInfo { name: name.to_string(), rows: batch.num_rows() as u64, bytes, min_hjd: lo, max_hjd: hi })
    }

    pub async fn read_manifest(&self, key: &PartitionKey) -> Result<Manifest, IngestError> {
        Ok(self.read_manifest_versioned(key).await?.0)
    }

    /// The manifest and the version it was read at (`None` when there is none yet).
    pub async fn read_manifest_versioned(&self, key: &PartitionKey) -> Result<(Manifest, Option<UpdateVersion>), IngestError> {
        let path = self.partition_dir(key).join(MANIFEST);
        match self.store.get(&path).await {
            Ok(r) => {
                let version = UpdateVersion { e_tag: r.meta.e_tag.clone(), version: r.meta.version.clone() };
                let bytes = r.bytes().await?;
                let m: Manifest = serde_json::from_slice(&bytes)?;
                if m.format != FORMAT_VERSION {
                    return Err(IngestError::Corrupt {
                        path: path.to_string(),
                        reason: format!("manifest format `{}`, expected `{FORMAT_VERSION}`", m.format),
                    });
                }
                Ok((m, Some(version)))
            }
            Err(object_store::Error::NotFound { .. }) => {
                Ok((Manifest { format: FORMAT_VERSION.to_string(), ..Default::default() }, None))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Replaces the manifest if it is still at `read_at` (compare-and-swap where the backend
    /// supports conditional puts; a plain put elsewhere, e.g. a local folder, where the
    /// writer lock alone serialises writers). `Ok(false)`: another writer got there first.
    async fn swap_manifest(&self, key: &PartitionKey, m: &Manifest, read_at: Option<UpdateVersion>) -> Result<bool, IngestError> {
        let path = self.partition_dir(key).join(MANIFEST);
        let body = serde_json::to_vec_pretty(m)?;
        let mode = match read_at {
            Some(v) => PutMode::Update(v),
            None => PutMode::Create,
        };
        match self.store.put_opts(&path, PutPayload::from(body.clone()), PutOptions::from(mode)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::Precondition { .. } | object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(object_store::Error::NotImplemented { .. }) => {
                self.store.put(&path, PutPayload::from(body)).await?;
                Ok(true)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Read, change and swap a manifest, again from a fresh read whenever another writer's swap
    /// came in between. `change` returns false when there is nothing to write.
    async fn update_manifest(&self, key: &PartitionKey, mut change: impl FnMut(&mut Manifest) -> bool) -> Result<Manifest, IngestError> {
        for _ in 0..MANIFEST_RETRIES {
            let (mut m, read_at) = self.read_manifest_versioned(key).await?;
            if !change(&mut m) {
                return Ok(m);
            }
            m.generation += 1;
            if self.swap_manifest(key, &m, read_at).await? {
                return Ok(m);
            }
            tracing::info!(partition = %self.partition_dir(key), "manifest changed under us; re-reading");
        }
        Err(IngestError::Corrupt {
            path: self.partition_dir(key).join(MANIFEST).to_string(),
            reason: format!("the manifest changed under every one of {MANIFEST_RETRIES} attempts to update it"),
        })
    }

    /// Makes staged parts visible: one atomic manifest replacement. Names already listed or
    /// retired are skipped, so committing twice is harmless. Returns how many were added.
    pub async fn commit_parts(&self, key: &PartitionKey, parts: &[PartInfo]) -> Result<usize, IngestError> {
        let mut added = 0;
        self.update_manifest(key, |m| {
            added = 0;
            for p in parts {
                if m.files.iter().any(|f| f.name == p.name) || m.retired.contains(&p.name) {
                    continue;
                }
                m.files.push(p.clone());
                added += 1;
            }
            added > 0
        })
        .await?;
        Ok(added)
    }

    /// Every partition that has a manifest.
    pub async fn partitions(&self) -> Result<Vec<PartitionKey>, IngestError> {
        let prefix = self.root.clone().join("photometry");
        let metas: Vec<_> = self.store.list(Some(&prefix)).try_collect().await?;
        let mut keys = Vec::new();
        for m in metas {
            if m.location.filename() != Some(MANIFEST) {
                continue;
            }
            if let Some(k) = parse_partition(&m.location) {
                keys.push(k);
            }
        }
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    async fn read_part(&self, key: &PartitionKey, name: &str) -> Result<Vec<RecordBatch>, IngestError> {
        let path = self.partition_dir(key).join(name);
        let bytes = self.store.get(&path).await?.bytes().await?;
        self.count_bytes(bytes.len() as u64);
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)?.with_batch_size(64 * 1024).build()?;
        let mut out = Vec::new();
        for b in reader {
            out.push(b?);
        }
        self.count_rows(&out);
        Ok(out)
    }

    /// The batches of every part the manifest lists (file schema, no partition columns).
    pub async fn read_partition(&self, key: &PartitionKey) -> Result<Vec<RecordBatch>, IngestError> {
        let m = self.read_manifest(key).await?;
        let reads = m.files.iter().map(|p| self.read_part(key, &p.name));
        let parts = futures::future::try_join_all(reads).await?;
        Ok(parts.into_iter().flatten().collect())
    }

    /// Sites present in one field-season.
    pub async fn sites(&self, season: i32, field: Field) -> Result<Vec<String>, IngestError> {
        let mut sites: Vec<String> = self.field_partitions(season, field).await?.into_iter().map(|k| k.site).collect();
        sites.dedup();
        Ok(sites)
    }

    /// The partitions of one field-season (every site and bucket), sorted: the bucketed ones
    /// when the field-season has a layout, else those of the first layout (so that a
    /// migration's new partitions become visible all at once, when it writes the layout).
    pub async fn field_partitions(&self, season: i32, field: Field) -> Result<Vec<PartitionKey>, IngestError> {
        let bucketed = self.layout(season, field).await?.is_some();
        Ok(self.all_field_partitions(season, field).await?.into_iter().filter(|k| k.bucket.is_some() == bucketed).collect())
    }

    async fn all_field_partitions(&self, season: i32, field: Field) -> Result<Vec<PartitionKey>, IngestError> {
        let prefix = self.field_dir(season, field);
        let metas: Vec<_> = self.store.list(Some(&prefix)).try_collect().await?;
        let mut keys: Vec<PartitionKey> = metas.iter().filter(|m| m.location.filename() == Some(MANIFEST)).filter_map(|m| parse_partition(&m.location)).collect();
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    /// Rewrites a field-season of the first layout into buckets: every part is split by bucket
    /// into new parts (one part in memory at a time), then the layout file is written (the
    /// moment readers switch to the new partitions), then the old partitions are deleted. The
    /// caller holds the writer lock. Killed at any point and run again, it ends the same:
    /// new part names derive from the old ones, commits skip names already listed, and a
    /// field-season whose layout exists only has its old partitions deleted. Returns the rows
    /// moved and the bucket count (None: nothing to migrate).
    pub async fn migrate_field(&self, season: i32, field: Field) -> Result<Option<(u64, u32)>, IngestError> {
        let all = self.all_field_partitions(season, field).await?;
        let legacy: Vec<PartitionKey> = all.iter().filter(|k| k.bucket.is_none()).cloned().collect();
        if legacy.is_empty() {
            return Ok(None);
        }
        let mut moved = 0u64;
        let buckets = match self.layout(season, field).await? {
            Some(l) => l.buckets,
            None => {
                let (_, stars, _, _) = self.field_summary(season, field).await?;
                let buckets = buckets_for(stars as u64);
                for key in &legacy {
                    let mut staged: BTreeMap<u32, Vec<PartInfo>> = BTreeMap::new();
                    for part in self.read_manifest(key).await?.files {
                        let batches = self.read_part(key, &part.name).await?;
                        let batch = concat_batches(&photometry_schema(), &batches)?;
                        drop(batches);
                        let star = str_col(&batch, "star")?;
                        let mut rows: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
                        for i in 0..batch.num_rows() {
                            rows.entry(bucket_of(star.value(i), buckets)).or_default().push(i as u32);
                        }
                        for (b, idx) in rows {
                            let taken = take_record_batch(&batch, &UInt32Array::from(idx))?;
                            let nk = PartitionKey { bucket: Some(b), ..key.clone() };
                            let name = part_name(format!("migrate\n{}\n{b}", part.name).as_bytes());
                            staged.entry(b).or_default().push(self.stage_part_with(&nk, &name, &taken, PartCodec::Zstd).await?);
                        }
                        moved += batch.num_rows() as u64;
                    }
                    for (b, infos) in staged {
                        self.commit_parts(&PartitionKey { bucket: Some(b), ..key.clone() }, &infos).await?;
                    }
                }
                let path = self.field_dir(season, field).join(LAYOUT);
                let body = serde_json::to_vec_pretty(&LayoutFile { format: LAYOUT_FORMAT.into(), buckets })?;
                match self.store.put_opts(&path, PutPayload::from(body.clone()), PutOptions::from(PutMode::Create)).await {
                    Ok(_) | Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {}
                    Err(object_store::Error::NotImplemented { .. }) => {
                        self.store.put(&path, PutPayload::from(body)).await?;
                    }
                    Err(e) => return Err(e.into()),
                }
                self.writing.lock().expect("layouts lock").remove(&(season, field));
                buckets
            }
        };
        // The switch is made: the old partitions go (parts first, the manifest last).
        for key in &legacy {
            let dir = self.partition_dir(key);
            let listed: Vec<_> = self.store.list(Some(&dir)).try_collect().await?;
            for m in listed.iter().filter(|m| m.location.filename() != Some(MANIFEST)) {
                // Only this partition's own objects (not the bucket folders below it).
                if m.location.parts().count() == dir.parts().count() + 1 {
                    match self.store.delete(&m.location).await {
                        Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            match self.store.delete(&dir.clone().join(MANIFEST)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Some((moved, buckets)))
    }

    /// Merges a partition's parts that are not full into sorted parts of about
    /// `policy.target_part_rows` rows when `policy` says so (see [`CompactionPolicy`]): write
    /// the merged parts, swap the manifest (merged names move to `retired`), then delete the old
    /// objects. A crash before the swap leaves unlisted merged parts; after it, unlisted old
    /// parts; both are invisible to manifest readers and removed by [`PhotometryStore::remove_orphans`].
    pub async fn compact(&self, key: &PartitionKey, policy: &CompactionPolicy) -> Result<Option<Compacted>, IngestError> {
        let m = self.read_manifest(key).await?;
        let chunks = plan_merges(&m, policy);
        if chunks.is_empty() {
            return Ok(None);
        }
        let mut merged_into: std::collections::HashMap<usize, PartInfo> = std::collections::HashMap::new();
        let mut retired = std::collections::HashSet::new();
        let mut new_parts = Vec::new();
        let mut total_rows = 0;
        for chunk in &chunks {
            let mut seed = Vec::new();
            for &i in chunk {
                seed.extend_from_slice(m.files[i].name.as_bytes());
                seed.push(b'\n');
            }
            let name = part_name(&seed);
            let inputs: Vec<PartInfo> = chunk.iter().map(|&i| m.files[i].clone()).collect();
            // Parts are written sorted, so they merge as streams (a few batches of each in
            // memory); a part that turns out unsorted (a store written by other tools) is
            // merged in memory instead, as it always was.
            let info = match self.merge_sorted_parts(key, &inputs, &name).await? {
                Some(info) => info,
                None => {
                    let reads = chunk.iter().map(|&i| self.read_part(key, &m.files[i].name));
                    let batches: Vec<RecordBatch> = futures::future::try_join_all(reads).await?.into_iter().flatten().collect();
                    let merged = concat_batches(&photometry_schema(), &batches)?;
                    drop(batches);
                    let sorted = sort_batch(&merged)?;
                    drop(merged);
                    self.stage_part_with(key, &name, &sorted, PartCodec::Zstd).await?
                }
            };
            total_rows += info.rows;
            new_parts.push(name);
            merged_into.insert(chunk[0], info);
            retired.extend(chunk.iter().copied());
        }
        let retired_names: Vec<String> = chunks.iter().flatten().map(|&i| m.files[i].name.clone()).collect();
        let merged_names: Vec<(String, PartInfo)> = chunks.iter().map(|c| (m.files[c[0]].name.clone(), merged_into[&c[0]].clone())).collect();
        let mut lost_race = false;
        self.update_manifest(key, |cur| {
            // Every merged part must still be listed (another writer may have compacted first).
            if !retired_names.iter().all(|n| cur.files.iter().any(|f| &f.name == n)) {
                lost_race = true;
                return false;
            }
            let mut files = Vec::with_capacity(cur.files.len());
            for f in &cur.files {
                if let Some((_, info)) = merged_names.iter().find(|(first, _)| first == &f.name) {
                    files.push(info.clone());
                } else if !retired_names.contains(&f.name) {
                    files.push(f.clone());
                }
            }
            cur.files = files;
            for n in &retired_names {
                if !cur.retired.contains(n) {
                    cur.retired.push(n.clone());
                }
            }
            true
        })
        .await?;
        if lost_race {
            // Our merged parts are listed nowhere; nobody else can reference their names.
            for name in &new_parts {
                let _ = self.store.delete(&self.partition_dir(key).join(name.as_str())).await;
            }
            return Ok(None);
        }
        // Delete exactly the parts this compaction retired (never another writer's).
        let mut deleted = 0;
        for name in &retired_names {
            match self.store.delete(&self.partition_dir(key).join(name.as_str())).await {
                Ok(()) => deleted += 1,
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Some(Compacted { key: key.clone(), merged_parts: retired.len(), rows: total_rows, new_parts, deleted }))
    }

    /// Merges parts that are each sorted by (star, hjd, band) into one part `name` (Zstd), as a
    /// k-way merge of the parts read as streams: memory holds about one row group of each part
    /// and one of the output, not the parts' rows (merging a season's period parts in memory
    /// took 1.1-1.3 GB at 10⁴-10⁵ stars on the nights that gathered them). Rows with the same
    /// key come in `parts` order, then in their part's order, as the stable sort of the parts
    /// concatenated puts them: the same rows in the same order, so the same part. `None` when a
    /// part is not sorted (nothing is left listed: the object written so far is debris that
    /// the caller's in-memory merge overwrites under the same name).
    async fn merge_sorted_parts(&self, key: &PartitionKey, parts: &[PartInfo], name: &str) -> Result<Option<PartInfo>, IngestError> {
        use arrow::row::{RowConverter, Rows, SortField};
        /// Rows per decoded batch of an input and per written batch (a multiple of the data
        /// page and row group sizes, so the writer cuts pages and groups where one batch would).
        const BATCH: usize = 8 * 1024;
        struct Input {
            stream: parquet::arrow::async_reader::ParquetRecordBatchStream<RangeReader>,
            batch: Option<RecordBatch>,
            rows: Option<Rows>,
            pos: usize,
        }
        let schema = photometry_schema();
        let keys = [0usize, 2, 1];
        let converter = RowConverter::new(keys.iter().map(|&i| SortField::new(schema.field(i).data_type().clone())).collect())?;
        // Loads an input's next non-empty batch; false at its end, error if it is unsorted
        // against the batch before.
        async fn advance(input: &mut Input, converter: &RowConverter, keys: &[usize; 3], counter: &PhotometryStore) -> Result<Option<bool>, IngestError> {
            let last = match (&input.rows, &input.batch) {
                (Some(r), Some(b)) if b.num_rows() > 0 => Some(r.row(b.num_rows() - 1).owned()),
                _ => None,
            };
            loop {
                let Some(b) = input.stream.try_next().await? else {
                    input.batch = None;
                    input.rows = None;
                    return Ok(Some(false));
                };
                if b.num_rows() == 0 {
                    continue;
                }
                counter.count_rows(std::slice::from_ref(&b));
                let rows = converter.convert_columns(&keys.map(|i| b.column(i).clone()))?;
                let sorted = last.as_ref().is_none_or(|l| l.row() <= rows.row(0)) && (1..rows.num_rows()).all(|i| rows.row(i - 1) <= rows.row(i));
                if !sorted {
                    return Ok(None);
                }
                input.batch = Some(b);
                input.rows = Some(rows);
                input.pos = 0;
                return Ok(Some(true));
            }
        }
        let mut inputs = Vec::with_capacity(parts.len());
        for p in parts {
            let reader = self.range_reader(self.partition_dir(key).join(p.name.as_str()), p.bytes, false);
            let stream = parquet::arrow::ParquetRecordBatchStreamBuilder::new(reader).await?.with_batch_size(BATCH).build()?;
            let mut input = Input { stream, batch: None, rows: None, pos: 0 };
            match advance(&mut input, &converter, &keys, self).await? {
                None => return Ok(None),
                Some(_) => inputs.push(input),
            }
        }
        let path = self.partition_dir(key).join(name);
        let writer = object_store::buffered::BufWriter::new(self.store.clone(), path.clone());
        let mut w = AsyncArrowWriter::try_new(writer, schema.clone(), Some(writer_props(PartCodec::Zstd)?))?;
        let (mut lo, mut hi, mut total) = (f64::INFINITY, f64::NEG_INFINITY, 0u64);
        // The output batch as slices of the inputs' batches.
        let mut pending: Vec<RecordBatch> = Vec::new();
        let mut pending_rows = 0usize;
        loop {
            // The input whose next row is smallest (the first such input on ties), and the
            // smallest next row of the others: the first input's rows up to it go out together.
            let mut best: Option<usize> = None;
            for (i, inp) in inputs.iter().enumerate() {
                let Some(r) = &inp.rows else { continue };
                match best {
                    Some(b) if inputs[b].rows.as_ref().expect("live").row(inputs[b].pos) <= r.row(inp.pos) => {}
                    _ => best = Some(i),
                }
            }
            let Some(b) = best else { break };
            let bound = inputs.iter().enumerate().filter(|(i, inp)| *i != b && inp.rows.is_some()).map(|(i, inp)| (i, inp.rows.as_ref().expect("live").row(inp.pos))).fold(
                None,
                |acc: Option<(usize, arrow::row::Row<'_>)>, (i, r)| match acc {
                    Some((_, a)) if a <= r => acc,
                    _ => Some((i, r)),
                },
            );
            let inp = &inputs[b];
            let rows = inp.rows.as_ref().expect("live");
            let n = rows.num_rows();
            let mut end = inp.pos + 1;
            // Ties with a later input stay before it; with an earlier one, after it.
            while end < n && bound.as_ref().is_none_or(|(i, r)| if *i > b { rows.row(end) <= *r } else { rows.row(end) < *r }) && pending_rows + (end - inp.pos) < BATCH {
                end += 1;
            }
            let slice = inp.batch.as_ref().expect("live").slice(inp.pos, end - inp.pos);
            pending_rows += slice.num_rows();
            pending.push(slice);
            let exhausted = end == n;
            inputs[b].pos = end;
            if pending_rows >= BATCH {
                let out = concat_batches(&schema, &pending)?;
                pending.clear();
                pending_rows = 0;
                for v in f64_col(&out, "hjd")?.values().iter() {
                    lo = lo.min(*v);
                    hi = hi.max(*v);
                }
                total += out.num_rows() as u64;
                w.write(&out).await?;
            }
            if exhausted && advance(&mut inputs[b], &converter, &keys, self).await?.is_none() {
                return Ok(None);
            }
        }
        if !pending.is_empty() {
            let out = concat_batches(&schema, &pending)?;
            for v in f64_col(&out, "hjd")?.values().iter() {
                lo = lo.min(*v);
                hi = hi.max(*v);
            }
            total += out.num_rows() as u64;
            w.write(&out).await?;
        }
        w.close().await?;
        let bytes = self.store.head(&path).await?.size;
        Ok(Some(PartInfo { name: name.to_string(), rows: total, bytes, min_hjd: lo, max_hjd: hi }))
    }

    /// What a partition holds on the store beside its manifest.
    pub async fn inspect(&self, key: &PartitionKey, policy: &CompactionPolicy) -> Result<PartitionHealth, IngestError> {
        let m = self.read_manifest(key).await?;
        let dir = self.partition_dir(key);
        let metas: Vec<_> = self.store.list(Some(&dir)).try_collect().await?;
        let present: std::collections::HashSet<String> = metas.iter().filter_map(|o| o.location.filename().map(str::to_string)).collect();
        let orphans: Vec<String> = present
            .iter()
            .filter(|n| n.starts_with("part-") && n.ends_with(".parquet") && !m.files.iter().any(|f| &f.name == *n))
            .cloned()
            .collect();
        let lost: Vec<PartInfo> = m.files.iter().filter(|f| !present.contains(&f.name)).cloned().collect();
        let needs_compaction = !plan_merges(&m, policy).is_empty();
        let mut orphans = orphans;
        orphans.sort();
        Ok(PartitionHealth {
            key: key.clone(),
            parts: m.files.len(),
            rows: m.files.iter().map(|f| f.rows).sum(),
            orphans,
            lost,
            needs_compaction,
        })
    }

    /// Deletes part objects of a partition that its manifest does not list (a crashed writer's
    /// staged parts, a crashed compaction's leftovers). Only under the store's writer lock: an
    /// unlisted part may otherwise be another writer's staged part.
    pub async fn remove_orphans(&self, key: &PartitionKey) -> Result<usize, IngestError> {
        let h = self.inspect(key, &CompactionPolicy::default()).await?;
        let dir = self.partition_dir(key);
        for name in &h.orphans {
            match self.store.delete(&dir.clone().join(name.as_str())).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(h.orphans.len())
    }

    /// Drops listed parts whose objects are gone from the manifest (their rows are lost: the
    /// files they came from must be ingested again). Returns the parts dropped.
    pub async fn drop_lost(&self, key: &PartitionKey) -> Result<Vec<PartInfo>, IngestError> {
        let h = self.inspect(key, &CompactionPolicy::default()).await?;
        if h.lost.is_empty() {
            return Ok(vec![]);
        }
        let lost = h.lost.clone();
        self.update_manifest(key, |m| {
            let before = m.files.len();
            m.files.retain(|f| !lost.iter().any(|l| l.name == f.name));
            m.files.len() != before
        })
        .await?;
        Ok(h.lost)
    }

    /// Copies a bad input aside with its reason; returns the copy's path.
    pub async fn quarantine(&self, source: &str, seen_sha256: &str, text: &[u8], reason: &str) -> Result<String, IngestError> {
        let name = source.rsplit('/').next().unwrap_or(source);
        let dir = self.root.clone().join("quarantine").join(&seen_sha256[..16.min(seen_sha256.len())]);
        let copy = dir.clone().join(name);
        self.store.put(&copy, PutPayload::from(text.to_vec())).await?;
        let note = format!("source: {source}\nsha256: {seen_sha256}\nreason: {reason}\n");
        self.store.put(&dir.clone().join(format!("{name}.reason.txt")), PutPayload::from(note.into_bytes())).await?;
        Ok(copy.to_string())
    }
}

fn parse_partition(manifest: &Path) -> Option<PartitionKey> {
    let (mut season, mut field, mut site, mut bucket) = (None, None, None, None);
    for part in manifest.parts() {
        let s = part.as_ref();
        if let Some(v) = s.strip_prefix("season=") {
            season = v.parse().ok();
        } else if let Some(v) = s.strip_prefix("field=") {
            field = v.parse().ok();
        } else if let Some(v) = s.strip_prefix("site=") {
            site = Some(v.to_string());
        } else if let Some(v) = s.strip_prefix("bucket=") {
            bucket = Some(v.parse().ok()?);
        }
    }
    Some(PartitionKey { season: season?, field: field?, site: site?, bucket })
}

/// The stars of one field-season with their whole history, as `StarCurves` (one `SiteCurve` per
/// site and band, each sorted by time). With `since`, only stars that have at least one epoch
/// later than `since` (HJD - 2450000) are returned, still with all their epochs. Stars are sorted
/// by id. Sites that are not KMTNet's have `site: None` in their curves.
pub async fn read_photometry(
    store: &PhotometryStore,
    season: i32,
    field: Field,
    since: Option<f64>,
) -> Result<Vec<StarCurves>, IngestError> {
    let mut stars: BTreeMap<String, HashMap<(String, String), SiteCurve>> = BTreeMap::new();
    for key in store.field_partitions(season, field).await? {
        for b in store.read_partition(&key).await? {
            absorb_batch(&mut stars, &key.site, &b)?;
        }
    }
    Ok(finish_stars(stars, field, since))
}

/// Per-star curves from [`absorb_batch`]: curves in (site, band) order, each sorted by time;
/// with `since`, only stars with an epoch after it.
/// The rows in both sorted, disjoint range lists.
fn intersect_ranges(a: &[std::ops::Range<usize>], b: &[std::ops::Range<usize>]) -> Vec<std::ops::Range<usize>> {
    let (mut i, mut j) = (0, 0);
    let mut out: Vec<std::ops::Range<usize>> = Vec::new();
    while i < a.len() && j < b.len() {
        let (lo, hi) = (a[i].start.max(b[j].start), a[i].end.min(b[j].end));
        if lo < hi {
            match out.last_mut() {
                Some(last) if last.end == lo => last.end = hi,
                _ => out.push(lo..hi),
            }
        }
        if a[i].end <= b[j].end {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

pub(crate) fn finish_stars(stars: BTreeMap<String, HashMap<(String, String), SiteCurve>>, field: Field, since: Option<f64>) -> Vec<StarCurves> {
    let mut out = Vec::with_capacity(stars.len());
    for (star, curves) in stars {
        if let Some(t) = since {
            if !curves.values().any(|c| c.hjd.iter().any(|&h| h > t)) {
                continue;
            }
        }
        let mut list: Vec<((String, String), SiteCurve)> = curves.into_iter().collect();
        list.sort_by(|a, b| a.0.cmp(&b.0));
        let curves = list.into_iter().map(|(_, c)| sort_curve(c)).collect();
        out.push(StarCurves { star: StarId(star), field, curves });
    }
    out
}

/// The whole curves of the stars `ids` of a field-season (sorted by id; stars without
/// photometry are left out), reading each star's bucket only, and in it only the row groups
/// that can hold one of them: what the score stage reads of a field.
pub async fn read_stars(store: &PhotometryStore, season: i32, field: Field, ids: &[String]) -> Result<Vec<StarCurves>, IngestError> {
    let mut ids: Vec<String> = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let layout = store.layout(season, field).await?;
    let mut out = Vec::new();
    for (bucket, keys) in store.bucket_groups(season, field).await? {
        let mine: Vec<String> = match (bucket, layout) {
            (Some(b), Some(l)) => ids.iter().filter(|id| bucket_of(id, l.buckets) == b).cloned().collect(),
            _ => ids.clone(),
        };
        out.extend(store.read_stars_in(&keys, &mine, field).await?);
    }
    out.sort_by(|a, b| a.star.0.cmp(&b.star.0));
    Ok(out)
}

/// One star's photometry of a field-season (None when the store has none), reading only the row
/// groups that can hold it: what a star page or a single-star tool needs, without the field.
pub async fn read_star(store: &PhotometryStore, season: i32, field: Field, star: &str) -> Result<Option<StarCurves>, IngestError> {
    Ok(read_stars(store, season, field, &[star.to_string()]).await?.pop())
}

/// Ranged reads of one part object for parquet's async reader (the footer, then the chunks it
/// asks for).
pub(crate) struct RangeReader {
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) path: Path,
    pub(crate) size: u64,
    /// Load the page index (column and offset indexes) with the footer.
    pub(crate) page_index: bool,
    /// Where the bytes fetched are counted (the store's [`PhotometryStore::bytes_read`]).
    pub(crate) bytes_read: Arc<std::sync::atomic::AtomicU64>,
}

impl RangeReader {
    /// A ranged reader whose fetches no store counts (what is not photometry: a candidates file).
    pub(crate) fn uncounted(store: Arc<dyn ObjectStore>, path: Path, size: u64) -> Self {
        RangeReader { store, path, size, page_index: false, bytes_read: Default::default() }
    }
}

impl parquet::arrow::async_reader::AsyncFileReader for RangeReader {
    fn get_bytes(&mut self, range: std::ops::Range<u64>) -> futures::future::BoxFuture<'_, parquet::errors::Result<bytes::Bytes>> {
        let (store, path) = (self.store.clone(), self.path.clone());
        self.bytes_read.fetch_add(range.end.saturating_sub(range.start), std::sync::atomic::Ordering::Relaxed);
        Box::pin(async move { store.get_range(&path, range).await.map_err(|e| parquet::errors::ParquetError::External(Box::new(e))) })
    }

    /// The ranges of one fetch (a row group's selected pages of every projected column) in one
    /// `get_ranges`: a local store reads them in one blocking task with the file opened once,
    /// an S3 store coalesces neighbouring ranges into fewer requests. (The trait's default asks
    /// for each range in turn: a blocking task, an open and a wake-up per page and column,
    /// which was a third of a nightly search's time.)
    fn get_byte_ranges(&mut self, ranges: Vec<std::ops::Range<u64>>) -> futures::future::BoxFuture<'_, parquet::errors::Result<Vec<bytes::Bytes>>> {
        let (store, path) = (self.store.clone(), self.path.clone());
        self.bytes_read.fetch_add(ranges.iter().map(|r| r.end.saturating_sub(r.start)).sum(), std::sync::atomic::Ordering::Relaxed);
        Box::pin(async move { store.get_ranges(&path, &ranges).await.map_err(|e| parquet::errors::ParquetError::External(Box::new(e))) })
    }

    fn get_metadata<'a>(
        &'a mut self,
        _options: Option<&'a parquet::arrow::arrow_reader::ArrowReaderOptions>,
    ) -> futures::future::BoxFuture<'a, parquet::errors::Result<Arc<parquet::file::metadata::ParquetMetaData>>> {
        let size = self.size;
        Box::pin(async move {
            let policy = if self.page_index { parquet::file::metadata::PageIndexPolicy::Optional } else { parquet::file::metadata::PageIndexPolicy::Skip };
            let md = parquet::file::metadata::ParquetMetaDataReader::new()
                .with_prefetch_hint(Some(64 * 1024))
                .with_page_index_policy(policy)
                .load_and_finish(&mut *self, size)
                .await?;
            Ok(Arc::new(md))
        })
    }
}

/// Appends a batch's rows to the per-star, per-(site, band) curves.
fn absorb_batch(stars: &mut BTreeMap<String, HashMap<(String, String), SiteCurve>>, site: &str, b: &RecordBatch) -> Result<(), IngestError> {
    let star = str_col(b, "star")?;
    let band = str_col(b, "band")?;
    let (hjd, flux, flux_err) = (f64_col(b, "hjd")?, f64_col(b, "flux")?, f64_col(b, "flux_err")?);
    // Columns a projected read left out are NaN.
    let opt = |n: &str| if b.column_by_name(n).is_some() { f64_col(b, n).map(Some) } else { Ok(None) };
    let (mag, mag_err, fwhm, sky, airmass) = (opt("mag")?, opt("mag_err")?, opt("fwhm")?, opt("sky")?, opt("airmass")?);
    let n = b.num_rows();
    let mut i = 0;
    // Rows come sorted by star: one map look-up per run of a star's rows in one band.
    while i < n {
        let (s, bd) = (star.value(i), band.value(i));
        let mut j = i + 1;
        while j < n && star.value(j) == s && band.value(j) == bd {
            j += 1;
        }
        let curves = if stars.contains_key(s) { stars.get_mut(s).expect("present") } else { stars.entry(s.to_string()).or_default() };
        let c = curves.entry((site.to_string(), bd.to_string())).or_insert_with(|| SiteCurve {
            site: site.parse::<Site>().ok(),
            band: bd.parse::<Band>().ok(),
            ..Default::default()
        });
        let put = |dst: &mut Vec<f64>, col: Option<&Float64Array>| match col {
            Some(a) => dst.extend_from_slice(&a.values()[i..j]),
            None => dst.extend(std::iter::repeat_n(f64::NAN, j - i)),
        };
        put(&mut c.hjd, Some(hjd));
        put(&mut c.flux, Some(flux));
        put(&mut c.flux_err, Some(flux_err));
        put(&mut c.mag, mag);
        put(&mut c.mag_err, mag_err);
        put(&mut c.fwhm, fwhm);
        put(&mut c.sky, sky);
        put(&mut c.airmass, airmass);
        i = j;
    }
    Ok(())
}

/// The runs of equal ids in a `star` column (rows come sorted by star): each id with its rows,
/// so that a reader looks a star up once per run, not once per row.
pub(crate) fn star_runs(col: &StringArray) -> impl Iterator<Item = (&str, std::ops::Range<usize>)> {
    let n = col.len();
    let mut i = 0;
    std::iter::from_fn(move || {
        (i < n).then(|| {
            let id = col.value(i);
            let mut j = i + 1;
            while j < n && col.value(j) == id {
                j += 1;
            }
            let run = (id, i..j);
            i = j;
            run
        })
    })
}

/// Sorts a curve's columns by time (parts of different nights interleave after appends).
fn sort_curve(c: SiteCurve) -> SiteCurve {
    if c.hjd.windows(2).all(|w| w[0] <= w[1]) {
        return c;
    }
    let mut idx: Vec<usize> = (0..c.len()).collect();
    idx.sort_by(|&a, &b| c.hjd[a].total_cmp(&c.hjd[b]));
    let p = |v: &[f64]| idx.iter().map(|&i| v[i]).collect::<Vec<f64>>();
    SiteCurve {
        site: c.site,
        band: c.band,
        hjd: p(&c.hjd),
        flux: p(&c.flux),
        flux_err: p(&c.flux_err),
        mag: p(&c.mag),
        mag_err: p(&c.mag_err),
        fwhm: p(&c.fwhm),
        sky: p(&c.sky),
        airmass: p(&c.airmass),
    }
}

/// Rows of a batch list, for tests and reports.
pub fn total_rows(batches: &[RecordBatch]) -> usize {
    batches.iter().map(RecordBatch::num_rows).sum()
}

/// All `(star, band, hjd)` keys of a batch list (tests use it to prove there are no duplicates).
pub fn row_keys(batches: &[RecordBatch]) -> Result<Vec<(String, String, u64)>, IngestError> {
    let mut v = Vec::new();
    for b in batches {
        let (s, band, h) = (str_col(b, "star")?, str_col(b, "band")?, f64_col(b, "hjd")?);
        for i in 0..b.num_rows() {
            v.push((s.value(i).to_string(), band.value(i).to_string(), h.value(i).to_bits()));
        }
    }
    Ok(v)
}

#[allow(dead_code)]
fn assert_array_len(a: &dyn Array) -> usize {
    a.len()
}

#[cfg(test)]
mod bucket_tests {
    use super::*;

    /// Buckets hold at most `BUCKET_STARS` stars, and from six buckets on at least 5/6 of it,
    /// whatever the field's size (a power of two of buckets left them anywhere in a factor 2).
    #[test]
    fn buckets_stay_the_same_size_as_the_field_grows() {
        assert_eq!(buckets_for(0), 1);
        assert_eq!(buckets_for(4_000), 1);
        assert_eq!(buckets_for(10_000), 2);
        assert_eq!(buckets_for(1_000_000), 200);
        assert_eq!(buckets_for(u64::MAX / 2), MAX_BUCKETS);
        for stars in (1..2_000_000u64).step_by(7_919) {
            let b = buckets_for(stars) as u64;
            assert!(stars.div_ceil(b) <= BUCKET_STARS, "{stars} stars in {b} buckets");
            if b >= 6 {
                assert!(stars / b >= BUCKET_STARS * 5 / 6, "{stars} stars in {b} buckets");
            }
        }
        // The hash spreads a field's stars evenly: no bucket of 1e5 simulated ids above 110 %.
        let b = buckets_for(100_000);
        let mut n = vec![0u32; b as usize];
        for i in 0..100_000 {
            n[bucket_of(&crate::simulate::star_id(Field(14), i).0, b) as usize] += 1;
        }
        assert!(n.iter().all(|&x| (x as u64) < BUCKET_STARS * 11 / 10), "{n:?}");
    }
}

#[cfg(test)]
mod sort_tests {
    use super::*;
    use arrow::array::UInt32Array;
    use arrow::compute::{lexsort_to_indices, SortColumn};

    /// A batch of the photometry schema: stars of different lengths (so that byte order and
    /// string order could disagree if the row format were misused), times with duplicates and
    /// negative values, two bands; `source_line` is the input position.
    fn batch(n: usize, runs: usize) -> RecordBatch {
        use rand::Rng;
        let mut rng = crate::simulate::rng_for(7, &[n as u64, runs as u64]);
        let stars = ["BLG14.K1", "BLG14.K10", "BLG14.K2", "BLG14.K100", "BLG14.K", "BLG14.K1a"];
        let (mut star, mut band, mut hjd) = (Vec::new(), Vec::new(), Vec::new());
        // `runs` sorted runs, as a compaction's concatenated parts are, then shuffled rows.
        for r in 0..=runs {
            let mut rows: Vec<(&str, f64, &str)> = (0..n / (runs + 1))
                .map(|_| (stars[rng.random_range(0..6)], rng.random_range(0..50) as f64 * 0.5 - 5.0, if rng.random_range(0..3) == 0 { "V" } else { "I" }))
                .collect();
            if r < runs {
                rows.sort_by(|a, b| a.0.cmp(b.0).then(a.1.total_cmp(&b.1)).then(a.2.cmp(b.2)));
            }
            for (s, h, b) in rows {
                star.push(s);
                hjd.push(h);
                band.push(b);
            }
        }
        let m = star.len();
        let f = |v: f64| -> ArrayRef { Arc::new(Float64Array::from(vec![v; m])) };
        RecordBatch::try_new(
            photometry_schema(),
            vec![
                Arc::new(StringArray::from(star)),
                Arc::new(StringArray::from(band)),
                Arc::new(Float64Array::from(hjd)),
                f(1.0),
                f(0.1),
                f(19.0),
                f(0.01),
                f(3.0),
                f(100.0),
                f(1.2),
                f(0.0),
                f(0.0),
                Arc::new(StringArray::from(vec!["a.pysis"; m])),
                Arc::new(UInt32Array::from_iter_values(0..m as u32)),
            ],
        )
        .unwrap()
    }

    #[test]
    fn sort_batch_orders_rows_as_lexsort_does_and_keeps_ties_in_input_order() {
        for (n, runs) in [(0, 0), (1, 0), (5_000, 0), (5_000, 3), (20_000, 9)] {
            let b = batch(n, runs);
            let sorted = sort_batch(&b).unwrap();
            let cols = [0usize, 2, 1].map(|i| SortColumn { values: b.column(i).clone(), options: None });
            let reference = take_record_batch(&b, &lexsort_to_indices(&cols, None).unwrap()).unwrap();
            assert_eq!(sorted.num_rows(), b.num_rows());
            for c in [0usize, 2, 1] {
                assert_eq!(sorted.column(c), reference.column(c), "rows {n}, runs {runs}, column {c}");
            }
            let (star, hjd, band) = (str_col(&sorted, "star").unwrap(), f64_col(&sorted, "hjd").unwrap(), str_col(&sorted, "band").unwrap());
            let line = sorted.column(13).as_any().downcast_ref::<UInt32Array>().unwrap();
            for i in 1..sorted.num_rows() {
                if (star.value(i), hjd.value(i), band.value(i)) == (star.value(i - 1), hjd.value(i - 1), band.value(i - 1)) {
                    assert!(line.value(i) > line.value(i - 1), "a tie keeps its input order (row {i})");
                }
            }
        }
    }

    /// New points are read from each partition's own `since` (its site's watermark): a site
    /// whose nights end earlier in HJD does not make the others' last night be read again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn new_rows_are_read_from_each_sites_own_watermark() {
        let dir = tempfile::tempdir().unwrap();
        let o = crate::store::open_store(dir.path().to_str().unwrap(), true).unwrap();
        let ps = PhotometryStore::new(o.store.clone(), o.prefix.clone());
        let key = |site: &str| PartitionKey { season: 2025, field: Field(14), site: site.into(), bucket: Some(0) };
        // One part per site and night of 100 points: KMTA's nights at HJD x-0.1..x+0.3, KMTC's
        // at x+0.5..x+0.9.
        let night = |t0: f64| {
            let b = batch(100, 0);
            let mut cols = b.columns().to_vec();
            cols[2] = Arc::new(Float64Array::from_iter_values((0..100).map(|i| t0 + 0.004 * i as f64)));
            sort_batch(&RecordBatch::try_new(b.schema(), cols).unwrap()).unwrap()
        };
        for (site, offset) in [("KMTA", -0.1), ("KMTC", 0.5)] {
            for d in [1.0, 2.0] {
                let info = ps.stage_part(&key(site), &format!("part-{site}-{d}.parquet"), &night(d + offset)).await.unwrap();
                ps.commit_parts(&key(site), &[info]).await.unwrap();
            }
        }
        // After the run of night 1: KMTA's watermark 1.296, KMTC's 1.896.
        let since = [1.0 - 0.1 + 0.396, 1.0 + 0.5 + 0.396];
        let before = ps.rows_read();
        let read = ps.read_new_rows(&[(key("KMTA"), since[0]), (key("KMTC"), since[1])], 3.0).await.unwrap();
        let rows = &read.batches;
        assert_eq!(ps.rows_read() - before, 200, "night 2 of each site, and nothing of night 1");
        assert_eq!(rows.iter().map(|(_, b)| b.num_rows()).sum::<usize>(), 200);
        // Each partition's counts: 200 stored, night 2's 100 in range, nothing after.
        for (k, c) in &read.counts {
            assert_eq!((c.stored, c.in_range, c.after, c.up_to_since()), (200, 100, 0, 100), "{k}");
        }
        // Up to 2.2: KMTC's night 2 (2.5 on) comes after.
        let early = ps.read_new_rows(&[(key("KMTC"), since[1])], 2.2).await.unwrap();
        assert_eq!((early.counts[0].1.in_range, early.counts[0].1.after, early.counts[0].1.up_to_since()), (0, 100, 100));
        for (site, b) in rows {
            let s = if site == "KMTA" { since[0] } else { since[1] };
            assert!(f64_col(b, "hjd").unwrap().values().iter().all(|&t| t > s), "{site}");
        }
        // From the older watermark for both (as before), KMTC's night 1 is read again.
        let before = ps.rows_read();
        let again = ps.read_new_rows(&[(key("KMTA"), since[0]), (key("KMTC"), since[0])], 3.0).await.unwrap().batches;
        assert_eq!(ps.rows_read() - before, 300);
        assert_eq!(again.iter().map(|(_, b)| b.num_rows()).sum::<usize>(), 300);
    }

    /// A reader of a few stars fetches the pages that hold them, not the part: a night's part of
    /// a bucket (5,000 stars, 7 points each, every value distinct as fluxes are) read for 5
    /// stars fetches under a tenth of its bytes, and decodes at most two pages of each. With a
    /// dictionary on the value columns (the writer's default until stop 43) each column's
    /// dictionary page held all of its values and the same read fetched about half the part;
    /// with 1,024-row pages it decoded 5-10x the rows.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_few_stars_read_fetch_their_pages_not_the_part() {
        use rand::{Rng, SeedableRng};
        let dir = tempfile::tempdir().unwrap();
        let o = crate::store::open_store(dir.path().to_str().unwrap(), true).unwrap();
        let ps = PhotometryStore::new(o.store.clone(), o.prefix.clone());
        let key = PartitionKey { season: 2025, field: Field(14), site: "KMTC".into(), bucket: Some(0) };
        let mut rng = rand::rngs::StdRng::seed_from_u64(43);
        let (stars, per) = (5_000usize, 7usize);
        let n = stars * per;
        let ids: Vec<String> = (0..stars).map(|i| format!("BLG14.{:07}", i * 13)).collect();
        let mut v = |scale: f64| -> ArrayRef { Arc::new(Float64Array::from_iter_values((0..n).map(|_| rng.random::<f64>() * scale))) };
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values((0..n).map(|r| ids[r / per].as_str()))),
            Arc::new(StringArray::from(vec!["I"; n])),
            Arc::new(Float64Array::from_iter_values((0..n).map(|r| 10830.5 + 0.05 * (r % per) as f64))),
            v(1e4),
            v(100.0),
            v(20.0),
            v(0.1),
            Arc::new(Float64Array::from_iter_values((0..n).map(|r| 3.0 + 0.1 * (r % per) as f64))),
            v(1e3),
            Arc::new(Float64Array::from_iter_values((0..n).map(|r| 1.0 + 0.05 * (r % per) as f64))),
            v(1e4),
            Arc::new(Float64Array::from(vec![0.0; n])),
            Arc::new(StringArray::from(vec!["night.pysis"; n])),
            Arc::new(UInt32Array::from_iter_values(0..n as u32)),
        ];
        let b = RecordBatch::try_new(photometry_schema(), cols).unwrap();
        for (bucket, name, codec) in [(0, "part-snappy.parquet", PartCodec::Snappy), (1, "part-zstd.parquet", PartCodec::Zstd)] {
            let k = PartitionKey { bucket: Some(bucket), ..key.clone() };
            let info = ps.stage_part_with(&k, name, &b, codec).await.unwrap();
            ps.commit_parts(&k, &[info.clone()]).await.unwrap();
            let wanted: Vec<String> = [17usize, 1_200, 2_500, 3_333, 4_999].iter().map(|&i| ids[i].clone()).collect();
            let (bytes0, rows0) = (ps.bytes_read(), ps.rows_read());
            let got = ps.read_stars_with(&[k.clone()], &wanted, Field(14), true, f64::INFINITY).await.unwrap();
            assert_eq!(got.len(), 5, "{codec:?}");
            assert!(got.iter().all(|c| c.curves.iter().map(|s| s.hjd.len()).sum::<usize>() == per), "{codec:?}");
            let (fetched, decoded) = (ps.bytes_read() - bytes0, ps.rows_read() - rows0);
            assert!(fetched > 0 && fetched * 10 < info.bytes, "{codec:?}: {fetched} bytes fetched of a {}-byte part", info.bytes);
            assert!(decoded <= (5 * 2 * DATA_PAGE_ROWS) as u64, "{codec:?}: {decoded} rows decoded for 5 stars");
            // The new points' read takes the whole part, and counts it.
            let bytes0 = ps.bytes_read();
            let all = ps.read_new_rows(&[(k.clone(), 0.0)], f64::INFINITY).await.unwrap();
            assert_eq!(all.batches.iter().map(|(_, b)| b.num_rows()).sum::<usize>(), n);
            assert_eq!(ps.bytes_read() - bytes0, info.bytes, "{codec:?}");
        }
    }

    /// The streamed k-way merge of sorted parts writes the part that the in-memory merge (the
    /// parts concatenated, then the stable sort) writes, byte for byte, with ties in part order;
    /// an unsorted part makes it give up.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sorted_parts_merged_as_streams_give_the_in_memory_merge_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let o = crate::store::open_store(dir.path().to_str().unwrap(), true).unwrap();
        let ps = PhotometryStore::new(o.store.clone(), o.prefix.clone());
        let key = PartitionKey { season: 2025, field: Field(14), site: "KMTC".into(), bucket: None };
        // Parts of 0 to 30 k rows (several read and written batches), the same stars and times in
        // each so that keys tie across parts; `source_line` tells each row's part and position.
        let sizes = [30_000usize, 1, 0, 12_345, 8_192, 20_000];
        let mut infos = Vec::new();
        let mut sorted_parts = Vec::new();
        for (k, &n) in sizes.iter().enumerate() {
            let b = sort_batch(&batch(n, 0)).unwrap();
            let mut cols = b.columns().to_vec();
            cols[13] = Arc::new(UInt32Array::from_iter_values((0..b.num_rows() as u32).map(|i| k as u32 * 1_000_000 + i)));
            let b = RecordBatch::try_new(b.schema(), cols).unwrap();
            infos.push(ps.stage_part(&key, &format!("in-{k}.parquet"), &b).await.unwrap());
            sorted_parts.push(b);
        }
        let streamed = ps.merge_sorted_parts(&key, &infos, "streamed.parquet").await.unwrap().expect("sorted parts");
        let all = concat_batches(&photometry_schema(), &sorted_parts).unwrap();
        let in_memory = ps.stage_part_with(&key, "memory.parquet", &sort_batch(&all).unwrap(), PartCodec::Zstd).await.unwrap();
        assert_eq!(streamed.rows, all.num_rows() as u64);
        assert_eq!((streamed.rows, streamed.bytes, streamed.min_hjd, streamed.max_hjd), (in_memory.rows, in_memory.bytes, in_memory.min_hjd, in_memory.max_hjd));
        let bytes = |n: &str| {
            let (store, path) = (o.store.clone(), ps.partition_dir(&key).join(n));
            async move { store.get(&path).await.unwrap().bytes().await.unwrap() }
        };
        assert!(bytes("streamed.parquet").await == bytes("memory.parquet").await, "the same part, byte for byte");
        // A part whose rows are out of order (deep inside, past the first batch).
        let mut unsorted = sort_batch(&batch(20_000, 0)).unwrap();
        let idx: Vec<u32> = (0..unsorted.num_rows() as u32).map(|i| if i == 15_000 { 19_999 } else if i == 19_999 { 15_000 } else { i }).collect();
        unsorted = take_record_batch(&unsorted, &UInt32Array::from(idx)).unwrap();
        let bad = ps.stage_part(&key, "unsorted.parquet", &unsorted).await.unwrap();
        assert!(ps.merge_sorted_parts(&key, &[infos[0].clone(), bad], "x.parquet").await.unwrap().is_none());
    }
}

#[cfg(test)]
mod compaction_plan_tests {
    use super::*;

    fn part(name: String, rows: u64, min_hjd: f64, max_hjd: f64) -> PartInfo {
        PartInfo { name, rows, bytes: rows * 14, min_hjd, max_hjd }
    }

    /// A season of nightly parts (35k rows, a sub-prime bucket's site) compacted after each night
    /// as ingest does: the rows each night's compaction rewrites, and the most parts listed.
    fn season(policy: &CompactionPolicy, nights: u32) -> (Vec<u64>, usize) {
        let mut m = Manifest::default();
        let (mut each, mut most) = (Vec::new(), 0usize);
        for n in 0..nights {
            let t = 10_000.0 + n as f64;
            m.files.push(part(format!("night-{n}"), 35_000, t + 0.5, t + 0.9));
            let chunks = plan_merges(&m, policy);
            let mut rewritten = 0;
            let mut keep: Vec<PartInfo> = Vec::new();
            let merged: std::collections::HashSet<usize> = chunks.iter().flatten().copied().collect();
            for (k, c) in chunks.iter().enumerate() {
                let ps: Vec<&PartInfo> = c.iter().map(|&i| &m.files[i]).collect();
                let rows = ps.iter().map(|p| p.rows).sum();
                rewritten += rows;
                let lo = ps.iter().map(|p| p.min_hjd).fold(f64::INFINITY, f64::min);
                let hi = ps.iter().map(|p| p.max_hjd).fold(f64::NEG_INFINITY, f64::max);
                keep.push(part(format!("merged-{n}-{k}"), rows, lo, hi));
            }
            keep.extend(m.files.iter().enumerate().filter(|(i, _)| !merged.contains(i)).map(|(_, p)| p.clone()));
            m.files = keep;
            each.push(rewritten);
            most = most.max(m.files.len());
        }
        assert_eq!(m.files.iter().map(|p| p.rows).sum::<u64>(), 35_000 * nights as u64, "no row lost or doubled");
        (each, most)
    }

    fn worst_and_total(each: &[u64]) -> (u64, u64) {
        (each.iter().copied().max().unwrap_or(0), each.iter().sum())
    }

    #[test]
    fn a_nightly_ingest_rewrites_at_most_a_period_of_nights() {
        let policy = CompactionPolicy::default();
        let (each, most) = season(&policy, 240);
        let (_, total) = worst_and_total(&each);
        // A night's part merges only within its 8-day period (and the recent ones): at most 9
        // nights of rows rewritten on a night, except on the few nights that gather closed
        // periods into a long part (at most one full part and a period's nights).
        let night = 35_000;
        let gathering: Vec<usize> = (0..each.len()).filter(|&n| each[n] > 9 * night).collect();
        assert!(gathering.len() <= 240 / 24, "{} nights rewrote more than 9 nights' rows: {gathering:?}", gathering.len());
        assert!(each.iter().all(|&r| r <= policy.target_part_rows + 9 * night), "{each:?}");
        // About 5x the season's rows in all, never more than max_parts + 2 parts listed.
        assert!(total <= 6 * 240 * night, "{total} rows rewritten over the season");
        assert!(most <= policy.max_parts + 2, "{most} parts");
        // Without closed periods gathered, one part per period: 31 at the season's end.
        let (each_p, parts_p) = season(&CompactionPolicy { max_parts: usize::MAX, ..policy }, 240);
        let (worst_p, total_p) = worst_and_total(&each_p);
        assert!(worst_p <= 9 * night && total_p <= total && parts_p >= 240 / 8, "periods only: worst {worst_p}, {parts_p} parts");
        // Without periods one open part grows to the target and is rewritten every night.
        let (worst_old, total_old) = worst_and_total(&season(&CompactionPolicy { period_days: 0.0, ..policy }, 240).0);
        assert!(worst_old > 40 * night && total_old > 2 * total, "old policy: worst {worst_old}, total {total_old} (new {total})");
    }

    #[test]
    fn archive_parts_spanning_a_season_still_merge_with_each_other() {
        // 300 small per-star files of a season (an archive ingest): one long-span part each.
        let mut m = Manifest::default();
        for i in 0..300 {
            m.files.push(part(format!("star-{i}"), 2_000, 10_000.0 + (i % 40) as f64, 10_230.0));
        }
        let chunks = plan_merges(&m, &CompactionPolicy::default());
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].len(), 300);
    }
}
