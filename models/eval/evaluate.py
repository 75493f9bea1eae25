#!/usr/bin/env python3
"""Evaluate a lensnet ONNX model on a test set exported with simulator seeds never used in
training; writes models/eval/REPORT.md and PNG plots next to it.

The model runs through onnxruntime exactly as served (the same file the Rust scorer loads);
the test tensors come from the Rust preprocess stage (`export-training-set` with another seed
and the training set's preprocessing statistics).

Usage (from the repository root):
  .venv/bin/python models/eval/evaluate.py --model models/lensnet-v1.onnx \
      --test .lensnet/test/tensors.parquet
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "models" / "train"))
from train import load, sha256  # noqa: E402
from standin import CLASSES  # noqa: E402

PAPER = {"binary": 0.875, "three_class": 0.78}
THRESHOLDS = [0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 0.95]
PHASE_BINS = [(-np.inf, -1.0, "rise, > 1 tE before peak"), (-1.0, -0.5, "rise, 0.5-1 tE before"),
              (-0.5, -0.1, "rise, 0.1-0.5 tE before"), (-0.1, 0.1, "at peak (±0.1 tE)"),
              (0.1, 0.5, "after, 0.1-0.5 tE"), (0.5, 1.0, "after, 0.5-1 tE"), (1.0, np.inf, "after, > 1 tE")]


def roc(score: np.ndarray, pos: np.ndarray):
    order = np.argsort(-score, kind="stable")
    s, p = score[order], pos[order]
    tp = np.cumsum(p)
    fp = np.cumsum(~p)
    keep = np.r_[np.diff(s) != 0, True]
    tpr = np.r_[0, tp[keep] / max(p.sum(), 1)]
    fpr = np.r_[0, fp[keep] / max((~p).sum(), 1)]
    prec = tp[keep] / (tp[keep] + fp[keep])
    rec = tp[keep] / max(p.sum(), 1)
    auc = float(np.trapezoid(tpr, fpr))
    ap = float(np.sum(np.diff(np.r_[0, rec]) * prec))
    return fpr, tpr, rec, prec, auc, ap


def confusion(y: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    m = np.zeros((k, k), dtype=np.int64)
    np.add.at(m, (y, pred), 1)
    return m


def plot_confusion(m: np.ndarray, labels: list[str], title: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    norm = m / np.maximum(m.sum(1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, f"{m[i, j]}\n{norm[i, j]:.1%}", ha="center", va="center",
                    color="white" if norm[i, j] > 0.5 else "black", fontsize=8)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def md_table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    out += ["| " + " | ".join(str(x) for x in r) + " |" for r in rows]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "lensnet-v1.onnx")
    ap.add_argument("--test", type=Path, required=True)
    ap.add_argument("--train-summary", type=Path, help="summary.json of the training export")
    ap.add_argument("--test-summary", type=Path, help="summary.json of the test export")
    ap.add_argument("--out", type=Path, default=OUT, help="folder for REPORT.md, metrics.json and the figures")
    args = ap.parse_args()
    globals()["OUT"] = args.out
    args.out.mkdir(parents=True, exist_ok=True)

    model = onnx.load(str(args.model))
    meta = {p.key: p.value for p in model.metadata_props}
    sess = ort.InferenceSession(str(args.model), providers=["CPUExecutionProvider"])
    d = load(args.test)
    probs, binary = [], []
    for i in range(0, len(d["y"]), 2048):
        p, b = sess.run(["probs", "binary"], {"seq": d["seq"][i : i + 2048], "diag": d["diag"][i : i + 2048]})
        probs.append(p)
        binary.append(b[:, 0])
    probs, binary = np.concatenate(probs), np.concatenate(binary)
    y = d["y"]
    n = len(y)
    pos = y < 2
    pred3 = probs.argmax(1)
    acc3 = float((pred3 == y).mean())
    acc2 = float(((binary >= 0.5) == pos).mean())
    acc2_probs = float(((probs[:, 0] + probs[:, 1] >= 0.5) == pos).mean())
    cm3 = confusion(y, pred3, 3)
    cm2 = confusion((~pos).astype(int), (binary < 0.5).astype(int), 2)
    plot_confusion(cm3, CLASSES, f"3-class confusion (n={n}, acc {acc3:.1%})", OUT / "confusion_3class.png")
    plot_confusion(cm2, ["yes+maybe", "no"], f"binary confusion (acc {acc2:.1%})", OUT / "confusion_binary.png")

    fpr, tpr, rec, prec, auc, apv = roc(binary, pos)
    yes = y == 0
    fpr_y, tpr_y, rec_y, prec_y, auc_y, ap_y = roc(probs[:, 0], yes)
    fig, axs = plt.subplots(1, 2, figsize=(9, 4))
    axs[0].plot(fpr, tpr, label=f"binary head: yes+maybe vs no (AUC {auc:.4f})")
    axs[0].plot(fpr_y, tpr_y, label=f"P(yes): yes vs rest (AUC {auc_y:.4f})")
    axs[0].plot([0, 1], [0, 1], "k:", lw=0.8)
    axs[0].set_xlabel("false-positive rate")
    axs[0].set_ylabel("true-positive rate (recall)")
    axs[0].set_title("ROC")
    axs[0].legend(fontsize=7, loc="lower right")
    axs[1].plot(rec, prec, label=f"binary head (AP {apv:.4f})")
    axs[1].plot(rec_y, prec_y, label=f"P(yes) (AP {ap_y:.4f})")
    axs[1].set_xlabel("recall")
    axs[1].set_ylabel("precision")
    axs[1].set_title("precision-recall")
    axs[1].set_ylim(0, 1.02)
    axs[1].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(OUT / "roc_pr.png", dpi=110)
    plt.close(fig)

    thr_rows = []
    for t in THRESHOLDS:
        flag = binary >= t
        tp = int((flag & pos).sum())
        thr_rows.append([t, f"{tp / max(flag.sum(), 1):.4f}", f"{tp / max(pos.sum(), 1):.4f}", f"{flag.mean():.4f}",
                         int((~flag & pos).sum())])

    # Recall against the phase of the cut-off relative to the peak (events labelled yes/maybe).
    phase = (d["now"] - d["t0"]) / d["te"]
    ev = pos & np.isfinite(phase) & (d["class"] == "microlensing")
    phase_rows, px, py, pyes = [], [], [], []
    for lo, hi, name in PHASE_BINS:
        sel = ev & (phase > lo) & (phase <= hi)
        k = int(sel.sum())
        r = float((binary[sel] >= 0.5).mean()) if k else float("nan")
        ry = float((pred3[sel & yes] == 0).mean()) if (sel & yes).any() else float("nan")
        phase_rows.append([name, k, f"{r:.4f}", int((sel & yes).sum()), f"{ry:.4f}"])
        px.append(name)
        py.append(r)
        pyes.append(ry)
    fig, ax = plt.subplots(figsize=(8, 3.6))
    xs = np.arange(len(px))
    ax.bar(xs - 0.2, py, 0.4, label="binary recall (yes+maybe flagged)")
    ax.bar(xs + 0.2, pyes, 0.4, label="3-class recall of yes")
    ax.set_xticks(xs, [p.replace(", ", "\n") for p in px], fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("recall")
    ax.set_title("recall vs real-time cut-off relative to the peak ((now - t0) / tE)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(OUT / "recall_vs_phase.png", dpi=110)
    plt.close(fig)

    class_rows = []
    for c in sorted(set(d["class"])):
        sel = d["class"] == c
        lab = np.bincount(y[sel], minlength=3)
        class_rows.append([c, int(sel.sum()), "/".join(str(int(x)) for x in lab), f"{(binary[sel] >= 0.5).mean():.4f}",
                           f"{(pred3[sel] == y[sel]).mean():.4f}"])
    field_rows = []
    for f in sorted(set(d["field"])):
        sel = d["field"] == f
        field_rows.append([f, int(sel.sum()), f"{((binary[sel] >= 0.5) == pos[sel]).mean():.4f}", f"{(pred3[sel] == y[sel]).mean():.4f}"])

    summaries = {}
    for name, p in (("train", args.train_summary), ("test", args.test_summary)):
        if p and p.exists():
            summaries[name] = json.loads(p.read_text())
    metrics = {
        "n": n, "labels": np.bincount(y, minlength=3).tolist(), "acc3": acc3, "acc2": acc2, "acc2_from_probs": acc2_probs,
        "roc_auc_binary": auc, "ap_binary": apv, "roc_auc_yes": auc_y, "ap_yes": ap_y,
        "confusion_3class": cm3.tolist(), "confusion_binary": cm2.tolist(),
        "recall_by_phase": {r[0]: {"n": r[1], "binary_recall": float(r[2]), "n_yes": r[3], "yes_recall": float(r[4])} for r in phase_rows},
        "model_sha256": hashlib.sha256(args.model.read_bytes()).hexdigest(), "test_sha256": sha256(args.test),
    }
    (OUT / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")

    lines = [
        f"# {args.model.stem} evaluation report",
        "",
        "Generated by `models/eval/evaluate.py`; numbers below are from the committed model run through "
        "onnxruntime on a **test set exported with simulator seeds never used in training** "
        "(same Rust simulator → AlertFinder → preprocess path as production; training-set preprocessing statistics).",
        "",
        f"- model: `{args.model.relative_to(ROOT) if args.model.is_relative_to(ROOT) else args.model}` "
        f"(sha256 `{metrics['model_sha256'][:16]}…`, code commit `{meta.get('lensnet.code_commit', '?')[:12]}`, "
        f"trained on {meta.get('lensnet.trained_on', '?')})",
        f"- training data sha256 `{meta.get('lensnet.training_data_sha256', '?')[:16]}…` "
        f"({meta.get('lensnet.training_rows', '?')} candidates); test data sha256 `{metrics['test_sha256'][:16]}…`",
        f"- test candidates: {n} (yes / maybe / no = {' / '.join(str(x) for x in metrics['labels'])})",
    ]
    for name, s in summaries.items():
        lines.append(f"- {name} export: seed {s.get('seed')}, {s.get('stars')} simulated stars, {s.get('cutoffs')} real-time cut-offs "
                     f"→ {s.get('candidates')} AlertFinder candidates, labels {s.get('by_label')}")
    lines += [
        "",
        "## Headline",
        "",
        md_table(["metric", f"{args.model.stem} (simulated test set)", "LensNet paper (real KMTNet)"], [
            ["binary accuracy (yes+maybe vs no, binary head ≥ 0.5)", f"**{acc2:.2%}**", f"~{PAPER['binary']:.1%}"],
            ["binary accuracy from probs (P(yes)+P(maybe) ≥ 0.5)", f"{acc2_probs:.2%}", ""],
            ["3-class accuracy (argmax of probs)", f"**{acc3:.2%}**", f"~{PAPER['three_class']:.0%}"],
            ["ROC AUC, binary head", f"{auc:.4f}", ""],
            ["average precision, binary head", f"{apv:.4f}", ""],
            ["ROC AUC, P(yes) yes-vs-rest", f"{auc_y:.4f}", ""],
        ]),
        "",
        "The paper's numbers are on real, human-labelled candidates; ours are on simulated candidates whose "
        "labels follow the simulator's documented vetting rule (stages/src/simulate/label.rs), so they are "
        "not directly comparable: they show the model learns the task, not how it will do on real data.",
        "",
        "## Confusion matrices",
        "",
        "3-class (rows true, columns predicted; yes, maybe, no):",
        "",
        md_table(["true \\ pred", *CLASSES], [[CLASSES[i], *cm3[i].tolist()] for i in range(3)]),
        "",
        "Binary (binary head at 0.5):",
        "",
        md_table(["true \\ pred", "yes+maybe", "no"], [["yes+maybe", *cm2[0].tolist()], ["no", *cm2[1].tolist()]]),
        "",
        "![3-class confusion](confusion_3class.png) ![binary confusion](confusion_binary.png)",
        "",
        "## ROC and precision-recall",
        "",
        "![ROC and PR](roc_pr.png)",
        "",
        "## Threshold table (binary head)",
        "",
        "`to review` is the share of all candidates at or above the threshold, i.e. what a human still needs to look at; "
        "`missed` counts yes/maybe candidates below it.",
        "",
        md_table(["threshold", "precision", "recall", "to review", "missed"], thr_rows),
        "",
        "## Recall versus how much of the event was observed",
        "",
        "Microlensing candidates labelled yes or maybe, binned by the phase of the real-time cut-off "
        "`(now - t0) / tE` (negative: still rising). `binary recall` = flagged by the binary head at 0.5; "
        "`yes recall` = yes-labelled candidates predicted yes by the 3-class head.",
        "",
        md_table(["cut-off", "n (yes+maybe)", "binary recall", "n (yes)", "yes recall"], phase_rows),
        "",
        "![recall vs phase](recall_vs_phase.png)",
        "",
        "## By simulated class",
        "",
        "`flagged` = share with binary ≥ 0.5 (for confusers, the false-alarm rate among candidates).",
        "",
        md_table(["class", "candidates", "labels yes/maybe/no", "flagged", "3-class accuracy"], class_rows),
        "",
        "## By field (cadence)",
        "",
        md_table(["field", "candidates", "binary accuracy", "3-class accuracy"], field_rows),
        "",
    ]
    (OUT / "REPORT.md").write_text("\n".join(lines))
    print(json.dumps({k: metrics[k] for k in ("n", "acc2", "acc3", "roc_auc_binary", "labels")}))


if __name__ == "__main__":
    main()
