#!/usr/bin/env python3
"""PyTorch throughput of lensnet's model architecture, for `lensnet bench score` (same run).

Builds LensNetV1 (models/train/train.py) with the sizes recorded in the ONNX file's metadata
(`lensnet.train_config`; train.py's defaults for the stand-in) and times inference at batch sizes
1, 64 and 1024 on the CPU (and CUDA when torch sees a GPU). The weights are not copied from the
ONNX file: only the throughput of the same computation is measured. An ensemble (ensemble.py)
runs each member and averages, as its merged ONNX graph does.

Usage: .venv/bin/python models/train/bench_torch.py --model models/lensnet-v1.onnx
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from standin import CHANNELS, SEQ_LEN, SITES  # noqa: E402
from train import LensNetV1  # noqa: E402


def config_of(model: Path) -> list[dict]:
    """The training configuration of each member (one for a single model; an ensemble made by
    ensemble.py records its members' as a list)."""
    try:
        import onnx

        m = onnx.load(str(model), load_external_data=False)
        props = {p.key: p.value for p in m.metadata_props}
        if "lensnet.train_config" in props:
            cfg = json.loads(props["lensnet.train_config"])
            return cfg if isinstance(cfg, list) else [cfg]
    except Exception as e:  # noqa: BLE001 - any failure means "use the defaults"
        print(f"  pytorch: cannot read {model} metadata ({e}); default sizes", flush=True)
    return [{}]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--seconds", type=float, default=1.0)
    args = ap.parse_args()
    # An ensemble runs every member and averages their outputs, as its ONNX graph does.
    members = [LensNetV1(47, c.get("hidden", 48), c.get("diag_hidden", 32), c.get("head", 64), 0.0).eval() for c in config_of(args.model)]

    class Mean(torch.nn.Module):
        def __init__(self, nets: list[torch.nn.Module]) -> None:
            super().__init__()
            self.nets = torch.nn.ModuleList(nets)

        def forward(self, seq: torch.Tensor, diag: torch.Tensor):
            outs = [n(seq, diag) for n in self.nets]
            return tuple(torch.stack(o).mean(0) for o in zip(*outs)) if isinstance(outs[0], tuple) else torch.stack(outs).mean(0)

    net = members[0] if len(members) == 1 else Mean(members).eval()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        m = net.to(dev)
        for batch in (1, 64, 1024):
            seq = torch.randn(batch, len(SITES), SEQ_LEN, len(CHANNELS), device=dev)
            seq[..., -1] = 1.0
            diag = torch.randn(batch, 47, device=dev)
            with torch.inference_mode():
                m(seq, diag)
                n, t0 = 0, time.perf_counter()
                while n < 3 or time.perf_counter() - t0 < args.seconds:
                    m(seq, diag)
                    if dev == "cuda":
                        torch.cuda.synchronize()
                    n += 1
                dt = time.perf_counter() - t0
            print(
                f"  {'pytorch':<12} {dev:<5} batch {batch:>5}: {n * batch / dt:>10.1f} sequences/s "
                f"({n * batch} sequences in {dt:.2f} s, torch {torch.__version__}, {torch.get_num_threads()} threads)",
                flush=True,
            )


if __name__ == "__main__":
    main()
