"""The scaling recipe (issue 20): GPT-2, LLaMA, nGPT and Mix-LN at many FFN widths and seeds, each model
trained, exported and analyzed on two calibrations, resumable one model at a time.

Every model of a recipe shares depth, d_model, heads, vocabulary, data, steps and optimizer settings;
only the family, ``d_ff`` and the seed change. Defaults (the settings issue 20 measured to show the law
on 2 CPU cores at small scale; all configurable):

* byte-level vocabulary (256, models/byte_level.py), d_model 128, 2 layers, 4 heads;
* d_ff 128, 192, 256, 384, 512, 768, 1024, 1536, 2048 (9 widths over 16x), seeds 0 and 1;
* AdamW, peak lr 2e-3, weight decay 0.1, 600 steps of 16 x 128 tokens (models/train.py: warm-up,
  cosine decay, clipping). nGPT keeps its own optimizer settings (lr 1.5e-2 measured in
  models/train.py, no weight decay as in the nGPT paper): ``--ngpt-lr``, ``--ngpt-weight-decay``;
* text: the Python documentation built by models/domains.py (``--text pydoc``): the library
  reference (``pydoc_calib.txt``) is the training text, tutorial/howto/faq (``pydoc_heldout.txt``)
  the held-out text. ``--text shipped`` trains on the package's ``sui_onnx/data/calib.txt`` and holds
  out ``heldout.txt`` (no download at all);
* calibration: the same budget for every width, ``max(32768, 10 x widest d_ff)`` tokens in windows of
  128, once on the held-out text (``heldout``) and once on the training text (``train``:
  the training distribution).

Per model, in order seed -> family -> width (so an interrupted sweep has whole families of the first
seed), one at a time:

1. train with models.train.train into ``WORK/NAME/FAMILY_wD_sS/`` (model.onnx, tokenizer.json,
   train.json with the training loss curve every 10 steps and the held-out loss every 50);
2. analyze it with sui-onnx on both calibrations and write
   ``REPORTS/NAME/heldout/FAMILY_wD_sS.json`` and ``REPORTS/NAME/train/FAMILY_wD_sS.json`` (report
   JSON; ``model.seed``, ``model.family`` and the training record with its loss curves in
   ``model.train``);
3. write the training record ``REPORTS/NAME/training/FAMILY_wD_sS.json`` last: a model whose three
   files exist is done and skipped; anything less is redone (a trained model in WORK whose record
   matches the recipe is only re-analyzed).

``REPORTS/NAME/recipe.json`` holds the settings; a second run with other settings under the same
``--name`` is refused (the sweep lists --families/--widths/--seeds may grow: more seeds or widths
extend the recipe). ``--dry-run`` prints the plan; ``--budget-check`` also times a short probe (a
few training steps per family at the smallest and largest width, one export and analysis at each
of those widths) and prints the estimated time of what is left. Then ``python bench/results.py``
regenerates docs/results.md from the reports.

Usage::

    python -m models.scaling_families --budget-check          # plan + measured estimate, trains nothing
    nice -n 10 python -m models.scaling_families               # the recipe (resumable)
    python -m models.scaling_families --families gpt2 --widths 64 128 256 --seeds 0 --steps 5 \\
        --name smoke --text shipped --calib-tokens 2048       # a smoke run
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from models.corpus import DATA_DIR, REPO_ROOT, WORK_DIR

DEFAULT_NAME = "bytes"
DEFAULT_REPORTS = REPO_ROOT / "models" / "reports" / "scaling"
DEFAULT_WORK = WORK_DIR / "scaling"
FAMILIES = ("gpt2", "llama", "ngpt", "mixln")
DEFAULT_WIDTHS = (128, 192, 256, 384, 512, 768, 1024, 1536, 2048)
DEFAULT_SEEDS = (0, 1)
MIN_CALIB_TOKENS = 32768
CALIBRATIONS = ("heldout", "train")
TEXTS = ("pydoc", "shipped")


# --------------------------------------------------------------------------- the recipe
@dataclass(frozen=True)
class Recipe:
    """Everything that is the same for every model of a recipe, plus the sweep."""

    name: str = DEFAULT_NAME
    families: tuple[str, ...] = FAMILIES
    widths: tuple[int, ...] = DEFAULT_WIDTHS
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    vocab: int = 256
    steps: int = 600
    batch: int = 16
    seq: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.1
    ngpt_lr: float = 1.5e-2
    ngpt_weight_decay: float = 0.0
    text: str = "pydoc"
    calib_tokens: int | None = None  # None: max(32768, 10 x widest d_ff)
    eval_every: int = 50
    eval_windows: int = 16
    heldout_limit: int = 32768  # tokens of held-out perplexity before and after training
    sweep_fields: tuple[str, ...] = field(default=("name", "families", "widths", "seeds"), repr=False)

    @property
    def tokens(self) -> int:
        """Calibration tokens per model and calibration, the same for every width."""
        if self.calib_tokens is not None:
            return self.calib_tokens
        need = max(MIN_CALIB_TOKENS, 10 * max(self.widths))
        return -(-need // self.seq) * self.seq

    def lr_for(self, family: str) -> float:
        return self.ngpt_lr if family == "ngpt" else self.lr

    def weight_decay_for(self, family: str) -> float:
        return self.ngpt_weight_decay if family == "ngpt" else self.weight_decay

    def texts(self) -> dict[str, Path]:
        """{"train": training text, "heldout": held-out text}."""
        if self.text == "shipped":
            return {"train": DATA_DIR / "calib.txt", "heldout": DATA_DIR / "heldout.txt"}
        from models.domains import build

        calib, heldout = build(WORK_DIR)  # models/work/domains/pydoc_{calib,heldout}.txt
        return {"train": calib, "heldout": heldout}

    def settings(self, texts: dict[str, Path]) -> dict[str, Any]:
        """The recipe's identity: every setting but the sweep, the resolved token budget and the
        texts' digests."""
        d = {k: v for k, v in asdict(self).items() if k not in self.sweep_fields and k != "sweep_fields"}
        d["calib_tokens"] = self.tokens
        d["texts"] = {k: {"path": _rel(p), "sha256": _sha256(p)} for k, p in texts.items()}
        return d

    def runs(self) -> list[Run]:
        return [Run(f, w, s) for s in self.seeds for f in self.families for w in self.widths]


@dataclass(frozen=True)
class Run:
    family: str
    width: int
    seed: int

    @property
    def id(self) -> str:
        return f"{self.family}_w{self.width}_s{self.seed}"


@dataclass(frozen=True)
class Paths:
    reports: Path  # REPORTS/NAME
    work: Path     # WORK/NAME

    def report(self, calibration: str, run: Run) -> Path:
        return self.reports / calibration / f"{run.id}.json"

    def record(self, run: Run) -> Path:
        return self.reports / "training" / f"{run.id}.json"

    def model_dir(self, run: Run) -> Path:
        return self.work / run.id


def _rel(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def digest(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _write_json(path: Path, data: Any) -> None:
    """Write atomically (a temporary file renamed into place): an interrupted write leaves no file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(data if isinstance(data, str) else json.dumps(data, indent=1) + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def is_done(paths: Paths, run: Run, recipe_digest: str) -> bool:
    """Both reports and the training record of the recipe exist."""
    rec = paths.record(run)
    if not (rec.is_file() and all(paths.report(c, run).is_file() for c in CALIBRATIONS)):
        return False
    try:
        return json.loads(rec.read_text()).get("recipe_digest") == recipe_digest
    except (OSError, ValueError):
        return False


def check_recipe(recipe: Recipe, paths: Paths, settings: dict[str, Any], force: bool) -> None:
    """Refuse to mix settings under one name; record the settings (recipe.json)."""
    path = paths.reports / "recipe.json"
    if path.is_file() and not force:
        old = json.loads(path.read_text()).get("settings")
        if old != settings:
            diff = sorted(k for k in set(old or {}) | set(settings) if (old or {}).get(k) != settings.get(k))
            raise SystemExit(f"{_rel(path)} was made with other settings ({', '.join(diff)}); use another --name, "
                             "or --force to redo every model")


def write_recipe(recipe: Recipe, paths: Paths, settings: dict[str, Any], argv: list[str]) -> None:
    path = paths.reports / "recipe.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    sweep = {k: sorted(set(old.get("sweep", {}).get(k, [])) | set(getattr(recipe, k)), key=lambda v: (str(type(v)), v))
             for k in ("families", "widths", "seeds")}
    # every command that added models to the set, in order (the sweep is their union)
    commands = list(old.get("commands") or ([old["command"]] if old.get("command") else []))
    command = shlex.join(["python", "-m", "models.scaling_families", *argv])
    if command not in commands:
        commands.append(command)
    _write_json(path, {"recipe": recipe.name, "settings": settings, "digest": digest(settings), "sweep": sweep,
                       "commands": commands, "versions": _versions()})


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch
    import transformers

    import sui_onnx
    return {"python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "sui_onnx": sui_onnx.__version__}


# --------------------------------------------------------------------------- one model
def analyze_model(model_dir: Path, text: Path, tokens: int, seq: int, threads: int,
                  provenance: dict[str, Any]) -> Any:
    """sui-onnx on one model and one calibration text (site post, CPU)."""
    from sui_onnx.analyze import AnalysisOptions, analyze
    from sui_onnx.calib import CalibrationSpec

    spec = CalibrationSpec(sources=[text], tokens=tokens, seq_len=seq, batch_size=8)
    return analyze(model_dir, spec, AnalysisOptions(device="cpu", threads=threads, extra_provenance=provenance))


def _report_text(report: Any) -> str:
    """The report JSON with paths relative to the repository (no machine-specific prefixes)."""
    text = report.to_json()
    root = str(REPO_ROOT) + "/"
    return text.replace(json.dumps(root)[1:-1], "")


def run_one(recipe: Recipe, run: Run, paths: Paths, settings: dict[str, Any], threads: int,
            force: bool = False, log_every: int = 100) -> dict[str, Any]:
    """Train (unless a matching trained model is in WORK), analyze on both calibrations, write the
    reports and then the training record. Returns the training record."""
    import torch

    from models.train import train

    torch.set_num_threads(threads)
    rdigest = digest(settings)
    if not force and is_done(paths, run, rdigest):
        return json.loads(paths.record(run).read_text())
    texts = recipe.texts()
    model_dir = paths.model_dir(run)
    rec = None
    work_rec = model_dir / "train.json"
    if not force and work_rec.is_file() and (model_dir / "model.onnx").is_file():
        rec = json.loads(work_rec.read_text())
        if rec.get("recipe_digest") != rdigest:
            rec = None
    if rec is None:
        if model_dir.exists():
            shutil.rmtree(model_dir)
        command = shlex.join(["python", "-m", "models.scaling_families", "--name", recipe.name, "--families",
                              run.family, "--widths", str(run.width), "--seeds", str(run.seed)])
        rec = train(run.family, recipe.d_model, recipe.n_layers, run.width, recipe.steps, run.seed, model_dir,
                    vocab=recipe.vocab, n_heads=recipe.n_heads, lr=recipe.lr_for(run.family), batch=recipe.batch,
                    seq=recipe.seq, log_every=log_every, command=command, train_text=texts["train"],
                    heldout_text=texts["heldout"], weight_decay=recipe.weight_decay_for(run.family),
                    eval_every=recipe.eval_every, eval_windows=recipe.eval_windows,
                    heldout_limit=recipe.heldout_limit)
        rec.update(recipe=recipe.name, recipe_digest=rdigest, run=run.id)
        _write_json(work_rec, rec)
    t0 = time.time()
    model_sha = _sha256(model_dir / "model.onnx")
    for calibration in CALIBRATIONS:
        out = paths.report(calibration, run)
        if out.is_file() and not force:
            try:
                if json.loads(out.read_text())["model"]["sha256"] == model_sha:
                    continue  # this very model, already analyzed
            except (OSError, ValueError, KeyError):
                pass
        prov = {"path": _rel(model_dir / "model.onnx"), "family": run.family, "seed": run.seed,
                "recipe": recipe.name, "recipe_digest": rdigest, "calibration_set": calibration,
                "calibration_text": _rel(texts[calibration]), "train": rec}
        report = analyze_model(model_dir, texts[calibration], recipe.tokens, recipe.seq, threads, prov)
        _write_json(out, _report_text(report))
    rec = {**rec, "analysis_seconds": round(time.time() - t0, 1)}
    _write_json(paths.record(run), rec)
    return rec


def _worker(args: tuple) -> tuple[str, dict[str, Any] | None, str | None]:
    recipe, run, paths, settings, threads, force = args
    try:
        return run.id, run_one(recipe, run, paths, settings, threads, force), None
    except Exception as exc:  # noqa: BLE001 - one failed model must not stop the others
        return run.id, None, f"{type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------- the probe
PROBE_TOKENS = 4096  # calibration tokens of the probe's analyses (scaled up to the recipe's budget)


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _since(start: tuple[float, float]) -> tuple[float, float]:
    wall, cpu = _clock()
    return wall - start[0], cpu - start[1]


def _eig_seconds(threads: int, size: int = 512) -> tuple[float, float]:
    """Wall and CPU seconds of one float64 eigvalsh of a size x size symmetric matrix (median of 3)."""
    import numpy as np

    a = np.random.default_rng(0).standard_normal((size, size))
    a = a @ a.T
    times = []
    for _ in range(3):
        t0 = _clock()
        np.linalg.eigvalsh(a)
        times.append(_since(t0))
    return tuple(float(np.median([t[i] for t in times])) for i in (0, 1))


def probe(recipe: Recipe, threads: int, steps: int = 2, post: bool = True) -> dict[str, Any]:
    """Time ``steps`` training steps (after one warm-up step) per family at the smallest and the largest
    width, and (``post``) the export and one analysis of the first family's models at those widths.
    The analysis runs on PROBE_TOKENS tokens; its eigenvalue part (eigvalsh of each D x D covariance,
    timed at 512 and scaled as D^3) does not grow with tokens, the rest is scaled linearly to the
    recipe's budget, and both calibrations cost the same. Wall-clock and CPU seconds are both kept:
    on a machine shared with other work the wall clock says what this load gives, the CPU time what
    free cores would (with one thread per model). Nothing is written."""
    import numpy as np
    import torch

    from models.export import export_model
    from models.families import build_model
    from models.train import make_optimizer, sample_batch, text_tokens, tokenizer_for, train_step

    torch.set_num_threads(threads)
    texts = recipe.texts()
    tok_path = tokenizer_for(recipe.vocab)
    tokens = text_tokens(tok_path, texts["train"])
    ends = sorted({min(recipe.widths), max(recipe.widths)})
    step_s: dict[str, dict[int, tuple[float, float]]] = {}
    post_s: dict[int, tuple[float, float]] = {}
    scale = recipe.tokens / min(PROBE_TOKENS, recipe.tokens)
    t_all = _clock()
    eig512 = _eig_seconds(threads) if post else (0.0, 0.0)
    for family in recipe.families:
        for width in ends:
            model = build_model(family, recipe.d_model, recipe.n_layers, width, recipe.vocab, recipe.n_heads, seed=0)
            opt = make_optimizer(model, family, recipe.lr_for(family), recipe.weight_decay_for(family))
            rng = np.random.default_rng(0)
            model.train()
            times = []
            for k in range(steps + 1):
                t0 = _clock()
                train_step(model, opt, family, sample_batch(tokens, rng, recipe.batch, recipe.seq))
                if k:
                    times.append(_since(t0))
            step_s.setdefault(family, {})[width] = tuple(float(np.median([t[i] for t in times])) for i in (0, 1))
            if post and family == recipe.families[0]:
                model.eval()
                with tempfile.TemporaryDirectory(prefix="sui_probe_") as tmp:
                    t0 = _clock()
                    export_model(model, family, Path(tmp) / "model.onnx", recipe.vocab)
                    shutil.copyfile(tok_path, Path(tmp) / "tokenizer.json")
                    export = _since(t0)
                    t0 = _clock()
                    analyze_model(Path(tmp), texts["heldout"], min(PROBE_TOKENS, recipe.tokens), recipe.seq,
                                  threads, {})
                    analysis = _since(t0)
                eig = [recipe.n_layers * eig512[i] * (width / 512) ** 3 for i in (0, 1)]
                post_s[width] = tuple(export[i] + len(CALIBRATIONS) * (eig[i] + scale * max(0.0, analysis[i] - eig[i]))
                                      for i in (0, 1))
    return {"steps": steps, "threads": threads, "widths": ends, "step_seconds": step_s, "post_seconds": post_s,
            "eig512_seconds": eig512,
            "post_family": recipe.families[0] if post else None, "probe_seconds": _since(t_all),
            "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}


def _interp(points: dict[int, float], width: int) -> float:
    """Linear in d_ff through the two measured widths (one: constant). Analysis grows faster than
    linearly in d_ff (the covariance is D x D), so between the ends this is an upper bound."""
    (w0, t0), *rest = sorted(points.items())
    if not rest:
        return t0
    w1, t1 = rest[-1]
    return t0 + (t1 - t0) * (width - w0) / (w1 - w0)


def estimate(recipe: Recipe, measured: dict[str, Any], run: Run, clock: int = 1) -> float:
    """Seconds for one model (``clock`` 0: wall clock at the probe's load, 1: CPU seconds): training
    steps, the held-out evaluations (a forward pass taken as a third of a step) and export + analysis."""
    step = _interp({w: t[clock] for w, t in measured["step_seconds"][run.family].items()}, run.width)
    forward = step / 3
    evals = (recipe.steps // max(1, recipe.eval_every) + 2) * max(1, recipe.eval_windows // recipe.batch) \
        if recipe.eval_every else 0
    ppl = 2 * -(-recipe.heldout_limit // (recipe.batch * recipe.seq))
    post = _interp({w: t[clock] for w, t in measured["post_seconds"].items()}, run.width) \
        if measured["post_seconds"] else 0.0
    return recipe.steps * step + (evals + ppl) * forward + post


# --------------------------------------------------------------------------- the command
def parse(argv: list[str] | None) -> tuple[argparse.Namespace, Recipe]:
    d = Recipe()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("sweep")
    g.add_argument("--name", default=d.name, help=f"recipe name: REPORTS/NAME, WORK/NAME (default {d.name})")
    g.add_argument("--families", nargs="+", default=list(d.families), choices=FAMILIES)
    g.add_argument("--widths", nargs="+", type=int, default=list(d.widths), metavar="D_FF")
    g.add_argument("--seeds", nargs="+", type=int, default=list(d.seeds))
    g = p.add_argument_group("model and training (the same for every model)")
    g.add_argument("--d-model", type=int, default=d.d_model)
    g.add_argument("--layers", type=int, default=d.n_layers)
    g.add_argument("--heads", type=int, default=d.n_heads)
    g.add_argument("--vocab", type=int, default=d.vocab, help="256: byte-level (default); else a trained BPE")
    g.add_argument("--steps", type=int, default=d.steps)
    g.add_argument("--batch", type=int, default=d.batch)
    g.add_argument("--seq", type=int, default=d.seq)
    g.add_argument("--lr", type=float, default=d.lr, help="peak lr of GPT-2, LLaMA and Mix-LN")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay)
    g.add_argument("--ngpt-lr", type=float, default=d.ngpt_lr)
    g.add_argument("--ngpt-weight-decay", type=float, default=d.ngpt_weight_decay)
    g.add_argument("--text", choices=TEXTS, default=d.text,
                   help="pydoc: Python documentation (models/domains.py); shipped: sui_onnx/data")
    g.add_argument("--eval-every", type=int, default=d.eval_every, help="held-out loss every N steps")
    g = p.add_argument_group("calibration")
    g.add_argument("--calib-tokens", type=int, default=None,
                   help=f"tokens per model and calibration (default max({MIN_CALIB_TOKENS}, 10 x widest d_ff))")
    g = p.add_argument_group("running")
    g.add_argument("--reports", type=Path, default=DEFAULT_REPORTS, help="default models/reports/scaling")
    g.add_argument("--work", type=Path, default=DEFAULT_WORK, help="trained models (default models/work/scaling)")
    g.add_argument("--threads", type=int, default=1,
                   help="torch / onnxruntime threads per model (default 1: these models are too small for more)")
    g.add_argument("--jobs", type=int, default=1,
                   help="models trained at once, in separate processes (2 on two free cores)")
    g.add_argument("--force", action="store_true", help="redo every model of the sweep")
    g.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    g.add_argument("--budget-check", action="store_true",
                   help="print the plan and a time estimate from a short measured probe; train nothing")
    g.add_argument("--probe-steps", type=int, default=2, help="timed steps per family and width in the probe")
    args = p.parse_args(argv)
    recipe = replace(d, name=args.name, families=tuple(args.families), widths=tuple(sorted(set(args.widths))),
                     seeds=tuple(sorted(set(args.seeds))), d_model=args.d_model, n_layers=args.layers,
                     n_heads=args.heads, vocab=args.vocab, steps=args.steps, batch=args.batch, seq=args.seq,
                     lr=args.lr, weight_decay=args.weight_decay, ngpt_lr=args.ngpt_lr,
                     ngpt_weight_decay=args.ngpt_weight_decay, text=args.text, calib_tokens=args.calib_tokens,
                     eval_every=args.eval_every)
    if args.jobs < 1 or args.threads < 1:
        p.error("--jobs and --threads must be at least 1")
    return args, recipe


def check_texts(recipe: Recipe, texts: dict[str, Path]) -> list[str]:
    """Problems that make the recipe fall short of issue 20's design (warnings, not errors)."""
    notes = []
    if len(recipe.widths) < 6 or max(recipe.widths) < 16 * min(recipe.widths):
        notes.append(f"{len(recipe.widths)} widths over {max(recipe.widths) / min(recipe.widths):g}x "
                     "(issue 20 asks for >= 6 widths over >= 16x)")
    if len(recipe.seeds) < 2:
        notes.append("one seed (issue 20 asks for >= 2)")
    if recipe.tokens < 10 * max(recipe.widths):
        notes.append(f"{recipe.tokens:,} calibration tokens < 10 x {max(recipe.widths)} (issue 20 asks for >= 10 D_max)")
    for name, path in texts.items():
        n = path.stat().st_size  # bytes >= byte-level tokens; BPE gives fewer
        if name == "heldout" and recipe.vocab == 256 and n < recipe.tokens:
            notes.append(f"the held-out text has {n:,} bytes, fewer than the {recipe.tokens:,} calibration tokens")
    return notes


def limit_blas_threads(threads: int) -> None:
    """One BLAS thread count for every library, set before numpy is imported (and inherited by the
    --jobs workers). OpenBLAS's default of one thread per core made a 2048 x 2048 eigvalsh take 15 s
    instead of 0.5 s on a loaded 2-core machine when called from sui-onnx's eigenvalue thread."""
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(threads))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, recipe = parse(argv)
    limit_blas_threads(args.threads)
    paths = Paths(args.reports / recipe.name, args.work / recipe.name)
    texts = recipe.texts()
    settings = recipe.settings(texts)
    rdigest = digest(settings)
    check_recipe(recipe, paths, settings, args.force)
    runs = recipe.runs()
    done = {r.id for r in runs if not args.force and is_done(paths, r, rdigest)}
    todo = [r for r in runs if r.id not in done]

    print(f"recipe {recipe.name!r} ({rdigest}): {len(recipe.families)} families x {len(recipe.widths)} widths x "
          f"{len(recipe.seeds)} seeds = {len(runs)} models; {len(done)} done, {len(todo)} to run")
    print(f"  models: d_model {recipe.d_model}, {recipe.n_layers} layers, {recipe.n_heads} heads, vocab {recipe.vocab}; "
          f"d_ff {', '.join(map(str, recipe.widths))}; seeds {', '.join(map(str, recipe.seeds))}")
    print(f"  training: {recipe.steps} steps of {recipe.batch} x {recipe.seq} tokens on {_rel(texts['train'])}; AdamW lr "
          f"{recipe.lr:g} wd {recipe.weight_decay:g} (nGPT lr {recipe.ngpt_lr:g} wd {recipe.ngpt_weight_decay:g}); "
          f"held-out loss every {recipe.eval_every} steps on {_rel(texts['heldout'])}")
    print(f"  calibration: {recipe.tokens:,} tokens per model in windows of {recipe.seq}, on "
          f"heldout = {_rel(texts['heldout'])} and train = {_rel(texts['train'])}")
    print(f"  reports: {_rel(paths.reports)}/{{heldout,train,training}}/FAMILY_wD_sS.json; models: {_rel(paths.work)}/")
    for note in check_texts(recipe, texts):
        print(f"  note: {note}")

    measured = None
    if args.budget_check:
        print(f"probe: {args.probe_steps} timed training steps per family at d_ff {min(recipe.widths)} and "
              f"{max(recipe.widths)}; export + one analysis ({min(PROBE_TOKENS, recipe.tokens):,} tokens) of "
              f"{recipe.families[0]} there, scaled to two analyses of {recipe.tokens:,} tokens ...", flush=True)
        measured = probe(recipe, args.threads, args.probe_steps)
        for fam, pts in measured["step_seconds"].items():
            print(f"  {fam:6s} s/step " + ", ".join(f"at {w}: {t[1]:.3f} CPU ({t[0]:.3f} wall)" for w, t in sorted(pts.items())))
        print("  export + both analyses: " + ", ".join(f"at {w}: {t[1]:.1f} s CPU ({t[0]:.1f} wall)"
                                                        for w, t in sorted(measured["post_seconds"].items()))
              + f" ({measured['post_family']}, used for every family; eigvalsh at 512: "
              f"{measured['eig512_seconds'][1]:.2f} s CPU)")
        load = measured["load_average"]
        wall, cpu = measured["probe_seconds"]
        print(f"  the probe took {wall:.0f} s ({cpu:.0f} s CPU) with {args.threads} thread(s)"
              + (f"; load average {load:.1f} on {os.cpu_count()} CPUs" if load is not None else ""))
    if args.dry_run or args.budget_check:
        print(f"{'model':22s} {'status':7s}" + (" est. CPU min" if measured else ""))
        for r in runs:
            status = "done" if r.id in done else "todo"
            est = f" {estimate(recipe, measured, r) / 60:12.1f}" if measured and r.id not in done else ""
            print(f"{r.id:22s} {status:7s}{est}")
        if measured:
            cpu = sum(estimate(recipe, measured, r) for r in todo)
            wall = sum(estimate(recipe, measured, r, clock=0) for r in todo)
            by_fam = {f: sum(estimate(recipe, measured, r) for r in todo if r.family == f) for f in recipe.families}
            print("estimate (CPU time, one core per model): " + ", ".join(f"{f} {t / 60:.0f} min" for f, t in by_fam.items())
                  + f"; total {cpu / 60:.0f} min")
            print(f"  on free cores: about {cpu / 60:.0f} min with --jobs 1 --threads {args.threads}, about "
                  f"{cpu / 60 / 2:.0f} min with --jobs 2 on 2 cores; at the probe's load (wall clock): "
                  f"{wall / 60:.0f} min with --jobs 1")
        return 0

    write_recipe(recipe, paths, settings, argv)
    t0 = time.time()
    failed = []
    jobs = [(recipe, r, paths, settings, args.threads, args.force) for r in todo]
    if args.jobs == 1:
        results = map(_worker, jobs)
    else:
        pool = ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn"))
        results = pool.map(_worker, jobs)
    for k, (rid, rec, error) in enumerate(results, 1):
        if error:
            failed.append(rid)
            print(f"[{k}/{len(todo)}] {rid}: FAILED {error}", flush=True)
            continue
        print(f"[{k}/{len(todo)}] {rid}: loss {rec['initial_loss']:.3f} -> {rec['final_loss']:.3f}, held-out ppl "
              f"{rec['heldout_ppl']:.2f}, train {rec['train_seconds']:.0f} s + analysis {rec.get('analysis_seconds', 0):.0f} s "
              f"({(time.time() - t0) / 60:.1f} min so far)", flush=True)
    print(f"{len(todo) - len(failed)} of {len(todo)} models done in {(time.time() - t0) / 60:.1f} min"
          + (f"; failed: {', '.join(failed)} (run again to retry)" if failed else "")
          + f"; next: python bench/results.py")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
