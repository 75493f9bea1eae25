//! Observing schedule of one season: nights per site (sun and bulge altitude), weather, field
//! cadences, V-band epochs and per-epoch seeing, sky and airmass, shared by every star of a field.
//!
//! Everything here depends only on (seed, season, site, field), never on a star, so one
//! [`FieldSchedule`] serves all stars of a field: that is what makes 100,000-star seasons cheap
//! and what real data look like (all stars of a frame share its seeing, sky and airmass).

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use super::astro;
use super::rng_for;
use crate::photometry::{Band, Field, Site};

/// Sun altitude below which a site observes (degrees); KMTNet starts and stops near nautical
/// twilight.
pub const SUN_ALT_MAX_DEG: f64 = -12.0;
/// Largest bulge airmass observed (real files: secz 95th percentile 1.84-1.88, maximum ~2).
pub const AIRMASS_MAX: f64 = 2.0;
/// Shortest nightly window worth slewing to the bulge (hours): with it the season opens
/// around 20 February and closes in late October, as in the real 2018 files (HJD 8168-8412).
pub const MIN_WINDOW_H: f64 = 1.5;

/// Field cadence per site in epochs per hour (KMTNet 2016+ strategy, after Kim et al. 2018,
/// AJ 155, 76, approximated):
///
/// | fields | per hour | note |
/// | --- | --- | --- |
/// | BLG01, BLG02, BLG03, BLG41, BLG42, BLG43 | 4.0 | prime: 2/hr per field, folded over the overlapping pair |
/// | BLG04, BLG14, BLG15, BLG16, BLG17, BLG18, BLG19, BLG22 | 1.0 | sub-prime (real BLG14 2018: 0.84-1.04/hr) |
/// | BLG05 ... BLG13, BLG31, BLG32, BLG33, BLG34 | 0.4 | |
/// | all others (BLG20, BLG21, BLG23 ... BLG30, BLG35 ... BLG40) | 0.2 | wide, low cadence |
///
/// Sites then scale this by [`site_cadence_factor`].
pub fn cadence_per_hour(field: Field) -> f64 {
    match field.0 {
        1..=3 | 41..=43 => 4.0,
        4 | 14..=19 | 22 => 1.0,
        5..=13 | 31..=34 => 0.4,
        _ => 0.2,
    }
}

/// Cadence relative to KMTC: the real BLG14 2018 season gives 1.04/hr at KMTC, 0.84/hr at KMTA
/// and KMTS (median per night).
pub fn site_cadence_factor(site: Site) -> f64 {
    match site {
        Site::Kmtc => 1.0,
        Site::Kmta | Site::Kmts => 0.82,
    }
}

/// Per-site climate: hourly two-state (clear/cloudy) Markov weather, seeing and sky.
#[derive(Debug, Clone, Copy)]
pub struct SiteClimate {
    /// Long-run fraction of clear hours.
    pub clear_fraction: f64,
    /// Mean length of a cloudy spell in hours (run lengths are geometric, so multi-day spells
    /// occur).
    pub cloudy_hours: f64,
    /// Median seeing FWHM at zenith in pixels (real medians: KMTA 5.8, KMTC 3.9, KMTS 4.5, at
    /// median airmass 1.15).
    pub seeing_px: f64,
    /// Night-to-night log scatter of seeing.
    pub seeing_log_sd: f64,
    /// Dark sky at zenith, I band, counts.
    pub dark_sky: f64,
    /// Probability that a frame is bad (cloud edge, tracking): outlier flux, inflated error.
    pub bad_frame: f64,
    /// Probability that the seeing measurement fails (written as fwhm -1.00).
    pub fwhm_fail: f64,
    /// Whether the site takes V-band epochs (the real season has V files for KMTC and KMTS).
    pub takes_v: bool,
}

/// Climate of a site, calibrated against the 2018 BLG14 season (see `report`).
pub fn climate(site: Site) -> SiteClimate {
    match site {
        Site::Kmtc => SiteClimate {
            clear_fraction: 0.80,
            cloudy_hours: 14.0,
            seeing_px: 3.7,
            seeing_log_sd: 0.22,
            dark_sky: 560.0,
            bad_frame: 0.025,
            fwhm_fail: 0.015,
            takes_v: true,
        },
        Site::Kmts => SiteClimate {
            clear_fraction: 0.66,
            cloudy_hours: 22.0,
            seeing_px: 4.3,
            seeing_log_sd: 0.24,
            dark_sky: 620.0,
            bad_frame: 0.03,
            fwhm_fail: 0.02,
            takes_v: true,
        },
        Site::Kmta => SiteClimate {
            clear_fraction: 0.70,
            cloudy_hours: 20.0,
            seeing_px: 5.5,
            seeing_log_sd: 0.22,
            dark_sky: 560.0,
            bad_frame: 0.035,
            fwhm_fail: 0.035,
            takes_v: false,
        },
    }
}

/// One observable interval of one night at one site (sun low, bulge high), with the night's
/// atmosphere.
#[derive(Debug, Clone)]
pub struct Night {
    pub start: f64,
    pub end: f64,
    /// Zenith seeing of the night (pixels).
    pub seeing: f64,
    /// Slow within-night seeing wiggles: (log amplitude, cycles per day, phase).
    pub wiggles: [(f64, f64, f64); 2],
}

impl Night {
    /// Zenith seeing at time `t` (pixels).
    pub fn seeing_at(&self, t: f64) -> f64 {
        let w: f64 = self
            .wiggles
            .iter()
            .map(|&(a, f, p)| a * (std::f64::consts::TAU * f * (t - self.start) + p).sin())
            .sum();
        self.seeing * w.exp()
    }
}

/// Hourly weather of a site through the year: `clear[h]` for hour `h` since `origin`.
#[derive(Debug, Clone)]
pub struct Weather {
    pub origin: f64,
    pub clear: Vec<bool>,
}

impl Weather {
    pub fn is_clear(&self, t: f64) -> bool {
        let h = ((t - self.origin) * 24.0).floor();
        if h < 0.0 {
            return true;
        }
        self.clear.get(h as usize).copied().unwrap_or(true)
    }
}

/// Nights and weather of one site for a season: the field-independent part of the schedule.
#[derive(Debug, Clone)]
pub struct SiteSeason {
    pub site: Site,
    pub nights: Vec<Night>,
    pub weather: Weather,
}

/// Observable nights of `site` during calendar `year`: sun below [`SUN_ALT_MAX_DEG`] and bulge
/// airmass below [`AIRMASS_MAX`], sampled every 5 minutes from local noon to local noon.
pub fn site_season(seed: u64, year: i32, site: Site) -> SiteSeason {
    let mut rng = rng_for(seed, &[0x5_17E, year as u64, site.index() as u64]);
    let c = climate(site);
    let (lon, lat) = (site.longitude_deg(), site.latitude_deg());
    let y0 = astro::year_start(year);
    let days = (astro::year_start(year + 1) - y0).round() as usize;
    let step = 5.0 / 1440.0;
    let noon = 0.5 - lon / 360.0;
    let mut nights = Vec::new();
    for d in 0..days {
        let base = y0 + d as f64 + noon.rem_euclid(1.0);
        let mut start: Option<f64> = None;
        let mut last = f64::NAN;
        for k in 0..288 {
            let t = base + k as f64 * step;
            let (sra, sdec) = astro::sun_radec(t);
            let ok = astro::altitude_deg(t, sra, sdec, lon, lat) < SUN_ALT_MAX_DEG
                && astro::airmass(astro::altitude_deg(
                    t,
                    astro::BULGE_RA_DEG,
                    astro::BULGE_DEC_DEG,
                    lon,
                    lat,
                )) < AIRMASS_MAX;
            match (ok, start) {
                (true, None) => start = Some(t),
                (false, Some(s)) => {
                    nights.push((s, last));
                    start = None;
                }
                _ => {}
            }
            if ok {
                last = t;
            }
        }
        if let Some(s) = start {
            nights.push((s, last));
        }
    }
    let nights = nights
        .into_iter()
        .filter(|(s, e)| e - s >= MIN_WINDOW_H / 24.0)
        .map(|(start, end)| {
            let g: f64 = StandardNormal.sample(&mut rng);
            let mut wiggle = || {
                (
                    0.12 * rng.random::<f64>(),
                    uni(&mut rng, 1.0, 6.0),
                    uni(&mut rng, 0.0, std::f64::consts::TAU),
                )
            };
            let wiggles = [wiggle(), wiggle()];
            Night { start, end, seeing: c.seeing_px * (c.seeing_log_sd * g).exp(), wiggles }
        })
        .collect();
    let hours = days * 24 + 48;
    let p_clear_to_cloudy = (1.0 - c.clear_fraction) / (c.clear_fraction * c.cloudy_hours);
    let p_cloudy_to_clear = 1.0 / c.cloudy_hours;
    let mut clear = Vec::with_capacity(hours);
    let mut state = rng.random::<f64>() < c.clear_fraction;
    for _ in 0..hours {
        clear.push(state);
        let u = rng.random::<f64>();
        state = if state { u >= p_clear_to_cloudy } else { u < p_cloudy_to_clear };
    }
    SiteSeason { site, nights, weather: Weather { origin: y0, clear } }
}

/// Observing conditions of one frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Epoch {
    pub hjd: f64,
    pub airmass: f64,
    /// Seeing FWHM in pixels (always finite: noise depends on it).
    pub fwhm: f64,
    /// Whether the pipeline reported the FWHM (false: written as -1.00, NaN in memory).
    pub fwhm_ok: bool,
    /// Sky background in counts.
    pub sky: f64,
    /// A bad frame: photometry of every star on it is an outlier with an inflated error.
    pub bad: bool,
    /// Index of the night within the site's season.
    pub night: u32,
}

/// All frames of one field at one site in one band, sorted by time.
#[derive(Debug, Clone)]
pub struct SiteSchedule {
    pub site: Site,
    pub band: Band,
    pub epochs: Vec<Epoch>,
}

/// Every frame of a field in a season, in (site, band) order.
#[derive(Debug, Clone)]
pub struct FieldSchedule {
    pub field: Field,
    pub sites: Vec<SiteSchedule>,
}

pub(crate) fn uni(rng: &mut ChaCha8Rng, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.random::<f64>()
}

/// Sky background (counts, I band) at time `t` for `site` at bulge airmass `x`: dark sky
/// brightening with airmass, twilight near the sun-altitude limit, and scattered moonlight
/// growing with lunar phase, lunar altitude and proximity to the bulge.
pub fn sky_counts(t: f64, site: Site, x: f64) -> f64 {
    let (lon, lat) = (site.longitude_deg(), site.latitude_deg());
    let c = climate(site);
    let (sra, sdec) = astro::sun_radec(t);
    let sun_alt = astro::altitude_deg(t, sra, sdec, lon, lat);
    let twilight = ((sun_alt + 18.0) / 1.6).exp().min(60.0) * 0.04;
    let moon = astro::moon_radec(t);
    let moon_alt = astro::altitude_deg(t, moon.0, moon.1, lon, lat);
    let moon_sky = if moon_alt > 0.0 {
        let k = astro::moon_illumination(t);
        let sep = astro::separation_deg(moon, (astro::BULGE_RA_DEG, astro::BULGE_DEC_DEG));
        4000.0 * k * k * k * (moon_alt.to_radians().sin()).sqrt() * (40.0 / (sep + 10.0)) * x.sqrt()
    } else {
        0.0
    };
    c.dark_sky * x.powf(0.8) * (1.0 + twilight) + moon_sky
}

/// The frames of `field` at one site: cadence from [`cadence_per_hour`], clear hours only, a
/// 2 % technical loss, and V epochs (about one per 12 I epochs, at most one a night, near
/// the night's lowest airmass) where the site takes them.
pub fn field_site_schedule(
    seed: u64,
    year: i32,
    field: Field,
    ss: &SiteSeason,
) -> [SiteSchedule; 2] {
    let site = ss.site;
    let c = climate(site);
    let mut rng = rng_for(seed, &[0xCAD, year as u64, site.index() as u64, field.0 as u64]);
    let rate = cadence_per_hour(field) * site_cadence_factor(site) * 24.0;
    let dt = 1.0 / rate;
    let (lon, lat) = (site.longitude_deg(), site.latitude_deg());
    let mut ep_i = Vec::new();
    let mut ep_v = Vec::new();
    for (ni, night) in ss.nights.iter().enumerate() {
        let mut t = night.start + dt * rng.random::<f64>();
        let first = ep_i.len();
        while t <= night.end {
            let jitter: f64 = StandardNormal.sample(&mut rng);
            let keep = ss.weather.is_clear(t) && rng.random::<f64>() > 0.02;
            if keep {
                ep_i.push(make_epoch(&mut rng, t, ni as u32, night, site, lon, lat, &c, 1.0));
            }
            t += dt * (1.0 + 0.08 * jitter).max(0.5);
        }
        let n_night = ep_i.len() - first;
        if c.takes_v && n_night > 0 && rng.random::<f64>() < (n_night as f64 / 12.0).min(1.0) {
            let best = ep_i[first..]
                .iter()
                .min_by(|a, b| a.airmass.total_cmp(&b.airmass))
                .map(|e| e.hjd);
            if let Some(tb) = best {
                let tv = (tb + 2.0 / 1440.0).min(night.end);
                let mut e = make_epoch(&mut rng, tv, ni as u32, night, site, lon, lat, &c, 0.3);
                e.fwhm *= 1.08;
                ep_v.push(e);
            }
        }
    }
    [
        SiteSchedule { site, band: Band::I, epochs: ep_i },
        SiteSchedule { site, band: Band::V, epochs: ep_v },
    ]
}

#[allow(clippy::too_many_arguments)]
fn make_epoch(
    rng: &mut ChaCha8Rng,
    t: f64,
    night: u32,
    n: &Night,
    site: Site,
    lon: f64,
    lat: f64,
    c: &SiteClimate,
    sky_scale: f64,
) -> Epoch {
    let alt = astro::altitude_deg(t, astro::BULGE_RA_DEG, astro::BULGE_DEC_DEG, lon, lat);
    let x = astro::airmass(alt).min(3.0);
    let g: f64 = StandardNormal.sample(rng);
    let fwhm = (n.seeing_at(t) * x.powf(0.6) * (0.05 * g).exp()).clamp(1.8, 15.0);
    let mut sky = sky_counts(t, site, x) * sky_scale * (0.06 * rng.sample::<f64, _>(StandardNormal)).exp();
    let bad = rng.random::<f64>() < c.bad_frame;
    let mut fwhm_ok = rng.random::<f64>() >= c.fwhm_fail;
    if bad {
        // Bad frames are mostly thin cloud or dome/tracking trouble: bright sky, lost seeing.
        if rng.random::<f64>() < 0.5 {
            sky *= uni(rng, 2.0, 15.0);
        }
        if rng.random::<f64>() < 0.5 {
            fwhm_ok = false;
        }
    }
    Epoch { hjd: t, airmass: x, fwhm, fwhm_ok, sky, bad, night }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cadence_table_prime_vs_subprime() {
        assert_eq!(cadence_per_hour(Field(2)), 4.0);
        assert_eq!(cadence_per_hour(Field(42)), 4.0);
        assert_eq!(cadence_per_hour(Field(14)), 1.0);
        assert_eq!(cadence_per_hour(Field(9)), 0.4);
        assert_eq!(cadence_per_hour(Field(38)), 0.2);
    }

    #[test]
    fn nights_span_late_february_to_late_october() {
        let y0 = astro::year_start(2025);
        for site in Site::ALL {
            let ss = site_season(7, 2025, site);
            let first = ss.nights.first().map(|n| n.start - y0).unwrap_or(f64::NAN);
            let last = ss.nights.last().map(|n| n.end - y0).unwrap_or(f64::NAN);
            // Day of year: Feb 10 = 40, Mar 10 = 68; Oct 15 = 287, Nov 10 = 313.
                        assert!((40.0..70.0).contains(&first), "{site} first night at day {first}");
            assert!((280.0..315.0).contains(&last), "{site} last night at day {last}");
            // One observable window per night: starts about one day apart mid-season.
            let mid: Vec<&Night> =
                ss.nights.iter().filter(|n| (150.0..200.0).contains(&(n.start - y0))).collect();
            assert!(mid.len() >= 49 && mid.len() <= 51, "{site}: {} nights", mid.len());
            let longest = mid.iter().map(|n| (n.end - n.start) * 24.0).fold(0.0, f64::max);
            assert!(longest > 8.0 && longest < 11.0, "{site}: longest night {longest} h");
        }
    }

    #[test]
    fn weather_has_multi_day_spells_and_kmtc_is_clearest() {
        let mut frac = Vec::new();
        let mut spells = Vec::new();
        for site in Site::ALL {
            let ss = site_season(11, 2025, site);
            let w = &ss.weather.clear;
            frac.push(w.iter().filter(|&&c| c).count() as f64 / w.len() as f64);
            let mut longest = 0;
            let mut run = 0;
            for &c in w {
                run = if c { 0 } else { run + 1 };
                longest = longest.max(run);
            }
            assert!(longest >= 30, "{site}: longest cloudy spell {longest} h");
            spells.push(longest);
        }
        assert!(spells.iter().any(|&h| h >= 60), "no multi-day spell: {spells:?}");
        assert!(frac[Site::Kmtc.index()] > frac[Site::Kmta.index()]);
        assert!(frac[Site::Kmtc.index()] > frac[Site::Kmts.index()]);
    }
}
