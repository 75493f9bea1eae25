//! The tensors dataset as Parquet: one row per candidate with fixed-size list columns
//! (`seq`: FixedSizeList<f32, 3·128·7>, `diag`: FixedSizeList<f32, the model's diagnosis width>), written with arrow-rs
//! so that the file is read by pyarrow (training) and by the pipeline alike.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, FixedSizeListArray, Float32Array, RecordBatch, StringArray, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

use super::stats::{PreprocessStats, METADATA_KEY};
use super::{PreprocessError, Prepared, N_SEQ_SITES, SEQ_VALUES};

fn fixed_list(values: &[f32], size: usize) -> Result<FixedSizeListArray, PreprocessError> {
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    Ok(FixedSizeListArray::try_new(item, size as i32, Arc::new(Float32Array::from(values.to_vec())), None)?)
}

/// The record batch of a prepared batch, with `extra` columns (same length) appended.
pub fn tensor_batch(p: &Prepared, extra: Vec<(String, ArrayRef)>) -> Result<RecordBatch, PreprocessError> {
    let labels: StringArray = p.labels.iter().map(|l| l.map(|l| l.name())).collect();
    let mut cols: Vec<(String, ArrayRef, bool)> = vec![
        ("candidate_id".into(), Arc::new(StringArray::from(p.ids.clone())), false),
        ("star".into(), Arc::new(StringArray::from(p.stars.clone())), false),
        ("label".into(), Arc::new(labels), true),
        ("seq".into(), Arc::new(fixed_list(&p.seq, SEQ_VALUES)?), false),
        ("diag".into(), Arc::new(fixed_list(&p.diag, p.n_diag)?), false),
    ];
    for (s, code) in ["kmta", "kmtc", "kmts"].iter().enumerate().take(N_SEQ_SITES) {
        let a: UInt32Array = p.n_points.iter().map(|n| n[s]).collect();
        cols.push((format!("n_points_{code}"), Arc::new(a), false));
    }
    cols.push(("n_outliers".into(), Arc::new(UInt32Array::from(p.n_outliers.clone())), false));
    for (name, a) in extra {
        let nullable = a.null_count() > 0;
        cols.push((name, a, nullable));
    }
    let schema = Schema::new(
        cols.iter().map(|(n, a, nullable)| Field::new(n.clone(), a.data_type().clone(), *nullable)).collect::<Vec<_>>(),
    );
    Ok(RecordBatch::try_new(Arc::new(schema), cols.into_iter().map(|c| c.1).collect())?)
}

/// Writes prepared batches, in chunks, into one Parquet file (zstd) whose key-value metadata
/// holds the preprocess statistics used.
pub struct TensorWriter {
    path: PathBuf,
    stats_json: String,
    writer: Option<ArrowWriter<File>>,
}

impl TensorWriter {
    pub fn new(path: &Path, stats: &PreprocessStats) -> TensorWriter {
        TensorWriter { path: path.to_path_buf(), stats_json: stats.to_json(), writer: None }
    }

    /// Append a batch; every batch must carry the same `extra` columns.
    pub fn write(&mut self, p: &Prepared, extra: Vec<(String, ArrayRef)>) -> Result<(), PreprocessError> {
        let batch = tensor_batch(p, extra)?;
        if self.writer.is_none() {
            let file = File::create(&self.path).map_err(|e| io(&self.path, e))?;
            let props = WriterProperties::builder()
                .set_compression(Compression::ZSTD(ZstdLevel::default()))
                .set_key_value_metadata(Some(vec![KeyValue::new(METADATA_KEY.to_string(), self.stats_json.clone())]))
                .build();
            self.writer = Some(ArrowWriter::try_new(file, batch.schema(), Some(props))?);
        }
        if let Some(w) = self.writer.as_mut() {
            w.write(&batch)?;
        }
        Ok(())
    }

    /// Finish the file; returns whether anything was written.
    pub fn close(self) -> Result<bool, PreprocessError> {
        match self.writer {
            Some(w) => {
                w.close()?;
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

/// Write one prepared batch to `path`.
pub fn write_tensors(path: &Path, p: &Prepared, stats: &PreprocessStats) -> Result<(), PreprocessError> {
    let mut w = TensorWriter::new(path, stats);
    w.write(p, Vec::new())?;
    w.close()?;
    Ok(())
}

pub(crate) fn io(path: &Path, e: std::io::Error) -> PreprocessError {
    PreprocessError::Io { path: path.display().to_string(), source: e }
}
