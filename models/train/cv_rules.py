"""What verdict rules would flag, from the verdict files of `lensnet evaluate` runs.

    cv_rules.py LABELS.csv EVAL_DIR [EVAL_DIR ...]

Reads every `verdicts/season=*/field=*/asof-*.model-*.parquet` under each EVAL_DIR's store
(each daily replay's scores of its candidates), and prints, for each rule, the figures that
`lensnet evaluate` prints: events found in the season of their peak, found before the peak,
non-events and dwarf novae flagged yes. The first rule ("as scored") is the verdict the
pipeline wrote, so its line must equal the evaluate reports' (a check that the reading is
right). Meant for models/train/cv's out-of-fold predictions on the training half: never point
it at the validation half to choose a rule.
"""
from __future__ import annotations

import csv
import datetime as dt
import glob
import json
import os
import re
import sys
from collections import defaultdict

import pyarrow.parquet as pq


def season_of(hjd: float) -> int:
    days = int((hjd + 2_450_000.0 - 2_440_587.5) // 1)
    return (dt.date(1970, 1, 1) + dt.timedelta(days=days)).year


def read_verdicts(eval_dir: str) -> dict:
    """star -> season -> sorted [(as_of, binary, p_yes, p_maybe, p_no, verdict, note)]"""
    out: dict = defaultdict(lambda: defaultdict(list))
    pat = re.compile(r"season=(\d+)/field=[^/]+/asof-([0-9.]+)\.model-")
    for path in glob.glob(os.path.join(eval_dir, "store", "verdicts", "season=*", "field=*", "*.parquet")):
        m = pat.search(path)
        if not m:
            continue
        season, as_of = int(m.group(1)), float(m.group(2))
        t = pq.read_table(path, columns=["star", "binary", "p_yes", "p_maybe", "p_no", "verdict", "note"]).to_pydict()
        for i, star in enumerate(t["star"]):
            out[star][season].append((as_of, t["binary"][i], t["p_yes"][i], t["p_maybe"][i], t["p_no"][i], t["verdict"][i], t["note"][i]))
    for seasons in out.values():
        for rows in seasons.values():
            rows.sort()
    return out


def first_yes(rows, rule) -> float | None:
    """The first as-of that the rule calls yes, given a season's rows in time order."""
    for i, r in enumerate(rows):
        if rule(rows, i):
            return r[0]
    return None


def main() -> None:
    labels = {r["star"]: r for r in csv.DictReader(open(sys.argv[1]))}
    verdicts: dict = {}
    for d in sys.argv[2:]:
        verdicts.update(read_verdicts(d))
    # The stars evaluated: those in the folds' label files beside the eval folders.
    stars = set()
    for d in sys.argv[2:]:
        lf = re.sub(r"\.eval/?$", ".labels.csv", d.rstrip("/"))
        if os.path.exists(lf):
            stars |= {r["star"] for r in csv.DictReader(open(lf))}
    if not stars:
        stars = set(verdicts)

    def yes_scored(rows, i):
        return rows[i][5] == "yes"

    def thr(t):
        # binary >= t and not kept as maybe by the fast-rise check (its note)
        return lambda rows, i: rows[i][1] >= t and not rows[i][6]

    def persist(t, k, gap=1.5):
        # yes only when the k-1 runs before (each at most `gap` days before the next) scored >= t
        def rule(rows, i):
            if not thr(t)(rows, i):
                return False
            j = i
            for _ in range(k - 1):
                if j == 0 or rows[j][0] - rows[j - 1][0] > gap or not thr(t)(rows, j - 1):
                    return False
                j -= 1
            return True
        return rule

    def pyes(t, q):
        return lambda rows, i: thr(t)(rows, i) and rows[i][2] >= q

    rules = [("as scored (the pipeline's verdict)", yes_scored)]
    for t in (0.9, 0.95, 0.97, 0.98, 0.99):
        rules.append((f"binary >= {t}", thr(t)))
    for t in (0.9, 0.95):
        for k in (2, 3):
            rules.append((f"binary >= {t} on {k} runs in a row", persist(t, k)))
    for q in (0.3, 0.5):
        rules.append((f"binary >= 0.9 and p_yes >= {q}", pyes(0.9, q)))

    ev = [s for s in stars if labels[s]["class"] in ("event", "binary_event") and labels[s]["peak_hjd"]]
    ne = [s for s in stars if labels[s]["class"] not in ("event", "binary_event")]
    dn = [s for s in ne if labels[s]["type"] == "dwarf_nova"]
    # The evaluate reports count every star of their folder, with candidates or not: the stars
    # read here must be the same number, or the rates would be over the wrong denominators.
    want = [0, 0]
    for d in sys.argv[2:]:
        report = os.path.join(d, "report.json")
        if os.path.exists(report):
            r = json.load(open(report))
            want[0] += r["events_total"]["n"] + r.get("events_without_peak", 0)
            want[1] += r["nonevents_total"]["n"]
    have = [sum(labels[s]["class"] in ("event", "binary_event") for s in stars), len(ne)]
    if any(want) and have != want:
        where = ", ".join(re.sub(r"\.eval/?$", ".labels.csv", d.rstrip("/")) for d in sys.argv[2:])
        sys.exit(f"{have[0]} events and {have[1]} non-events found, but the evaluate reports count {want[0]} and {want[1]}: "
                 f"each EVAL_DIR needs its stars' labels beside it ({where})")
    print(f"{len(stars)} stars: {len(ev)} events, {len(ne)} non-events ({len(dn)} dwarf novae)")
    print("| rule | events found | before peak | median days before | non-events yes | dwarf novae yes | other yes |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, rule in rules:
        found = before = 0
        leads = []
        for s in ev:
            peak = float(labels[s]["peak_hjd"])
            rows = verdicts.get(s, {}).get(season_of(peak), [])
            t = first_yes(rows, rule)
            if t is not None:
                found += 1
                leads.append(peak - t)
                before += t < peak
        flagged = [s for s in ne if any(first_yes(rows, rule) is not None for rows in verdicts.get(s, {}).values())]
        fdn = sum(labels[s]["type"] == "dwarf_nova" for s in flagged)
        leads.sort()
        med = (leads[len(leads) // 2] + leads[(len(leads) - 1) // 2]) / 2 if leads else float("nan")
        other = sorted({labels[s]["type"] for s in flagged if labels[s]["type"] != "dwarf_nova"})
        print(f"| {name} | {found}/{len(ev)} ({100*found/max(len(ev),1):.1f} %) | {before} ({100*before/max(len(ev),1):.1f} %) | {med:.1f} "
              f"| {len(flagged)} ({100*len(flagged)/max(len(ne),1):.1f} %) | {fdn} ({100*fdn/max(len(dn),1):.1f} %) | {len(flagged)-fdn} {' '.join(other)} |")


if __name__ == "__main__":
    main()
