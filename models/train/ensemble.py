#!/usr/bin/env python3
"""Merge several trained lensnet models (same recipe, different seeds) into one ONNX model whose
outputs are the members' means: `probs` = mean of the members' `probs`, `binary` = mean of their
`binary`. The result keeps the model contract (inputs `seq`, `diag`; the same metadata keys), so
the Rust scorer loads it like any other model.

The members must share the contract: the same `lensnet.diag_names` and the same preprocessing
statistics (they were trained on the same exports). Averaging seeds is the usual way to take the
training noise out of a small model's scores; whether it helps the verdicts is judged out of fold
by `models/train/cv` (SEEDS=...), never on the validation half.

Usage:
  .venv/bin/python models/train/ensemble.py --out OUT.onnx [--test sim-test.parquet] [--threshold-purity T] M1.onnx M2.onnx ...
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import compose, helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from standin import write_onnx  # noqa: E402

STATS_KEY = "lensnet.preprocess_stats"
SAME = ("lensnet.class_order", "lensnet.seq_len", "lensnet.channels", "lensnet.sites", "lensnet.diag_names", "lensnet.kind", STATS_KEY)


def meta(m: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in m.metadata_props}


def merge(members: list[onnx.ModelProto]) -> onnx.ModelProto:
    nodes, inits, value_info = [], [], []
    first = members[0]
    for i, m in enumerate(members):
        p = compose.add_prefix(m, f"m{i}_")
        rename = {f"m{i}_seq": "seq", f"m{i}_diag": "diag"}
        for n in p.graph.node:
            for j, name in enumerate(n.input):
                if name in rename:
                    n.input[j] = rename[name]
            nodes.append(n)
        inits.extend(p.graph.initializer)
        value_info.extend(p.graph.value_info)
    k = len(members)
    nodes.append(helper.make_node("Mean", [f"m{i}_probs" for i in range(k)], ["probs"], name="ensemble_probs"))
    nodes.append(helper.make_node("Mean", [f"m{i}_binary" for i in range(k)], ["binary"], name="ensemble_binary"))
    graph = helper.make_graph(
        nodes, "lensnet_ensemble", list(first.graph.input), list(first.graph.output), initializer=inits, value_info=value_info
    )
    out = helper.make_model(graph, opset_imports=list(first.opset_import))
    out.ir_version = first.ir_version
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("members", type=Path, nargs="+")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--test", type=Path, help="an exported test set: the ensemble's check accuracy is measured on it")
    ap.add_argument("--description", default="lensnet ensemble: the mean of several seeds of one training recipe")
    ap.add_argument("--threshold-purity", type=float,
                    help="the model's high-purity operating point (lensnet.threshold_purity: what the scorer uses when "
                         "score.threshold_purity is unset), chosen by models/train/cv out of fold")
    args = ap.parse_args()
    if len(args.members) < 2:
        sys.exit("an ensemble needs at least two members")
    models = [onnx.load(str(p)) for p in args.members]
    metas = [meta(m) for m in models]
    for p, md in zip(args.members[1:], metas[1:]):
        for key in SAME:
            if md.get(key) != metas[0].get(key):
                sys.exit(f"{p}: metadata {key} differs from {args.members[0]}'s (members must share the contract and the training statistics)")
    merged = merge(models)
    shas = [hashlib.sha256(p.read_bytes()).hexdigest() for p in args.members]
    props = {key: metas[0][key] for key in SAME if key in metas[0]}
    for key in ("lensnet.inputs", "lensnet.outputs", "lensnet.training_data_sha256", "lensnet.training_rows", "lensnet.code_commit", "lensnet.trained_on"):
        if key in metas[0]:
            props[key] = metas[0][key]
    props["lensnet.ensemble_members"] = ",".join(shas)
    props["lensnet.seed"] = ",".join(md.get("lensnet.seed", "?") for md in metas)
    props["lensnet.train_config"] = json.dumps([json.loads(md.get("lensnet.train_config", "{}")) for md in metas])
    props["lensnet.train_seconds"] = str(sum(int(float(md.get("lensnet.train_seconds", "0"))) for md in metas))
    if args.threshold_purity is not None:
        if not 0.0 <= args.threshold_purity <= 1.0:
            sys.exit(f"--threshold-purity {args.threshold_purity} is not a probability")
        props["lensnet.threshold_purity"] = str(args.threshold_purity)
    if args.test:
        import onnxruntime as ort
        from train import check_accuracy, load, narrow

        width = len(props["lensnet.diag_names"].split(","))
        check = narrow(load(args.test), width)
        sess = ort.InferenceSession(merged.SerializeToString(), providers=["CPUExecutionProvider"])
        member_sessions = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]) for m in models]
        o_p, o_b, diff = [], [], 0.0
        for i in range(0, len(check["y"]), 1024):
            feed = {"seq": check["seq"][i : i + 1024], "diag": check["diag"][i : i + 1024]}
            p, b = sess.run(["probs", "binary"], feed)
            outs = [s.run(["probs", "binary"], feed) for s in member_sessions]
            diff = max(diff, float(np.abs(np.mean([o[0] for o in outs], 0) - p).max()), float(np.abs(np.mean([o[1] for o in outs], 0) - b).max()))
            o_p.append(p)
            o_b.append(b)
        o_p, o_b = np.concatenate(o_p), np.concatenate(o_b)
        if diff > 1e-5:
            sys.exit(f"the merged graph differs from the members' mean by {diff:.2e}")
        y = check["y"]
        props.update(check_accuracy(o_p, o_b, y))
        props["lensnet.onnx_check_max_abs_diff"] = f"{diff:.2e}"
    write_onnx(merged, props, "lensnet models/train/ensemble.py", args.description, args.out)
    if STATS_KEY in props:
        args.out.with_suffix(".preprocess.json").write_text(props[STATS_KEY] + "\n")
    # The machine-readable card, as train.py writes one for a single model.
    data = args.out.read_bytes()
    card = {**props, "model": str(args.out), "model_sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
            "members": [{"model": str(p), "sha256": h} for p, h in zip(args.members, shas)]}
    args.out.with_suffix(".card.json").write_text(json.dumps(card, indent=1) + "\n")
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes, {len(models)} members)"
          + (f"; check acc3 {props['lensnet.check_acc3']} acc2 {props['lensnet.check_acc2']}" if args.test else ""))


if __name__ == "__main__":
    main()
