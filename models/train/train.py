#!/usr/bin/env python3
"""Train lensnet's vetting model (models/lensnet-v1.onnx) on tensors exported by Rust.

The tensors come from `lensnet export-training-set` (stages/src/preprocess/training.rs): the
simulator, the AlertFinder core and the preprocess stage exactly as in production, so this
script never re-implements preprocessing; it only reads `seq` [n, 3, 128, 7], `diag` [n, 47]
and `label` from the Parquet file, and copies the preprocessing statistics stored in the
Parquet key-value metadata into the ONNX metadata.

Model (LensNet's multi-branch spirit, Viaña et al. 2025): one GRU per site (KMTA, KMTC, KMTS)
reading its masked sequence newest-first (front padding becomes trailing padding; the state
after the n-th real point is gathered, so padding never touches it), a dense branch over the 47
diagnosis parameters, and a merged dense head with two outputs: `probs` (softmax over yes,
maybe, no) and `binary` (sigmoid of yes-or-maybe vs no).

Training: class-weighted cross-entropy + weighted binary cross-entropy, AdamW, augmentation
(one site dropped with p = 0.1 on multi-site rows; Gaussian jitter of 0.03 on the flux
channel of real points), early stopping on the validation loss (validation = 15 % of the
stars, grouped by star so that cut-offs of one star never straddle the split), fixed seeds,
CPU threads limited (the machine is shared).

Usage (from the repository root):
  .venv/bin/python models/train/train.py --train .lensnet/train/tensors.parquet \
      --test .lensnet/test/tensors.parquet --out models/lensnet-v1.onnx
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from standin import CHANNELS, CLASSES, SEQ_LEN, SITES, diagnosis_names, interface_props, write_onnx  # noqa: E402

STATS_KEY = "lensnet.preprocess_stats"
OPSET = 17
LABEL_INDEX = {c: i for i, c in enumerate(CLASSES)}


def load(path: Path) -> dict:
    """The tensors, labels and bookkeeping columns of an exported Parquet file."""
    t = pq.read_table(path)
    n = t.num_rows
    seq = t.column("seq").combine_chunks().values.to_numpy(zero_copy_only=False)
    seq = seq.astype(np.float32).reshape(n, len(SITES), SEQ_LEN, len(CHANNELS))
    diag = t.column("diag").combine_chunks().values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(n, -1)
    labels = np.array([LABEL_INDEX[x] for x in t.column("label").to_pylist()], dtype=np.int64)
    meta = t.schema.metadata or {}
    if STATS_KEY.encode() not in meta:
        # Rust's writer puts the statistics in the Parquet file's key-value metadata, which
        # pyarrow does not copy into the Arrow schema when the file carries an ARROW:schema.
        meta = pq.ParquetFile(path).metadata.metadata or {}
    if not meta.get(STATS_KEY.encode()):
        sys.exit(f"{path} has no {STATS_KEY} key-value metadata")
    out = {"seq": seq, "diag": diag, "y": labels, "stats": meta.get(STATS_KEY.encode(), b"").decode()}
    for name in ["star", "candidate_id", "class", "subtype", "now", "t0", "te", "u0", "field", "season", "sim_seed"]:
        if name in t.column_names:
            out[name] = np.array(t.column(name).to_pylist())
    return out


def narrow(d: dict, width: int) -> dict:
    """Keep the first `width` diagnosis values (0: all) and the statistics of those only: a
    model trained on a prefix of DIAGNOSIS_NAMES, as the scorer expects (`lensnet.diag_names`)."""
    if width <= 0 or width >= d["diag"].shape[1]:
        return d
    d = dict(d, diag=np.ascontiguousarray(d["diag"][:, :width]))
    if d.get("stats"):
        st = json.loads(d["stats"])
        for key in ("diag_names", "diag_asinh", "diag"):
            st[key] = st[key][:width]
        d["stats"] = json.dumps(st, indent=2)
    return d


def load_all(paths: list[Path], width: int = 0) -> dict:
    """Several exports concatenated, each cut to the first `width` diagnosis values (0: all);
    they must share the preprocessing statistics of those values (an export made with a 47-wide
    model's statistics, such as a vetting export, joins 53-wide ones when training at 47)."""
    parts = [narrow(load(p), width) for p in paths]
    widths = {p["diag"].shape[1] for p in parts}
    if len(widths) > 1:
        sys.exit(f"the training files hold {sorted(widths)} diagnosis values: pass --diag-width {min(widths)} (or re-export)")
    def same(a, b) -> bool:
        # Rust's JSON reader can round the last bit of a number it reads back: compare values.
        if isinstance(a, dict):
            return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        if isinstance(a, list):
            return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
        if isinstance(a, float):
            return abs(a - b) <= 1e-12 * max(1.0, abs(a))
        return a == b
    first = json.loads(parts[0]["stats"])
    if not all(same(first, json.loads(p["stats"])) for p in parts[1:]):
        sys.exit("the training files were exported with different preprocessing statistics")
    keys = set.intersection(*(set(k for k, v in p.items() if isinstance(v, np.ndarray)) for p in parts))
    out = {k: np.concatenate([p[k].astype(object) if p[k].dtype.kind in "OUS" else p[k] for p in parts]) for k in keys}
    out["stats"] = parts[0]["stats"]
    return out


def check_accuracy(probs: np.ndarray, binary: np.ndarray, y: np.ndarray) -> dict[str, str]:
    """The card's check accuracies: 3-class argmax, and binary >= 0.5 against yes-or-maybe."""
    return {
        "lensnet.check_acc3": f"{float((probs.argmax(1) == y).mean()):.4f}",
        "lensnet.check_acc2": f"{float(((binary[:, 0] >= 0.5) == (y < 2)).mean()):.4f}",
    }


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class SiteBranch(nn.Module):
    """A GRU over one site's sequence, read newest-first; the state after the last real point."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.gru = nn.GRU(input_size=len(CHANNELS), hidden_size=hidden, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, L, C]
        mask = x[:, :, -1]
        n = mask.sum(dim=1).to(torch.int64)
        rev = torch.flip(x, dims=[1])
        out, _ = self.gru(rev)
        idx = torch.clamp(n - 1, min=0).view(-1, 1, 1).expand(-1, 1, self.hidden)
        last = torch.gather(out, 1, idx).squeeze(1)
        return last * (n > 0).to(last.dtype).unsqueeze(1)


class LensNetV1(nn.Module):
    def __init__(self, n_diag: int, hidden: int, diag_hidden: int, head: int, dropout: float) -> None:
        super().__init__()
        self.sites = nn.ModuleList([SiteBranch(hidden) for _ in SITES])
        self.diag = nn.Sequential(
            nn.Linear(n_diag, 2 * diag_hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(2 * diag_hidden, diag_hidden), nn.ReLU()
        )
        self.trunk = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden * len(SITES) + diag_hidden, head), nn.ReLU(), nn.Dropout(dropout))
        self.cls = nn.Linear(head, len(CLASSES))
        self.bin = nn.Linear(head, 1)

    def logits(self, seq: torch.Tensor, diag: torch.Tensor):
        feats = [branch(seq[:, i]) for i, branch in enumerate(self.sites)]
        h = self.trunk(torch.cat(feats + [self.diag(diag)], dim=1))
        return self.cls(h), self.bin(h)

    def forward(self, seq: torch.Tensor, diag: torch.Tensor):
        c, b = self.logits(seq, diag)
        return torch.softmax(c, dim=1), torch.sigmoid(b)


def augment(seq: torch.Tensor, gen: torch.Generator, drop_p: float, jitter: float) -> torch.Tensor:
    seq = seq.clone()
    b = seq.shape[0]
    has = seq[:, :, :, -1].sum(dim=2) > 0  # [B, 3]
    multi = has.sum(dim=1) > 1
    drop = (torch.rand(b, generator=gen) < drop_p) & multi
    if drop.any():
        # Drop a random site among those with data.
        scores = torch.rand(b, len(SITES), generator=gen) * has
        site = scores.argmax(dim=1)
        rows = torch.nonzero(drop).squeeze(1)
        seq[rows, site[rows]] = 0.0
    if jitter > 0:
        noise = torch.randn(seq.shape[:3], generator=gen) * jitter
        seq[:, :, :, 0] += noise * seq[:, :, :, -1]
    return seq


def evaluate(model: LensNetV1, seq, diag, y, ce, bce, batch: int):
    model.eval()
    losses, probs, bins = [], [], []
    with torch.no_grad():
        for i in range(0, len(y), batch):
            s, d, t = seq[i : i + batch], diag[i : i + batch], y[i : i + batch]
            c, b = model.logits(s, d)
            losses.append(float(ce(c, t) + bce(b.squeeze(1), (t < 2).float())) * len(t))
            probs.append(torch.softmax(c, 1))
            bins.append(torch.sigmoid(b))
    p = torch.cat(probs).numpy()
    bb = torch.cat(bins).numpy()[:, 0]
    yn = y.numpy()
    return {
        "loss": sum(losses) / len(y),
        "acc3": float((p.argmax(1) == yn).mean()),
        "acc2": float(((bb >= 0.5) == (yn < 2)).mean()),
    }, p, bb


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=Path, nargs="+", required=True,
                    help="one or more tensor Parquet files exported with the same preprocessing statistics")
    ap.add_argument("--test", type=Path, help="test Parquet (simulator seeds never used in training) for the ONNX check")
    ap.add_argument("--out", type=Path, default=ROOT / "models" / "lensnet-v2.onnx")
    ap.add_argument("--real-repeat", type=int, default=1,
                    help="times each row of a real-archive or vetted export (subtype real, injected, variant or vetted) is seen per epoch")
    ap.add_argument("--description", default="lensnet: multi-branch GRU vetting model")
    ap.add_argument("--hidden", type=int, default=48)
    ap.add_argument("--diag-hidden", type=int, default=32)
    ap.add_argument("--head", type=int, default=64)
    ap.add_argument("--dropout", type=float, default=0.15)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--max-epochs", type=int, default=30)
    ap.add_argument("--patience", type=int, default=4)
    ap.add_argument("--budget-minutes", type=float, default=12.0, help="stop starting epochs after this")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=20260601)
    ap.add_argument("--val-share", type=float, default=0.15)
    ap.add_argument("--diag-width", type=int, default=0,
                    help="train on the first N diagnosis values of the exports (0: all; 47 = the first version's list, as lensnet-v1 and -v2)")
    ap.add_argument("--exclude-stars", type=Path,
                    help="a file of star ids, one a line: their rows (and those made from them: HOST+inj..., HOST+var...) "
                         "are left out, for cross-validation folds (models/train/cv)")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.set_num_threads(args.threads)
    t_start = time.time()

    data = load_all(args.train, args.diag_width)
    if args.exclude_stars:
        out = {line.strip() for line in args.exclude_stars.read_text().splitlines() if line.strip()}
        host = np.array([str(s).split("+")[0] for s in data["star"]])
        keep = ~np.isin(host, sorted(out))
        print(f"--exclude-stars: {int((~keep).sum())} rows of {len(out)} listed stars left out", flush=True)
        data = {k: (v[keep] if isinstance(v, np.ndarray) and len(v) == len(keep) else v) for k, v in data.items()}
    n = len(data["y"])
    # Validation split grouped by star (the same star appears at several cut-offs; an injected
    # star or a resampled variant goes with its host, `HOST+inj...`, `HOST+var...`; real star ids hold no `+`).
    key = np.array([hashlib.sha256(f"{str(s).split('+')[0]}|{x}".encode()).digest()[0] for s, x in zip(data["star"], data["sim_seed"])])
    val = key < int(256 * args.val_share)
    tr = ~val
    seq = torch.from_numpy(data["seq"])
    diag = torch.from_numpy(data["diag"])
    y = torch.from_numpy(data["y"])
    counts = np.bincount(data["y"][tr], minlength=3).astype(np.float64)
    print(f"loaded {n} candidates ({counts.astype(int).tolist()} yes/maybe/no in train, {int(val.sum())} validation) "
          f"in {time.time() - t_start:.0f}s", flush=True)
    w3 = torch.tensor(counts.sum() / (3 * np.maximum(counts, 1)), dtype=torch.float32)
    pos = counts[0] + counts[1]
    ce = nn.CrossEntropyLoss(weight=w3)
    bce = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(counts[2] / max(pos, 1.0), dtype=torch.float32))

    # The export's width decides which prefix of DIAGNOSIS_NAMES the model takes (47 for the
    # exports of version 1; 53 with the history features).
    names = diagnosis_names()[: data["diag"].shape[1]]
    if data["diag"].shape[1] != len(names):
        sys.exit(f"the training set has {data['diag'].shape[1]} diagnosis values, more than the {len(names)} names of the Rust source")
    stats_names = json.loads(data["stats"]).get("diag_names", []) if data["stats"] else names
    if stats_names != names:
        sys.exit(f"the training set's preprocess statistics name {len(stats_names)} diagnosis features, its diag column has {len(names)}")
    model = LensNetV1(len(names), args.hidden, args.diag_hidden, args.head, args.dropout)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=1)
    gen = torch.Generator().manual_seed(args.seed)
    real = np.isin(data.get("subtype", np.array([""] * n)), ["real", "injected", "variant", "vetted"])
    tr_rows = np.nonzero(tr)[0]
    if args.real_repeat > 1:
        tr_rows = np.concatenate([tr_rows] + [np.nonzero(tr & real)[0]] * (args.real_repeat - 1))
    print(f"real-archive rows: {int(real.sum())} ({int((tr & real).sum())} in train, seen {args.real_repeat}x per epoch)", flush=True)
    tr_idx = torch.from_numpy(tr_rows)
    va_idx = torch.from_numpy(np.nonzero(val)[0])
    best, best_state, bad, history = float("inf"), None, 0, []
    for epoch in range(args.max_epochs):
        if (time.time() - t_start) / 60 > args.budget_minutes:
            print("time budget reached", flush=True)
            break
        model.train()
        t0 = time.time()
        perm = tr_idx[torch.randperm(len(tr_idx), generator=gen)]
        total = 0.0
        for i in range(0, len(perm), args.batch):
            b = perm[i : i + args.batch]
            s = augment(seq[b], gen, drop_p=0.1, jitter=0.03)
            c, bl = model.logits(s, diag[b])
            loss = ce(c, y[b]) + bce(bl.squeeze(1), (y[b] < 2).float())
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            total += float(loss) * len(b)
        m, _, _ = evaluate(model, seq[va_idx], diag[va_idx], y[va_idx], ce, bce, 1024)
        sched.step(m["loss"])
        history.append({"epoch": epoch + 1, "train_loss": total / len(perm), **{f"val_{k}": v for k, v in m.items()},
                        "seconds": time.time() - t0})
        print(json.dumps(history[-1]), flush=True)
        if m["loss"] < best - 1e-4:
            best, bad = m["loss"], 0
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
            if bad >= args.patience:
                print("early stop", flush=True)
                break
    train_seconds = time.time() - t_start
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    # The weights, before anything can fail in the export.
    torch.save(model.state_dict(), args.out.with_suffix(".pt.tmp"))

    # Export with the dynamic batch axis, then check onnxruntime against PyTorch.
    check = narrow(load(args.test), args.diag_width) if args.test else {k: v[val] for k, v in data.items() if isinstance(v, np.ndarray)}
    export(model, args, data, names, history, train_seconds, int(tr.sum()), int(val.sum()), check)


def export(model, args, data, names, history, train_seconds, n_train, n_val, check) -> None:
    import onnx
    import onnxruntime as ort

    out: Path = args.out
    tmp = out.with_suffix(".tmp.onnx")
    ex_seq = torch.from_numpy(check["seq"][:4])
    ex_diag = torch.from_numpy(check["diag"][:4])
    torch.onnx.export(
        model, (ex_seq, ex_diag), str(tmp),
        input_names=["seq", "diag"], output_names=["probs", "binary"],
        dynamic_axes={"seq": {0: "batch"}, "diag": {0: "batch"}, "probs": {0: "batch"}, "binary": {0: "batch"}},
        opset_version=OPSET, dynamo=False,
    )
    m = onnx.load(str(tmp))
    tmp.unlink()
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    seq, diag = check["seq"], check["diag"]
    t_p, t_b, o_p, o_b = [], [], [], []
    with torch.no_grad():
        for i in range(0, len(seq), 1024):
            a, b = model(torch.from_numpy(seq[i : i + 1024]), torch.from_numpy(diag[i : i + 1024]))
            t_p.append(a.numpy())
            t_b.append(b.numpy())
            p, bb = sess.run(["probs", "binary"], {"seq": seq[i : i + 1024], "diag": diag[i : i + 1024]})
            o_p.append(p)
            o_b.append(bb)
    t_p, t_b, o_p, o_b = map(np.concatenate, (t_p, t_b, o_p, o_b))
    diff = float(max(np.abs(t_p - o_p).max(), np.abs(t_b - o_b).max()))
    if diff > 1e-4:
        sys.exit(f"onnxruntime and PyTorch disagree by {diff:.2e} on the check split (> 1e-4)")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    y = check["y"]
    config = {k: (str(v) if isinstance(v, Path) else [str(x) for x in v] if isinstance(v, list) else v) for k, v in vars(args).items()}
    props = {
        **interface_props(names, "trained"),
        "lensnet.inputs": f"seq: float32 [batch, 3, 128, 7]; diag: float32 [batch, {len(names)}]",
        "lensnet.outputs": "probs: float32 [batch, 3] (softmax yes, maybe, no); binary: float32 [batch, 1] (P(yes or maybe))",
        STATS_KEY: data["stats"],
        "lensnet.training_data_sha256": ",".join(sha256(p) for p in args.train),
        "lensnet.training_rows": str(len(data["y"])),
        "lensnet.code_commit": commit,
        "lensnet.train_config": json.dumps(config, sort_keys=True),
        "lensnet.train_history": json.dumps(history),
        "lensnet.train_seconds": f"{train_seconds:.0f}",
        "lensnet.trained_on": "CPU (2 shared cores), no GPU",
        "lensnet.seed": str(args.seed),
        "lensnet.onnx_check_max_abs_diff": f"{diff:.2e}",
        **check_accuracy(o_p, o_b, y),
    }
    write_onnx(m, props, "lensnet models/train/train.py", args.description, out)
    card = {k: v for k, v in props.items() if k not in ("lensnet.train_history",)}
    card.update({"model": str(out.relative_to(ROOT)) if out.is_relative_to(ROOT) else str(out),
                 "model_sha256": hashlib.sha256(out.read_bytes()).hexdigest(), "bytes": out.stat().st_size,
                 "n_train": n_train, "n_val": n_val, "n_check": int(len(y)),
                 "parameters": sum(p.numel() for p in model.parameters()), "history": history})
    # The statistics also live beside the model, for readers that do not parse ONNX metadata.
    out.with_suffix(".preprocess.json").write_text(data["stats"] + "\n")
    card_path = out.with_suffix(".card.json")
    card_path.write_text(json.dumps(card, indent=1) + "\n")
    out.with_suffix(".pt.tmp").unlink(missing_ok=True)
    print(f"wrote {out} ({out.stat().st_size} bytes); onnxruntime vs torch max |diff| = {diff:.2e}; "
          f"check acc3 {props['lensnet.check_acc3']} acc2 {props['lensnet.check_acc2']}; train {train_seconds:.0f}s")


if __name__ == "__main__":
    main()
