#!/usr/bin/env python3
"""Outburst statistics of the real OGLE bulge dwarf novae in real-dev's training half.

The simulator's dwarf novae (stages/src/simulate/model.rs, Class::Cataclysmic) take their ranges
from these figures (10th-90th percentiles). Only the training half is read (half_of:
sha256("lensnet split " + star)[0] even), never the validation half.

An outburst is a run of points at least 1 mag brighter than the star's median magnitude, with
gaps under 5 days; its amplitude is the brightest point against the median; the rise is from the
last point before the run (when within 3 days) to the brightest; the decline is from the brightest
to the first point after the run (when within 3 days), per magnitude of amplitude; the
recurrence is the time between successive outburst starts (under 400 days).

Usage: python models/train/real_dwarf_novae.py [REAL_DEV]   (default ../shared/data/real-dev)
"""

import csv
import glob
import hashlib
import sys
from pathlib import Path

import numpy as np

root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[3] / "shared" / "data" / "real-dev")
labels = [r for r in csv.DictReader(open(root / "labels.csv")) if r["type"] == "dwarf_nova"]
train = [r for r in labels if hashlib.sha256(b"lensnet split " + r["star"].encode()).digest()[0] & 1 == 0]
amps, rises, declines, recurrences, quiescent = [], [], [], [], []
for r in train:
    files = glob.glob(str(root / "inbox" / r["star"] / "*.dat"))
    if not files:
        continue
    a = np.loadtxt(files[0], usecols=(0, 1), ndmin=2)
    order = np.argsort(a[:, 0])
    t, m = a[order, 0], a[order, 1]
    q = np.median(m)
    quiescent.append(q)
    idx = np.nonzero(m < q - 1.0)[0]
    if len(idx) == 0:
        continue
    groups = [[idx[0]]]
    for i in idx[1:]:
        if t[i] - t[groups[-1][-1]] < 5:
            groups[-1].append(i)
        else:
            groups.append([i])
    starts = []
    for g in groups:
        peak = g[int(np.argmin(m[g]))]
        amps.append(q - m[peak])
        j, k = g[0] - 1, g[-1] + 1
        if j >= 0 and t[g[0]] - t[j] < 3:
            rises.append(t[peak] - t[j])
        if k < len(t) and t[k] - t[g[-1]] < 3:
            declines.append((t[k] - t[peak]) / max(q - m[peak], 0.1))
        if starts:
            recurrences.append(t[g[0]] - starts[-1])
        starts.append(t[g[0]])

pct = lambda v: np.percentile(v, [10, 25, 50, 75, 90]).round(2).tolist()
print(f"{len(train)} training-half dwarf novae, {len(amps)} outbursts; percentiles 10, 25, 50, 75, 90:")
print("amplitude (mag)        ", pct(amps))
print("rise (days)            ", pct(rises))
print("decline (days per mag) ", pct(declines))
print("recurrence (days)      ", pct([x for x in recurrences if x < 400]))
print("median magnitude       ", pct(quiescent))
