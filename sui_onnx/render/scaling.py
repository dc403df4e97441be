"""The scaling analysis in the terminal (``ScalingResult.__rich__``): tables of the widths, the fits,
the layers and the seeds, then the asymmetry, R^2, saturation and SUI-peak lines."""

from __future__ import annotations

import math
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from ..fmt import fmt_width
from ..safeio import printable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # scaling imports this module (ScalingResult.__rich__), never the other way round
    from ..scaling import ScalingResult


def seed_label(seed: Any) -> str:
    """A model's seed as the tables show it: a report that records none is "no seed"."""
    return "no seed" if seed is None else str(seed)


def _num(value: float | None, fmt: str = ".3f") -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return format(value, fmt)


def _ci(ci) -> str:
    lo, hi = ci
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "n/a"
    return f"[{lo:.3f}, {hi:.3f}]"


def _pm(fit) -> str:
    lo, hi = fit.beta_ci95
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return _num(fit.beta)
    return f"{fit.beta:.3f} ± {(hi - lo) / 2:.3f}"


def _mean_sd(spread, fmt: str = ".2f") -> str:
    return _num(spread.mean, fmt) if spread.n < 2 else f"{_num(spread.mean, fmt)} ± {_num(spread.sd, fmt)}"


def _r2(result, fit) -> str:
    """R^2 with a trailing '!' when it is below --min-r2 (the legend line under the tables says so)."""
    return _num(fit.r2) + (" !" if result.low_r2(fit) else "")


def scaling_renderables(result: ScalingResult) -> list[Any]:
    """The scaling analysis in the terminal: per width, the fits (with the paper's values as a
    labelled comparison row), per layer, per seed, then the verdict lines."""
    family = ", ".join(f"{k} {v if isinstance(v, str) else '/'.join(v)}" for k, v in result.family.items())

    seeds = result.seeds
    n_seeds = f", {len(seeds)} seeds ({', '.join(map(seed_label, seeds))})" if len(seeds) > 1 else ""
    head = Text(printable(f"Spectral scaling over {len(result.models)} widths{n_seeds}, {result.n_layers} FFN layers"
                f"{', site ' + result.site if result.site else ''}{' (' + family + ')' if family else ''}"),
                style="bold")

    pooled = len(result.runs) > len(result.models)
    widths = Table(title="Per width (median over usable layers" + ("; mean ± SD over seeds" if pooled else "") + ")",
                   title_justify="left")
    for col in ("D", *(("seeds",) if pooled else ()), "layers", "tokens", "hard rank", "soft rank", "hard/D", "soft/D", "SUI"):
        widths.add_column(col, justify="right")
    for m in result.models:
        peak = " *" if m.width == result.sui_peak["width"] else ""
        widths.add_row(str(m.width), *((str(len(m.runs)),) if pooled else ()), f"{m.usable_layers}/{m.n_layers}",
                       f"{m.min_tokens:,}", _mean_sd(m.spread("hard")), _mean_sd(m.spread("soft")),
                       _num(m.median_hard / m.width), _num(m.median_soft / m.width),
                       _mean_sd(m.spread("sui"), ".3f") + peak)

    fits = Table(title="Power-law fits: rank = A * D^beta (median over layers)", title_justify="left")
    for col in ("quantity", "beta", "95% CI", "A", "R^2", "resid sd", "n"):
        fits.add_column(col, justify="right" if col != "quantity" else "left")
    for name, fit in (("soft rank", result.soft), ("hard rank", result.hard)):
        fits.add_row(name, _num(fit.beta), _ci(fit.beta_ci95), _num(fit.A, ".4g"), _r2(result, fit),
                     _num(fit.residual_sd, ".3g"), str(fit.n))
    a = result.asymmetry
    fits.add_row("soft - hard", _num(a.beta), _ci(a.beta_ci95), "", "", "", str(a.n))
    fits.add_section()
    ref = result.paper_reference
    for name, key in (("soft rank", "soft"), ("hard rank", "hard")):
        fits.add_row(f"paper: {name}", _num(ref[key][0]), "", "", _num(ref[key][1]), "", "", style="dim")
    fits.add_row("paper: soft - hard", _num(ref["soft"][0] - ref["hard"][0]), "", "", "", "", "", style="dim")
    fits.caption = ref["caption"]
    fits.caption_justify = "left"

    layers = Table(title="Per layer (beta with its 95% half-width)", title_justify="left")
    for col in ("layer", "beta soft", "R^2", "beta hard", "R^2 ", "soft - hard"):
        layers.add_column(col, justify="right")
    for x in result.layers:
        if x.soft is None:
            layers.add_row(str(x.layer), f"no fit ({len(set(x.widths))} widths)", "", "", "", "")
            continue
        layers.add_row(str(x.layer), _pm(x.soft), _r2(result, x.soft), _pm(x.hard), _r2(result, x.hard),
                       _pm(x.asymmetry))
    parts = [head, widths, fits, layers]
    if result.seed_fits:
        per_seed = Table(title="Per seed (each seed's models alone, median over layers)", title_justify="left")
        for col in ("seed", "widths", "beta soft", "R^2", "beta hard", "R^2 ", "soft - hard"):
            per_seed.add_column(col, justify="right")
        for f in result.seed_fits:
            per_seed.add_row(printable(seed_label(f.seed)), str(len(f.widths)), _pm(f.soft), _r2(result, f.soft), _pm(f.hard),
                             _r2(result, f.hard), _pm(f.asymmetry))
        parts.append(per_seed)

    sat = result.saturation
    if sat.status == "reached":
        where = {"below": "below the measured widths", "within": "within the measured widths",
                 "above": "above the measured widths (extrapolated)"}[sat.position]
        sat_line = f"D* = {fmt_width(sat.width)} ({where})"
    elif sat.status == "no_growth":
        sat_line = "not defined: the fitted hard rank does not grow with width (beta_hard <= 0)"
    else:
        sat_line = "not reached: beta_hard >= 1, the slope never falls"
    lines = Text()
    verdict = result.asymmetry_verdict
    meaning = {"above 0": "soft rank grows faster than hard rank, as in the paper",
               "includes 0": "not distinguishable from equal exponents at this confidence",
               "below 0": "hard rank grows faster than soft rank, unlike the paper",
               "undefined": "no interval with fewer than 3 widths"}[verdict]
    lines.append(f"asymmetry beta_soft - beta_hard = {_num(a.beta)}, 95% CI {_ci(a.beta_ci95)}: {verdict} "
                 f"({meaning})\n")
    low = [f"median {k}" for k, fit in (("soft", result.soft), ("hard", result.hard)) if result.low_r2(fit)]
    for k in ("soft", "hard"):
        ids = [str(x.layer) for x in result.layers if result.low_r2(getattr(x, k))]
        if ids:
            low.append(f"{k} of layer{'s' if len(ids) > 1 else ''} {', '.join(ids)}")
    if low:
        lines.append(f"! R^2 below {result.min_r2:g} (--min-r2: not a clean power law): {', '.join(low)}\n")
    for warning in result.warnings:
        lines.append(f"! {printable(warning)}\n")
    lines.append(f"hard-rank saturation (d hard / d D = beta_hard * hard / D < {sat.tau:g}): {sat_line}; "
                 f"slope at D = {max(result.widths):,}: {_num(sat.slope_at_max_width, '.4g')}\n")
    peak = result.sui_peak
    edge = {"smallest": " (the smallest measured width: the peak may lie below)",
            "largest": " (the largest measured width: the peak may lie above)", "interior": ""}[peak["position"]]
    lines.append(f"SUI peak: D = {peak['width']:,}, median SUI {_num(peak['median_sui'])}{edge}")
    return [*parts, lines]


def scaling_renderable(result: ScalingResult) -> Group:
    return Group(*scaling_renderables(result))
