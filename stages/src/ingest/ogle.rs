//! OGLE EWS `phot.dat`: HJD (full), I magnitude, error, seeing, sky; no header. Magnitudes become
//! flux on the zero-point-28 scale and Δflux against the file's median (see `normalize`). The
//! OGLE field cannot be mapped to a KMTNet field from the file, so `field` must be given; the star
//! defaults to the folder (`OGLE-2019-BLG-0001/phot.dat`), the site to `OGLE`, the band to I.

use crate::ingest::error::ParseError;
use crate::ingest::ledger::LedgerEntry;
use crate::ingest::normalize::{normalize, Observations, SourceMeta, SourceOverrides, ValueKind};
use crate::ingest::pysis::{parent_folder, stem};
use crate::ingest::text::{scan, Layout, Quantity, Scan};
use crate::photometry::{Band, StarId};

pub fn layout() -> Layout {
    use Quantity::*;
    Layout::whitespace(vec![Time, Mag, MagErr, Fwhm, Sky])
}

pub fn parse(
    text: &[u8],
    start: usize,
    first_line: u64,
    path: &str,
    overrides: &SourceOverrides,
    prior: Option<&LedgerEntry>,
    accept_tail: bool,
) -> Result<(Scan, Observations), ParseError> {
    let file = path.rsplit('/').next().unwrap_or(path);
    let field = overrides.field.ok_or_else(|| ParseError::Metadata {
        file: file.to_string(),
        what: "field",
        reason: "OGLE files do not name a KMTNet field; give one".into(),
    })?;
    let star = overrides
        .star
        .clone()
        .or_else(|| parent_folder(path).map(|p| StarId(p.to_string())))
        .unwrap_or_else(|| StarId(stem(path).to_string()));
    let meta = SourceMeta {
        star,
        field,
        site: overrides.site.clone().unwrap_or_else(|| "OGLE".to_string()),
        band: overrides.band.unwrap_or(Band::I),
    };
    let s = scan(text, start, first_line, &layout(), file, accept_tail)?;
    let obs = normalize(&s, ValueKind::Mag, meta, prior, crate::ingest::time::declared_time_system(text), None, file)?;
    Ok((s, obs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::photometry::Field;

    #[test]
    fn phot_dat_to_flux() {
        let text = b"2458500.12345 18.500 0.020 1.10 900.0\n2458501.12345 17.500 0.010 1.20 910.0\n2458502.12345 18.500 0.020 -1 910.0\n";
        let o = SourceOverrides { field: Some(Field(1)), ..Default::default() };
        let (_, obs) = parse(text, 0, 1, "OGLE-2019-BLG-0001/phot.dat", &o, None, false).unwrap();
        assert_eq!(obs.meta.star.0, "OGLE-2019-BLG-0001");
        assert_eq!(obs.meta.site, "OGLE");
        assert_eq!(obs.time_system.name(), "hjd");
        assert!((obs.hjd[0] - 8500.12345).abs() < 1e-6);
        let base = 10f64.powf(-0.4 * (18.5 - 28.0));
        assert!((obs.baseline_flux - base).abs() < 1e-6);
        assert!((obs.flux[1] - (10f64.powf(-0.4 * (17.5 - 28.0)) - base)).abs() < 1e-6);
        assert!(obs.flux_err[1] > 0.0 && obs.fwhm[2].is_nan());
        let e = parse(text, 0, 1, "x/phot.dat", &SourceOverrides::default(), None, false).unwrap_err();
        assert!(e.to_string().starts_with("cannot tell the field of phot.dat"), "{e}");
    }
}
