//! The alertfinder's streaming, incremental path (issue 14): a field is worked bucket by
//! bucket, and in a bucket a run reads the new points, a small per-star screening state and
//! then only the stars that the screen lets through, in batches that fit a memory budget.
//!
//! # The screen
//! Per star and site the screening state keeps two P² estimators fed with every I-band point
//! once, in time order (the flux, and the flux's offset from the running level over its error
//! bar), the time of the newest point absorbed, its points per HJD day over the last
//! [`SCREEN_RING_DAYS`] days, the length of the run of high points at the end of the star's
//! points, and whether the star's last full search found it a candidate, pre-selected or failed
//! ("sticky"). A star with new points is searched (scanned exactly as the whole-field
//! path scans it, earlier seasons' history included; its rows read from its carry's end, see
//! below) when:
//! - a site it has new points at has fewer than [`SCREEN_MIN_POINTS`] points in the state, or
//! - the run of high points (at least [`SCREEN_SIGMA_FACTOR`] × `high_sigma` above the site's
//!   level in rescaled error bars) ending at its new points, or inside them, reaches the
//!   N_high that the search asks for at least: from the day counts, the window's points per
//!   night, rounded up, of the least dense set of sites that the search may take
//!   ([`StarScreen::window_n_high`]; the smallest the cadence adaptation can give where the
//!   screen does not know the window's days: a screen made mid-season, a window it would widen;
//!   until stop 41 always that smallest, 3 where BLG14's windows ask for 5), or
//! - its newest points end such a run, as long as the N_high its last screening asked for
//!   (new points or not: the search's baseline moves as points leave its window, and a run can
//!   become high enough on a later night), or
//! - a run too short for the N_high of its night's window lies in this window, which asks
//!   for no more (stars without new points are screened for this too), or
//! - its last full search was sticky: a candidate, a failure or pre-selected (an event under
//!   way keeps being searched every run).
//!
//! The whole-field path's pre-selection needs N_high consecutive points 3 rescaled error bars
//! above the baseline inside the window; such a run either reaches the new points (the screen
//! sees its end, with a looser threshold against a level that is close to the baseline) or lies
//! wholly in older points, when an earlier run already found it (sticky). So the screen only
//! saves work; a test holds the candidates of a season of daily runs to the whole-field path's.
//! The screening state is a cache: lost, every star is searched in full once.
//!
//! # The carries
//! A search needs a star's points before its search window and before the grid's recent nights
//! only through per-site streaming estimators, merged nights and counts ([`Carry`]). Each bucket
//! keeps those of the stars it searched lately, with their histories, up to a night boundary
//! before both ([`Carry::next_upto`]); the star's next search reads its rows from there on
//! (`PhotometryStore::read_stars_from`: parts and pages that end before are not opened)
//! instead of its whole season. A search with a carry returns what the search of every point
//! returns (tests hold this for single stars and for a season of daily runs); a carry that
//! reaches too far (a run at an earlier time) is set aside and the star read in full. Rows that
//! arrive after a star's carry has passed their night are not seen by its searches (the
//! whole-field path sees them): delete the field-season's `carry.parquet` files to re-read a
//! night ingested that late.
//!
//! # The tails
//! For each star it searched, a run keeps the star's rows from its carry's end up to the run's
//! time (its tail, in `tail.parquet`, with that end; only when the run searched at most half of
//! the bucket's stars, [`TAIL_MAX_SHARE`]). The next run searches such a star from its tail and its new
//! points, which it has read already, and reads nothing of it from the photometry, when the
//! tails can be trusted: they were written by the newest earlier run (whose watermarks the run
//! reads its new points from), and no partition of the bucket holds more rows up to its site's
//! watermark than that run counted up to its time (`NewRowCounts`: a late night, or rows of
//! a backfill, make the bucket read its searched stars from the photometry, where those rows
//! are). A star's tail rows after its site's watermark (rows ingested while the tail's run
//! ran) are left to the new points. The rows are those the pages would give, in the same
//! order, so the search finds the same (the equivalence test below holds it, with most of its
//! searches from a tail, and a test adds a late night).
//!
//! # Layout
//! ```text
//! state/alertfinder/nightly/season=2025/field=BLG14/bucket=0003/asof-10800.00000.parquet
//! state/alertfinder/nightly/season=2025/field=BLG14/bucket=0003/start.parquet
//! state/alertfinder/nightly/season=2025/field=BLG14/bucket=0003/carry.parquet
//! state/alertfinder/nightly/season=2025/field=BLG14/bucket=0003/tail.parquet
//! ```
//! the screening state, one per bucket and run (the newest two kept), written after the run's
//! candidates; the bucket's start histories (`StartCache`: the earlier seasons' history of
//! each star searched so far this season, so that those seasons are read once a season); and
//! its carries (`CarryCache`, above); and the tails of the stars its last run searched.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{Array, AsArray, FixedSizeBinaryBuilder, FixedSizeListBuilder, Float64Builder, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field as ArrowField, Float64Type, Schema};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;

use super::history::{NightBuffers, StarHistory, P2};
use super::stage::{candidates_batch, candidates_path, read_state, state_path, write_state, AlertFinderOutput};
use super::{scan_batch_carry, AlertParams, Carry, CarryAhead, Status, StarResult, N_SITES};
use crate::ingest::{IngestError, PartitionKey, PhotometryStore};
use crate::photometry::{Band, Field, LightCurve, MergedCurve, Site};
use crate::stage::{RunCtx, StageError};

pub const STAGE: &str = "alertfinder";
/// Points a site needs in the screening state before the screen trusts its level.
pub const SCREEN_MIN_POINTS: u32 = 20;
/// The screen's high threshold as a fraction of `high_sigma` (a margin for the difference
/// between the screen's level and the search's baseline).
pub const SCREEN_SIGMA_FACTOR: f64 = 0.6;
/// Version of the stored screening state.
pub const SCREEN_VERSION: u32 = 2;
const SITE_SCREEN_VALUES: usize = 25;
const SCREEN_VALUES: usize = SITE_SCREEN_VALUES * N_SITES + 6 + SCREEN_MISSED;
/// Run lengths the screen remembers runs of high points for, from the smallest N_high up: a
/// configuration whose N_high range is wider screens with the smallest.
pub const SCREEN_MISSED: usize = 8;
/// HJD days of per-site point counts a screen keeps ([`StarScreen::window_n_high`]): the search
/// window's days (`window_days` + 1) must fit, or the screen asks for the smallest N_high.
pub const SCREEN_RING_DAYS: usize = 32;
const DAY_BYTES: usize = SCREEN_RING_DAYS * N_SITES;
/// Bytes a stored row costs while a batch of stars is searched (the budget's unit).
pub const BYTES_PER_ROW: usize = 160;

fn transient(message: String) -> StageError {
    StageError::Transient { stage: STAGE, message }
}

fn permanent(message: String) -> StageError {
    StageError::Permanent { stage: STAGE, message }
}

fn store_err(e: IngestError) -> StageError {
    if e.is_retryable() { transient(e.to_string()) } else { permanent(e.to_string()) }
}

/// Whether a search's result keeps the star searched in full at the next run: candidates,
/// failures and pre-selected stars. (Leaving out the pre-selected stars whose broken line stays
/// below half of the threshold, mostly variables, saves a third of the work and misses real
/// candidates: the equivalence test found one within 19 nights.)
fn is_sticky(r: &StarResult) -> bool {
    match r.status {
        Status::Candidate | Status::Failed => true,
        Status::Preselected => true,
        _ => false,
    }
}

/// One site's screen.
#[derive(Debug, Clone, Copy, PartialEq)]
struct SiteScreen {
    level: P2,
    resid: P2,
    last_t: f64,
    /// The earlier seasons' level and error-bar multiplier, as the search uses them (NaN: none).
    prior_level: f64,
    prior_k: f64,
}

impl Default for SiteScreen {
    fn default() -> Self {
        SiteScreen { level: P2::default(), resid: P2::default(), last_t: f64::NEG_INFINITY, prior_level: f64::NAN, prior_k: f64::NAN }
    }
}

/// Why the screen let a star through: kept searched (sticky, or its newest points end a run of
/// high points), a site without a level yet, a run of high points among its new points.
const PASS_KEPT: u8 = 1;
const PASS_UNKNOWN: u8 = 2;
const PASS_HIGH: u8 = 4;

/// The smallest N_high the search's cadence adaptation can ask for.
fn smallest_n_high(p: &AlertParams) -> u32 {
    p.n_high.min(p.min_n_high).max(1) as u32
}

/// One star's screen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StarScreen {
    sites: [SiteScreen; N_SITES],
    trailing: u32,
    sticky: bool,
    /// The prior levels were taken from a full search.
    prior_known: bool,
    /// The points fed per site and HJD day (`floor(t)`), for the [`SCREEN_RING_DAYS`] days up to
    /// `ring_day` (day `d` in slot `d mod SCREEN_RING_DAYS`; saturating), and the time after which
    /// the screen was fed every point of the star (the run that made it read from there).
    days: [[u8; SCREEN_RING_DAYS]; N_SITES],
    ring_day: f64,
    fed_from: f64,
    /// For each run length from the smallest N_high on (`min_n_high` + i), the end of the
    /// newest run of high points at least that long that the screen did not pass (its night's
    /// window asked for more).
    missed: [f64; SCREEN_MISSED],
    /// The N_high the last screening asked for (0: none yet).
    need: u32,
}

impl Default for StarScreen {
    /// A screen that knows nothing of the star: nothing fed, and no day known to be whole.
    fn default() -> Self {
        StarScreen {
            sites: Default::default(),
            trailing: 0,
            sticky: false,
            prior_known: false,
            days: [[0; SCREEN_RING_DAYS]; N_SITES],
            ring_day: f64::NEG_INFINITY,
            fed_from: f64::INFINITY,
            missed: [f64::NEG_INFINITY; SCREEN_MISSED],
            need: 0,
        }
    }
}

impl StarScreen {
    fn to_values(&self, out: &mut Vec<f64>) {
        for s in &self.sites {
            for p in [&s.level, &s.resid] {
                out.push(p.n as f64);
                out.extend_from_slice(&p.q);
                out.extend_from_slice(&p.pos);
            }
            out.extend_from_slice(&[s.last_t, s.prior_level, s.prior_k]);
        }
        out.push(self.need as f64);
        out.extend_from_slice(&self.missed);
        out.push(self.ring_day);
        out.push(self.fed_from);
        out.push(self.trailing as f64);
        out.push(self.sticky as u8 as f64);
        out.push(self.prior_known as u8 as f64);
    }

    /// The day counts as stored: site by site, slot by slot.
    fn day_bytes(&self) -> &[u8] {
        self.days.as_flattened()
    }

    fn from_values(v: &[f64], days: &[u8]) -> Option<StarScreen> {
        if v.len() != SCREEN_VALUES || days.len() != N_SITES * SCREEN_RING_DAYS {
            return None;
        }
        let p2 = |c: &[f64]| P2 { n: c[0] as u32, q: [c[1], c[2], c[3], c[4], c[5]], pos: [c[6], c[7], c[8], c[9], c[10]] };
        let mut s = StarScreen::default();
        for (site, c) in s.sites.iter_mut().zip(v.chunks_exact(SITE_SCREEN_VALUES)) {
            *site = SiteScreen { level: p2(&c[0..11]), resid: p2(&c[11..22]), last_t: c[22], prior_level: c[23], prior_k: c[24] };
        }
        for (site, c) in s.days.iter_mut().zip(days.chunks_exact(SCREEN_RING_DAYS)) {
            site.copy_from_slice(c);
        }
        s.need = v[SCREEN_VALUES - 6 - SCREEN_MISSED] as u32;
        s.missed.copy_from_slice(&v[SCREEN_VALUES - 5 - SCREEN_MISSED..SCREEN_VALUES - 5]);
        s.ring_day = v[SCREEN_VALUES - 5];
        s.fed_from = v[SCREEN_VALUES - 4];
        s.trailing = v[SCREEN_VALUES - 3] as u32;
        s.sticky = v[SCREEN_VALUES - 2] != 0.0;
        s.prior_known = v[SCREEN_VALUES - 1] != 0.0;
        Some(s)
    }

    /// Keep the earlier seasons' level of each site as the search takes it from `h`.
    fn set_prior(&mut self, h: Option<&StarHistory>, p: &AlertParams) {
        self.prior_known = true;
        let Some(h) = h else { return };
        let min = p.min_history_nights.max(1) as u32;
        for (site, sh) in self.sites.iter_mut().zip(&h.sites) {
            if let Some((_, level, scatter, mean_err)) = sh.prior().filter(|pr| pr.0 >= min) {
                site.prior_level = level;
                site.prior_k = (scatter / mean_err).max(1.0).max(p.min_error_scale);
            }
        }
    }

    /// Whether the star is searched whatever its new points, and without any
    /// ([`Self::screen`]).
    fn searched_without_new_points(&self, p: &AlertParams) -> bool {
        // The N_high of the last screening's window (a later window that asks for fewer finds
        // the run among the missed ones).
        let need = if self.need > 0 { self.need } else { smallest_n_high(p) };
        self.sticky || p.fit_all || p.bin_days > 0.0 || self.trailing >= need
    }

    /// Count a fed point in its site's day.
    fn count_day(&mut self, t: f64, site: usize) {
        let d = t.floor();
        let ring = SCREEN_RING_DAYS as f64;
        if !(d > self.ring_day - ring) || site >= N_SITES {
            return;
        }
        if d > self.ring_day {
            // The days after the newest one counted start empty.
            if d - self.ring_day >= ring {
                self.days = [[0; SCREEN_RING_DAYS]; N_SITES];
            } else {
                let mut k = self.ring_day + 1.0;
                while k <= d {
                    let slot = k.rem_euclid(ring) as usize;
                    self.days.iter_mut().for_each(|x| x[slot] = 0);
                    k += 1.0;
                }
            }
            self.ring_day = d;
        }
        let slot = d.rem_euclid(ring) as usize;
        self.days[site][slot] = self.days[site][slot].saturating_add(1);
    }

    /// The smallest N_high that the search of the star at `as_of` can ask for, from the points
    /// fed per site and day: the search asks for the window's valid points per night (distinct
    /// HJD days) of its usable sites, rounded up, between `min_n_high` and `n_high`.
    ///
    /// For a set of sites, the points the screen counted on the window's whole days are at most
    /// the window's, and the days on which it counted one, or does not know (not fed whole: before
    /// `fed_from`, the window's first, partial day), are at least its nights; so their ratio is at
    /// most the search's. Which sites are usable is not known, so the least ratio over every set
    /// that holds the sites known to be usable (the search's baseline takes a site with
    /// `min_baseline_points` valid points up to its time, at worst from the window) is taken. A
    /// window that the search widens (fewer than `min_window_points` rows) gets the smallest.
    fn window_n_high(&self, as_of: f64, p: &AlertParams) -> u32 {
        let lo = smallest_n_high(p);
        let hi = p.n_high.max(1) as u32;
        let start = as_of - p.window_days.max(0.0);
        if lo >= hi || hi - lo > SCREEN_MISSED as u32 || !start.is_finite() {
            return lo;
        }
        let (first, last) = (start.floor(), as_of.floor());
        // (A screen fed past `as_of` is another run's: its days are not this window's.)
        if last - first + 1.0 > SCREEN_RING_DAYS as f64 || self.ring_day > last {
            return lo;
        }
        let ring = SCREEN_RING_DAYS as f64;
        // Each site's points counted (whole days only), and per day of the window the sites
        // that may have a night then (a bit each).
        let mut points = [0u32; N_SITES];
        let mut nights = [0u8; SCREEN_RING_DAYS];
        let mut n_days = 0;
        let mut d = first;
        while d <= last {
            let whole_day = d > self.fed_from && d >= start;
            let in_ring = d > self.ring_day - ring && d <= self.ring_day;
            let mut night = 0u8;
            for s in 0..N_SITES {
                let c = if in_ring { self.days[s][d.rem_euclid(ring) as usize] as u32 } else { 0 };
                // A day fed whole with no point of the site is no night of it (the window's
                // first day too: its part in the window holds none either).
                if c > 0 || !(d > self.fed_from) {
                    night |= 1 << s;
                }
                if whole_day {
                    points[s] += c;
                }
            }
            nights[n_days] = night;
            n_days += 1;
            d += 1.0;
        }
        if p.min_window_points > 0 && p.max_window_days > p.window_days && (points.iter().sum::<u32>() as usize) < p.min_window_points {
            return lo;
        }
        let known: u8 = (0..N_SITES)
            .filter(|&s| {
                let site = &self.sites[s];
                site.level.n as usize >= p.min_baseline_points.max(1) && site.level.quartiles().1.is_finite() && site.resid.quartiles().1.is_finite()
            })
            .fold(0, |m, s| m | 1 << s);
        let mut bound = f64::INFINITY;
        for set in 1u8..(1 << N_SITES) {
            if set & known != known {
                continue;
            }
            let n = nights[..n_days].iter().filter(|&&night| night & set != 0).count();
            if n > 0 {
                let pts: u32 = (0..N_SITES).filter(|&s| set & 1 << s != 0).map(|s| points[s]).sum();
                bound = bound.min(pts as f64 / n as f64);
            }
        }
        if !bound.is_finite() {
            // No set of sites can have a point in the window: nothing for the search to pass.
            return hi;
        }
        (bound.ceil() as u32).clamp(lo, hi)
    }

    /// Feed the star's new points (merged time order) and say whether it must be searched by a
    /// run at `as_of`.
    fn screen(&mut self, pts: &[(f64, f64, f64, u8)], p: &AlertParams, as_of: f64) -> bool {
        self.screen_why(pts, p, as_of) != 0
    }

    /// [`Self::screen`], with why: the [`PASS_KEPT`], [`PASS_UNKNOWN`] and [`PASS_HIGH`] bits
    /// (0: not searched).
    fn screen_why(&mut self, pts: &[(f64, f64, f64, u8)], p: &AlertParams, as_of: f64) -> u8 {
        let threshold = p.high_sigma * SCREEN_SIGMA_FACTOR;
        // The new points count in the window's days: counted first, with the rule below of
        // which points are new to a site.
        let mut last_t: [f64; N_SITES] = std::array::from_fn(|s| self.sites[s].last_t);
        for &(t, _, _, s) in pts {
            if let Some(lt) = last_t.get_mut(s as usize) {
                if t > *lt {
                    *lt = t;
                    self.count_day(t, s as usize);
                }
            }
        }
        let need = self.window_n_high(as_of, p);
        self.need = need;
        let lo = smallest_n_high(p);
        let mut pass = 0;
        // A run that was too short for the N_high of its night's window, inside this window,
        // which asks for no more (a window of fewer points per night): searched once.
        let reach = as_of - p.window_days.max(p.max_window_days).max(0.0);
        for l in need..(p.n_high.max(1) as u32).min(lo + SCREEN_MISSED as u32) {
            let m = &mut self.missed[(l - lo) as usize];
            if *m >= reach {
                pass |= PASS_HIGH;
                *m = f64::NEG_INFINITY;
            }
        }
        // A star whose newest points end a run of high points is searched while the run lasts,
        // new points or not: the search's baseline moves as points leave its window, and can
        // make that run high enough for the pre-selection on a later night.
        if self.searched_without_new_points(p) {
            pass |= PASS_KEPT;
        }
        let mut run = self.trailing;
        for &(t, f, e, s) in pts {
            let site = &mut self.sites[s as usize];
            if !(t > site.last_t) {
                continue;
            }
            let (_, level, _) = site.level.quartiles();
            // Against the season's level, and against the earlier seasons' (which the search
            // uses while the season has too few points, or sits above them); the higher.
            let mut z = f64::NEG_INFINITY;
            let mut known = false;
            let mut k = f64::NAN;
            if site.level.n >= SCREEN_MIN_POINTS && site.resid.n >= 5 {
                let (q1, med, _) = site.resid.quartiles();
                k = ((med - q1) / 0.674_489_750_196_081_7).max(p.min_error_scale);
                z = (f - level) / (k * e);
                known = true;
            }
            if self.prior_known && site.prior_level.is_finite() && site.prior_k.is_finite() {
                // The search takes the earlier seasons' level with their multiplier, or (when
                // the season sits above them) with the season's own: the larger z of the two.
                z = z.max((f - site.prior_level) / (site.prior_k * e));
                if k.is_finite() {
                    z = z.max((f - site.prior_level) / (k * e));
                }
                known = true;
            }
            if !known || !self.prior_known {
                pass |= PASS_UNKNOWN;
                z = f64::INFINITY;
            }
            if z >= threshold {
                run += 1;
                if run >= need {
                    pass |= PASS_HIGH;
                } else if run >= lo {
                    // Too short for this window's N_high: kept, for a later window that asks
                    // for fewer.
                    for l in lo..=run {
                        self.missed[(l - lo) as usize] = t;
                    }
                }
            } else {
                run = 0;
            }
            if site.level.n >= 5 && level.is_finite() {
                site.resid.push((f - level) / e);
            }
            site.level.push(f);
            site.last_t = t;
        }
        self.trailing = run;
        pass
    }
}

fn nightly_dir(root: &Path, season: i32, field: Field, bucket: Option<u32>) -> String {
    let b = bucket.map_or("bucket=none".to_string(), |b| format!("bucket={b:04}"));
    let p = format!("state/alertfinder/nightly/season={season}/field={field}/{b}");
    if root.as_ref().is_empty() { p } else { format!("{root}/{p}") }
}

/// The screening state of a bucket after the run at `as_of`.
pub fn screen_path(root: &Path, season: i32, field: Field, bucket: Option<u32>, as_of: f64) -> Path {
    Path::from(format!("{}/asof-{as_of:.5}.parquet", nightly_dir(root, season, field, bucket)))
}

/// Stored states of a bucket before `as_of`, oldest first.
async fn earlier_screens(ctx: &RunCtx, bucket: Option<u32>, as_of: f64) -> Result<Vec<(f64, Path)>, StageError> {
    use futures::TryStreamExt;
    let dir = Path::from(nightly_dir(&ctx.root, ctx.season, ctx.field, bucket));
    let listed: Vec<_> = ctx.store.list(Some(&dir)).try_collect().await.map_err(|e| transient(format!("cannot list {dir}: {e}")))?;
    let mut v: Vec<(f64, Path)> = listed
        .into_iter()
        .filter_map(|m| {
            let t: f64 = m.location.filename()?.strip_prefix("asof-")?.strip_suffix(".parquet")?.parse().ok()?;
            (t < as_of).then_some((t, m.location))
        })
        .collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(v)
}

/// A bucket's screens by star: the stored ones in a vector sorted by star (what the state file
/// holds, read in order), the stars new to the bucket beside them. A hash map of 8k 600-byte
/// screens sits in 16k slots (11 MB a bucket) and a B-tree filled in order is half empty.
#[derive(Debug, Default)]
struct Screens {
    sorted: Vec<(String, StarScreen)>,
    added: BTreeMap<String, StarScreen>,
}

impl Screens {
    fn is_empty(&self) -> bool {
        self.sorted.is_empty() && self.added.is_empty()
    }

    fn find(&self, star: &str) -> Result<usize, usize> {
        self.sorted.binary_search_by(|(s, _)| s.as_str().cmp(star))
    }

    fn get(&self, star: &str) -> Option<&StarScreen> {
        match self.find(star) {
            Ok(i) => Some(&self.sorted[i].1),
            Err(_) => self.added.get(star),
        }
    }

    fn get_mut(&mut self, star: &str) -> Option<&mut StarScreen> {
        match self.find(star) {
            Ok(i) => Some(&mut self.sorted[i].1),
            Err(_) => self.added.get_mut(star),
        }
    }

    /// The star's screen, a new one fed from `fed_from` on if it has none.
    fn get_or_new(&mut self, star: &str, fed_from: f64) -> &mut StarScreen {
        if let Ok(i) = self.find(star) {
            return &mut self.sorted[i].1;
        }
        self.added.entry(star.to_string()).or_insert_with(|| StarScreen { fed_from, ..StarScreen::default() })
    }

    /// Every screen, sorted by star.
    fn entries(&self) -> Vec<(&str, &StarScreen)> {
        let mut v: Vec<(&str, &StarScreen)> = self.sorted.iter().map(|(k, s)| (k.as_str(), s)).chain(self.added.iter().map(|(k, s)| (k.as_str(), s))).collect();
        v.sort_unstable_by(|a, b| a.0.cmp(b.0));
        v
    }
}

async fn read_screens(store: &dyn ObjectStore, path: &Path, bytes_read: &mut u64) -> Result<Screens, StageError> {
    let bytes = crate::stage::read_object(store, path, STAGE).await?;
    *bytes_read += bytes.len() as u64;
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(|e| permanent(format!("corrupt screening state {path}: {e}")))?;
    let version = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|k| k.key == "lensnet.screen_version").and_then(|k| k.value.clone()));
    let mut out = Screens::default();
    if version.as_deref() != Some(&SCREEN_VERSION.to_string()) {
        // Another version's state is a cache like any other: start again from nothing.
        tracing::warn!(%path, ?version, "screening state of another version; every star is searched in full once");
        return Ok(out);
    }
    out.sorted.reserve_exact(builder.metadata().file_metadata().num_rows().max(0) as usize);
    let reader = builder.build().map_err(|e| permanent(format!("corrupt screening state {path}: {e}")))?;
    for batch in reader {
        let b = batch.map_err(|e| permanent(format!("corrupt screening state {path}: {e}")))?;
        let bad = |what: &str| permanent(format!("corrupt screening state {path}: {what}"));
        let stars = b.column_by_name("star").and_then(|c| c.as_any().downcast_ref::<StringArray>()).ok_or_else(|| bad("no star column"))?;
        let v = b.column_by_name("screen").and_then(|c| c.as_fixed_size_list_opt()).ok_or_else(|| bad("no screen column"))?;
        let days = b.column_by_name("days").and_then(|c| c.as_fixed_size_binary_opt()).ok_or_else(|| bad("no days column"))?;
        for i in 0..b.num_rows() {
            let x = v.value(i);
            let x = x.as_primitive_opt::<Float64Type>().ok_or_else(|| bad("screen items are not f64"))?;
            out.sorted.push((stars.value(i).to_string(), StarScreen::from_values(x.values(), days.value(i)).ok_or_else(|| bad("screen of the wrong length"))?));
        }
    }
    // Written sorted; a state from elsewhere is sorted here (a no-op pass for ours).
    out.sorted.sort_by(|a, b| a.0.cmp(&b.0));
    out.sorted.dedup_by(|a, b| a.0 == b.0);
    Ok(out)
}

async fn write_screens(ctx: &RunCtx, bucket: Option<u32>, as_of: f64, screens: &Screens) -> Result<(), StageError> {
    let path = screen_path(&ctx.root, ctx.season, ctx.field, bucket, as_of);
    let schema = Arc::new(Schema::new(vec![
        ArrowField::new("star", DataType::Utf8, false),
        ArrowField::new("screen", DataType::FixedSizeList(Arc::new(ArrowField::new("item", DataType::Float64, true)), SCREEN_VALUES as i32), false),
        ArrowField::new("days", DataType::FixedSizeBinary(DAY_BYTES as i32), false),
    ]));
    // Written 1,024 stars at a time in row groups of 2,048, without dictionaries (the values are
    // floats): the whole bucket's state built as one batch and encoded at once was about 20 MB
    // a bucket, more than the state itself.
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .set_dictionary_enabled(false)
        .set_max_row_group_row_count(Some(2048))
        .set_key_value_metadata(Some(vec![parquet::file::metadata::KeyValue::new("lensnet.screen_version".to_string(), SCREEN_VERSION.to_string())]))
        .build();
    let encode = |e: parquet::errors::ParquetError| permanent(format!("cannot encode {path}: {e}"));
    let mut bytes = Vec::new();
    let mut w = ArrowWriter::try_new(&mut bytes, schema.clone(), Some(props)).map_err(encode)?;
    let entries = screens.entries();
    let mut buf = Vec::with_capacity(SCREEN_VALUES);
    for chunk in entries.chunks(1024) {
        let mut values = FixedSizeListBuilder::with_capacity(Float64Builder::with_capacity(chunk.len() * SCREEN_VALUES), SCREEN_VALUES as i32, chunk.len());
        for (_, sc) in chunk {
            buf.clear();
            sc.to_values(&mut buf);
            values.values().append_slice(&buf);
            values.append(true);
        }
        let mut days = FixedSizeBinaryBuilder::with_capacity(chunk.len(), DAY_BYTES as i32);
        for (_, sc) in chunk {
            days.append_value(sc.day_bytes()).map_err(|e| permanent(format!("cannot build {path}: {e}")))?;
        }
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(StringArray::from_iter_values(chunk.iter().map(|(k, _)| *k))), Arc::new(values.finish()), Arc::new(days.finish())])
            .map_err(|e| permanent(format!("cannot build {path}: {e}")))?;
        w.write(&batch).map_err(encode)?;
    }
    w.close().map_err(encode)?;
    ctx.store.put(&path, PutPayload::from(bytes)).await.map_err(|e| transient(format!("cannot write {path}: {e}")))?;
    let mut earlier = earlier_screens(ctx, bucket, as_of).await?;
    earlier.pop();
    for (_, p) in earlier {
        match ctx.store.delete(&p).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(transient(format!("cannot delete {p}: {e}"))),
        }
    }
    Ok(())
}

/// The order the screen takes a star's points in: time, then site (both ways of feeding it).
fn sort_screen_points(pts: &mut [(f64, f64, f64, u8)]) {
    pts.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.3.cmp(&b.3)));
}

/// What a nightly run did, beyond [`AlertFinderOutput`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct NightlyCounts {
    pub buckets: usize,
    pub stars_with_new_points: usize,
    pub screened_in: usize,
    /// Of them, searched from their carry (their rows read from its end).
    pub from_carry: usize,
    pub rows_read: u64,
    /// Of them, read looking for new points (the rest: the stars searched in full).
    pub new_rows_read: u64,
    /// Of the rest, the rows of the searched stars' windows (and of their earlier seasons, the
    /// first time a season searches them): what the search asked for. The others are other
    /// stars' rows in the pages that hold them.
    pub window_rows: u64,
    /// Searched with their tail from the state (their rows not read from the photometry), and
    /// the tails' rows.
    pub from_tail: usize,
    pub tail_rows: u64,
    /// Bytes of photometry parts fetched ([`PhotometryStore::bytes_read`]), of them for the new
    /// points, and bytes of the stage's own state read (screening state, carries, tails, start
    /// histories).
    pub bytes_read: u64,
    pub new_bytes_read: u64,
    pub state_bytes_read: u64,
    /// Why the screen let them through (runs with a screening state): kept searched (sticky,
    /// or the newest points end a run of high points), a site without a level, a new run of
    /// high points.
    pub passed_kept: usize,
    pub passed_unknown: usize,
    pub passed_high: usize,
}

/// Rows a whole-field run reads at a time while it builds a season's start state from the
/// earlier seasons (about 320 MB of photometry): the whole-field path holds its own season, but
/// a field's earlier seasons are many times that.
pub(crate) const START_BUDGET_ROWS: usize = 2_000_000;

/// The earlier seasons' history of stars, frozen as at the season's start: every night of the
/// earlier seasons in time order ([`StarHistory::absorb`], then [`StarHistory::freeze_prior`]).
/// `ids` (sorted): those stars (read from the partitions that can hold them); None: every star
/// of the earlier seasons. Stars are read in chunks of about `budget_rows` stored rows (with
/// `ids`, chunk sizes follow the rows per star seen so far; without, each bucket's stars are
/// listed first with their row counts), so memory does not grow with the archive: a field with
/// nine earlier seasons holds nine seasons of each star there.
pub(crate) async fn earlier_histories(photometry: &PhotometryStore, season: i32, field: Field, ids: Option<&[String]>, budget_rows: usize) -> Result<HashMap<String, StarHistory>, StageError> {
    let mut seasons: Vec<i32> = photometry.partitions().await.map_err(store_err)?.into_iter().filter(|k| k.field == field && k.season < season).map(|k| k.season).collect();
    seasons.sort_unstable();
    seasons.dedup();
    let budget_rows = budget_rows.max(1);
    let mut h: HashMap<String, StarHistory> = HashMap::new();
    let mut buf = NightBuffers::default();
    let mut absorb = |stars: Vec<crate::photometry::StarCurves>, h: &mut HashMap<String, StarHistory>| -> usize {
        let mut rows = 0;
        for star in &stars {
            rows += star.curves.iter().map(|c| c.hjd.len()).sum::<usize>();
            let m = MergedCurve::from_star(star, Band::I);
            h.entry(star.star.0.clone()).or_default().absorb(&m.view(), f64::INFINITY, &mut buf);
        }
        rows
    };
    for s in seasons {
        match ids {
            Some(ids) => {
                let (mut i, mut n) = (0usize, 64usize);
                while i < ids.len() {
                    let chunk = &ids[i..(i + n).min(ids.len())];
                    let stars = crate::ingest::read_stars(photometry, s, field, chunk).await.map_err(store_err)?;
                    let rows = absorb(stars, &mut h);
                    i += chunk.len();
                    n = (budget_rows / (rows / chunk.len()).max(1)).clamp(1, 8192);
                }
            }
            None => {
                for (_, keys) in photometry.bucket_groups(s, field).await.map_err(store_err)? {
                    let listed = photometry.star_rows(&keys, f64::NEG_INFINITY, f64::INFINITY).await.map_err(store_err)?;
                    let mut chunk: Vec<String> = Vec::new();
                    let mut rows = 0usize;
                    let mut stars = listed.stars.into_iter().peekable();
                    while let Some((star, (total, _))) = stars.next() {
                        chunk.push(star);
                        rows += total as usize;
                        let next = stars.peek().map_or(0, |(_, (t, _))| *t as usize);
                        if stars.peek().is_none() || rows + next > budget_rows {
                            let read = photometry.read_stars_in(&keys, &chunk, field).await.map_err(store_err)?;
                            absorb(read, &mut h);
                            chunk.clear();
                            rows = 0;
                        }
                    }
                }
            }
        }
    }
    for v in h.values_mut() {
        v.freeze_prior();
    }
    Ok(h)
}

/// A state file that is a cache (the start histories, the carries): its contents and its size
/// (bytes read); empty when it is missing, or unreadable (with a warning, `lost`, since it is rebuilt as stars are
/// searched); a store error that may pass is returned.
async fn read_cache_state<T: Default>(ctx: &RunCtx, path: &Path, read: impl std::future::Future<Output = Result<T, StageError>>, lost: &str) -> Result<(T, u64), StageError> {
    match ctx.store.head(path).await {
        Ok(meta) => match read.await {
            Ok(v) => Ok((v, meta.size)),
            Err(e) if e.is_retryable() => Err(e),
            Err(e) => {
                tracing::warn!(%path, error = %e, "{lost}");
                Ok((T::default(), meta.size))
            }
        },
        Err(object_store::Error::NotFound { .. }) => Ok((T::default(), 0)),
        Err(e) => Err(transient(format!("cannot read {path}: {e}"))),
    }
}

/// The bucket's start histories: each searched star's history of the earlier seasons, frozen
/// as at the season's start ([`earlier_histories`]), kept per bucket and season as state
/// (`.../bucket=0003/start.parquet`), so that a star's earlier seasons are read once a season,
/// the first time it is searched, and not every time the screen lets it through (a star of a
/// field with nine earlier seasons read them all on each of its searches). A function of the
/// earlier seasons only, so a run with it, without it, or with a part of it finds the same; lost
/// or unreadable, it is rebuilt as stars are searched. As for the whole-field path's start
/// state, an earlier season ingested late is not folded into entries that exist: delete them.
#[derive(Default)]
struct StartCache {
    /// Read from the state on first use.
    histories: Option<HashMap<String, StarHistory>>,
    /// Stars were added: the state is written again.
    changed: bool,
    /// Bytes of state read.
    bytes_read: u64,
}

impl StartCache {
    fn path(ctx: &RunCtx, bucket: Option<u32>) -> Path {
        Path::from(format!("{}/start.parquet", nightly_dir(&ctx.root, ctx.season, ctx.field, bucket)))
    }

    /// The start histories of `ids` (sorted): from the state where it has them, the others from
    /// the earlier seasons' photometry (and kept). A star without earlier seasons gets (and
    /// keeps) the empty history, as the search would give it.
    async fn histories(&mut self, ctx: &RunCtx, photometry: &PhotometryStore, bucket: Option<u32>, ids: &[String], budget_rows: usize) -> Result<HashMap<String, StarHistory>, StageError> {
        let histories = match &mut self.histories {
            Some(h) => h,
            none => {
                let path = Self::path(ctx, bucket);
                let read = super::stage::read_history(ctx.store.as_ref(), &path);
                let (h, n) = read_cache_state(ctx, &path, read, "start histories unreadable; rebuilt from the earlier seasons as stars are searched").await?;
                self.bytes_read += n;
                none.insert(h)
            }
        };
        let missing: Vec<String> = ids.iter().filter(|id| !histories.contains_key(id.as_str())).cloned().collect();
        if !missing.is_empty() {
            let mut fresh = earlier_histories(photometry, ctx.season, ctx.field, Some(&missing), budget_rows).await?;
            for id in missing {
                let h = fresh.remove(&id).unwrap_or_default();
                histories.insert(id, h);
            }
            self.changed = true;
        }
        Ok(ids.iter().filter_map(|id| histories.get(id).map(|h| (id.clone(), *h))).collect())
    }

    /// Writes the state when stars were added to it.
    async fn store(&self, ctx: &RunCtx, bucket: Option<u32>) -> Result<(), StageError> {
        match (&self.histories, self.changed) {
            (Some(h), true) => super::stage::put_history(ctx.store.as_ref(), &Self::path(ctx, bucket), h).await,
            _ => Ok(()),
        }
    }
}

/// Nights a carry is kept after its star's last search (unless the star is sticky).
pub const CARRY_KEEP_NIGHTS: f64 = 10.0;
/// Version of the stored carries.
pub const CARRY_VERSION: u32 = 1;
/// Version of the stored tails.
pub const TAIL_VERSION: u32 = 1;
/// A run keeps its searched stars' tails when it searched at most one star in this many of the
/// bucket's.
pub const TAIL_MAX_SHARE: usize = 2;

/// One row of a [`CarryCache`] tail: time, flux, error, site index, FWHM, sky (a merged curve's
/// row, as the search reads it).
type TailRow = (f64, f64, f64, u8, f64, f64);

/// What the tails of a carry file cover: the run that wrote them (`as_of`) and, per partition of
/// the bucket, its rows up to that time as that run's read of the new rows counted them
/// ([`crate::ingest::NewRowCounts`]: stored rows less those after the run's time).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
struct TailMeta {
    as_of: f64,
    parts: BTreeMap<String, u64>,
}

/// The bucket's carries (issue 14, item 3): for each star searched in the last
/// [`CARRY_KEEP_NIGHTS`] nights or sticky (its last search found a candidate, pre-selected or
/// failed, so that it is searched at every run), its points
/// before a night boundary as its next search needs them ([`Carry`]), with its history up to
/// there, so that the next search reads only the star's rows from that boundary on: the search
/// window, the grid's recent nights ([`super::recent_cut`]) and what came since. Kept per bucket
/// and season (`.../bucket=0003/carry.parquet`), replaced by each run that searched a star. A
/// search with a carry finds what it finds without one (`scan_star_carry`), so a run with the
/// state, without it, or with an older one finds the same; one that reaches past what a search
/// may leave to it (a run at an earlier time) is not used, and a star that receives rows older
/// than its carry's end (a late night) loses it.
///
/// With them, the tails of the stars searched by the run (`.../bucket=0003/tail.parquet`): each
/// star's rows from its carry's end up to the run's time, as its search read them. The next
/// run, when it is the next one (the watermarks it starts from are this run's) and no partition
/// of the bucket received rows older than its site's watermark since ([`TailMeta`]), gives a
/// searched star its tail (each site's rows up to that site's watermark) and its new points,
/// which it has read already, instead of reading its rows from the photometry's pages, which
/// bring about 40 other rows for each of its own (`bench field`, 10⁶ stars). The rows are those
/// the pages give, so the search finds the same (the streamed-equals-whole-field test holds
/// it, with most of its searches from a tail; a test adds a late night).
#[derive(Default)]
struct CarryCache {
    /// Read from the state on first use.
    carries: Option<HashMap<String, (Carry, StarHistory)>>,
    /// The stored tails (each with the carry end it starts from), and what they cover.
    tails: HashMap<String, (f64, Vec<TailRow>)>,
    tail_meta: Option<TailMeta>,
    /// The tails of this run's searches and what they cover (None: the run keeps none, a
    /// bucket's first run).
    new_tails: HashMap<String, (f64, Vec<TailRow>)>,
    new_meta: Option<TailMeta>,
    changed: bool,
    /// Bytes of state read (carries, tails).
    bytes_read: u64,
}

impl CarryCache {
    fn path(ctx: &RunCtx, bucket: Option<u32>) -> Path {
        Path::from(format!("{}/carry.parquet", nightly_dir(&ctx.root, ctx.season, ctx.field, bucket)))
    }

    fn tail_path(ctx: &RunCtx, bucket: Option<u32>) -> Path {
        Path::from(format!("{}/tail.parquet", nightly_dir(&ctx.root, ctx.season, ctx.field, bucket)))
    }

    async fn load(&mut self, ctx: &RunCtx, bucket: Option<u32>) -> Result<&mut HashMap<String, (Carry, StarHistory)>, StageError> {
        if self.carries.is_none() {
            let path = Self::path(ctx, bucket);
            let read = read_carries(ctx.store.as_ref(), &path);
            let (carries, n) = read_cache_state(ctx, &path, read, "carries unreadable; the stars are read in full and carried again").await?;
            self.bytes_read += n;
            self.carries = Some(carries);
        }
        Ok(self.carries.get_or_insert_with(HashMap::new))
    }

    /// Reads the stored tails (a cache: missing or unreadable, none).
    async fn load_tails(&mut self, ctx: &RunCtx, bucket: Option<u32>) -> Result<(), StageError> {
        let path = Self::tail_path(ctx, bucket);
        let read = read_tails(ctx.store.as_ref(), &path);
        let ((meta, tails), n): ((Option<TailMeta>, HashMap<String, (f64, Vec<TailRow>)>), u64) = read_cache_state(ctx, &path, read, "tails unreadable; the searched stars are read from the photometry").await?;
        self.bytes_read += n;
        self.tail_meta = meta;
        self.tails = tails;
        Ok(())
    }

    /// The stored tails, if they can serve a run whose newest earlier run was at `prev_as_of`
    /// and whose read of the new rows counted `counts` per partition, each read from its site's
    /// watermark (`watermarked`: every partition of the bucket has one).
    fn usable_tails(&self, prev_as_of: Option<f64>, counts: &[(PartitionKey, crate::ingest::NewRowCounts)], watermarked: bool) -> bool {
        let Some(meta) = &self.tail_meta else { return false };
        if !watermarked || prev_as_of != Some(meta.as_of) {
            return false;
        }
        // No partition received rows up to its site's watermark since the tails were written
        // (a late night): its rows up to the watermark are those the tails' run counted.
        let late: Vec<String> = counts
            .iter()
            .filter(|(k, c)| c.up_to_since() != meta.parts.get(&k.to_string()).copied().unwrap_or(0))
            .map(|(k, c)| format!("{k}: {} rows up to the watermark, {} when the tails were kept", c.up_to_since(), meta.parts.get(&k.to_string()).copied().unwrap_or(0)))
            .collect();
        if !late.is_empty() {
            tracing::info!(late = ?late, "rows older than a site's watermark arrived since the last run: the bucket's searched stars are read from the photometry");
            return false;
        }
        true
    }

    /// The star's stored tail, if it starts where its carry ends.
    fn tail_of(&self, id: &str) -> Option<&[TailRow]> {
        let (from, rows) = self.tails.get(id)?;
        let (c, _) = self.carries.as_ref()?.get(id)?;
        (c.upto == *from).then_some(rows.as_slice())
    }

    async fn store(&self, ctx: &RunCtx, bucket: Option<u32>) -> Result<(), StageError> {
        self.store_tails(ctx, bucket).await?;
        let (Some(c), true) = (&self.carries, self.changed) else { return Ok(()) };
        let path = Self::path(ctx, bucket);
        let mut keys: Vec<&String> = c.keys().collect();
        keys.sort_unstable();
        let mut values = arrow::array::ListBuilder::new(Float64Builder::new());
        let mut buf = Vec::new();
        for k in &keys {
            let (carry, h) = &c[*k];
            buf.clear();
            h.to_values(&mut buf);
            carry.to_values(&mut buf);
            values.values().append_slice(&buf);
            values.append(true);
        }
        let schema = Arc::new(Schema::new(vec![
            ArrowField::new("star", DataType::Utf8, false),
            ArrowField::new("carry", DataType::List(Arc::new(ArrowField::new("item", DataType::Float64, true))), false),
        ]));
        let batch = RecordBatch::try_new(schema, vec![Arc::new(StringArray::from_iter_values(keys.iter().map(|k| k.as_str()))), Arc::new(values.finish())])
            .map_err(|e| permanent(format!("cannot build {path}: {e}")))?;
        let props = parquet::file::properties::WriterProperties::builder()
            .set_compression(parquet::basic::Compression::ZSTD(parquet::basic::ZstdLevel::try_new(3).expect("zstd level")))
            .set_key_value_metadata(Some(vec![parquet::file::metadata::KeyValue::new("lensnet.carry_version".to_string(), format!("{CARRY_VERSION}.{}", super::history::HISTORY_VERSION))]))
            .build();
        let mut bytes = Vec::new();
        let mut w = ArrowWriter::try_new(&mut bytes, batch.schema(), Some(props)).map_err(|e| permanent(format!("cannot encode {path}: {e}")))?;
        w.write(&batch).and_then(|_| w.close().map(|_| ())).map_err(|e| permanent(format!("cannot encode {path}: {e}")))?;
        ctx.store.put(&path, PutPayload::from(bytes)).await.map_err(|e| transient(format!("cannot write {path}: {e}")))?;
        Ok(())
    }

    /// Writes this run's tails (`tail.parquet`: star, the carry end it starts from, its rows),
    /// with what they cover; a run that kept none leaves the file, whose run is then not the
    /// newest, so it serves nothing.
    async fn store_tails(&self, ctx: &RunCtx, bucket: Option<u32>) -> Result<(), StageError> {
        let (Some(meta), Some(c), false) = (&self.new_meta, &self.carries, self.new_tails.is_empty()) else { return Ok(()) };
        let path = Self::tail_path(ctx, bucket);
        let mut keys: Vec<&String> = self.new_tails.keys().filter(|k| c.contains_key(*k)).collect();
        keys.sort_unstable();
        let mut from = Float64Builder::with_capacity(keys.len());
        let mut rows = arrow::array::ListBuilder::new(Float64Builder::new());
        for k in &keys {
            let (f, r) = &self.new_tails[*k];
            from.append_value(*f);
            for &(t, fl, e, s, w, sky) in r {
                rows.values().append_slice(&[t, fl, e, s as f64, w, sky]);
            }
            rows.append(true);
        }
        let schema = Arc::new(Schema::new(vec![
            ArrowField::new("star", DataType::Utf8, false),
            ArrowField::new("from", DataType::Float64, false),
            ArrowField::new("rows", DataType::List(Arc::new(ArrowField::new("item", DataType::Float64, true))), false),
        ]));
        let batch = RecordBatch::try_new(schema, vec![Arc::new(StringArray::from_iter_values(keys.iter().map(|k| k.as_str()))), Arc::new(from.finish()), Arc::new(rows.finish())])
            .map_err(|e| permanent(format!("cannot build {path}: {e}")))?;
        let encode = |e: parquet::errors::ParquetError| permanent(format!("cannot encode {path}: {e}"));
        let meta = serde_json::to_string(meta).map_err(|e| permanent(format!("cannot encode {path}: {e}")))?;
        let props = parquet::file::properties::WriterProperties::builder()
            .set_compression(parquet::basic::Compression::ZSTD(parquet::basic::ZstdLevel::try_new(1).expect("zstd level")))
            .set_key_value_metadata(Some(vec![
                parquet::file::metadata::KeyValue::new("lensnet.tail_version".to_string(), TAIL_VERSION.to_string()),
                parquet::file::metadata::KeyValue::new("lensnet.tail".to_string(), meta),
            ]))
            .build();
        let mut bytes = Vec::new();
        let mut w = ArrowWriter::try_new(&mut bytes, batch.schema(), Some(props)).map_err(encode)?;
        w.write(&batch).and_then(|_| w.close().map(|_| ())).map_err(encode)?;
        ctx.store.put(&path, PutPayload::from(bytes)).await.map_err(|e| transient(format!("cannot write {path}: {e}")))?;
        Ok(())
    }
}

async fn read_tails(store: &dyn ObjectStore, path: &Path) -> Result<(Option<TailMeta>, HashMap<String, (f64, Vec<TailRow>)>), StageError> {
    let bytes = crate::stage::read_object(store, path, STAGE).await?;
    let bad = |what: String| permanent(format!("corrupt tail state {path}: {what}"));
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(|e| bad(e.to_string()))?;
    let kv = |key: &str| builder.metadata().file_metadata().key_value_metadata().and_then(|kv| kv.iter().find(|k| k.key == key).and_then(|k| k.value.clone()));
    if kv("lensnet.tail_version").as_deref() != Some(TAIL_VERSION.to_string().as_str()) {
        return Err(bad(format!("version {:?}, this build reads {TAIL_VERSION}", kv("lensnet.tail_version"))));
    }
    let meta: TailMeta = serde_json::from_str(&kv("lensnet.tail").ok_or_else(|| bad("no lensnet.tail metadata".into()))?).map_err(|e| bad(format!("lensnet.tail: {e}")))?;
    let mut out = HashMap::new();
    for batch in builder.build().map_err(|e| bad(e.to_string()))? {
        let b = batch.map_err(|e| bad(e.to_string()))?;
        let stars = b.column_by_name("star").and_then(|c| c.as_any().downcast_ref::<StringArray>()).ok_or_else(|| bad("no star column".into()))?;
        let from = b.column_by_name("from").and_then(|c| c.as_primitive_opt::<Float64Type>()).ok_or_else(|| bad("no from column".into()))?;
        let list = b.column_by_name("rows").and_then(|c| c.as_list_opt::<i32>()).ok_or_else(|| bad("no rows column".into()))?;
        for i in 0..b.num_rows() {
            let v = list.value(i);
            let v = v.as_primitive_opt::<Float64Type>().ok_or_else(|| bad("items are not f64".into()))?.values();
            if v.len() % 6 != 0 {
                return Err(bad(format!("star {}: a tail of {} values", stars.value(i), v.len())));
            }
            let rows = v.chunks_exact(6).map(|r| (r[0], r[1], r[2], r[3] as u8, r[4], r[5])).collect();
            out.insert(stars.value(i).to_string(), (from.value(i), rows));
        }
    }
    Ok((Some(meta), out))
}

async fn read_carries(store: &dyn ObjectStore, path: &Path) -> Result<HashMap<String, (Carry, StarHistory)>, StageError> {
    let bytes = crate::stage::read_object(store, path, STAGE).await?;
    let bad = |what: String| permanent(format!("corrupt carry state {path}: {what}"));
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(|e| bad(e.to_string()))?;
    let version = builder.metadata().file_metadata().key_value_metadata().and_then(|kv| kv.iter().find(|k| k.key == "lensnet.carry_version").and_then(|k| k.value.clone()));
    let want = format!("{CARRY_VERSION}.{}", super::history::HISTORY_VERSION);
    if version.as_deref() != Some(want.as_str()) {
        return Err(bad(format!("version {version:?}, this build reads {want}")));
    }
    let mut out = HashMap::new();
    for batch in builder.build().map_err(|e| bad(e.to_string()))? {
        let b = batch.map_err(|e| bad(e.to_string()))?;
        let stars = b.column_by_name("star").and_then(|c| c.as_any().downcast_ref::<StringArray>()).ok_or_else(|| bad("no star column".into()))?;
        let list = b.column_by_name("carry").and_then(|c| c.as_list_opt::<i32>()).ok_or_else(|| bad("no carry column".into()))?;
        for i in 0..b.num_rows() {
            let v = list.value(i);
            let v = v.as_primitive_opt::<Float64Type>().ok_or_else(|| bad("items are not f64".into()))?.values();
            let n = super::history::STAR_VALUES;
            let h = (v.len() >= n).then(|| StarHistory::from_values(&v[..n])).flatten().ok_or_else(|| bad(format!("star {}: no history", stars.value(i))))?;
            let c = Carry::from_values(&v[n..]).ok_or_else(|| bad(format!("star {}: not a carry", stars.value(i))))?;
            out.insert(stars.value(i).to_string(), (c, h));
        }
    }
    Ok(out)
}

/// The newest epoch stored for the field-season (what a run without an as-of time searches up to).
async fn newest_epoch(photometry: &PhotometryStore, groups: &[(Option<u32>, Vec<PartitionKey>)]) -> Result<f64, StageError> {
    let mut newest = f64::NEG_INFINITY;
    for (_, keys) in groups {
        for k in keys {
            let m = photometry.read_manifest(k).await.map_err(store_err)?;
            newest = m.files.iter().map(|p| p.max_hjd).fold(newest, f64::max);
        }
    }
    Ok(newest)
}

/// Search one field at `ctx.as_of` bucket by bucket (see the module docs), holding at most
/// about `budget_bytes` of photometry at a time, and write the candidates, the watermark and
/// the screening states.
pub async fn find_candidates_nightly(ctx: &RunCtx, params: &AlertParams, budget_bytes: usize) -> Result<(AlertFinderOutput, NightlyCounts), StageError> {
    let photometry = PhotometryStore::new(ctx.store.clone(), ctx.root.clone());
    let state_path = state_path(&ctx.root, ctx.season, ctx.field);
    let mut state = read_state(ctx.store.as_ref(), &state_path).await?;
    let groups = photometry.bucket_groups(ctx.season, ctx.field).await.map_err(store_err)?;
    let as_of = match ctx.as_of {
        Some(t) => t,
        None => newest_epoch(&photometry, &groups).await?,
    };
    let since = state.since(as_of);
    let budget_rows = (budget_bytes / BYTES_PER_ROW).max(1);
    let mut counts = NightlyCounts { buckets: groups.len(), ..Default::default() };
    // A site without new points keeps its watermark, as in the whole-field path.
    let mut site_max = state.carried_over(as_of);
    // Each site's own watermark, from which its new points are read: `since` is the oldest of
    // them (the search counts its new points from there), and reading every site from it
    // read the nights of sites that end later in HJD again (KMTA's night ends at about HJD
    // x.33, KMTC's at x.92: the night before's KMTC and KMTS parts, 0.9x a night's rows).
    let site_since: Arc<BTreeMap<String, f64>> = Arc::new(site_max.iter().filter(|(_, v)| v.is_finite()).map(|(k, v)| (k.clone(), v.max(since))).collect());
    // The newest earlier run: the buckets' tails are used when it wrote them.
    let prev_as_of = state.runs.iter().rev().find(|e| e.as_of < as_of).map(|e| e.as_of);
    // The candidates file is written as the buckets finish, in bucket order and sorted by star
    // within a bucket (a multipart upload: it appears whole or not at all), so that a night on
    // which every star of the field fails (a season's first) holds one bucket's rows at a time.
    let object = candidates_path(&ctx.root, ctx.season, ctx.field, as_of);
    // The writer uploads as it goes: a store error is transient, anything else permanent.
    let encode = |e: parquet::errors::ParquetError| match e {
        parquet::errors::ParquetError::External(e) => transient(format!("cannot write {object}: {e}")),
        e => permanent(format!("cannot encode {object}: {e}")),
    };
    let props = super::stage::candidates_props().map_err(encode)?;
    let writer = object_store::buffered::BufWriter::new(ctx.store.clone(), object.clone());
    let mut out = parquet::arrow::AsyncArrowWriter::try_new(writer, super::stage::candidates_schema(), Some(props)).map_err(encode)?;
    let (mut candidates, mut failed) = (0usize, 0usize);
    // Two buckets at a time (each with half the budget): reads and searches on both cores.
    if as_of.is_finite() {
        use futures::StreamExt;
        let jobs = groups.iter().cloned().map(|(bucket, keys)| {
            let (ctx, params, site_since) = (ctx.clone(), params.clone(), site_since.clone());
            async move {
                tokio::spawn(search_bucket(ctx, params, bucket, keys, since, site_since, prev_as_of, as_of, (budget_rows / 2).max(1)))
                    .await
                    .map_err(|e| permanent(format!("a bucket's search died: {e}")))?
            }
        });
        let mut done = futures::stream::iter(jobs).buffered(2);
        while let Some(d) = done.next().await {
            let mut d = d?;
            d.rows.sort_by(|a, b| a.0.cmp(&b.0));
            let ids: Vec<&str> = d.rows.iter().map(|(s, _)| s.as_str()).collect();
            let indexed: Vec<(usize, &StarResult)> = d.rows.iter().enumerate().map(|(i, (_, r))| (i, r)).collect();
            let batch = candidates_batch(ctx.field, as_of, &indexed, &ids).map_err(|e| permanent(format!("cannot build the candidates batch: {e}")))?;
            out.write(&batch).await.map_err(encode)?;
            candidates += d.rows.iter().filter(|(_, r)| r.status == Status::Candidate).count();
            failed += d.rows.iter().filter(|(_, r)| r.status != Status::Candidate).count();
            for (k, v) in d.site_max {
                let e = site_max.entry(k).or_insert(f64::NEG_INFINITY);
                *e = e.max(v);
            }
            counts.stars_with_new_points += d.counts.stars_with_new_points;
            counts.screened_in += d.counts.screened_in;
            counts.from_carry += d.counts.from_carry;
            counts.rows_read += d.counts.rows_read;
            counts.new_rows_read += d.counts.new_rows_read;
            counts.bytes_read += d.counts.bytes_read;
            counts.new_bytes_read += d.counts.new_bytes_read;
            counts.state_bytes_read += d.counts.state_bytes_read;
            counts.window_rows += d.counts.window_rows;
            counts.from_tail += d.counts.from_tail;
            counts.passed_kept += d.counts.passed_kept;
            counts.passed_unknown += d.counts.passed_unknown;
            counts.passed_high += d.counts.passed_high;
            counts.tail_rows += d.counts.tail_rows;
            drop(d.rows);
            crate::stage::release_free_memory();
        }
    }
    out.close().await.map_err(|e| transient(format!("cannot write {object}: {e}")))?;
    if as_of.is_finite() {
        state.record(as_of, site_max);
        write_state(ctx.store.as_ref(), &state_path, &state).await?;
    }
    tracing::info!(field = %ctx.field, as_of, stars = counts.stars_with_new_points, searched = counts.screened_in, candidates, failed, rows_read = counts.rows_read, "alertfinder (nightly) finished");
    Ok((AlertFinderOutput { as_of, since, stars_searched: counts.stars_with_new_points, candidates, failed, object }, counts))
}

/// What one bucket's search found.
struct BucketOut {
    rows: Vec<(String, StarResult)>,
    site_max: BTreeMap<String, f64>,
    counts: NightlyCounts,
}

/// One bucket of [`find_candidates_nightly`]: screen its new points, search the stars that
/// pass, store its screening state.
#[allow(clippy::too_many_arguments)]
async fn search_bucket(
    ctx: RunCtx,
    params: AlertParams,
    bucket: Option<u32>,
    keys: Vec<PartitionKey>,
    since: f64,
    site_since: Arc<BTreeMap<String, f64>>,
    prev_as_of: Option<f64>,
    as_of: f64,
    budget_rows: usize,
) -> Result<BucketOut, StageError> {
    let params = &params;
    let photometry = PhotometryStore::new(ctx.store.clone(), ctx.root.clone());
    let mut counts = NightlyCounts::default();
    let mut rows: Vec<(String, StarResult)> = Vec::new();
    let mut site_max: BTreeMap<String, f64> = BTreeMap::new();
    let earlier = earlier_screens(&ctx, bucket, as_of).await?;
    let mut screens = match earlier.last() {
        Some((_, p)) => read_screens(ctx.store.as_ref(), p, &mut counts.state_bytes_read).await?,
        None => Screens::default(),
    };
    // A bucket without a screening state (its first run, or the state lost) lists its stars
    // from the `star` and `hjd` columns and searches every star with points in the run's range
    // in full, building each one's screen from the points the new-rows path would have fed it;
    // so a first run holds no more than a batch of stars either.
    let first = screens.is_empty();
    let mut passed: Vec<String> = Vec::new();
    let mut stored: HashMap<String, u64> = HashMap::new();
    let mut carries = CarryCache::default();
    // The new rows (every band), and whether the stored tails serve this run.
    let mut new_read = crate::ingest::NewRows::default();
    let mut tails_usable = false;
    if first {
        let (before, bytes_before) = (photometry.rows_read(), photometry.bytes_read());
        let listed = photometry.star_rows(&keys, since, as_of).await.map_err(store_err)?;
        counts.new_rows_read += photometry.rows_read() - before;
        counts.new_bytes_read += photometry.bytes_read() - bytes_before;
        site_max = listed.site_max;
        for (star, (total, within)) in listed.stars {
            if within > 0 {
                stored.insert(star.clone(), total);
                passed.push(star);
            }
        }
        counts.stars_with_new_points += passed.len();
    } else {
        // The new I-band points of the bucket, per star, in merged time order.
        let (before, bytes_before) = (photometry.rows_read(), photometry.bytes_read());
        let from: Vec<(PartitionKey, f64)> = keys.iter().map(|k| (k.clone(), site_since.get(&k.site).copied().unwrap_or(since))).collect();
        new_read = photometry.read_new_rows(&from, as_of).await.map_err(store_err)?;
        counts.new_rows_read += photometry.rows_read() - before;
        counts.new_bytes_read += photometry.bytes_read() - bytes_before;
        // This run's tails cover each partition's rows up to its time.
        carries.new_meta = Some(TailMeta { as_of, parts: new_read.counts.iter().map(|(k, c)| (k.to_string(), c.stored - c.after)).collect() });
        let watermarked = keys.iter().all(|k| site_since.contains_key(&k.site));
        carries.load(&ctx, bucket).await?;
        carries.load_tails(&ctx, bucket).await?;
        tails_usable = carries.usable_tails(prev_as_of, &new_read.counts, watermarked);
        // A star new to the bucket's screens is fed from here on (its points before the
        // sites' watermarks were not read).
        let fed_from = site_since.values().fold(since, |a, &b| a.max(b));
        let mut per_star: HashMap<&str, Vec<(f64, f64, f64, u8)>> = HashMap::new();
        for (site, b) in &new_read.batches {
            let s = site.parse::<Site>().map(|s| s as u8).unwrap_or(u8::MAX);
            let star = b.column(0).as_string::<i32>();
            let band = b.column(1).as_string::<i32>();
            let (t, f, e) = (b.column(2).as_primitive::<Float64Type>(), b.column(3).as_primitive::<Float64Type>(), b.column(4).as_primitive::<Float64Type>());
            for i in 0..b.num_rows() {
                let (t, f, e) = (t.value(i), f.value(i), e.value(i));
                // The watermark counts every band's epochs, as the whole-field path does.
                let key = site_max.entry(site.clone()).or_insert(f64::NEG_INFINITY);
                *key = key.max(t);
                if band.value(i) == "I" && super::baseline::valid(t, f, e, s) {
                    per_star.entry(star.value(i)).or_default().push((t, f, e, s));
                }
            }
        }
        for (star, pts) in per_star.iter_mut() {
            sort_screen_points(pts);
            let sc = screens.get_or_new(star, fed_from);
            let why = sc.screen_why(pts, params, as_of);
            if why != 0 {
                passed.push(star.to_string());
                if why & PASS_KEPT != 0 {
                    counts.passed_kept += 1;
                } else if why & PASS_UNKNOWN != 0 {
                    counts.passed_unknown += 1;
                } else {
                    counts.passed_high += 1;
                }
            }
        }
        // The stars without new points are screened too: the screen keeps searching some
        // (sticky, or whose newest points end a run of high points), and their window moves
        // with the run's time, so its N_high can drop to a run it holds. (Until stop 40 every
        // site's points were read from the oldest site's watermark, which brought nearly every
        // star some points to screen again.)
        let idle: Vec<String> = screens.entries().into_iter().filter(|(star, _)| !per_star.contains_key(star)).map(|(star, _)| star.to_string()).collect();
        for star in idle {
            let why = screens.get_mut(&star).map_or(0, |sc| sc.screen_why(&[], params, as_of));
            if why != 0 {
                counts.passed_kept += (why & PASS_KEPT != 0) as usize;
                counts.passed_high += (why & PASS_KEPT == 0) as usize;
                passed.push(star);
            }
        }
        counts.stars_with_new_points += per_star.len();
    }
    passed.sort_unstable();
    counts.screened_in += passed.len();
    // Tails are kept when the run searched at most half of the bucket's stars: when it
    // searches most of them (a season's first nights), the pages it reads are mostly the rows
    // it wants, and keeping every star's rows again would double the writes.
    if passed.len() * TAIL_MAX_SHARE > screens.sorted.len() + screens.added.len() {
        carries.new_meta = None;
    }
    let mut start_cache = StartCache::default();
    // The searched stars served by their tails: their new rows of the I band (every row, as the
    // pages give them), by star.
    let mut new_of: HashMap<String, Vec<(String, TailRow)>> = HashMap::new();
    if tails_usable {
        let served: std::collections::HashSet<&str> = passed.iter().map(String::as_str).filter(|id| carries.tail_of(id).is_some()).collect();
        for (site, b) in &new_read.batches {
            let s = site.parse::<Site>().map(|s| s as u8).unwrap_or(u8::MAX);
            let star = b.column(0).as_string::<i32>();
            let band = b.column(1).as_string::<i32>();
            let col = |n: &str| b.column_by_name(n).map(|c| c.as_primitive::<Float64Type>().clone());
            let (Some(t), Some(f), Some(e), Some(w), Some(sky)) = (col("hjd"), col("flux"), col("flux_err"), col("fwhm"), col("sky")) else {
                return Err(permanent(format!("new rows of {site} without the search's columns")));
            };
            for (id, run) in crate::ingest::store::star_runs(star) {
                if served.contains(id) {
                    let rows = new_of.entry(id.to_string()).or_default();
                    for r in run.filter(|&r| band.value(r) == "I") {
                        rows.push((site.clone(), (t.value(r), f.value(r), e.value(r), s, w.value(r), sky.value(r))));
                    }
                }
            }
        }
        for id in served {
            new_of.entry(id.to_string()).or_default();
        }
    }
    drop(new_read);
    // The stars that passed, in batches of about `budget_rows` stored rows.
    let mut start = 0;
    let upto = as_of - params.window_days.max(0.0);
    let mut buf = NightBuffers::default();
    while start < passed.len() {
        let mut end = start;
        let mut rows_in = 0usize;
        while end < passed.len() {
            // Rows the search will hold: those stored (a first run) or about those the screen
            // has seen, with the V band's (fewer when the star has a carry).
            let est: usize = match stored.get(&passed[end]) {
                Some(&n) => n as usize,
                None => screens.get(&passed[end]).map_or(1, |s| s.sites.iter().map(|x| x.level.n as usize).sum::<usize>() * 5 / 4),
            }
            .max(1);
            if end > start && rows_in + est > budget_rows {
                break;
            }
            rows_in += est;
            end += 1;
        }
        let mut ids: Vec<String> = passed[start..end].to_vec();
        start = end;
        // A first run reads every star in full; later runs start each star with a carry at the
        // carry's end. Stars whose carry reaches too far are searched again in full.
        let mut use_carries = !first;
        while !ids.is_empty() {
            let cmap = if use_carries { Some(carries.load(&ctx, bucket).await?) } else { None };
            let carried: Vec<Option<(Carry, StarHistory)>> = ids.iter().map(|id| cmap.as_ref().and_then(|m| m.get(id).cloned())).collect();
            // Stars with a tail that serves (and a carry): their tail's rows up to each site's
            // watermark and their new rows; the others read from the photometry from their
            // carry's end.
            let (served, to_read): (Vec<usize>, Vec<usize>) = (0..ids.len()).partition(|&i| use_carries && carried[i].is_some() && new_of.contains_key(&ids[i]));
            let read_ids: Vec<String> = to_read.iter().map(|&i| ids[i].clone()).collect();
            let from: Vec<f64> = to_read.iter().map(|&i| carried[i].as_ref().map_or(f64::NEG_INFINITY, |c| c.0.upto)).collect();
            let mut stars = photometry.read_stars_from(&keys, &read_ids, Some(&from), ctx.field, true, as_of).await.map_err(store_err)?;
            if !served.is_empty() {
                let mut curves: BTreeMap<String, HashMap<(String, String), crate::photometry::SiteCurve>> = BTreeMap::new();
                for &i in &served {
                    let id = &ids[i];
                    let tail = carries.tail_of(id).unwrap_or(&[]);
                    let new = new_of.get(id).map(Vec::as_slice).unwrap_or(&[]);
                    counts.from_tail += 1;
                    let mut put = |site: &str, r: &TailRow| {
                        let c = curves.entry(id.clone()).or_default().entry((site.to_string(), "I".to_string())).or_insert_with(|| crate::photometry::SiteCurve {
                            site: site.parse::<Site>().ok(),
                            band: Some(Band::I),
                            ..Default::default()
                        });
                        c.hjd.push(r.0);
                        c.flux.push(r.1);
                        c.flux_err.push(r.2);
                        c.mag.push(f64::NAN);
                        c.mag_err.push(f64::NAN);
                        c.fwhm.push(r.4);
                        c.sky.push(r.5);
                        c.airmass.push(f64::NAN);
                    };
                    // A tail row after its site's watermark came in during the tail's run, after
                    // that run read its new rows: it is among this run's new rows.
                    for r in tail {
                        let Some(site) = Site::from_index(r.3 as usize) else { continue };
                        if site_since.get(site.code()).is_some_and(|&w| r.0 <= w) {
                            put(site.code(), r);
                            counts.tail_rows += 1;
                        }
                    }
                    for (site, r) in new {
                        put(site, r);
                    }
                }
                stars.extend(crate::ingest::store::finish_stars(curves, ctx.field, None));
                stars.sort_by(|a, b| a.star.0.cmp(&b.star.0));
            }
            let fresh: Vec<String> = ids.iter().zip(&carried).filter(|(_, c)| c.is_none()).map(|(id, _)| id.clone()).collect();
            let mut histories: HashMap<String, StarHistory> =
                if params.use_history { start_cache.histories(&ctx, &photometry, bucket, &fresh, budget_rows).await? } else { HashMap::new() };
            let by_id: HashMap<&str, usize> = ids.iter().enumerate().map(|(i, id)| (id.as_str(), i)).collect();
            let merged: Vec<MergedCurve> = stars.iter().map(|s| MergedCurve::from_star(s, Band::I)).collect();
            let views: Vec<LightCurve<'_>> = merged.iter().map(MergedCurve::view).collect();
            // Each star's history up to the carry's end (or the season's start), then up to the
            // search window.
            let mut base: Vec<Option<StarHistory>> = Vec::with_capacity(stars.len());
            let mut hs: Vec<Option<StarHistory>> = Vec::with_capacity(stars.len());
            let mut cs: Vec<Option<&Carry>> = Vec::with_capacity(stars.len());
            for (s, v) in stars.iter().zip(&views) {
                let c = by_id.get(s.star.0.as_str()).and_then(|&i| carried[i].as_ref());
                cs.push(c.map(|c| &c.0));
                if params.use_history {
                    let b = match c {
                        Some((_, h)) => *h,
                        None => histories.remove(&s.star.0).unwrap_or_default(),
                    };
                    let mut h = b;
                    h.absorb(v, upto, &mut buf);
                    base.push(Some(b));
                    hs.push(Some(h));
                } else {
                    base.push(None);
                    hs.push(None);
                }
            }
            let hrefs: Vec<Option<&StarHistory>> = hs.iter().map(Option::as_ref).collect();
            let results = scan_batch_carry(&views, &hrefs, &cs, as_of, since, params);
            let mut ahead: Vec<String> = Vec::new();
            for ((((s, r), h), v), (b, c)) in stars.iter().zip(results).zip(&hs).zip(&views).zip(base.iter().zip(&cs)) {
                let r = match r {
                    Ok(r) => {
                        counts.from_carry += c.is_some() as usize;
                        r
                    }
                    Err(CarryAhead) => {
                        ahead.push(s.star.0.clone());
                        continue;
                    }
                };
                if first {
                    let mut pts: Vec<(f64, f64, f64, u8)> = (0..v.time.len())
                        .map(|i| (v.time[i], v.flux[i], v.err[i], v.site[i]))
                        .filter(|&(t, f, e, site)| t > since && t <= as_of && super::baseline::valid(t, f, e, site))
                        .collect();
                    sort_screen_points(&mut pts);
                    if !pts.is_empty() {
                        screens.get_or_new(&s.star.0, since).screen(&pts, params, as_of);
                    }
                }
                if let Some(sc) = screens.get_mut(&s.star.0) {
                    sc.sticky = is_sticky(&r);
                    if !sc.prior_known {
                        sc.set_prior(h.as_ref(), params);
                    }
                }
                // The star's carry for its next search: every searched star's, but in a first
                // run (which searches every star) only the sticky ones'.
                if r.status != Status::NotSearched && (!first || is_sticky(&r)) {
                    let next = Carry::next_upto(as_of, r.preselection.window_start, params);
                    let mut carry = c.cloned().unwrap_or_default();
                    let mut taken = 0;
                    // Where the star's carry ends (the stored one, or this one once extended).
                    let mut end = carry.upto;
                    if next > carry.upto {
                        taken = carry.extend(v, next);
                        end = carry.upto;
                        let mut hc = b.unwrap_or_default();
                        hc.absorb(v, next, &mut buf);
                        carries.load(&ctx, bucket).await?.insert(s.star.0.clone(), (carry, hc));
                        carries.changed = true;
                    }
                    // Its tail: the rows its search was given past the carry's end, kept for a
                    // star that the next run searches whatever its new points (sticky, or its
                    // newest points end a run of high points): every tail written is then read.
                    // (Kept for every searched star, the tails were rewritten for five stars for
                    // each one the next run used: the screen's other passes change from night to
                    // night.) A star at a site of no KMTNet code keeps none.
                    let again = screens.get(&s.star.0).is_some_and(|sc| sc.searched_without_new_points(params));
                    if again && carries.new_meta.is_some() && v.site[taken..].iter().all(|&x| (x as usize) < N_SITES) {
                        let rows = (taken..v.time.len()).map(|i| (v.time[i], v.flux[i], v.err[i], v.site[i], v.fwhm[i], v.sky[i])).collect();
                        carries.new_tails.insert(s.star.0.clone(), (end, rows));
                    }
                }
                if matches!(r.status, Status::Candidate | Status::Failed) {
                    rows.push((s.star.0.clone(), r));
                }
            }
            drop(stars);
            ids = ahead;
            use_carries = false;
        }
    }
    start_cache.store(&ctx, bucket).await?;
    if !first || carries.carries.is_some() {
        let map = carries.load(&ctx, bucket).await?;
        let before = map.len();
        // Kept: the sticky stars' (searched at every run) and those of the stars searched in
        // the last CARRY_KEEP_NIGHTS nights (the screen lets the same variable stars through
        // again and again); a carry not used for longer is dropped, so the state that every
        // run rewrites holds the stars that are being searched.
        let keep_from = super::recent_cut(as_of, params) - CARRY_KEEP_NIGHTS;
        map.retain(|id, (c, _)| c.upto >= keep_from || screens.get(id).is_some_and(|s| s.sticky));
        carries.changed |= map.len() != before;
    }
    carries.store(&ctx, bucket).await?;
    write_screens(&ctx, bucket, as_of, &screens).await?;
    counts.rows_read = photometry.rows_read();
    counts.window_rows = photometry.rows_wanted();
    counts.bytes_read = photometry.bytes_read();
    counts.state_bytes_read += carries.bytes_read + start_cache.bytes_read;
    Ok(BucketOut { rows, site_max, counts })
}

/// A digest of what a nightly run can read: per partition of the field-season, its stored rows
/// and the newest epoch, from the manifests. Stored photometry only grows, so it changes
/// whenever photometry is added, and not when compaction rewrites the same rows into other
/// parts (a live run compacts after its publish: a re-run of the same run id must not search
/// again because of its own compaction).
pub async fn manifests_digest(photometry: &PhotometryStore, season: i32, field: Field) -> Result<String, StageError> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for k in photometry.field_partitions(season, field).await.map_err(store_err)? {
        h.update(k.to_string().as_bytes());
        let m = photometry.read_manifest(&k).await.map_err(store_err)?;
        let rows: u64 = m.files.iter().map(|p| p.rows).sum();
        let newest = m.files.iter().map(|p| p.max_hjd).fold(f64::NEG_INFINITY, f64::max);
        h.update(rows.to_le_bytes());
        h.update(newest.to_bits().to_le_bytes());
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_screen_round_trips_and_flags_a_run_of_high_points() {
        let p = AlertParams::low_cadence();
        let mut s = StarScreen::default();
        s.set_prior(None, &p);
        // 40 quiet points at KMTC: the first ones pass (no level yet), then quiet ones do not.
        let quiet: Vec<(f64, f64, f64, u8)> = (0..40).map(|i| (100.0 + i as f64 * 0.1, if i % 2 == 0 { 10.0 } else { -10.0 }, 10.0, 1)).collect();
        assert!(s.screen(&quiet, &p, 104.0), "no level yet: searched");
        let more: Vec<(f64, f64, f64, u8)> = (0..10).map(|i| (110.0 + i as f64 * 0.1, if i % 2 == 0 { 5.0 } else { -5.0 }, 10.0, 1)).collect();
        assert!(!s.screen(&more, &p, 111.0), "quiet points with a level: not searched");
        // The same points again are not new.
        assert!(!s.screen(&more, &p, 111.0));
        let high: Vec<(f64, f64, f64, u8)> = (0..p.min_n_high.min(p.n_high)).map(|i| (120.0 + i as f64 * 0.1, 200.0, 10.0, 1)).collect();
        assert!(s.screen(&high, &p, 121.0), "a run of high points: searched");
        let mut v = Vec::new();
        s.to_values(&mut v);
        let mut w = Vec::new();
        let back = StarScreen::from_values(&v, s.day_bytes()).unwrap();
        back.to_values(&mut w);
        assert_eq!(format!("{v:?}"), format!("{w:?}"));
        assert_eq!(back.days, s.days);
        assert_eq!(s.days[1].iter().map(|&c| c as u32).sum::<u32>(), 40 + 10 + p.min_n_high.min(p.n_high) as u32, "every new point counted once in its day");
        // A run split over two nights is still seen.
        let mut t = StarScreen::from_values(&v, s.day_bytes()).unwrap();
        t.trailing = 0;
        let k = p.min_n_high.min(p.n_high);
        let first: Vec<_> = (0..k - 1).map(|i| (130.0 + i as f64 * 0.01, 200.0, 10.0, 1u8)).collect();
        let second = vec![(131.0, 200.0, 10.0, 1u8)];
        let a = t.screen(&first, &p, 130.5);
        assert!(t.screen(&second, &p, 131.5) || a);
    }

    /// Feed `lc`'s valid points to a screen run by run (daily runs at HJD x.99 from `from` on; the
    /// screen made at the first, fed from that run's `since`), and at each run compare the N_high
    /// the screen asks for with the one the search uses: never more, and the search's own where
    /// the cadence allows it. Returns the runs at which the screen asked for `n_high`.
    fn screen_n_high_never_exceeds_the_search(lc: &crate::photometry::MergedCurve, p: &AlertParams, from: f64, to: f64, fed_from: f64) -> (usize, usize) {
        let mut sc = StarScreen { fed_from, ..StarScreen::default() };
        sc.set_prior(None, p);
        let mut scratch = super::super::Scratch::default();
        let (mut at_top, mut runs) = (0, 0);
        let mut since = fed_from;
        let mut as_of = from.floor() + 0.99;
        while as_of < to {
            let mut pts: Vec<(f64, f64, f64, u8)> = (0..lc.time.len())
                .map(|i| (lc.time[i], lc.flux[i], lc.err[i], lc.site[i]))
                .filter(|&(t, f, e, s)| t > since && t <= as_of && super::super::baseline::valid(t, f, e, s))
                .collect();
            sort_screen_points(&mut pts);
            sc.screen(&pts, p, as_of);
            let need = sc.window_n_high(as_of, p);
            let r = super::super::scan_star(&lc.view(), as_of, since, p, &mut scratch);
            if r.preselection.n_high_used > 0 {
                runs += 1;
                assert!(need <= r.preselection.n_high_used, "at {as_of}: the screen asks for {need}, the search for {} ({:?})", r.preselection.n_high_used, r.preselection);
                at_top += (need == p.n_high as u32) as usize;
            }
            since = as_of;
            as_of += 1.0;
        }
        (at_top, runs)
    }

    /// A run of high points too short for its night's N_high is passed once when a later window,
    /// of fewer points per night, asks for no more; and not while the cadence holds.
    #[test]
    fn a_run_too_short_for_its_night_is_searched_when_the_cadence_drops() {
        let p = AlertParams::low_cadence();
        let quiet = |d: f64, per_site: usize, sites: &[u8]| -> Vec<(f64, f64, f64, u8)> {
            let mut v: Vec<_> = sites.iter().flat_map(|&s| (0..per_site).map(move |j| (d + 0.1 + s as f64 * 0.25 + j as f64 * 0.02, if j % 2 == 0 { 10.0 } else { -10.0 }, 10.0, s))).collect();
            sort_screen_points(&mut v);
            v
        };
        let dense = |until: f64, keep_dense: bool| {
            let mut sc = StarScreen { fed_from: f64::NEG_INFINITY, ..StarScreen::default() };
            sc.set_prior(None, &p);
            for d in 100..120 {
                sc.screen(&quiet(d as f64, 8, &[0, 1, 2]), &p, d as f64 + 0.99);
            }
            assert_eq!(sc.window_n_high(119.99, &p), p.n_high as u32, "24 points a night: the search's 5");
            // Four high points, then a quiet one: too short for 5.
            let mut night: Vec<_> = (0..4).map(|j| (120.1 + j as f64 * 0.01, 200.0, 10.0, 1u8)).collect();
            night.push((120.2, 0.0, 10.0, 1));
            // (Ending the night, the same run is not kept searched either.)
            let mut open = sc;
            assert_eq!(open.screen_why(&night[..4], &p, 120.99), 0);
            assert_eq!((open.trailing, open.need), (4, 5));
            assert!(!open.searched_without_new_points(&p));
            assert_eq!(sc.screen_why(&night, &p, 120.99), 0, "a run of 4 where the window asks for 5");
            let mut passes = Vec::new();
            let mut d = 121.0;
            while d < until {
                let pts = if keep_dense { quiet(d, 8, &[0, 1, 2]) } else { quiet(d, 1, &[1]) };
                let why = sc.screen_why(&pts, &p, d + 0.99);
                if why != 0 {
                    passes.push((d, why, sc.window_n_high(d + 0.99, &p)));
                }
                d += 1.0;
            }
            passes
        };
        assert!(dense(160.0, true).is_empty(), "the cadence holds: never searched");
        let passes = dense(160.0, false);
        // Searched when the window asks for 4, and again for 3 (the search may still have
        // asked for 5 at 4: the screen's N_high is a bound), then no more.
        assert!(!passes.is_empty() && passes.len() <= 2, "{passes:?}");
        assert!(passes.iter().all(|x| x.1 == PASS_HIGH), "{passes:?}");
        assert!(passes[0].2 <= 4, "{passes:?}");
    }

    /// The screen's N_high is a bound on the search's at every cadence: KMTNet's sub-prime and
    /// prime fields, a low-cadence one, weather, a site with a handful of points (its baseline
    /// unusable), a screen made mid-season; and it is the search's own at sub-prime cadence.
    #[test]
    fn the_screens_n_high_is_at_most_the_searchs() {
        use super::super::synth::{generate, SynthSpec};
        let p = AlertParams::low_cadence();
        let mut top_subprime = (0, 0);
        for (k, (cadence, loss)) in [(1.0, 0.25), (4.0, 0.25), (0.4, 0.25), (0.2, 0.5), (0.1, 0.6), (1.0, 0.8)].into_iter().enumerate() {
            let spec = SynthSpec { season_days: 120.0, weather_loss: loss, ..SynthSpec::season(cadence) };
            let lc = generate(&spec, 40 + k as u64);
            let start = spec.season_start;
            let got = screen_n_high_never_exceeds_the_search(&lc, &p, start, start + 120.0, f64::NEG_INFINITY);
            assert!(got.1 > 50, "too few runs with a pre-selection ({got:?})");
            if cadence == 1.0 && loss == 0.25 {
                top_subprime = got;
            }
            // A screen made mid-season (a lost state): the days before are unknown.
            screen_n_high_never_exceeds_the_search(&lc, &p, start + 60.0, start + 120.0, start + 59.5);
            // A site with a few points only: KMTS keeps one point in ten nights.
            let mut thin = crate::photometry::MergedCurve::default();
            for i in 0..lc.time.len() {
                if lc.site[i] != 2 || (lc.time[i] - start) as i64 % 10 == 0 {
                    thin.time.push(lc.time[i]);
                    thin.flux.push(lc.flux[i]);
                    thin.err.push(lc.err[i]);
                    thin.site.push(lc.site[i]);
                    thin.fwhm.push(lc.fwhm[i]);
                    thin.sky.push(lc.sky[i]);
                }
            }
            screen_n_high_never_exceeds_the_search(&thin, &p, start, start + 120.0, f64::NEG_INFINITY);
        }
        // At 1/h a site the search asks for 5 once the season has a window; so does the screen.
        assert!(top_subprime.0 * 10 >= top_subprime.1 * 8, "the screen asked for n_high at {} of {} runs", top_subprime.0, top_subprime.1);
    }

    async fn simulated(dir: &std::path::Path, stars: u64, seed: u64) -> (Arc<dyn ObjectStore>, Path, f64) {
        use crate::simulate::{store::{season_first_night, simulate_to_store}, Season, SimConfig};
        let o = crate::store::open_store(dir.to_str().unwrap(), true).unwrap();
        let ps = PhotometryStore::new(o.store.clone(), o.prefix.clone());
        let mut first = 0.0;
        for year in [2024, 2025] {
            let season = Season::new(&SimConfig { season: year, fields: vec![Field(14)], stars, seed, ..SimConfig::default() }).unwrap();
            if year == 2024 {
                simulate_to_store(&season, Field(14), None, &ps.with_bucket_hint(stars)).await.unwrap();
            } else {
                // The season in parts of 16 nights, as compaction leaves a live season.
                for d in (0..400).step_by(16) {
                    simulate_to_store(&season, Field(14), Some(d..d + 16), &ps.with_bucket_hint(stars)).await.unwrap();
                }
            }
            first = season_first_night(&season, Field(14)).unwrap();
        }
        (o.store, o.prefix, first)
    }

    /// The earlier seasons' histories read a few stars at a time are those read at once, for
    /// chosen stars and for all.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn start_histories_read_in_small_chunks_are_the_same() {
        let a = tempfile::tempdir().unwrap();
        let (store, root, _) = simulated(a.path(), 60, 5).await;
        let ps = PhotometryStore::new(store.clone(), root.clone());
        let bytes = |h: &HashMap<String, StarHistory>| {
            let mut k: Vec<_> = h.iter().map(|(s, h)| { let mut v = Vec::new(); h.to_values(&mut v); (s.clone(), format!("{v:?}")) }).collect();
            k.sort();
            k
        };
        let all = earlier_histories(&ps, 2025, Field(14), None, usize::MAX).await.unwrap();
        assert_eq!(all.len(), 60, "every star of 2024");
        let before = ps.rows_read();
        let small = earlier_histories(&ps, 2025, Field(14), None, 5_000).await.unwrap();
        assert_eq!(bytes(&small), bytes(&all));
        let mut ids: Vec<String> = all.keys().cloned().collect();
        ids.sort();
        let some: Vec<String> = ids.iter().step_by(3).cloned().collect();
        let chosen = earlier_histories(&ps, 2025, Field(14), Some(&some), 5_000).await.unwrap();
        let want: HashMap<String, StarHistory> = some.iter().map(|id| (id.clone(), all[id])).collect();
        assert_eq!(bytes(&chosen), bytes(&want));
        assert!(ps.rows_read() > before, "read from the store");
        // The season of the stored data has no earlier season: nothing.
        assert!(earlier_histories(&ps, 2024, Field(14), None, 5_000).await.unwrap().is_empty());
    }

    fn ctx(store: &Arc<dyn ObjectStore>, root: &Path, as_of: f64) -> RunCtx {
        RunCtx { run_id: format!("t-{as_of}"), field: Field(14), season: 2025, as_of: Some(as_of), store: store.clone(), root: root.clone() }
    }

    fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                copy_dir(&e.path(), &to.join(e.file_name()));
            } else {
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
    }

    /// Issue 14: the stars a run searches take their rows from the tails the run before kept,
    /// and rows older than a site's watermark that arrive after it (a late night) make the
    /// bucket read its searched stars from the photometry, where those rows are: the run finds
    /// what the same run without any carry or tail finds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_late_night_is_read_from_the_photometry_and_not_from_the_tails() {
        let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let (sa, ra, first) = simulated(dirs[0].path(), 60, 7).await;
        let p = AlertParams::low_cadence();
        let mut served = 0;
        for day in 3..40 {
            let (_, n) = find_candidates_nightly(&ctx(&sa, &ra, first + day as f64 + 0.5), &p, 64 << 20).await.unwrap();
            served += n.from_tail;
        }
        assert!(served > 0, "tails served the daily runs");
        // B and C: the same store, and a late night of KMTC for a star with a tail (12 bright
        // points before KMTC's watermark); C without its carries and tails.
        copy_dir(dirs[0].path(), dirs[1].path());
        copy_dir(dirs[0].path(), dirs[2].path());
        let open = |d: &std::path::Path| crate::store::open_store(d.to_str().unwrap(), true).unwrap();
        let (ob, oc) = (open(dirs[1].path()), open(dirs[2].path()));
        let carry = |root: &Path| Path::from(format!("{}/carry.parquet", nightly_dir(root, 2025, Field(14), Some(0))));
        let tail = Path::from(format!("{}/tail.parquet", nightly_dir(&ob.prefix, 2025, Field(14), Some(0))));
        let (_, tails) = read_tails(ob.store.as_ref(), &tail).await.unwrap();
        let star = tails.iter().filter(|(_, (_, t))| !t.is_empty()).map(|(s, _)| s.clone()).min().expect("a star with a tail");
        let state = read_state(ob.store.as_ref(), &state_path(&ob.prefix, 2025, Field(14))).await.unwrap();
        let wm = state.runs.last().unwrap().sites["KMTC"];
        let n = 12;
        let late = RecordBatch::try_new(
            crate::ingest::photometry_schema(),
            vec![
                Arc::new(StringArray::from_iter_values(std::iter::repeat_n(star.as_str(), n))),
                Arc::new(StringArray::from_iter_values(std::iter::repeat_n("I", n))),
                Arc::new(arrow::array::Float64Array::from_iter_values((0..n).map(|i| wm - 0.4 + 0.02 * i as f64))),
                Arc::new(arrow::array::Float64Array::from_iter_values(std::iter::repeat_n(5.0e4, n))),
                Arc::new(arrow::array::Float64Array::from_iter_values(std::iter::repeat_n(20.0, n))),
                Arc::new(arrow::array::Float64Array::from_iter_values(std::iter::repeat_n(16.0, n))),
                Arc::new(arrow::array::Float64Array::from_iter_values(std::iter::repeat_n(0.01, n))),
                Arc::new(arrow::array::Float64Array::from_iter_values(std::iter::repeat_n(4.0, n))),
                Arc::new(arrow::array::Float64Array::from_iter_values(std::iter::repeat_n(800.0, n))),
                Arc::new(arrow::array::Float64Array::from_iter_values(std::iter::repeat_n(1.2, n))),
                Arc::new(arrow::array::Float64Array::from_iter_values(std::iter::repeat_n(f64::NAN, n))),
                Arc::new(arrow::array::Float64Array::from_iter_values(std::iter::repeat_n(0.0, n))),
                Arc::new(StringArray::from_iter_values(std::iter::repeat_n("late.pysis", n))),
                Arc::new(arrow::array::UInt32Array::from_iter_values(1..=n as u32)),
            ],
        )
        .unwrap();
        let key = PartitionKey { season: 2025, field: Field(14), site: "KMTC".into(), bucket: Some(0) };
        for o in [&ob, &oc] {
            let ps = PhotometryStore::new(o.store.clone(), o.prefix.clone());
            let info = ps.stage_part(&key, "part-late.parquet", &late).await.unwrap();
            ps.commit_parts(&key, &[info]).await.unwrap();
        }
        oc.store.delete(&carry(&oc.prefix)).await.unwrap();
        let as_of = first + 40.5;
        let (_, na) = find_candidates_nightly(&ctx(&sa, &ra, as_of), &p, 64 << 20).await.unwrap();
        let (_, nb) = find_candidates_nightly(&ctx(&ob.store, &ob.prefix, as_of), &p, 64 << 20).await.unwrap();
        let (_, nc) = find_candidates_nightly(&ctx(&oc.store, &oc.prefix, as_of), &p, 64 << 20).await.unwrap();
        assert!(na.from_tail > 0, "without the late night the tails serve: {na:?}");
        assert_eq!(nb.from_tail, 0, "a late night: no tail serves: {nb:?}");
        assert_eq!(nc.from_tail, 0);
        let bytes = |o: &crate::store::OpenedStore| {
            let (s, p) = (o.store.clone(), candidates_path(&o.prefix, 2025, Field(14), as_of));
            async move { s.get(&p).await.unwrap().bytes().await.unwrap() }
        };
        assert_eq!(bytes(&ob).await, bytes(&oc).await, "the late rows are searched as a run without tails searches them");
        // The next night the tails serve again.
        let (_, again) = find_candidates_nightly(&ctx(&ob.store, &ob.prefix, as_of + 1.0), &p, 64 << 20).await.unwrap();
        assert!(again.from_tail > 0, "{again:?}");
    }

    /// The season's daily runs, streamed and screened, write the candidates (and failures) of
    /// the whole-field path, run by run; a run done again writes the same bytes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_nightly_path_finds_what_the_whole_field_path_finds() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (sa, ra, first) = simulated(a.path(), 160, 11).await;
        let (sb, rb, _) = simulated(b.path(), 160, 11).await;
        let p = AlertParams::low_cadence();
        let cache = crate::cache::PhotometryCache::new();
        let mut found = 0;
        let mut searched_in_full = 0;
        let mut with_new = 0;
        let mut from_tail = 0;
        for day in 3..160 {
            let as_of = first + day as f64 + 0.5;
            super::super::stage::find_candidates_with(&ctx(&sa, &ra, as_of), &p, Some(&cache)).await.unwrap();
            let (_, n) = find_candidates_nightly(&ctx(&sb, &rb, as_of), &p, 64 << 20).await.unwrap();
            // The reads' parts: new points, the searched stars' windows, the pages' other rows.
            assert!(n.new_rows_read + n.window_rows <= n.rows_read, "{n:?}");
            assert!(n.screened_in == 0 || n.window_rows + n.tail_rows > 0, "{n:?}");
            searched_in_full += n.screened_in;
            with_new += n.stars_with_new_points;
            from_tail += n.from_tail;
            let whole = super::super::stage::read_candidates(sa.as_ref(), &ra, 2025, Field(14), as_of).await.unwrap();
            let streamed = super::super::stage::read_candidates(sb.as_ref(), &rb, 2025, Field(14), as_of).await.unwrap();
            let key = |v: &[super::super::stage::CandidateRecord]| { let mut k = v.iter().map(|c| (c.star.clone(), c.status.clone(), c.result_json.clone())).collect::<Vec<_>>(); k.sort(); k };
            let (kw, ks) = (key(&whole), key(&streamed));
            if kw != ks {
                let only_w: Vec<_> = kw.iter().filter(|x| !ks.contains(x)).map(|x| (&x.0, &x.1, &x.2[..120.min(x.2.len())])).collect();
                let only_s: Vec<_> = ks.iter().filter(|x| !kw.contains(x)).map(|x| (&x.0, &x.1, &x.2[..120.min(x.2.len())])).collect();
                if let (Some(w), Some(x)) = (kw.iter().find(|x| !ks.contains(x)), ks.iter().find(|x| !kw.contains(x))) {
                    let at = w.2.bytes().zip(x.2.bytes()).position(|(a, b)| a != b).unwrap_or(0);
                    let lo = at.saturating_sub(150);
                    panic!("day {day}: {} differs at {at}: whole {:?} streamed {:?}", w.0, &w.2[lo..(at + 80).min(w.2.len())], &x.2[lo..(at + 80).min(x.2.len())]);
                }
                panic!("day {day}: whole-field only {only_w:?}; streamed only {only_s:?}");
            }
            found += whole.iter().filter(|c| c.status == "candidate").count();
            // What score and publish read: the candidate rows only, and the file's row count.
            let (only, total) = super::super::stage::read_candidate_rows(sb.clone(), &rb, 2025, Field(14), as_of).await.unwrap();
            assert_eq!(total as usize, streamed.len(), "day {day}");
            assert_eq!(key(&only), key(&streamed.iter().filter(|c| c.status == "candidate").cloned().collect::<Vec<_>>()), "day {day}");

            if day == 100 {
                // A killed run started again: the same candidates bytes and screening state.
                let cand = |s: &Arc<dyn ObjectStore>| { let s = s.clone(); let p = candidates_path(&rb, 2025, Field(14), as_of); async move { s.get(&p).await.unwrap().bytes().await.unwrap() } };
                let screen = |s: &Arc<dyn ObjectStore>| { let s = s.clone(); let p = screen_path(&rb, 2025, Field(14), Some(0), as_of); async move { s.get(&p).await.unwrap().bytes().await.unwrap() } };
                let (c1, s1) = (cand(&sb).await, screen(&sb).await);
                let (_, again) = find_candidates_nightly(&ctx(&sb, &rb, as_of), &p, 64 << 20).await.unwrap();
                assert_eq!(cand(&sb).await, c1);
                assert_eq!(screen(&sb).await, s1);
                // Without the carries the same run reads the searched stars' whole season, and
                // finds the same; the carries are written again.
                let carry = Path::from(format!("{}/carry.parquet", nightly_dir(&rb, 2025, Field(14), Some(0))));
                assert!(sb.head(&carry).await.is_ok(), "the bucket keeps its carries");
                sb.delete(&carry).await.unwrap();
                let (_, full) = find_candidates_nightly(&ctx(&sb, &rb, as_of), &p, 64 << 20).await.unwrap();
                assert_eq!(cand(&sb).await, c1);
                assert_eq!(screen(&sb).await, s1);
                assert!(again.screened_in > 0 && full.rows_read > again.rows_read, "{} rows read without the carries, {} with", full.rows_read, again.rows_read);
                assert!(sb.head(&carry).await.is_ok());
                // Without the start histories either, it reads the earlier season (2024) of
                // every star it searches, and finds the same; both are written again.
                let start = Path::from(format!("{}/start.parquet", nightly_dir(&rb, 2025, Field(14), Some(0))));
                assert!(sb.head(&start).await.is_ok(), "the bucket keeps its start histories");
                sb.delete(&start).await.unwrap();
                sb.delete(&carry).await.unwrap();
                let (_, cold) = find_candidates_nightly(&ctx(&sb, &rb, as_of), &p, 64 << 20).await.unwrap();
                assert_eq!(cand(&sb).await, c1);
                assert_eq!(screen(&sb).await, s1);
                assert!(cold.rows_read > full.rows_read, "{} rows read without the start histories, {} with", cold.rows_read, full.rows_read);
                assert!(sb.head(&start).await.is_ok() && sb.head(&carry).await.is_ok());
            }
        }
        assert!(found > 20, "the season holds candidates to compare: {found}");
        // Most searches after the first took their rows from the tails.
        assert!(from_tail * 2 > searched_in_full, "{from_tail} of {searched_in_full} searches from a tail");
        // The screen saves work even on this population of mostly variable stars (70 %: the
        // simulator's training mix; a real field is mostly constant stars, see `bench field`).
        assert!(searched_in_full * 3 < with_new, "{searched_in_full} of {with_new} star-runs searched in full");
    }
}
