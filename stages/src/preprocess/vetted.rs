//! Training rows from vetters' labels (`lensnet export-training-set --vetted`): each vetted
//! candidate prepared exactly as the score stage prepared it for the model (the season's
//! photometry up to the candidate's as-of time, the AlertFinder diagnosis stored with the
//! candidate), with the vetters' label, written in the tensors format that `models/train` reads.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int32Array, StringArray, UInt64Array};

use super::parquet::TensorWriter;
use super::{prepare, Candidate, PreprocessError, PreprocessStats};
use crate::alertfinder::{DIAGNOSIS_NAMES, N_DIAGNOSIS};
use crate::photometry::StarCurves;
use crate::simulate::Label;

/// One vetted candidate.
#[derive(Debug, Clone)]
pub struct VettedRow {
    pub candidate_id: String,
    pub star: String,
    pub field: String,
    pub season: i32,
    /// The candidate's as-of time: only points up to it are used, as in production.
    pub now: f64,
    pub diag: [f64; N_DIAGNOSIS],
    pub label: Label,
    /// The vetters' reason(s), e.g. `variable`, or `vetted` when none was given.
    pub reason: String,
    /// Who labelled it (comma-separated).
    pub vetters: String,
}

/// The diagnosis vector from the candidate's stored `diagnosis` (a JSON object by feature name;
/// null or missing values are NaN, as the stage had them).
pub fn diag_from_json(text: &str) -> [f64; N_DIAGNOSIS] {
    let v: serde_json::Value = serde_json::from_str(text).unwrap_or(serde_json::Value::Null);
    let mut out = [f64::NAN; N_DIAGNOSIS];
    for (i, name) in DIAGNOSIS_NAMES.iter().enumerate() {
        if let Some(x) = v.get(*name).and_then(|x| x.as_f64()) {
            out[i] = x;
        }
    }
    out
}

/// Prepares `rows` (each with its star's season photometry) and writes them to `path`; returns
/// the number of rows written.
pub fn write_vetted(path: &Path, rows: &[(VettedRow, &StarCurves)], stats: &PreprocessStats) -> Result<usize, PreprocessError> {
    let mut w = TensorWriter::new(path, stats);
    for chunk in rows.chunks(1000) {
        let cands: Vec<Candidate<'_>> = chunk.iter().map(|(r, s)| Candidate { id: r.candidate_id.clone(), star: s, now: r.now, diag: r.diag, label: Some(r.label) }).collect();
        let p = prepare(&cands, stats)?;
        let s = |f: &dyn Fn(&VettedRow) -> String| -> ArrayRef { Arc::new(chunk.iter().map(|(r, _)| Some(f(r))).collect::<StringArray>()) };
        let nan = || -> ArrayRef { Arc::new(chunk.iter().map(|_| f64::NAN).collect::<Float64Array>()) };
        let extra: Vec<(String, ArrayRef)> = vec![
            ("class".into(), s(&|r| r.reason.clone())),
            ("subtype".into(), s(&|_| "vetted".to_string())),
            ("field".into(), s(&|r| r.field.clone())),
            ("season".into(), Arc::new(chunk.iter().map(|(r, _)| r.season).collect::<Int32Array>())),
            ("sim_seed".into(), Arc::new(chunk.iter().map(|_| 0u64).collect::<UInt64Array>())),
            ("now".into(), Arc::new(chunk.iter().map(|(r, _)| r.now).collect::<Float64Array>())),
            ("t0".into(), nan()),
            ("te".into(), nan()),
            ("u0".into(), nan()),
            ("vetters".into(), s(&|r| r.vetters.clone())),
        ];
        w.write(&p, extra)?;
    }
    w.close()?;
    Ok(rows.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stored_diagnosis_reads_back_by_name() {
        let text = format!("{{\"{}\": 1.0, \"{}\": null, \"unknown\": 3}}", DIAGNOSIS_NAMES[0], DIAGNOSIS_NAMES[1]);
        let d = diag_from_json(&text);
        assert_eq!(d[0], 1.0);
        assert!(d[1].is_nan() && d[2].is_nan());
    }
}
