"""Train a small language model on the corpus and export it to ONNX.

Usage (from the repository root)::

    python -m models.train --family gpt2 --d-model 128 --layers 4 --d-ff 512 \\
        --steps 600 --seed 0 --out sui_onnx/data/demo

Writes ``DIR/model.onnx``, ``DIR/tokenizer.json`` and ``DIR/train.json`` (configuration,
loss curve, final training loss, held-out perplexity on ``sui_onnx/data/heldout.txt``,
an onnxruntime-vs-PyTorch logit check and the command that reproduces it).

Training: AdamW (betas 0.9/0.95), sequence 128, batch 16, gradient clipping 1.0, cosine
decay to 10 % of the peak learning rate (2e-3; 1.5e-2 for nGPT, see ``DEFAULT_LR``). GPT-2 / LLaMA / Mix-LN use weight decay 0.1 on
matrices and a 5 % linear warm-up; nGPT uses neither (as in the paper) and re-normalizes its
weights after every step. Batches are drawn with a seeded generator, so a run is
reproducible on the same machine and thread count.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

from models.corpus import DATA_DIR, WORK_DIR, build_corpus  # noqa: E402
from models.export import export_model, onnx_feeds  # noqa: E402
from models.families import FAMILIES, build_model, lm_logits  # noqa: E402
from models.tokenizer import DEMO_VOCAB, ensure_tokenizer  # noqa: E402

TRAIN_FAMILIES = ("gpt2", "llama", "ngpt", "mixln")
# Peak learning rates. nGPT's logits are bounded by s_z (initially 1) and its scales move
# slowly, so it needs a much larger step: a 100-step check at d_model 64, 4 layers gave
# loss 7.28 / 6.44 / 5.58 at lr 2e-3 / 5e-3 / 1.5e-2 (LLaMA at 2e-3: 6.03).
DEFAULT_LR = {"gpt2": 2e-3, "llama": 2e-3, "mixln": 2e-3, "ngpt": 1.5e-2}


def tokenizer_for(vocab: int) -> Path:
    """The shipped 4096 tokenizer, or a cached one trained for another vocabulary size."""
    if vocab == DEMO_VOCAB:
        return ensure_tokenizer(vocab, DATA_DIR / "tokenizer.json")
    return ensure_tokenizer(vocab, WORK_DIR / f"tokenizer_{vocab}.json")


def encode_file(tok: Tokenizer, path: Path) -> np.ndarray:
    """Token ids of a text file, one line (paragraph) at a time, newlines kept."""
    lines = [ln + "\n" for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    ids = [i for enc in tok.encode_batch(lines) for i in enc.ids]
    return np.asarray(ids, dtype=np.int32)


def training_tokens(tok_path: Path) -> np.ndarray:
    """Token ids of the training split, cached under models/work/tokens/."""
    digest = hashlib.sha256(tok_path.read_bytes()).hexdigest()[:12]
    cache = WORK_DIR / "tokens" / f"train_{digest}.npy"
    if not cache.exists():
        files = build_corpus()
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, encode_file(Tokenizer.from_file(str(tok_path)), files.train))
    return np.load(cache)


def sample_batch(tokens: np.ndarray, rng: np.random.Generator, batch: int, seq: int) -> torch.Tensor:
    """``batch`` random windows of ``seq + 1`` tokens (inputs and shifted targets)."""
    starts = rng.integers(0, len(tokens) - seq - 1, size=batch)
    return torch.from_numpy(np.stack([tokens[s:s + seq + 1] for s in starts]).astype(np.int64))


def lm_loss(model: torch.nn.Module, window: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of a [B, T+1] window batch."""
    logits = lm_logits(model, window[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), window[:, 1:].reshape(-1))


@torch.no_grad()
def heldout_perplexity(model: torch.nn.Module, tokens: np.ndarray, seq: int, batch: int = 16) -> float:
    """Perplexity over all non-overlapping ``seq``-token windows of ``tokens``."""
    model.eval()
    n = (len(tokens) - 1) // seq
    windows = np.stack([tokens[i * seq:i * seq + seq + 1] for i in range(n)]).astype(np.int64)
    total, count = 0.0, 0
    for i in range(0, n, batch):
        w = torch.from_numpy(windows[i:i + batch])
        total += lm_loss(model, w).item() * w[:, 1:].numel()
        count += w[:, 1:].numel()
    return math.exp(total / count)


def make_optimizer(model: torch.nn.Module, family: str, lr: float) -> torch.optim.Optimizer:
    """AdamW; weight decay 0.1 on matrices except for nGPT (no decay, per the paper)."""
    decay = 0.0 if family == "ngpt" else 0.1
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warm-up then cosine decay to 10 % of ``peak``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(family: str, d_model: int, n_layers: int, d_ff: int, steps: int, seed: int, out: Path,
          vocab: int = DEMO_VOCAB, n_heads: int | None = None, lr: float | None = None, batch: int = 16,
          seq: int = 128, log_every: int = 50, command: str | None = None) -> dict:
    """Train one model, export it to ``out`` and return the ``train.json`` record."""
    if family not in TRAIN_FAMILIES:
        raise ValueError(f"--family must be one of {TRAIN_FAMILIES}")
    lr = lr or DEFAULT_LR[family]
    torch.manual_seed(seed)
    tok_path = tokenizer_for(vocab)
    tokens = training_tokens(tok_path)
    held = encode_file(Tokenizer.from_file(str(tok_path)), DATA_DIR / "heldout.txt")
    n_heads = n_heads or max(1, d_model // 32)
    model = build_model(family, d_model, n_layers, d_ff, vocab, n_heads, seed=seed)
    n_params = sum(p.numel() for p in model.parameters())
    opt = make_optimizer(model, family, lr)
    warmup = 0 if family == "ngpt" else max(1, steps // 20)
    rng = np.random.default_rng(seed)

    ppl_init = heldout_perplexity(model, held, seq)
    curve: list[list[float]] = []
    losses: list[float] = []
    t0 = time.time()
    model.train()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup)
        loss = lm_loss(model, sample_batch(tokens, rng, batch, seq))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if family == "ngpt":
            from models.ngpt import normalize_weights_
            normalize_weights_(model)
        losses.append(loss.item())
        if (step + 1) % 10 == 0 or step == 0:
            curve.append([step + 1, round(float(np.mean(losses[-10:])), 4)])
        if log_every and ((step + 1) % log_every == 0 or step + 1 == steps):
            rate = (step + 1) / (time.time() - t0)
            print(f"[{family} d_ff={d_ff}] step {step + 1}/{steps} loss {np.mean(losses[-10:]):.3f} "
                  f"({rate:.1f} steps/s)", flush=True)
    train_seconds = time.time() - t0
    model.eval()
    ppl = heldout_perplexity(model, held, seq)

    out.mkdir(parents=True, exist_ok=True)
    onnx_path = export_model(model, family, out / "model.onnx", vocab)
    shutil.copyfile(tok_path, out / "tokenizer.json")
    onnx_diff = _onnx_logit_diff(model, onnx_path, held[:2 * seq].reshape(2, seq))

    record = {
        "family": family, "exporter": FAMILIES[family].exporter,
        "activation": FAMILIES[family].activation, "activation_fn": FAMILIES[family].activation_fn,
        "d_model": d_model, "n_layers": n_layers, "d_ff": d_ff, "n_heads": n_heads,
        "vocab": vocab, "params": n_params, "seed": seed,
        "steps": steps, "batch": batch, "seq": seq, "lr": lr, "warmup_steps": warmup,
        "weight_decay": 0.0 if family == "ngpt" else 0.1,
        "tokens_seen": steps * batch * seq, "train_tokens": int(len(tokens)),
        "initial_loss": round(losses[0], 4),
        "final_loss": round(float(np.mean(losses[-20:])), 4),
        "heldout_ppl_init": round(ppl_init, 2), "heldout_ppl": round(ppl, 3),
        "heldout_file": "sui_onnx/data/heldout.txt", "heldout_tokens": int(len(held)),
        "loss_curve": curve, "train_seconds": round(train_seconds, 1),
        "threads": torch.get_num_threads(),
        "onnx_max_abs_logit_diff": onnx_diff,
        "tokenizer_sha256": hashlib.sha256(tok_path.read_bytes()).hexdigest(),
        "versions": _versions(),
        "command": command or _command(family, d_model, n_layers, d_ff, steps, seed, out, vocab, lr),
    }
    (out / "train.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def _onnx_logit_diff(model: torch.nn.Module, onnx_path: Path, ids: np.ndarray) -> float:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(None, onnx_feeds(onnx_path, ids))[0]
    with torch.no_grad():
        ref = lm_logits(model, torch.from_numpy(ids.astype(np.int64))).numpy()
    return float(np.abs(got - ref).max())


def _versions() -> dict[str, str]:
    import onnx
    import transformers
    return {"python": sys.version.split()[0], "torch": torch.__version__,
            "transformers": transformers.__version__, "onnx": onnx.__version__}


def _command(family: str, d_model: int, n_layers: int, d_ff: int, steps: int, seed: int,
             out: Path, vocab: int, lr: float) -> str:
    try:
        out_s = str(out.resolve().relative_to(Path.cwd()))
    except ValueError:
        out_s = str(out)
    return shlex.join(["python", "-m", "models.train", "--family", family, "--d-model", str(d_model),
                       "--layers", str(n_layers), "--d-ff", str(d_ff), "--steps", str(steps),
                       "--seed", str(seed), "--vocab", str(vocab), "--lr", str(lr), "--out", out_s])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=TRAIN_FAMILIES, required=True)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--d-ff", type=int, default=512)
    parser.add_argument("--heads", type=int, default=None, help="default d_model // 32")
    parser.add_argument("--vocab", type=int, default=DEMO_VOCAB)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=None, help="peak lr; default per family")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rec = train(args.family, args.d_model, args.layers, args.d_ff, args.steps, args.seed, args.out,
                vocab=args.vocab, n_heads=args.heads, lr=args.lr, batch=args.batch, seq=args.seq)
    print(f"loss {rec['initial_loss']} -> {rec['final_loss']}; held-out ppl "
          f"{rec['heldout_ppl_init']} -> {rec['heldout_ppl']}; onnx logit diff "
          f"{rec['onnx_max_abs_logit_diff']:.2e}; wrote {args.out}")


if __name__ == "__main__":
    main()
