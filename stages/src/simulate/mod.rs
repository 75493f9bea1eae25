//! KMTNet-like season simulator with ground truth (issue 3).
