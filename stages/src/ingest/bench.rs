//! Throughput of the pySIS parser and of the Parquet writer, for `lensnet bench ingest`. Figures
//! are printed, never asserted.

use std::time::Instant;

use crate::ingest::error::{IngestError, ParseError};
use crate::ingest::normalize::SourceOverrides;
use crate::ingest::store::{observations_batch, PartitionKey, PhotometryStore};
use crate::photometry::Field;

/// Bytes and rows moved in `seconds`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Throughput {
    /// Input text bytes (for the writer too, so both figures compare).
    pub bytes: u64,
    pub rows: u64,
    pub seconds: f64,
    /// Parquet bytes written (0 for parsing).
    pub output_bytes: u64,
}

impl Throughput {
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.seconds.max(1e-12)
    }

    pub fn rows_per_s(&self) -> f64 {
        self.rows as f64 / self.seconds.max(1e-12)
    }
}

/// A pySIS text of `rows` epochs shaped like the real files (8 columns, `nan` and -1.00 here and
/// there), deterministic so that runs compare.
pub fn synthetic_pysis(rows: usize) -> Vec<u8> {
    let mut s = String::with_capacity(rows * 72 + 64);
    s.push_str("# HJD  \\Delta_flux flux_err  mag  mag_err  fwhm  sky  secz\n");
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..rows {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let u = (x % 1_000_000) as f64 / 1e6;
        let t = 8168.8 + i as f64 * 0.0104;
        let df = (u - 0.5) * 800.0;
        let mag = 28.0 - 2.5 * (1583.0 - df).log10();
        if i % 97 == 0 {
            s.push_str(&format!("{t:.5} {df:12.4} {:10.4}        nan       nan   -1.00  {:4} 1.{:02}\n", 150.0 + u * 100.0, 700 + (x % 900), x % 99));
        } else {
            s.push_str(&format!(
                "{t:.5} {df:12.4} {:10.4} {mag:10.4} {:9.6} {:7.2} {:5} 1.{:02}\n",
                150.0 + u * 100.0,
                0.1 + u * 0.05,
                3.0 + u * 4.0,
                700 + (x % 900),
                x % 99
            ));
        }
    }
    s.into_bytes()
}

/// Parses `text` as a pySIS file `iterations` times (scan + normalization, as ingest does).
pub fn bench_parse(text: &[u8], iterations: usize) -> Result<Throughput, ParseError> {
    let path = "bench/BENCH0001/KMTC14_I.pysis";
    let o = SourceOverrides::default();
    let start = Instant::now();
    let mut rows = 0u64;
    for _ in 0..iterations.max(1) {
        let (_, obs) = crate::ingest::pysis::parse(text, 0, 1, path, &o, None, true)?;
        rows += obs.len() as u64;
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(Throughput { bytes: text.len() as u64 * iterations.max(1) as u64, rows, seconds, output_bytes: 0 })
}

/// Parses `files` texts in parallel on rayon's pool, `iterations` times, as ingest plans a batch
/// of files (`ingest_location`).
pub fn bench_parse_files(files: &[Vec<u8>], iterations: usize) -> Result<Throughput, ParseError> {
    use rayon::prelude::*;
    let o = SourceOverrides::default();
    let start = Instant::now();
    let mut rows = 0u64;
    for _ in 0..iterations.max(1) {
        let counts: Result<Vec<u64>, ParseError> = files
            .par_iter()
            .enumerate()
            .map(|(i, text)| {
                let path = format!("bench/BENCH{i:04}/KMTC14_I.pysis");
                crate::ingest::pysis::parse(text, 0, 1, &path, &o, None, true).map(|(_, obs)| obs.len() as u64)
            })
            .collect();
        rows += counts?.iter().sum::<u64>();
    }
    let seconds = start.elapsed().as_secs_f64();
    let bytes: u64 = files.iter().map(|f| f.len() as u64).sum::<u64>() * iterations.max(1) as u64;
    Ok(Throughput { bytes, rows, seconds, output_bytes: 0 })
}

/// Parses `text` once, then times building the Arrow batch and writing it as a staged (Snappy) part
/// to `out` (the object store the pipeline is configured with, or `InMemory`).
pub async fn bench_write(out: &PhotometryStore, text: &[u8], iterations: usize) -> Result<Throughput, IngestError> {
    let path = "bench/BENCH0001/KMTC14_I.pysis";
    let (_, obs) = crate::ingest::pysis::parse(text, 0, 1, path, &SourceOverrides::default(), None, true)?;
    let idx: Vec<usize> = (0..obs.len()).collect();
    let key = PartitionKey { season: 1900, field: Field(99), site: "BENCH".into(), bucket: None };
    let start = Instant::now();
    let mut output_bytes = 0;
    for i in 0..iterations.max(1) {
        let batch = observations_batch(&obs, path, &idx)?;
        let info = out.stage_part(&key, &format!("part-bench-{i}.parquet"), &batch).await?;
        output_bytes += info.bytes;
    }
    let seconds = start.elapsed().as_secs_f64();
    let n = iterations.max(1) as u64;
    Ok(Throughput { bytes: text.len() as u64 * n, rows: obs.len() as u64 * n, seconds, output_bytes })
}

/// The same rows as a CSV that polars' reader can split: pySIS separates columns by runs of
/// spaces, which a one-byte separator cannot, so each run becomes one comma (done before timing).
pub fn pysis_as_csv(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for line in text.split(|&b| b == b'\n') {
        if line.first() == Some(&b'#') || line.is_empty() {
            continue;
        }
        let mut first = true;
        for tok in line.split(|b| b.is_ascii_whitespace()).filter(|t| !t.is_empty()) {
            if !first {
                out.push(b',');
            }
            out.extend_from_slice(tok);
            first = false;
        }
        out.push(b'\n');
    }
    out
}

/// polars' own CSV reader (all cores, its type inference) on [`pysis_as_csv`] of `text`,
/// `iterations` times; bytes are counted as the pySIS text's, so MB/s compare with ours.
#[cfg(feature = "preprocess")]
pub fn bench_polars_csv(text: &[u8], iterations: usize) -> Result<Throughput, String> {
    use polars::prelude::{CsvParseOptions, CsvReadOptions, SerReader};
    let csv = pysis_as_csv(text);
    let start = Instant::now();
    let mut rows = 0u64;
    for _ in 0..iterations.max(1) {
        let df = CsvReadOptions::default()
            .with_has_header(false)
            .with_parse_options(CsvParseOptions::default().with_separator(b','))
            .into_reader_with_file_handle(std::io::Cursor::new(csv.as_slice()))
            .finish()
            .map_err(|e| e.to_string())?;
        rows += df.height() as u64;
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(Throughput { bytes: text.len() as u64 * iterations.max(1) as u64, rows, seconds, output_bytes: 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bench_functions_run_and_print() {
        let text = synthetic_pysis(20_000);
        let p = bench_parse(&text, 3).unwrap();
        assert_eq!(p.rows, 60_000);
        let out = PhotometryStore::new(std::sync::Arc::new(object_store::memory::InMemory::new()), Default::default());
        let w = bench_write(&out, &text, 2).await.unwrap();
        assert_eq!(w.rows, 40_000);
        #[cfg(feature = "preprocess")]
        assert_eq!(bench_polars_csv(&text, 2).unwrap().rows, 40_000, "polars reads the same rows");
        println!(
            "parse: {:.1} MB/s, {:.0} rows/s; write: {:.1} MB/s, {:.0} rows/s, parquet {} bytes for {} text bytes",
            p.mb_per_s(),
            p.rows_per_s(),
            w.mb_per_s(),
            w.rows_per_s(),
            w.output_bytes / 2,
            text.len()
        );
    }
}
