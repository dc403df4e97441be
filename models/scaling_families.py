"""Train the GPT-2, LLaMA, nGPT and Mix-LN families over a sweep of FFN widths.

Every run shares depth, d_model, data, seed, steps and optimizer settings (the peak learning
rate is per family, ``models.train.DEFAULT_LR``); only the family and ``d_ff`` change.
Defaults: d_model 64, 4 layers, 400 steps of 16 x 128 tokens, vocab 4096, widths 1x, 2x,
3x, 4x and 8x ``d_model`` (64 ... 512). Each run is a
:func:`models.train.train` call writing ``OUT/FAMILY_wD_FF/{model.onnx,tokenizer.json,
train.json}``; finished runs (``train.json`` present) are skipped unless ``--force``.
``OUT/summary.json`` collects the results. The spectral analysis itself is not run here
(use the package's report command on the folders).

Usage::

    nice -n 10 python -m models.scaling_families                 # -> models/work/scaling/
                                                                  # (about 30 min on 2 cores)
    python -m models.scaling_families --families gpt2 --steps 50  # quick look
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from models.corpus import WORK_DIR
from models.train import TRAIN_FAMILIES, train

DEFAULT_OUT = WORK_DIR / "scaling"
DEFAULT_MULTIPLIERS = (1, 2, 3, 4, 8)


def run_sweep(families: list[str], d_model: int, n_layers: int, multipliers: list[int],
              steps: int, seed: int, out: Path, lr: float | None, force: bool = False) -> list[dict]:
    """Train every (family, width) pair; return one summary row per run."""
    rows = []
    for family in families:
        for mult in multipliers:
            d_ff = mult * d_model
            run_dir = out / f"{family}_w{d_ff}"
            record_path = run_dir / "train.json"
            if record_path.exists() and not force:
                rec = json.loads(record_path.read_text())
                print(f"skip {run_dir.name} (done)")
            else:
                rec = train(family, d_model, n_layers, d_ff, steps, seed, run_dir, lr=lr,
                            log_every=max(50, steps // 4))
            rows.append({"run": run_dir.name, "family": family, "d_ff": d_ff,
                         "ffn_multiplier": mult, "params": rec["params"], "lr": rec["lr"],
                         "final_loss": rec["final_loss"], "heldout_ppl": rec["heldout_ppl"],
                         "train_seconds": rec["train_seconds"],
                         "onnx_max_abs_logit_diff": rec["onnx_max_abs_logit_diff"]})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=list(TRAIN_FAMILIES), choices=TRAIN_FAMILIES)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--multipliers", type=int, nargs="+", default=list(DEFAULT_MULTIPLIERS))
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--lr", type=float, default=None, help="peak lr; default per family")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; 1 is faster than 2 on a shared 2-core machine")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--force", action="store_true", help="retrain finished runs")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    rows = run_sweep(args.families, args.d_model, args.layers, args.multipliers, args.steps,
                     args.seed, args.out, args.lr, args.force)
    summary = {"d_model": args.d_model, "n_layers": args.layers, "steps": args.steps,
               "lr": args.lr, "seed": args.seed, "wall_seconds": round(time.time() - t0, 1),
               "runs": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"{'run':16s} {'params':>9s} {'loss':>7s} {'ppl':>8s} {'sec':>6s}")
    for r in rows:
        print(f"{r['run']:16s} {r['params']:9d} {r['final_loss']:7.3f} {r['heldout_ppl']:8.2f} "
              f"{r['train_seconds']:6.0f}")
    print(f"wrote {args.out}/summary.json ({summary['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
