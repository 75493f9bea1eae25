//! KMTNet DIAPL light curves (`KMTC14_I.diapl`): time, Δflux, error, quality; `#` lines are
//! comments. Site, field and band come from the file name and the star from the folder, as for
//! pySIS. The files carry no magnitudes, so the Δflux sign cannot be measured: DIAPL's convention
//! (brightening positive) is assumed and can be forced with `SourceOverrides::flux_sign`.

use crate::ingest::error::ParseError;
use crate::ingest::ledger::LedgerEntry;
use crate::ingest::normalize::{normalize, Observations, SourceOverrides, ValueKind};
use crate::ingest::pysis::kmtnet_meta;
use crate::ingest::text::{scan, Layout, Quantity, Scan};

pub const DIAPL_DEFAULT_SIGN: i8 = 1;

pub fn layout() -> Layout {
    use Quantity::*;
    Layout::whitespace(vec![Time, Flux, FluxErr, Quality])
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
    let meta = kmtnet_meta(path, overrides)?;
    let s = scan(text, start, first_line, &layout(), file, accept_tail)?;
    let obs = normalize(&s, ValueKind::DeltaFlux { default_sign: DIAPL_DEFAULT_SIGN }, meta, prior, crate::ingest::time::declared_time_system(text), overrides.flux_sign, file)?;
    Ok((s, obs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_four_columns_and_keeps_quality() {
        let text = b"# hjd dflux err q\n2458171.2 120.5 30.0 0\n2458171.3 -20.0 31.0 1\n";
        let (_, obs) = parse(text, 0, 1, "KB180003/KMTS12_I.diapl", &SourceOverrides::default(), None, false).unwrap();
        assert_eq!(obs.time_system.name(), "hjd");
        assert!((obs.hjd[0] - 8171.2).abs() < 1e-6);
        assert_eq!(obs.flux, vec![120.5, -20.0]);
        assert_eq!(obs.quality, vec![0.0, 1.0]);
        let forced = SourceOverrides { flux_sign: Some(-1), ..Default::default() };
        let (_, obs) = parse(text, 0, 1, "KB180003/KMTS12_I.diapl", &forced, None, false).unwrap();
        assert_eq!(obs.flux, vec![-120.5, 20.0]);
        let e = parse(b"2458171.2 1 2\n", 0, 1, "KB180003/KMTS12_I.diapl", &SourceOverrides::default(), None, false).unwrap_err();
        assert_eq!(e.to_string(), "cannot parse line 1 of KMTS12_I.diapl: expected 4 columns, found 3");
    }
}
