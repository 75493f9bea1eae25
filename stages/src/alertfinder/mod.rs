//! AlertFinder stage: rising light curves, broken-line scan, EventFinder grid (issue 5).
