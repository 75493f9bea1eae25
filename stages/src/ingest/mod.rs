//! Ingest stage: survey photometry files into partitioned Parquet on an object store (issue 4).
