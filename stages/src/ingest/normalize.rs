//! From scanned columns to stored observations: time system, brightening-positive flux (sign
//! derived from the magnitudes where a file has them), magnitudes to flux, recorded baseline.

use crate::ingest::error::ParseError;
use crate::ingest::ledger::LedgerEntry;
use crate::ingest::text::{Quantity, Scan};
use crate::ingest::time::TimeSystem;
use crate::photometry::{Band, Field, StarId};

/// Zero point of the flux scale: `flux = 10^(-0.4 (mag - MAG_ZP))`. 28.0 is the scale of the
/// KMTNet pySIS photometry (fitted on the real files: mag 20.0 ↔ flux ~1580), so fluxes derived
/// from other surveys' magnitudes land in the same units as KMTNet Δflux.
pub const MAG_ZP: f64 = 28.0;

/// Below this |Pearson r| between Δflux and mag the sign is not trusted and the format's default
/// is used. Real files sit near |r| = 0.9 because pySIS computes mag from Δflux.
pub const SIGN_MIN_ABS_CORR: f64 = 0.3;

/// Largest |difference flux| (and flux error) taken as data, on the zp-28 scale: magnitude 3,
/// brighter than any star a bulge survey measures unsaturated. A larger value is a corrupt line.
pub const MAX_ABS_FLUX: f64 = 1e10;

/// Stored times outside HJD 2440000 .. 2480000 (1968 .. 2077) are not survey epochs.
pub const HJD_RANGE: (f64, f64) = (-10_000.0, 30_000.0);

/// Values no photometry can hold are a malformed line (the file is quarantined, naming it),
/// never data: an infinite or absurd flux would otherwise become an alert.
fn check_plausible(hjd: &[f64], flux: &[f64], flux_err: &[f64], line: &[u32], file: &str, max_abs: f64) -> Result<(), ParseError> {
    let bad = |i: usize, quantity: &'static str, value: f64, why: &str| ParseError::Implausible {
        file: file.to_string(),
        line: line.get(i).copied().map(u64::from).unwrap_or(0),
        quantity,
        value: format!("{value:e}"),
        why: why.to_string(),
    };
    for i in 0..hjd.len() {
        if !(hjd[i] >= HJD_RANGE.0 && hjd[i] <= HJD_RANGE.1) {
            return Err(bad(i, "time", hjd[i], "outside HJD 2440000 .. 2480000"));
        }
        if flux[i].is_infinite() || flux[i].abs() > max_abs {
            return Err(bad(i, "flux", flux[i], "beyond ±1e10 (brighter than magnitude 3)"));
        }
        let e = flux_err.get(i).copied().unwrap_or(f64::NAN);
        if e.is_infinite() || e < 0.0 || e > max_abs {
            return Err(bad(i, "flux error", e, "negative, infinite or beyond 1e10"));
        }
    }
    Ok(())
}

/// Where a file's rows belong: the star and partition keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceMeta {
    pub star: StarId,
    pub field: Field,
    /// KMTNet site code (`KMTA`, `KMTC`, `KMTS`) or the survey's name for other inputs (`OGLE`).
    pub site: String,
    pub band: Band,
}

/// Metadata given by the caller (CLI flags, sidecar files) that wins over what file and folder
/// names say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceOverrides {
    pub star: Option<StarId>,
    pub field: Option<Field>,
    pub site: Option<String>,
    pub band: Option<Band>,
    /// Force the Δflux sign (+1: brightening positive as written; -1: negate) for files without
    /// magnitudes whose convention differs from the format's default.
    pub flux_sign: Option<i8>,
}

/// What the value column of a format holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// Difference flux; `default_sign` is the format's convention (+1 brightening positive),
    /// used only when the file has no magnitudes to derive the sign from.
    DeltaFlux { default_sign: i8 },
    /// Total flux on the `MAG_ZP` scale.
    Flux,
    /// Magnitude.
    Mag,
}

/// How the flux sign was decided.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SignSource {
    /// Pearson correlation between Δflux and mag (negative r: Δflux already brightening-positive).
    MagCorrelation { r: f64 },
    /// The format's documented convention (no usable magnitudes).
    FormatDefault,
    /// Kept from the first ingest of this file (ledger).
    Ledger,
    /// Values derived from magnitudes or total flux are brightening-positive by construction.
    Derived,
}

/// Normalized observations of one file (or of the appended part of one file).
#[derive(Debug, Clone, PartialEq)]
pub struct Observations {
    pub meta: SourceMeta,
    pub time_system: TimeSystem,
    /// +1 or -1: what the file's Δflux was multiplied by.
    pub flux_sign: i8,
    pub sign_source: SignSource,
    /// Baseline total flux on the `mag_zp` scale (NaN when unknown).
    pub baseline_flux: f64,
    pub mag_zp: f64,
    /// HJD - 2450000.
    pub hjd: Vec<f64>,
    /// Difference flux, brightening positive.
    pub flux: Vec<f64>,
    pub flux_err: Vec<f64>,
    pub mag: Vec<f64>,
    pub mag_err: Vec<f64>,
    pub fwhm: Vec<f64>,
    pub sky: Vec<f64>,
    pub airmass: Vec<f64>,
    /// Per-epoch quality flag of the source (DIAPL); NaN where the format has none.
    pub quality: Vec<f64>,
    /// 1-based line in the source file.
    pub line: Vec<u32>,
    /// Lines dropped because an earlier line of the file has the same epoch: (line, line it
    /// repeats, whether the values differ).
    pub repeated: Vec<(u32, u32, bool)>,
}

impl Observations {
    /// Keeps the first line of each epoch (same time): an exact repeat is a duplicate; a repeat
    /// with other values conflicts and is dropped too, noted in `repeated` (and so in the
    /// ledger) rather than stored as a second measurement at the same instant.
    fn without_repeated_epochs(mut self) -> Observations {
        let mut first: std::collections::HashMap<u64, usize> = std::collections::HashMap::with_capacity(self.hjd.len());
        let mut keep = Vec::with_capacity(self.hjd.len());
        let bits = |v: f64| v.to_bits();
        for i in 0..self.hjd.len() {
            match first.entry(bits(self.hjd[i])) {
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(i);
                    keep.push(i);
                }
                std::collections::hash_map::Entry::Occupied(e) => {
                    let j = *e.get();
                    let same = [&self.flux, &self.flux_err, &self.mag, &self.mag_err, &self.fwhm, &self.sky, &self.airmass]
                        .iter()
                        .all(|c| bits(c[i]) == bits(c[j]) || (c[i].is_nan() && c[j].is_nan()));
                    self.repeated.push((self.line[i], self.line[j], !same));
                }
            }
        }
        if keep.len() == self.hjd.len() {
            return self;
        }
        let pick = |v: &[f64]| keep.iter().map(|&i| v[i]).collect::<Vec<f64>>();
        Observations {
            hjd: pick(&self.hjd),
            flux: pick(&self.flux),
            flux_err: pick(&self.flux_err),
            mag: pick(&self.mag),
            mag_err: pick(&self.mag_err),
            fwhm: pick(&self.fwhm),
            sky: pick(&self.sky),
            airmass: pick(&self.airmass),
            quality: pick(&self.quality),
            line: keep.iter().map(|&i| self.line[i]).collect(),
            ..self
        }
    }

    pub fn len(&self) -> usize {
        self.hjd.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hjd.is_empty()
    }
}

/// Pearson correlation over the pairs where both are finite; `None` with fewer than 3 pairs or
/// no variance.
pub fn pearson(x: &[f64], y: &[f64]) -> Option<f64> {
    let (mut n, mut sx, mut sy) = (0.0, 0.0, 0.0);
    for (&a, &b) in x.iter().zip(y) {
        if a.is_finite() && b.is_finite() {
            n += 1.0;
            sx += a;
            sy += b;
        }
    }
    if n < 3.0 {
        return None;
    }
    let (mx, my) = (sx / n, sy / n);
    let (mut sxx, mut syy, mut sxy) = (0.0, 0.0, 0.0);
    for (&a, &b) in x.iter().zip(y) {
        if a.is_finite() && b.is_finite() {
            sxx += (a - mx) * (a - mx);
            syy += (b - my) * (b - my);
            sxy += (a - mx) * (b - my);
        }
    }
    (sxx > 0.0 && syy > 0.0).then(|| sxy / (sxx * syy).sqrt())
}

/// The factor that makes `dflux` brightening-positive: brighter means smaller mag, so a Δflux
/// that rises with mag (r > 0) has brightening negative and is flipped.
pub fn detect_sign(dflux: &[f64], mag: Option<&[f64]>, default_sign: i8) -> (i8, SignSource) {
    if let Some(r) = mag.and_then(|m| pearson(dflux, m)) {
        if r.abs() >= SIGN_MIN_ABS_CORR {
            return (if r > 0.0 { -1 } else { 1 }, SignSource::MagCorrelation { r });
        }
    }
    (default_sign, SignSource::FormatDefault)
}

/// Fits `10^(-0.4 mag) = 10^(-0.4 zp) (baseline + flux)` by least squares over rows with both
/// values; returns `(baseline, zp)`. This is how pySIS computes its magnitudes, so the fit is
/// nearly exact on real files.
pub fn fit_baseline(flux: &[f64], mag: &[f64]) -> Option<(f64, f64)> {
    let pairs: Vec<(f64, f64)> = flux
        .iter()
        .zip(mag)
        .filter(|(f, m)| f.is_finite() && m.is_finite())
        .map(|(&f, &m)| (f, 10f64.powf(-0.4 * m)))
        .collect();
    if pairs.len() < 3 {
        return None;
    }
    let n = pairs.len() as f64;
    let mx = pairs.iter().map(|p| p.0).sum::<f64>() / n;
    let my = pairs.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = pairs.iter().map(|p| (p.0 - mx) * (p.0 - mx)).sum();
    let sxy: f64 = pairs.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    if sxx <= 0.0 {
        return None;
    }
    let b = sxy / sxx;
    let a = my - b * mx;
    (b > 0.0).then(|| (a / b, -2.5 * b.log10()))
}

fn median(v: &[f64]) -> f64 {
    let mut f: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if f.is_empty() {
        return f64::NAN;
    }
    f.sort_by(f64::total_cmp);
    let k = f.len() / 2;
    if f.len() % 2 == 1 {
        f[k]
    } else {
        0.5 * (f[k - 1] + f[k])
    }
}

/// Turns a scan into observations. `prior` is the ledger row of an earlier ingest of the same
/// file: its sign, time system and baseline are kept so that appended epochs match the old ones.
/// `time_system` forces a system (column mappings); otherwise it is detected from the values.
pub fn normalize(
    scan: &Scan,
    kind: ValueKind,
    meta: SourceMeta,
    prior: Option<&LedgerEntry>,
    time_system: Option<TimeSystem>,
    forced_sign: Option<i8>,
    file: &str,
) -> Result<Observations, ParseError> {
    // A prior row decided nothing until it held data (a header-only or quarantined first look).
    let prior = prior.filter(|p| p.rows > 0);
    let t = &scan.table;
    let time = t.col(Quantity::Time).unwrap_or(&[]);
    let ts = match (time_system, prior.and_then(|p| p.time_system.parse::<TimeSystem>().ok())) {
        (Some(ts), _) | (None, Some(ts)) => ts,
        // Nothing to detect from (a header-only file that is still growing): any system gives the
        // same empty result, and the caller records the system as undetermined.
        (None, None) if time.is_empty() => TimeSystem::Hjd2450000,
        (None, None) => TimeSystem::detect(time)
            .map_err(|reason| ParseError::TimeSystem { file: file.to_string(), reason })?,
    };
    // A grown file must stay in its system: a value from another range means a changed format.
    if let Some(v) = time.iter().find(|v| TimeSystem::of_value(**v).is_some_and(|s| s != ts && ts != TimeSystem::Mjd)) {
        return Err(ParseError::TimeSystem {
            file: file.to_string(),
            reason: format!("time {v} is not {ts}"),
        });
    }
    let off = ts.offset_to_stored();
    let hjd: Vec<f64> = time.iter().map(|v| v + off).collect();
    let mag = t.col_or_nan(Quantity::Mag);
    let mag_err = t.col_or_nan(Quantity::MagErr);
    let prior_baseline = prior.and_then(|p| p.baseline_flux);
    let prior_zp = prior.and_then(|p| p.mag_zp);

    let (flux, flux_err, flux_sign, sign_source, baseline, zp) = match kind {
        ValueKind::DeltaFlux { default_sign } => {
            let raw = t.col_or_nan(Quantity::Flux);
            let (sign, source) = match prior {
                Some(p) if p.flux_sign == 1 || p.flux_sign == -1 => (p.flux_sign, SignSource::Ledger),
                _ => detect_sign(&raw, t.col(Quantity::Mag), default_sign),
            };
            // A caller-forced sign only replaces a default, never a measured correlation.
            let (sign, source) = match (source, forced_sign) {
                (SignSource::FormatDefault, Some(f)) if f == 1 || f == -1 => (f, SignSource::FormatDefault),
                other => (sign, other.0),
            };
            let s = f64::from(sign);
            let flux: Vec<f64> = raw.iter().map(|v| v * s).collect();
            let (baseline, zp) = match (prior_baseline, prior_zp) {
                (Some(b), Some(z)) => (b, z),
                _ => fit_baseline(&flux, &mag).unwrap_or((f64::NAN, f64::NAN)),
            };
            (flux, t.col_or_nan(Quantity::FluxErr), sign, source, baseline, zp)
        }
        ValueKind::Mag | ValueKind::Flux => {
            let (total, total_err) = if kind == ValueKind::Mag {
                let total: Vec<f64> = mag.iter().map(|m| 10f64.powf(-0.4 * (m - MAG_ZP))).collect();
                // σ_F = 0.4 ln10 F σ_m, unless the file gave flux errors itself.
                let err: Vec<f64> = match t.col(Quantity::FluxErr) {
                    Some(e) => e.to_vec(),
                    None => total
                        .iter()
                        .zip(&mag_err)
                        .map(|(f, e)| 0.4 * std::f64::consts::LN_10 * f * e)
                        .collect(),
                };
                (total, err)
            } else {
                (t.col_or_nan(Quantity::Flux), t.col_or_nan(Quantity::FluxErr))
            };
            // The median of a season is the baseline for the sparse events we look for; it is
            // fixed at the first ingest so that appended epochs share it.
            let baseline = prior_baseline.unwrap_or_else(|| median(&total));
            let flux: Vec<f64> = total.iter().map(|f| f - baseline).collect();
            (flux, total_err, 1, SignSource::Derived, baseline, MAG_ZP)
        }
    };
    // Difference flux is on the zp-28 scale, so an absolute bound holds; fluxes derived from
    // magnitudes or total fluxes may be on any instrumental scale (MACHO's magnitudes are near
    // -8), so only their finiteness is checked.
    let bound = if matches!(kind, ValueKind::DeltaFlux { .. }) { MAX_ABS_FLUX } else { f64::MAX };
    check_plausible(&hjd, &flux, &flux_err, &t.line, file, bound)?;
    let obs = Observations {
        meta,
        time_system: ts,
        flux_sign,
        sign_source,
        baseline_flux: baseline,
        mag_zp: zp,
        hjd,
        flux,
        flux_err,
        mag,
        mag_err,
        fwhm: t.col_or_nan(Quantity::Fwhm),
        sky: t.col_or_nan(Quantity::Sky),
        airmass: t.col_or_nan(Quantity::Airmass),
        quality: t.col_or_nan(Quantity::Quality),
        line: t.line.clone(),
        repeated: Vec::new(),
    };
    Ok(obs.without_repeated_epochs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_follows_the_magnitudes() {
        // Brightening negative (pySIS): Δflux falls as the star brightens (mag falls).
        let dflux = [-1000.0, 0.0, 200.0, -50.0];
        let mag = [18.9, 20.0, 20.2, 19.97];
        assert_eq!(detect_sign(&dflux, Some(&mag), 1).0, -1);
        let flipped: Vec<f64> = dflux.iter().map(|v| -v).collect();
        assert_eq!(detect_sign(&flipped, Some(&mag), -1).0, 1);
        assert_eq!(detect_sign(&dflux, None, -1), (-1, SignSource::FormatDefault));
        let nan = [f64::NAN; 4];
        assert_eq!(detect_sign(&dflux, Some(&nan), 1), (1, SignSource::FormatDefault));
    }

    #[test]
    fn baseline_fit_recovers_zero_point() {
        let base = 1583.0;
        let flux = [-400.0, 0.0, 100.0, 2000.0, 50_000.0];
        let mag: Vec<f64> = flux.iter().map(|f: &f64| 28.0 - 2.5 * (base + f).log10()).collect();
        let (b, zp) = fit_baseline(&flux, &mag).unwrap();
        assert!((b - base).abs() < 1e-6 * base, "{b}");
        assert!((zp - 28.0).abs() < 1e-9, "{zp}");
    }
}
