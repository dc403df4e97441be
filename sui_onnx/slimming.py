"""Narrower models from the calibration statistics, and what they cost on held-out text.

Composes the stages (docs/slim.md): ``analyze`` runs the calibration with a statistics hook that
keeps each FFN tap's covariance and mean; ``slim`` (pure) picks the neurons and refits the down
projections; ``graph.surgery`` builds the narrower model in memory (weights stay referenced in the
original file); ``evaluate`` measures it against the original. ``SlimStudy`` holds one model's
statistics so several widths can be built and measured from one calibration run: ``sui-onnx
slim`` writes one of them, ``report --eval`` measures a ladder of them.
"""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from . import __version__

if TYPE_CHECKING:
    import onnx
from .advice import LOW_TOKENS_FACTOR, calibration_budget
from .errors import SuiError, option
from .ladder import LADDER, aligned, rung_label, width_span  # noqa: F401 (aligned re-exported)
from .defaults import DEFAULT_MAX_LOSS, SCHEDULES  # noqa: F401 (re-exported)
from .slim import (DEFAULT_RIDGE, METHODS, Refit, Selection, WeightedMoments, allocate, norm_weights, projection,
                   refit, select)

SLIM_SCHEMA = "sui-onnx/slim"
SLIM_SCHEMA_VERSION = 1


@dataclass
class Variant:
    """One narrowed (or projected) model: per-layer widths and its ModelProto (weights referenced)."""

    label: str
    kind: str                    # "slim" | "projection"
    method: str                  # id | variance | projection
    widths: list[int]
    model: onnx.ModelProto = field(repr=False)
    keep: list[np.ndarray] = field(default_factory=list, repr=False)
    residual_share: list[float] = field(default_factory=list)  # output-space error left, per layer, of the error at width 0
    residual: list[float] = field(default_factory=list)  # the same error, absolute (what --schedule per-layer minimises)


class CovarianceStore:
    """Layer -> its D x D float64 covariance. Up to ``budget`` bytes are held in memory; the layers
    past it go to .npy files in a private temporary folder and are read back memory-mapped (the
    operating system pages them in and out), so holding every layer's statistics for slim does not
    take L x D^2 x 8 bytes of memory. ``budget`` None: all in memory. ``clear()`` removes the files
    (also done when the store is collected)."""

    def __init__(self, budget: int | None):
        self.budget = budget
        self._memory: dict[int, np.ndarray] = {}
        self._files: dict[int, Path] = {}
        self._held = 0
        self._folder: Path | None = None
        self._cleanup = None

    def __setitem__(self, layer: int, cov: np.ndarray) -> None:
        cov = np.ascontiguousarray(cov, dtype=np.float64)
        self.pop(layer)
        if self.budget is None or self._held + cov.nbytes <= self.budget:
            self._memory[layer] = cov
            self._held += cov.nbytes
            return
        if self._folder is None:
            import shutil
            import tempfile
            import weakref

            self._folder = Path(tempfile.mkdtemp(prefix="sui-onnx-slim-"))
            self._cleanup = weakref.finalize(self, shutil.rmtree, str(self._folder), True)
        path = self._folder / f"layer{int(layer)}.npy"
        np.save(path, cov)
        self._files[layer] = path

    def __getitem__(self, layer: int) -> np.ndarray:
        if layer in self._memory:
            return self._memory[layer]
        return np.load(self._files[layer], mmap_mode="r")

    def __contains__(self, layer: object) -> bool:
        return layer in self._memory or layer in self._files

    def __len__(self) -> int:
        return len(self._memory) + len(self._files)

    @property
    def spilled(self) -> list[int]:
        """The layers kept on disk."""
        return sorted(self._files)

    def pop(self, layer: int) -> None:
        if layer in self._memory:
            self._held -= self._memory.pop(layer).nbytes
        path = self._files.pop(layer, None)
        if path is not None:
            path.unlink(missing_ok=True)

    def clear(self) -> None:
        self._memory.clear()
        self._files.clear()
        self._held = 0
        if self._cleanup is not None:
            self._cleanup()  # removes the folder
        self._folder, self._cleanup = None, None


def _short_list(layers: list[int], shown: int = 6) -> str:
    """'0, 4, 13' or '0, 4, 13, 18, 24, 25 and 3 more'."""
    head = ", ".join(str(x) for x in layers[:shown])
    return head + (f" and {len(layers) - shown} more" if len(layers) > shown else "")


class SlimStudy:
    """One model's FFN statistics, ready to build narrower variants of it (see module doc).
    The covariances are held in a `CovarianceStore` whose memory budget is the run's
    ``max_memory`` (given, or the share of free memory the calibration run would use)."""

    def __init__(self, model: str | Path, calib, options, ridge: float = DEFAULT_RIDGE, weighting: bool = True):
        from .analyze import analyze
        from .graph import load_model
        from .graph.surgery import plan_surgery

        if ridge < 0 or not math.isfinite(ridge):
            raise SuiError(f"{option('ridge')} must be a finite number >= 0, got {ridge}")
        self.ridge = float(ridge)
        self.src = load_model(model, lean=True)
        self.surgery = plan_surgery(self.src)  # refuses unsupported graphs before any calibration
        self.cov = CovarianceStore(self._store_budget(options, calib))
        self.mean: dict[int, np.ndarray] = {}
        self.warnings: list[str] = []
        # FFN outputs normalized on their own: token-weighted statistics, gathered in the same run
        self.weighting = {i: p.post_norm for i, p in enumerate(self.surgery.plans) if p.post_norm and weighting}
        if self.weighting and (options.run.stats is not None or options.run.resume is not None
                               or options.run.ray is not None):
            self.warnings.append("the FFN outputs are normalized per token but --stats/--resume/--ray give only "
                                 "unweighted statistics: slim minimises the plain output error (less accurate here)")
            self.weighting = {}
        self._moments = {i: WeightedMoments(self.surgery.plans[i].width) for i in self.weighting}
        self._down = {i: self._down_arrays(i) for i in self.weighting}
        opts = replace(options, site="post", include=None, exclude=None, explicit=(), statistics=self._keep,
                       activations=self._observe if self.weighting else None)
        self.report = analyze(model, calib, opts)
        for i, m in self._moments.items():
            if m.weight > 0:
                self.cov[i], self.mean[i] = m.covariance(), m.mean()
        self._moments.clear()
        widths = [p.width for p in self.surgery.plans]
        if [x.width for x in self.report.layers] != widths:
            raise SuiError("the calibration taps do not match the FFN blocks found for slimming")
        missing = [x.layer for x in self.report.layers if x.layer not in self.cov or x.tokens < 2]
        if missing and options.run.resume is not None and all(x.tokens >= 2 for x in self.report.layers):
            # a finished checkpoint: its passes are done, so the resume replays results, not statistics
            raise SuiError(f"{option('resume')} {options.run.resume} holds a finished run, whose statistics slim reads "
                           f"with {option('stats')} {options.run.resume}")
        starved = [x.layer for x in self.report.layers if x.tokens < 2]
        if starved:
            raise SuiError(f"FFN layer(s) {_short_list(starved)} saw fewer than 2 calibration tokens (experts of a mixture "
                           f"that the router seldom picks?): nothing to choose their neurons from; calibrate on more text "
                           f"({option('tokens')})")
        if missing:
            raise SuiError(f"no usable statistics for FFN layer(s) {_short_list(missing)} (NaN/Inf activations)")
        few = [x for x in self.report.layers if x.tokens < LOW_TOKENS_FACTOR * x.width]
        if few:
            n, d = min(x.tokens for x in few), max(x.width for x in few)
            budget, _ = calibration_budget(few, self.report.calibration.tokens)
            self.warnings.append(
                f"only {n:,} calibration tokens for FFNs {d:,} wide (fewer than {LOW_TOKENS_FACTOR} x D): the neurons "
                f"kept and the refit rest on too few samples; calibrate on at least {budget:,} "
                f"tokens ({option('tokens')}, or more text)")
        self.weights = [self.surgery.down_weight(i) for i in range(len(widths))]
        self._selections: dict[tuple[str, int], Selection] = {}
        self.output_weighted = True  # False: the selection's criterion is the hidden-space residual (bench ablation)

    def _store_budget(self, options, calib) -> int | None:
        """Bytes of covariances to hold in memory: --max-memory, else what the calibration run
        would take as its statistics cap (memory.default_max_memory; None when unknown)."""
        if options.runtime.max_memory is not None:
            return int(options.runtime.max_memory)
        from .memory import default_max_memory

        widths = [p.width for p in self.surgery.plans]
        return default_max_memory(self.src.model, widths, calib.batch_size * calib.seq_len, cuda=False)

    def _keep(self, i: int, acc) -> None:
        from .xp import to_numpy

        if i in self._moments and self._moments[i].weight > 0:
            return  # the token-weighted statistics of this layer are used instead
        if acc.n < 2:
            return  # no covariance: refused below, with the layers it concerns
        self.cov[i] = np.asarray(to_numpy(acc.covariance()), dtype=np.float64)
        self.mean[i] = np.asarray(to_numpy(acc.shift + acc.sum / acc.n), dtype=np.float64)

    def _down_arrays(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """The down projection (float32 W [D, m], bias [m]) that gives layer i's FFN output."""
        plan = self.surgery.plans[i]
        w = self.surgery.down_weight(i).astype(np.float32)
        b = np.zeros(plan.out_width, dtype=np.float32)
        if plan.down_bias is not None:
            b = b + self.surgery.array(plan.down_bias.name).astype(np.float32).reshape(-1) * (
                plan.down_beta if plan.down_bias.node == plan.down_node else 1.0)
        return w, b

    def _observe(self, i: int, out) -> None:
        """Per batch: weight each token by 1 / (mean square of its FFN output) (slim.norm_weights)."""
        if i not in self._moments:
            return
        from .xp import to_numpy

        h = np.asarray(to_numpy(out), dtype=np.float32).reshape(-1, self.surgery.plans[i].width)
        w, b = self._down[i]
        self._moments[i].update(h, norm_weights(h @ w + b, self.weighting[i]).astype(np.float32))

    def release(self) -> None:
        """Drop the statistics, selections and down weights (D x D and D x m per layer); variants
        built so far stay valid, new ones cannot be built."""
        self.cov.clear()
        self.mean.clear()
        self._selections.clear()
        self.weights = []

    @property
    def widths(self) -> list[int]:
        return [p.width for p in self.surgery.plans]

    def selection(self, layer: int, method: str, kmax: int) -> Selection:
        """The keep order of ``layer`` (computed once up to the largest width asked so far)."""
        if method not in METHODS:
            raise SuiError(f"{option('method')} must be one of {', '.join(METHODS)}, got {method!r}")
        cached = self._selections.get((method, layer))
        if cached is None or len(cached.order) < kmax:
            weight = self.weights[layer] if self.output_weighted else None
            cached = select(self.cov[layer], method, weight, kmax=kmax)
            self._selections[(method, layer)] = cached
        return cached

    # -- widths ------------------------------------------------------------------------------
    def uniform_widths(self, width: int | None = None, ratio: float | None = None, align: int = 64) -> list[int]:
        """Per-layer widths for --width K (capped at each layer's D) or --ratio R (aligned)."""
        if (width is None) == (ratio is None):
            raise SuiError("give exactly one of a width and a ratio")
        if width is not None:
            if width < 1:
                raise SuiError(f"{option('width')} must be at least 1, got {width}")
            return [min(int(width), d) for d in self.widths]
        if not 0 < ratio <= 1:
            raise SuiError(f"{option('ratio')} must be in (0, 1], got {ratio}")
        return [aligned(d, ratio, align) for d in self.widths]

    def per_layer_widths(self, uniform: Sequence[int], method: str, align: int) -> list[int]:
        """Widths adding up to at most the total of ``uniform`` (less where whole ``align`` steps
        cannot reach it), allocated by each layer's output-space residual curve (the greedy's
        exact residual after k neurons)."""
        total = int(sum(uniform))
        if total >= sum(self.widths):
            return list(self.widths)  # nothing to move: every layer whole
        floor = sum(min(align, d) for d in self.widths)
        if total < floor:
            raise SuiError(f"{option('schedule')} per-layer moves whole steps of {option('align')} {align} between "
                           f"layers: the total width {total} is below one step per layer ({floor}); give a wider "
                           f"width or a smaller {option('align')}")
        curves = [self.selection(i, method, d).residual for i, d in enumerate(self.widths)]
        return allocate(curves, self.widths, total, align=align)

    # -- variants ----------------------------------------------------------------------------
    def refits(self, widths: Sequence[int], method: str) -> list[tuple[Refit, float, float]]:
        """Per layer: the refit, and the output-space error left at that width (share, absolute)."""
        out = []
        for i, k in enumerate(widths):
            if k >= self.widths[i]:
                # kept whole: the original down projection is exact, and a ridge could only shrink it
                d, w = self.widths[i], self.weights[i]
                out.append((Refit(np.arange(d), w, np.zeros(w.shape[1])), 0.0, 0.0))
                continue
            sel = self.selection(i, method, k)
            r = refit(self.cov[i], self.mean[i], self.weights[i], sel.keep(k), ridge=self.ridge,
                      least_squares=method == "id")
            left = float(sel.residual[k])
            out.append((r, left / float(sel.residual[0]) if sel.residual[0] > 0 else 0.0, left))
        return out

    def variant(self, widths: Sequence[int], method: str = "id", label: str = "") -> Variant:
        """The narrowed model at ``widths`` (one per FFN layer)."""
        from .graph.surgery import LayerEdit

        if len(widths) != len(self.widths):
            raise SuiError(f"need one width per FFN layer ({len(self.widths)}), got {len(widths)}")
        fits = self.refits(widths, method)
        edits = {i: LayerEdit(r.keep, r.weight, r.bias_delta) for i, (r, _, _) in enumerate(fits)
                 if widths[i] < self.widths[i]}  # a layer kept whole is left as it is
        return Variant(label or f"{method} w={width_span(widths)}", "slim", method, list(widths),
                       self.surgery.apply(edits), [r.keep for r, _, _ in fits], [s for _, s, _ in fits],
                       [a for _, _, a in fits])

    def projection_variant(self, ranks: Sequence[int], label: str = "") -> Variant:
        """Full-width model whose FFN outputs see only the top-k principal directions of h."""
        from .graph.surgery import LayerEdit

        edits = {}
        for i, k in enumerate(ranks):
            r = projection(self.cov[i], self.mean[i], self.weights[i], int(k))
            edits[i] = LayerEdit(r.keep, r.weight, r.bias_delta)
        return Variant(label or f"projection w={width_span(ranks)}", "projection", "projection", list(ranks),
                       self.surgery.apply(edits))

    # -- counts ------------------------------------------------------------------------------
    @cached_property
    def _ffn_counts(self) -> list[tuple[float, int, int]]:
        """Per FFN block: (parameters per neuron, down bias size, output width)."""
        counts = []
        for plan, block in zip(self.surgery.plans, self.surgery.blocks):
            columns = {op.name: self.surgery.array(op.name).size for op, _ in plan.columns}
            per_neuron = (sum(u.k * u.n for u in block.ups) + sum(columns.values())) / plan.width + plan.out_width
            bias = self.surgery.array(plan.down_bias.name).size if plan.down_bias is not None else 0
            counts.append((per_neuron, bias, plan.out_width))
        return counts

    def ffn_parameters(self, widths: Sequence[int], edited: bool = True) -> int:
        """Parameters of the FFN blocks at these widths: the up/gate and down weights, the constants
        along the width (up biases, nGPT's scales), and the down bias. ``edited``: as slim writes
        them, every narrowed down projection with a bias (the mean is folded into one; a layer
        kept whole is left as it is); otherwise the source model's (a bias only where it has one)."""
        return sum(round(per_neuron * k) + (max(bias, out_width) if edited and k < d else bias)
                   for (per_neuron, bias, out_width), k, d in zip(self._ffn_counts, widths, self.widths))


def total_parameters(model: onnx.ModelProto) -> int:
    """Elements of every float initializer (weights), embedded or external."""
    import onnx

    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}
    return int(sum(int(np.prod(t.dims, dtype=np.int64)) for t in model.graph.initializer if t.data_type in floats))


def worst_delta(result) -> float | None:
    """The largest ΔCE over the eval sources (the criterion --max-loss-increase bounds)."""
    deltas = [s.delta_ce for s in result.sources if s.delta_ce is not None]
    return max(deltas) if deltas else None


def eval_summary(result) -> dict[str, Any]:
    """The numbers of a measured variant, per eval source (JSON-ready)."""
    cosines = [x.cosine for x in result.sources if x.cosine is not None]
    errors = [x.rel_error for x in result.sources if x.rel_error is not None]
    return {
        "worst_delta_ce": worst_delta(result),
        "worst_cosine": min(cosines) if cosines else None,        # encoders: hidden states against the original
        "worst_rel_error": max(errors) if errors else None,
        "sources": [{"path": s.source.get("path"), "sha256": s.source.get("sha256"), "held_out": s.source.get("held_out"),
                     "tokens": s.tokens, "ce": s.ce, "ref_ce": s.ref_ce, "delta_ce": s.delta_ce,
                     "delta_ce_se": s.delta_ce_se, "kl": s.kl, "top1": s.top1, "cosine": s.cosine,
                     "rel_error": s.rel_error} for s in result.sources],
    }


def search_width(measure: Callable[[int], float | None], align: int, width: int, limit: float,
                 log: list[dict] | None = None) -> int | None:
    """The smallest multiple of ``align`` (up to ``width``) whose measured loss increase is at
    most ``limit``, by bisection over the widths (the loss is assumed to fall as the width grows;
    every probe is measured and logged). None when even the full width minus one step fails."""
    steps = max(1, width // align)
    candidates = [min(width, j * align) for j in range(1, steps + 1)]
    if candidates[-1] != width:
        candidates.append(width)
    lo, hi = 0, len(candidates) - 1  # invariant: candidates[hi] passes (the full width costs nothing)
    best = None
    while lo < hi:
        mid = (lo + hi) // 2
        k = candidates[mid]
        delta = measure(k)
        ok = delta is not None and delta <= limit
        if log is not None:
            log.append({"width": k, "worst_delta_ce": delta, "within": ok})
        if ok:
            hi, best = mid, k
        else:
            lo = mid + 1
    return best if best is not None else (candidates[hi] if hi < len(candidates) - 1 else None)


def slim_record(study: SlimStudy, variant: Variant, request: dict, out_model: Path | None, sha256: str | None,
                evaluation: dict | None, search: list[dict], warnings: list[str], method: str, schedule: str,
                align: int) -> dict[str, Any]:
    """The content of OUT_DIR/slim.json (schema sui-onnx/slim)."""
    before = study.widths
    layers = []
    for x, k, keep, share, left in zip(study.report.layers, variant.widths, variant.keep, variant.residual_share,
                                       variant.residual):
        layers.append({"layer": x.layer, "tensor": x.tensor, "width_before": x.width, "width_after": int(k),
                       "kept": [int(i) for i in keep], "residual_share": share, "residual": left,
                       "token_weighting": study.weighting.get(x.layer)})
    return {
        "schema": SLIM_SCHEMA,
        "schema_version": SLIM_SCHEMA_VERSION,
        "tool": {"name": "sui-onnx", "version": __version__},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source_model": {"path": str(study.src.path), "sha256": study.src.sha256},
        "model": {"path": None if out_model is None else str(out_model), "sha256": sha256},
        "method": method,
        "schedule": schedule,
        "align": align,
        "ridge": study.ridge,
        "request": request,
        "calibration": study.report.calibration.to_dict(),
        "layers": layers,
        "parameters": {
            "ffn_before": study.ffn_parameters(before, edited=False),
            "ffn_after": study.ffn_parameters(variant.widths),
            "total_before": total_parameters(study.src.model),
            "total_after": total_parameters(variant.model),
        },
        "search": search,
        "eval": evaluation,
        "warnings": list(study.warnings) + list(warnings),
    }


def ladder_widths(study: SlimStudy, align: int, estimate: int | None) -> list[tuple[str, list[int]]]:
    """The widths report --eval measures: D/8, D/4, D/2, 3D/4 (aligned) and the k_q estimate ("k95
    estimate" for the default --advice-q), each as (label, per-layer widths); duplicates are measured once."""
    out: list[tuple[str, list[int]]] = []
    seen: dict[tuple[int, ...], int] = {}
    rungs = [(rung_label(num, den), [aligned(d, num / den, align) for d in study.widths]) for num, den in LADDER]
    if estimate is not None:
        rungs.append((f"{study.report.advice.estimate_key()} estimate", [min(int(estimate), d) for d in study.widths]))
    for label, widths in rungs:
        key = tuple(widths)
        if key in seen:
            prev = out[seen[key]]
            out[seen[key]] = (f"{prev[0]} = {label}", prev[1])
            continue
        if all(w == d for w, d in zip(widths, study.widths)):
            continue  # the full width costs nothing to measure
        seen[key] = len(out)
        out.append((label, widths))
    return out


def measured_advice(study: SlimStudy, evaluator, align: int, max_loss: float, estimate: int | None,
                    method: str = "id", progress_factory: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Measure the ladder (see ladder_widths) as projections and as slim models against the
    original; the recommended width is the smallest slim one whose dCE on every eval source is at
    most ``max_loss`` (None: keep the full width)."""
    from contextlib import nullcontext

    from .evaluate import ModelInput

    def run(variant):
        ctx = progress_factory() if progress_factory is not None else nullcontext(None)
        with ctx as bar:
            evaluator.progress = bar
            return evaluator.measure(ModelInput(data=variant.model.SerializeToString(),
                                                external_folder=study.src.data_folder, label=variant.label))

    full = study.ffn_parameters(study.widths, edited=False)
    rows = []
    baseline = None
    kind = None
    for label, widths in ladder_widths(study, align, estimate):
        proj = run(study.projection_variant(widths, label=f"projection {label}"))
        slim_result = run(study.variant(widths, method, label=f"slim {label}"))
        if baseline is None:
            baseline = [{"path": s.source.get("path"), "sha256": s.source.get("sha256"), "held_out": s.source.get("held_out"),
                         "tokens": s.tokens, "ce": s.ref_ce} for s in slim_result.sources]
        rows.append({
            "label": label,
            "widths": widths,
            "width": max(widths),
            "ffn_param_saving": 1.0 - study.ffn_parameters(widths) / full if full else 0.0,
            "projection": eval_summary(proj),
            "slim": eval_summary(slim_result),
        })
        kind = slim_result.kind
    passing = [r for r in rows if r["slim"]["worst_delta_ce"] is not None and r["slim"]["worst_delta_ce"] <= max_loss]
    best = min(passing, key=lambda r: sum(r["widths"])) if passing else None
    from .evaluate import held_out_warnings

    warnings = list(dict.fromkeys(held_out_warnings(evaluator.descriptions)))
    unresolved = None
    if best is not None:
        unresolved, wide = resolution(best["slim"], max_loss)
        best = None if unresolved else best
        warnings += wide
    return {
        "method": method,
        "max_loss_increase": max_loss,
        "kind": kind,
        "eval": baseline or [],
        "ladder": rows,
        "recommended_width": best["width"] if best else None,
        "recommended_widths": best["widths"] if best else None,
        "recommended_label": best["label"] if best else None,
        "ffn_param_saving": best["ffn_param_saving"] if best else 0.0,
        "unresolved": unresolved,
        "warnings": list(study.warnings) + list(warnings),
    }


MORE_HELDOUT = "give more held-out text (--eval-tokens, longer or more --eval files)"


def resolution(measured: dict[str, Any], max_loss: float) -> tuple[str | None, list[str]]:
    """Whether a measured variant (its ``eval_summary``) can resolve the budget: (why no width is
    recommended from it, or None; warnings). An eval source scored in one window has no standard
    error, so nothing is recommended from it; one whose dCE's standard error exceeds the budget is
    flagged."""
    sources = [x for x in measured["sources"] if x.get("delta_ce") is not None]
    single = [x for x in sources if x.get("delta_ce_se") is None]
    if single:
        names = ", ".join(f"{x['path']} ({x['tokens']} tokens)" for x in single)
        return f"{names} gave a single window, so its dCE has no standard error; {MORE_HELDOUT}", []
    wide = [x for x in sources if x["delta_ce_se"] > max_loss]
    if wide:
        names = ", ".join(f"{x['path']} (±{x['delta_ce_se']:.2g})" for x in wide)
        return None, [f"the dCE's standard error on {names} exceeds --max-loss-increase {max_loss:g}: the "
                      f"measurement cannot resolve the budget; {MORE_HELDOUT}"]
    return None, []


class _CrossMoments:
    """Weighted sums for regressing the original FFN output y (m wide) on the kept neurons h' of
    the narrowed model (k wide), around shifts fixed by the first batch: sum w, sum w h', sum w y,
    sum w h' h'^T, sum w h' y^T (float64)."""

    def __init__(self, k: int, m: int) -> None:
        self.weight = 0.0
        self.shift_h: np.ndarray | None = None
        self.shift_y: np.ndarray | None = None
        self.sum_h, self.sum_y = np.zeros(k), np.zeros(m)
        self.hh, self.hy = np.zeros((k, k)), np.zeros((k, m))

    def update(self, h: np.ndarray, y: np.ndarray, w: np.ndarray) -> None:
        if self.shift_h is None:
            self.shift_h, self.shift_y = h.mean(axis=0, dtype=np.float64), y.mean(axis=0, dtype=np.float64)
        ch = h - self.shift_h.astype(h.dtype)
        cy = y - self.shift_y.astype(y.dtype)
        chw = ch * w[:, None]
        self.hh += chw.T @ ch
        self.hy += chw.T @ cy
        self.sum_h += w @ ch
        self.sum_y += w @ cy
        self.weight += float(w.sum(dtype=np.float64))

    def fit(self, ridge: float) -> tuple[np.ndarray, np.ndarray]:
        """(W'' [k, m], intercept [m]) of the weighted least-squares fit y ~ h' W'' + c."""
        from .slim import solve_psd

        mh, my = self.sum_h / self.weight, self.sum_y / self.weight
        chh = self.hh / self.weight - np.outer(mh, mh)
        chy = self.hy / self.weight - np.outer(mh, my)
        chh = (chh + chh.T) / 2
        scale = float(np.trace(chh)) / chh.shape[0]
        if ridge > 0 and scale > 0:
            chh[np.diag_indices_from(chh)] += ridge * scale
        weight = solve_psd(chh, chy)
        return weight, (self.shift_y + my) - (self.shift_h + mh) @ weight


def refine(study: SlimStudy, variant: Variant, calib, device: str = "cpu", threads: int | None = None,
           progress: Callable[[int, int, str], None] | None = None, sequential: bool = False) -> Variant:
    """Refit the narrowed down projections on the inputs the narrowed model gives them: the kept
    neurons are taken from the narrowed model, the target from the original (y = h W + b), so
    each layer also corrects the error the layers before it left. The neurons kept stay the same.

    One more calibration pass refits every layer at once (each fit then sees the layers before it
    as they were before their own refit); ``sequential`` refits one layer at a time, first to
    last, each on the model whose earlier layers are already refitted: one pass per layer, each
    through the graph pruned to that layer's tap (no LM head).

    Measured, not adopted: on Gemma-3-270M both were worse than the plain refit at 3/4 and 1/2 of
    the width (bench/bench_slim_weighting.py, bench/bench_slim_sequential.py, docs/slim.md); the
    CLI does not offer them. Kept for those benchmarks."""
    from .graph import find_taps
    from .graph.surgery import LayerEdit

    n = len(study.widths)
    orig_taps = find_taps(study.src.model, site="post")
    if sequential:
        fits = study.refits(variant.widths, variant.method)
        edits = {i: LayerEdit(r.keep, r.weight, r.bias_delta) for i, (r, _, _) in enumerate(fits)}
        groups = [[i] for i in range(n)]
    else:
        edits, groups = {}, [list(range(n))]
    for group in groups:
        narrowed = study.surgery.apply(edits) if sequential else variant.model
        what = f"refitting layer {group[0] + 1}/{n}" if sequential else "refining on the narrowed model"
        moments = _cross_moments(study, narrowed, variant.widths, orig_taps, group, calib, device, threads,
                                 lambda done, total: progress(done, total, what) if progress else None)
        del narrowed
        for i, m in zip(group, moments):
            weight, intercept = m.fit(study.ridge)
            _, bias = study._down_arrays(i)
            edits[i] = LayerEdit(variant.keep[i], weight, intercept - bias.astype(np.float64))
    return Variant(variant.label + (" sequential" if sequential else " refined"), "slim", variant.method,
                   list(variant.widths), study.surgery.apply(edits), list(variant.keep), list(variant.residual_share),
                   list(variant.residual))


def _cross_moments(study: SlimStudy, narrowed: onnx.ModelProto, widths: Sequence[int], orig_taps, layers: list[int],
                   calib, device: str, threads: int | None, progress: Callable[[int, int], None]) -> list[_CrossMoments]:
    """One calibration pass through the original and the narrowed model side by side, each pruned
    to the taps of ``layers``: per layer, the moments of the narrowed model's kept activations
    against the original's FFN output (token-weighted where the study is)."""
    from .calib import CalibrationStream
    from .graph import find_taps, tapped_model
    from .runner import TapRunner
    from .xp import to_numpy

    slim_taps = find_taps(narrowed, site="post")
    if [t.width for t in slim_taps] != list(widths):
        raise SuiError("the narrowed model's FFN taps do not match its widths; cannot refine it")
    full_w = [study.widths[i] for i in layers]
    slim_w = [widths[i] for i in layers]
    runners = []
    for src, taps in ((study.src, [orig_taps[i] for i in layers]),
                      (replace(study.src, model=narrowed), [slim_taps[i] for i in layers])):
        runners.append(TapRunner(tapped_model(src, taps).SerializeToString(), [t.tensor for t in taps], device, threads,
                                 external_folder=study.src.data_folder))
    downs = [study._down_arrays(i) for i in layers]
    moments = [_CrossMoments(k, study.surgery.plans[i].out_width) for i, k in zip(layers, slim_w)]
    stream = CalibrationStream(calib, study.src.folder, full_w)
    done = 0
    for batch in stream:
        full = runners[0].run(batch.input_ids, full_w)
        narrow = runners[1].run(batch.input_ids, slim_w)
        for j, i in enumerate(layers):
            h = np.asarray(to_numpy(full[j]), dtype=np.float32).reshape(-1, full_w[j])
            hs = np.asarray(to_numpy(narrow[j]), dtype=np.float32).reshape(-1, slim_w[j])
            w, b = downs[j]
            y = h @ w + b
            kind = study.weighting.get(i)
            weights = norm_weights(y, kind).astype(np.float32) if kind else np.ones(y.shape[0], np.float32)
            moments[j].update(hs, y, weights)
        done += batch.tokens
        progress(done, stream.budget)
    return moments
