#!/usr/bin/env python3
"""Build, export and check lensnet's stand-in scoring model (models/lensnet-standin.onnx).

The stand-in follows the model contract of models/README.md exactly but is randomly initialised
(fixed seed): it lets the Rust scorer, the DAG and publish be built and tested before the trained
model of issue 6 exists. Architecture: one GRU per site (KMTA, KMTC, KMTS) over its masked
sequence, a dense branch over the diagnosis parameters, and a merged head with two outputs
(`probs`: softmax over yes, maybe, no; `binary`: sigmoid of yes-or-maybe vs no).

Masking: sequences are zero-padded at the FRONT, so the real points are the last `n` steps. Each
GRU reads its site's sequence newest-first (time reversed), which puts the real points first, and
the branch takes the hidden state after the n-th step (a gather). Padding therefore never touches
the state that is used, and the exported graph is one ONNX GRU op per site instead of an unrolled
loop. A site with no points contributes zeros.

Besides the model, this script writes tests/fixtures/score/standin_expected.json: inputs built by
an exact integer formula (reproduced in Rust by tests/it/score.rs) and the probabilities that
Python onnxruntime gives for them, checked equal to PyTorch's to 1e-4 before anything is written.

Usage: .venv/bin/python models/train/standin.py   (from the repository root; deterministic)
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
MODEL_PATH = ROOT / "models" / "lensnet-standin.onnx"
FIXTURE_PATH = ROOT / "tests" / "fixtures" / "score" / "standin_expected.json"
DIAGNOSIS_RS = ROOT / "stages" / "src" / "alertfinder" / "diagnosis.rs"

SITES = ["KMTA", "KMTC", "KMTS"]
CHANNELS = ["flux", "flux_err", "fwhm", "sky", "airmass", "dt", "mask"]
CLASSES = ["yes", "maybe", "no"]
SEQ_LEN = 128
SEED = 20261125
HIDDEN = 32
OPSET = 17
# The stand-in takes version 1 of the diagnosis list (its first 47 names): the committed model and
# tests/fixtures/score/standin_expected.json were made so, and the Rust test pins its sha256.
STANDIN_DIAG_WIDTH = 47


def diagnosis_names() -> list[str]:
    """The names of DIAGNOSIS_NAMES (47 in version 1, 53 since the history features), read from
    the Rust source so that the two cannot drift. A model takes a prefix of them."""
    text = DIAGNOSIS_RS.read_text()
    block = re.search(r"DIAGNOSIS_NAMES: \[&str; N_DIAGNOSIS\] = \[(.*?)\];", text, re.S)
    if block is None:
        sys.exit(f"cannot find DIAGNOSIS_NAMES in {DIAGNOSIS_RS}")
    body = "\n".join(line.split("//")[0] for line in block.group(1).splitlines())
    names = re.findall(r'"([a-z0-9_]+)"', body)
    if len(names) < 47:
        sys.exit(f"expected at least 47 diagnosis names in {DIAGNOSIS_RS}, found {len(names)}")
    return names


class SiteBranch(nn.Module):
    """A GRU over one site's sequence, read newest-first; returns the state after the last real point."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(input_size=len(CHANNELS), hidden_size=HIDDEN, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, L, C]
        mask = x[:, :, -1]
        n = mask.sum(dim=1).to(torch.int64)  # real points (front padding: they are the last n)
        rev = torch.flip(x, dims=[1])  # newest first: real points lead, padding trails
        out, _ = self.gru(rev)  # [B, L, H]
        idx = torch.clamp(n - 1, min=0).view(-1, 1, 1).expand(-1, 1, HIDDEN)
        last = torch.gather(out, 1, idx).squeeze(1)  # [B, H]
        return last * (n > 0).to(last.dtype).unsqueeze(1)


class StandIn(nn.Module):
    def __init__(self, n_diag: int) -> None:
        super().__init__()
        self.sites = nn.ModuleList([SiteBranch() for _ in SITES])
        self.diag = nn.Sequential(nn.Linear(n_diag, 32), nn.ReLU())
        self.trunk = nn.Sequential(nn.Linear(HIDDEN * len(SITES) + 32, 64), nn.ReLU())
        self.cls = nn.Linear(64, len(CLASSES))
        self.bin = nn.Linear(64, 1)
        # Random heads give probabilities close to uniform; wider weights spread them so that the
        # fixture and the verdict thresholds see a range of values.
        with torch.no_grad():
            self.cls.weight.mul_(6.0)
            self.bin.weight.mul_(6.0)

    def forward(self, seq: torch.Tensor, diag: torch.Tensor):  # seq [B, 3, L, 7], diag [B, n_diag]
        feats = [branch(seq[:, i]) for i, branch in enumerate(self.sites)]
        h = self.trunk(torch.cat(feats + [self.diag(diag)], dim=1))
        return torch.softmax(self.cls(h), dim=1), torch.sigmoid(self.bin(h))


def build() -> StandIn:
    torch.manual_seed(SEED)
    model = StandIn(STANDIN_DIAG_WIDTH)
    model.eval()
    return model


# Fixture inputs: an exact integer formula so that Rust rebuilds bit-identical f32 tensors.
# value(b, s, t, c) = ((b*31 + s*17 + t*7 + c*13) % 97) / 48.5 - 1 for real points, mask = 1;
# padding (t < L - n) is all zeros; diag(b, j) = ((b*11 + j*5) % 23) / 11.5 - 1.
FIXTURE_LENGTHS = [[128, 128, 128], [40, 0, 90], [0, 0, 0], [1, 5, 128], [64, 64, 0], [100, 17, 3]]


def fixture_inputs(lengths: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    b_n = len(lengths)
    seq = np.zeros((b_n, len(SITES), SEQ_LEN, len(CHANNELS)), dtype=np.float32)
    for b, ns in enumerate(lengths):
        for s, n in enumerate(ns):
            for t in range(SEQ_LEN - n, SEQ_LEN):
                for c in range(len(CHANNELS) - 1):
                    seq[b, s, t, c] = np.float32(((b * 31 + s * 17 + t * 7 + c * 13) % 97) / 48.5 - 1.0)
                seq[b, s, t, len(CHANNELS) - 1] = 1.0
    width = STANDIN_DIAG_WIDTH
    diag = np.zeros((b_n, width), dtype=np.float32)
    for b in range(b_n):
        for j in range(width):
            diag[b, j] = np.float32(((b * 11 + j * 5) % 23) / 11.5 - 1.0)
    return seq, diag


def interface_props(names: list[str], kind: str) -> dict[str, str]:
    """The metadata keys that the Rust scorer checks its inputs against (stand-in and trained)."""
    return {
        "lensnet.class_order": ",".join(CLASSES),
        "lensnet.seq_len": str(SEQ_LEN),
        "lensnet.channels": ",".join(CHANNELS),
        "lensnet.sites": ",".join(SITES),
        "lensnet.diag_names": ",".join(names),
        "lensnet.kind": kind,
    }


def write_onnx(m, props: dict[str, str], producer: str, doc: str, path: Path) -> None:
    """Replace the model's metadata with `props`, check it and write it to `path`."""
    import onnx

    del m.metadata_props[:]
    for k, v in props.items():
        m.metadata_props.add(key=k, value=v)
    m.producer_name = producer
    m.doc_string = doc
    onnx.checker.check_model(m)
    path.write_bytes(m.SerializeToString())


def export(model: StandIn, names: list[str]) -> None:
    import onnx

    seq, diag = fixture_inputs(FIXTURE_LENGTHS)
    tmp = MODEL_PATH.with_suffix(".tmp.onnx")
    torch.onnx.export(
        model,
        (torch.from_numpy(seq), torch.from_numpy(diag)),
        str(tmp),
        input_names=["seq", "diag"],
        output_names=["probs", "binary"],
        dynamic_axes={"seq": {0: "batch"}, "diag": {0: "batch"}, "probs": {0: "batch"}, "binary": {0: "batch"}},
        opset_version=OPSET,
        dynamo=False,
    )
    m = onnx.load(str(tmp))
    tmp.unlink()
    props = {**interface_props(names, "standin"), "lensnet.seed": str(SEED)}
    write_onnx(m, props, "lensnet models/train/standin.py",
               "lensnet stand-in: randomly initialised multi-branch GRU (not trained)", MODEL_PATH)


def main() -> None:
    import onnxruntime as ort

    names = diagnosis_names()[:STANDIN_DIAG_WIDTH]
    model = build()
    export(model, names)

    seq, diag = fixture_inputs(FIXTURE_LENGTHS)
    with torch.no_grad():
        t_probs, t_bin = (t.numpy() for t in model(torch.from_numpy(seq), torch.from_numpy(diag)))
    sess = ort.InferenceSession(str(MODEL_PATH), providers=["CPUExecutionProvider"])
    o_probs, o_bin = sess.run(["probs", "binary"], {"seq": seq, "diag": diag})
    # Dynamic batch: one example at a time must give the same numbers as the whole batch.
    for b in range(len(FIXTURE_LENGTHS)):
        p1, b1 = sess.run(["probs", "binary"], {"seq": seq[b : b + 1], "diag": diag[b : b + 1]})
        assert np.allclose(p1[0], o_probs[b], atol=1e-5) and np.allclose(b1[0], o_bin[b], atol=1e-5)
    d = max(np.abs(t_probs - o_probs).max(), np.abs(t_bin - o_bin).max())
    if d > 1e-4:
        sys.exit(f"onnxruntime and PyTorch disagree by {d:.2e} (> 1e-4)")

    blob = MODEL_PATH.read_bytes()
    fixture = {
        "model": "models/lensnet-standin.onnx",
        "model_sha256": hashlib.sha256(blob).hexdigest(),
        "formula": "seq[b,s,t,c] = ((b*31 + s*17 + t*7 + c*13) % 97) / 48.5 - 1 for c < 6 and t >= 128 - n[b][s] "
        "(mask channel 6 = 1 there, all zeros before); diag[b,j] = ((b*11 + j*5) % 23) / 11.5 - 1",
        "lengths": FIXTURE_LENGTHS,
        "seq_sum": [float(x) for x in seq.reshape(len(FIXTURE_LENGTHS), -1).astype(np.float64).sum(axis=1)],
        "probs": [[round(float(x), 7) for x in row] for row in o_probs],
        "binary": [round(float(row[0]), 7) for row in o_bin],
        "torch_max_abs_diff": float(d),
        "onnxruntime_python": ort.__version__,
        "torch": torch.__version__,
    }
    FIXTURE_PATH.parent.mkdir(parents=True, exist_ok=True)
    FIXTURE_PATH.write_text(json.dumps(fixture, indent=1) + "\n")
    n_params = sum(p.numel() for p in model.parameters())
    print(f"wrote {MODEL_PATH.relative_to(ROOT)} ({len(blob)} bytes, {n_params} parameters, sha256 {fixture['model_sha256']})")
    print(f"wrote {FIXTURE_PATH.relative_to(ROOT)}; onnxruntime vs torch max |diff| = {d:.2e}")


if __name__ == "__main__":
    main()
