"""Layer status, summary statistics over layers, and FFN-width advice (docs/metrics.md).

Pure: numbers in, numbers out. Advice is advisory and carries its assumptions with it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .metrics import energy_key, energy_shares, energy_width
from .metrics import METRIC_KEYS

if TYPE_CHECKING:  # report imports this module, never the other way round
    from .report import LayerResult

# Layer status values, most severe first; `flags` may hold several, `status` is the most severe.
STATUS_ORDER = ("non_finite", "degenerate", "rank_capped", "low_tokens", "ok")
UNUSABLE_STATUSES = ("non_finite", "degenerate")  # no spectrum, no metrics; the others have all of them

LOW_TOKENS_FACTOR = 4  # N < 4 D: metrics biased low
RECOMMENDED_TOKENS_FACTOR = 10


def token_flags(n: int, width: int) -> list[str]:
    """Flags that depend only on the token count against the width."""
    flags = []
    if n - 1 < width:
        flags.append("rank_capped")
    if n < LOW_TOKENS_FACTOR * width:
        flags.append("low_tokens")
    return flags


def worst_status(flags: Sequence[str]) -> str:
    for status in STATUS_ORDER:
        if status in flags:
            return status
    return "ok"


def status_message(flags: Sequence[str], n: int, width: int) -> str:
    parts = []
    if "non_finite" in flags:
        parts.append("activations contained NaN/Inf (fp16 overflow?); layer excluded")
    if "degenerate" in flags:
        parts.append("zero variance: every token gives the same activation")
    if "rank_capped" in flags:
        parts.append(f"N-1={n - 1} < D={width}: rank capped by the token count")
    elif "low_tokens" in flags:
        parts.append(f"N={n} < 4D={LOW_TOKENS_FACTOR * width}: metrics biased low; use N >= {RECOMMENDED_TOKENS_FACTOR * width}")
    return "; ".join(parts)


def summarize(layers: Sequence[LayerResult]) -> dict[str, Any]:
    """Median and spread over the usable layers of each metric; counts of statuses."""
    usable = [layer for layer in layers if layer.usable]
    out: dict[str, Any] = {
        "n_layers": len(layers),
        "usable_layers": len(usable),
        "statuses": {s: sum(1 for x in layers if x.status == s) for s in STATUS_ORDER if any(x.status == s for x in layers)},
        "widths": sorted({x.width for x in layers}),
        "min_tokens": min((x.tokens for x in layers), default=0),
    }
    for key in METRIC_KEYS:
        vals = np.array([getattr(x, key) for x in usable], dtype=np.float64)
        if vals.size == 0:
            out[key] = None
            continue
        q25, med, q75 = np.quantile(vals, [0.25, 0.5, 0.75])
        worst_layer = usable[int(np.argmin(vals) if key != "concentration" else np.argmax(vals))].layer
        out[key] = {
            "median": float(med),
            "mean": float(vals.mean()),
            "min": float(vals.min()),
            "max": float(vals.max()),
            "q25": float(q25),
            "q75": float(q75),
            "worst_layer": worst_layer,
        }
    return out


def width_advice(
    layers: Sequence[LayerResult],
    eigenvalues: Sequence[np.ndarray | None],
    q: float = 0.95,
    quantile: float = 1.0,
    align: int = 64,
    run_tokens: int | None = None,
) -> dict[str, Any]:
    """Recommended FFN width: the `quantile` over layers of k_q, rounded up to a multiple of
    `align` (never above the current width), with the share of FFN parameters and FLOPs it saves
    and the variance each layer would lose if its hidden activation were truncated to that width."""
    if not 0 < q <= 1:
        raise ValueError("advice energy level q must be in (0, 1]")
    if not 0 <= quantile <= 1:
        raise ValueError("advice quantile must be in [0, 1]")
    if align < 1:
        raise ValueError("alignment must be a positive integer")
    assumptions = [
        f"keeps at least {q:.0%} of each layer's hidden-activation variance (k_q with q = {q}) "
        f"for the {quantile:.0%} quantile of layers (1.0 = every layer)",
        f"rounded up to a multiple of {align} for hardware-friendly shapes",
        "FFN parameters and FLOPs scale linearly with d_ff (true for dense and gated FFNs)",
        "variance kept is what a rank-k projection of the activation keeps; accuracy after "
        "pruning or retraining must be measured, this is a capacity estimate from calibration data",
    ]
    usable = [(layer, ev, energy_shares(ev)) for layer, ev in zip(layers, eigenvalues) if layer.usable and ev is not None]
    current = max((layer.width for layer in layers), default=0)
    if not usable:
        return {"q": q, "quantile": quantile, "align": align, "current_width": current,
                "recommended_width": None, "assumptions": assumptions, "per_layer": []}
    per_layer = []
    kq = []
    for layer, ev, _ in usable:
        k = energy_width(ev, q)
        kq.append(k)
        per_layer.append({
            "layer": layer.layer,
            "width": layer.width,
            **{energy_key(level): layer.energy_widths.get(energy_key(level)) for level in (0.90, 0.95, 0.99)},
            "k_q": k,
            "hard_rank": layer.hard_rank,
            "soft_rank": layer.soft_rank,
            "hard_width": math.ceil(layer.hard_rank - 1e-9),
            "soft_width": math.ceil(layer.soft_rank - 1e-9),
        })
    needed = int(np.quantile(np.array(kq), quantile, method="higher"))
    recommended = min(current, int(math.ceil(needed / align) * align))
    for entry, (_, _, p) in zip(per_layer, usable):
        keep = min(recommended, p.size)
        entry["variance_lost"] = float(max(0.0, p[keep:].sum()))
    counted = _counted(per_layer, needed, quantile, len(layers))
    thin = thin_data(layers, run_tokens)
    if thin is not None:  # starved statistics: the spectra are biased low, a width from them would be too narrow
        return {"basis": "variance", "q": q, "quantile": quantile, "align": align, "current_width": current,
                "recommended_width": None, "width_ratio": None, "withheld": thin, "counted": counted,
                "per_layer": per_layer, "assumptions": assumptions}
    saving = 1.0 - recommended / current if current else 0.0
    return {
        "basis": "variance",  # an estimate from the spectrum; report --eval adds "measured"
        "q": q,
        "quantile": quantile,
        "align": align,
        "current_width": current,
        "needed_width": needed,
        "recommended_width": recommended,
        "width_ratio": recommended / current if current else None,
        "ffn_param_saving": saving,
        "ffn_flop_saving": saving,
        "max_variance_lost": max(e["variance_lost"] for e in per_layer),
        "counted": counted,
        "per_layer": per_layer,
        "assumptions": assumptions,
    }


def thin_data(layers: Sequence[LayerResult], run_tokens: int | None = None) -> dict[str, Any] | None:
    """Why the width advice is withheld, or None: a layer with fewer than 4·D calibration tokens
    (its spectrum is biased low, so k_q and the width from it are too small). ``run_tokens``: the
    calibration run's tokens, which scale the budget advised for experts that see only a share."""
    thin = [x for x in layers if x.tokens < LOW_TOKENS_FACTOR * x.width]
    if not thin:
        return None
    width = max(x.width for x in thin)
    n = min(x.tokens for x in thin)
    budget, share = calibration_budget(thin, run_tokens)
    need = (f"{budget:,} (10·D for a layer that sees {share:.1%} of the tokens: an expert of a mixture)" if share < 1
            else f"10·D = {budget:,}")
    return {
        "reason": f"not enough calibration tokens: {n:,} < 4·D = {LOW_TOKENS_FACTOR * width:,}; pass --tokens ≥ {need}",
        "tokens": n,
        "min_tokens": LOW_TOKENS_FACTOR * width,
        "recommended_tokens": budget,
        "layers": [x.layer for x in thin],
    }


def calibration_budget(layers: Sequence[LayerResult], run_tokens: int | None) -> tuple[int, float]:
    """The calibration budget (--tokens) that gives each of ``layers`` 10·D tokens of its own, and
    the share of the run's tokens that the layer setting it saw. Each FFN of a dense model sees
    every calibration token (share 1: the budget is 10·D); an expert of a mixture sees only the
    tokens routed to it, so its share scales the budget. An expert that saw none has no share to
    scale by and counts as 10·D."""
    budget, share = RECOMMENDED_TOKENS_FACTOR * max(x.width for x in layers), 1.0
    for x in layers:
        if run_tokens and 0 < x.tokens < run_tokens:
            need = math.ceil(RECOMMENDED_TOKENS_FACTOR * x.width * run_tokens / x.tokens)
            if need > budget:
                budget, share = need, x.tokens / run_tokens
    return budget, share


def _counted(per_layer: Sequence[dict[str, Any]], needed: int, quantile: float, n_layers: int) -> dict[str, Any]:
    """Which layers the advice counted: the usable ones, those whose k_q is above the needed width
    (not covered when quantile < 1), and the one that sets it."""
    used = [e["layer"] for e in per_layer]
    above = [e["layer"] for e in per_layer if e["k_q"] > needed]
    setting = [e["layer"] for e in per_layer if e["k_q"] == needed]
    return {"layers": used, "excluded": n_layers - len(used), "above_needed": above,
            "set_by": setting[0] if setting else None}
