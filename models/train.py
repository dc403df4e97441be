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

Text: by default the Austen/KJV training split of models/corpus.py and the shipped held-out text;
``--train-text`` / ``--heldout-text`` train and evaluate on other files (the scaling recipe uses the
Python documentation of models/domains.py). ``--vocab 256`` is byte-level (models/byte_level.py: the
ids are the UTF-8 bytes, no tokenizer training). ``--eval-every N`` records the held-out loss on a
fixed set of windows every N steps (``eval_curve`` in train.json, beside the training ``loss_curve``).
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

from models.byte_level import BYTE_VOCAB, encode_text, ensure_byte_tokenizer  # noqa: E402
from models.corpus import DATA_DIR, WORK_DIR, REPO_ROOT, build_corpus  # noqa: E402
from models.export import export_model, onnx_feeds  # noqa: E402
from models.families import FAMILIES, build_model, lm_logits  # noqa: E402
from models.tokenizer import DEMO_VOCAB, ensure_tokenizer  # noqa: E402

TRAIN_FAMILIES = ("gpt2", "llama", "ngpt", "mixln")
# Peak learning rates. nGPT's logits are bounded by s_z (initially 1) and its scales move
# slowly, so it needs a much larger step: a 100-step check at d_model 64, 4 layers gave
# loss 7.28 / 6.44 / 5.58 at lr 2e-3 / 5e-3 / 1.5e-2 (LLaMA at 2e-3: 6.03).
DEFAULT_LR = {"gpt2": 2e-3, "llama": 2e-3, "mixln": 2e-3, "ngpt": 1.5e-2}


def tokenizer_for(vocab: int) -> Path:
    """The shipped 4096 tokenizer, the byte-level one (256), or a cached one trained for another size."""
    if vocab == BYTE_VOCAB:
        return ensure_byte_tokenizer(WORK_DIR / "tokenizer_bytes.json")
    if vocab == DEMO_VOCAB:
        return ensure_tokenizer(vocab, DATA_DIR / "demo" / "tokenizer.json")  # the demo model's
    return ensure_tokenizer(vocab, WORK_DIR / f"tokenizer_{vocab}.json")


def encode_file(tok: Tokenizer, path: Path) -> np.ndarray:
    """Token ids of a text file, one line (paragraph) at a time, newlines kept."""
    lines = [ln + "\n" for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    ids = [i for enc in tok.encode_batch(lines) for i in enc.ids]
    return np.asarray(ids, dtype=np.int32)


def text_tokens(tok_path: Path, path: Path) -> np.ndarray:
    """Token ids of a text file under a tokenizer, cached under models/work/tokens/. The byte-level
    tokenizer keeps the file byte for byte (what sui-onnx feeds a model from the same file); the BPE
    tokenizers encode it line by line as :func:`encode_file` does."""
    tok_digest = hashlib.sha256(tok_path.read_bytes()).hexdigest()[:12]
    text_digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    cache = WORK_DIR / "tokens" / f"text_{text_digest}_{tok_digest}.npy"
    if cache.exists():
        return np.load(cache)
    if Tokenizer.from_file(str(tok_path)).get_vocab_size() == BYTE_VOCAB:
        ids = encode_text(path.read_text(encoding="utf-8"))
    else:
        ids = encode_file(Tokenizer.from_file(str(tok_path)), path)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f"{cache.stem}.{os.getpid()}.tmp.npy")
    np.save(tmp, ids)
    os.replace(tmp, cache)
    return ids


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


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, family: str, window: torch.Tensor) -> torch.Tensor:
    """One optimizer step on one batch of windows: loss, backward, gradient clipping at 1, step, and
    nGPT's re-normalization of its weights after it. Returns the loss (before the step)."""
    loss = lm_loss(model, window)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    if family == "ngpt":
        from models.ngpt import normalize_weights_
        normalize_weights_(model)
    return loss


@torch.no_grad()
def heldout_perplexity(model: torch.nn.Module, tokens: np.ndarray, seq: int, batch: int = 16,
                       limit: int | None = None) -> float:
    """Perplexity over the non-overlapping ``seq``-token windows of ``tokens`` (the first ``limit``
    tokens' worth of windows when given)."""
    model.eval()
    n = (len(tokens) - 1) // seq
    if limit is not None:
        n = max(1, min(n, limit // seq))
    windows = np.stack([tokens[i * seq:i * seq + seq + 1] for i in range(n)]).astype(np.int64)
    total, count = 0.0, 0
    for i in range(0, n, batch):
        w = torch.from_numpy(windows[i:i + batch])
        total += lm_loss(model, w).item() * w[:, 1:].numel()
        count += w[:, 1:].numel()
    return math.exp(total / count)


def default_weight_decay(family: str) -> float:
    """0.1 on matrices, none for nGPT (per the paper: its weights live on the hypersphere)."""
    return 0.0 if family == "ngpt" else 0.1


def make_optimizer(model: torch.nn.Module, family: str, lr: float,
                   weight_decay: float | None = None) -> torch.optim.Optimizer:
    """AdamW; weight decay (default :func:`default_weight_decay`) on matrices only."""
    decay = default_weight_decay(family) if weight_decay is None else weight_decay
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


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def train(family: str, d_model: int, n_layers: int, d_ff: int, steps: int, seed: int, out: Path,
          vocab: int = DEMO_VOCAB, n_heads: int | None = None, lr: float | None = None, batch: int = 16,
          seq: int = 128, log_every: int = 50, command: str | None = None,
          train_text: Path | None = None, heldout_text: Path | None = None,
          weight_decay: float | None = None, eval_every: int = 0, eval_windows: int = 16,
          heldout_limit: int | None = None) -> dict:
    """Train one model, export it to ``out`` and return the ``train.json`` record.

    ``train_text`` / ``heldout_text``: other text than the corpus' training split / the shipped
    held-out text. ``eval_every``: record the mean loss on the first ``eval_windows`` held-out
    windows every that many steps (0: never). ``heldout_limit``: compute the held-out perplexity on
    at most that many tokens."""
    if family not in TRAIN_FAMILIES:
        raise ValueError(f"--family must be one of {TRAIN_FAMILIES}")
    lr = lr or DEFAULT_LR[family]
    decay = default_weight_decay(family) if weight_decay is None else weight_decay
    torch.manual_seed(seed)
    tok_path = tokenizer_for(vocab)
    tokens = training_tokens(tok_path) if train_text is None else text_tokens(tok_path, train_text)
    heldout_path = heldout_text or DATA_DIR / "heldout.txt"
    held = (encode_file(Tokenizer.from_file(str(tok_path)), heldout_path) if heldout_text is None
            else text_tokens(tok_path, heldout_text))
    n_heads = n_heads or max(1, d_model // 32)
    model = build_model(family, d_model, n_layers, d_ff, vocab, n_heads, seed=seed)
    n_params = sum(p.numel() for p in model.parameters())
    opt = make_optimizer(model, family, lr, decay)
    warmup = 0 if family == "ngpt" else max(1, steps // 20)
    rng = np.random.default_rng(seed)
    n_eval = max(1, min(eval_windows, (len(held) - 1) // seq))
    eval_batch = torch.from_numpy(np.stack([held[i * seq:i * seq + seq + 1] for i in range(n_eval)]).astype(np.int64))

    @torch.no_grad()
    def eval_loss() -> float:
        was_training = model.training
        model.eval()
        value = lm_loss(model, eval_batch).item()
        model.train(was_training)
        return round(value, 4)

    ppl_init = heldout_perplexity(model, held, seq, limit=heldout_limit)
    eval_curve: list[list[float]] = [[0, eval_loss()]] if eval_every else []
    curve: list[list[float]] = []
    losses: list[float] = []
    t0 = time.time()
    model.train()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup)
        loss = train_step(model, opt, family, sample_batch(tokens, rng, batch, seq))
        losses.append(loss.item())
        if (step + 1) % 10 == 0 or step == 0:
            curve.append([step + 1, round(float(np.mean(losses[-10:])), 4)])
        if eval_every and ((step + 1) % eval_every == 0 or step + 1 == steps):
            eval_curve.append([step + 1, eval_loss()])
        if log_every and ((step + 1) % log_every == 0 or step + 1 == steps):
            rate = (step + 1) / (time.time() - t0)
            print(f"[{family} d_ff={d_ff}] step {step + 1}/{steps} loss {np.mean(losses[-10:]):.3f} "
                  f"({rate:.1f} steps/s)", flush=True)
    train_seconds = time.time() - t0
    model.eval()
    ppl = heldout_perplexity(model, held, seq, limit=heldout_limit)

    out.mkdir(parents=True, exist_ok=True)
    onnx_path = export_model(model, family, out / "model.onnx", vocab)
    if not (out / "tokenizer.json").exists() or not (out / "tokenizer.json").samefile(tok_path):  # the demo: itself
        shutil.copyfile(tok_path, out / "tokenizer.json")
    onnx_diff = _onnx_logit_diff(model, onnx_path, held[:2 * seq].reshape(2, seq))

    record = {
        "family": family, "exporter": FAMILIES[family].exporter,
        "activation": FAMILIES[family].activation, "activation_fn": FAMILIES[family].activation_fn,
        "d_model": d_model, "n_layers": n_layers, "d_ff": d_ff, "n_heads": n_heads,
        "vocab": vocab, "params": n_params, "seed": seed,
        "steps": steps, "batch": batch, "seq": seq, "lr": lr, "warmup_steps": warmup,
        "weight_decay": decay,
        "tokens_seen": steps * batch * seq, "train_tokens": int(len(tokens)),
        "train_file": "corpus train split (models/corpus.py)" if train_text is None else _rel(train_text),
        "initial_loss": round(losses[0], 4),
        "final_loss": round(float(np.mean(losses[-20:])), 4),
        "heldout_ppl_init": round(ppl_init, 2), "heldout_ppl": round(ppl, 3),
        "heldout_file": _rel(heldout_path), "heldout_tokens": int(len(held)),
        "heldout_ppl_tokens": int(min(len(held) - 1, heldout_limit or len(held)) // seq * seq),
        "loss_curve": curve, "eval_every": eval_every, "eval_windows": n_eval if eval_every else 0,
        "eval_curve": eval_curve, "train_seconds": round(train_seconds, 1),
        "threads": torch.get_num_threads(),
        "onnx_max_abs_logit_diff": onnx_diff,
        "tokenizer_sha256": hashlib.sha256(tok_path.read_bytes()).hexdigest(),
        "versions": _versions(),
        "command": command or _command(family, d_model, n_layers, d_ff, steps, seed, out, vocab, lr,
                                       train_text, heldout_text, decay, eval_every),
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
             out: Path, vocab: int, lr: float, train_text: Path | None = None,
             heldout_text: Path | None = None, weight_decay: float | None = None,
             eval_every: int = 0) -> str:
    try:
        out_s = str(out.resolve().relative_to(Path.cwd()))
    except ValueError:
        out_s = str(out)
    extra = []
    if train_text is not None:
        extra += ["--train-text", _rel(train_text)]
    if heldout_text is not None:
        extra += ["--heldout-text", _rel(heldout_text)]
    if weight_decay is not None and weight_decay != default_weight_decay(family):
        extra += ["--weight-decay", str(weight_decay)]
    if eval_every:
        extra += ["--eval-every", str(eval_every)]
    return shlex.join(["python", "-m", "models.train", "--family", family, "--d-model", str(d_model),
                       "--layers", str(n_layers), "--d-ff", str(d_ff), "--steps", str(steps),
                       "--seed", str(seed), "--vocab", str(vocab), "--lr", str(lr), *extra, "--out", out_s])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=TRAIN_FAMILIES, required=True)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--d-ff", type=int, default=512)
    parser.add_argument("--heads", type=int, default=None, help="default d_model // 32")
    parser.add_argument("--vocab", type=int, default=DEMO_VOCAB, help=f"{BYTE_VOCAB}: byte-level")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=None, help="peak lr; default per family")
    parser.add_argument("--weight-decay", type=float, default=None, help="default 0.1 (nGPT: 0)")
    parser.add_argument("--train-text", type=Path, default=None, help="default: the corpus training split")
    parser.add_argument("--heldout-text", type=Path, default=None, help="default: sui_onnx/data/heldout.txt")
    parser.add_argument("--eval-every", type=int, default=0, help="held-out loss every N steps (0: never)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rec = train(args.family, args.d_model, args.layers, args.d_ff, args.steps, args.seed, args.out,
                vocab=args.vocab, n_heads=args.heads, lr=args.lr, batch=args.batch, seq=args.seq,
                train_text=args.train_text, heldout_text=args.heldout_text, weight_decay=args.weight_decay,
                eval_every=args.eval_every)
    print(f"loss {rec['initial_loss']} -> {rec['final_loss']}; held-out ppl "
          f"{rec['heldout_ppl_init']} -> {rec['heldout_ppl']}; onnx logit diff "
          f"{rec['onnx_max_abs_logit_diff']:.2e}; wrote {args.out}")


if __name__ == "__main__":
    main()
