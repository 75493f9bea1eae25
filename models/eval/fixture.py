#!/usr/bin/env python3
"""Expected outputs for tests/it/model.rs: Python onnxruntime on the tensors that Rust's
preprocess wrote to tests/fixtures/model/<version>_inputs.parquet.

Usage: .venv/bin/python models/eval/fixture.py [v1|v2]   (after LENSNET_UPDATE_MODEL_FIXTURE=1 cargo test ... model::)
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "models" / "train"))
from train import load  # noqa: E402

VERSION = sys.argv[1] if len(sys.argv) > 1 else "v1"
MODEL = ROOT / "models" / f"lensnet-{VERSION}.onnx"
INPUTS = ROOT / "tests" / "fixtures" / "model" / f"{VERSION}_inputs.parquet"
EXPECTED = ROOT / "tests" / "fixtures" / "model" / f"{VERSION}_expected.json"


def main() -> None:
    d = load(INPUTS)
    sess = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    probs, binary = sess.run(["probs", "binary"], {"seq": d["seq"], "diag": d["diag"]})
    n = len(d["y"])
    seq = d["seq"].reshape(n, -1).astype(np.float64)
    out = {
        "model": f"models/lensnet-{VERSION}.onnx",
        "model_sha256": hashlib.sha256(MODEL.read_bytes()).hexdigest(),
        "ids": [str(x) for x in d["candidate_id"]],
        "labels": [["yes", "maybe", "no"][int(y)] for y in d["y"]],
        "seq_sum": [float(x) for x in seq.sum(1)],
        "seq_abs_sum": [float(x) for x in np.abs(seq).sum(1)],
        "diag_sum": [float(x) for x in d["diag"].astype(np.float64).sum(1)],
        "probs": [[round(float(x), 7) for x in row] for row in probs],
        "binary": [round(float(r[0]), 7) for r in binary],
        "onnxruntime_python": ort.__version__,
    }
    EXPECTED.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {EXPECTED.relative_to(ROOT)} ({n} candidates)")


if __name__ == "__main__":
    main()
