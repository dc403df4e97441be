"""PNG plots of a scaling analysis (optional `plot` extra): rank against width on log-log axes with
the fitted power laws, and SUI against width (docs/scaling.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .plots import fitted_limits, plot_folder, require_matplotlib, save_png
from .scaling import ScalingResult


def write_scaling_plots(result: ScalingResult, folder: Path) -> list[Path]:
    """Write scaling_ranks.png and scaling_sui.png into `folder` (created if needed)."""
    plt = require_matplotlib()
    folder = plot_folder(folder)
    widths = np.asarray(result.widths, dtype=np.float64)
    grid = np.geomspace(widths.min(), widths.max(), 200)
    written = []
    sub = scaling_subtitle(result)

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for key, fit, color, label in (("soft", result.soft, "tab:blue", "soft rank"),
                                   ("hard", result.hard, "tab:red", "hard rank")):
        for i in range(result.n_layers):
            ys = [getattr(m, f"layer_{key}")[i] for m in result.models]
            xs = [m.layer_widths[i] for m, y in zip(result.models, ys) if y is not None]
            ys = [y for y in ys if y is not None]
            ax.scatter(xs, ys, s=10, color=color, alpha=0.25, lw=0)
        med = [getattr(m, f"median_{key}") for m in result.models]
        ax.plot(widths, med, "o", color=color, label=f"{label} (median over layers)")
        ax.plot(grid, fit.predict(grid), "-", color=color, lw=1.2,
                label=f"fit: beta={fit.beta:.3f}, R^2={_fmt(fit.r2)}")
    sat = result.saturation
    if sat.width is not None and sat.position == "within":
        ax.axvline(sat.width, color="grey", ls="--", lw=0.8, label=f"hard-rank saturation (tau={sat.tau:g})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    _width_ticks(ax, widths)
    _plain_log_ticks(ax.yaxis)
    ax.set_xlabel("FFN width D")
    ax.set_ylabel("effective rank")
    ax.set_title(f"Spectral scaling: rank = A * D^beta (faint: single layers)\n{sub}", fontsize=10)
    ax.legend(fontsize=7)
    written.append(save_png(fig, folder / "scaling_ranks.png"))

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for i in range(result.n_layers):
        ys = [m.layer_sui[i] for m in result.models]
        xs = [m.layer_widths[i] for m, y in zip(result.models, ys) if y is not None]
        ys = [y for y in ys if y is not None]
        ax.plot(xs, ys, "-", color="tab:green", alpha=0.25, lw=0.8)
    ax.plot(widths, [m.median_sui for m in result.models], "o-", color="tab:green", label="SUI (median over layers)")
    peak = result.sui_peak
    ax.plot([peak["width"]], [peak["median_sui"]], "k*", ms=12, label=f"peak at D={peak['width']}")
    ax.set_xscale("log")
    _width_ticks(ax, widths)
    suis = [v for m in result.models for v in [m.median_sui, *m.layer_sui] if v is not None]
    ax.set_ylim(*fitted_limits(suis, floor=0.0, ceiling=1.0))
    ax.set_xlabel("FFN width D")
    ax.set_ylabel("SUI (higher = more of the width used)")
    ax.set_title(f"Spectral Utilization Index against width (faint: single layers)\n{sub}", fontsize=10)
    ax.legend(fontsize=8)
    written.append(save_png(fig, folder / "scaling_sui.png"))
    return written


def family_name(result: ScalingResult) -> str:
    """The family in titles: its recorded name or architecture, else what the inputs' names share."""
    import os

    fam = result.family or {}
    for key in ("family", "architecture"):
        if fam.get(key):
            return str(fam[key])
    names = [os.path.basename(str(m.label)) for m in result.models]
    common = os.path.commonprefix(names).rstrip("_-w.")
    return common or f"{len(names)} models"


def scaling_subtitle(result: ScalingResult) -> str:
    """Family, widths and calibration tokens: the line every scaling plot carries."""
    from .safeio import printable

    tokens = sorted({m.min_tokens for m in result.models})
    tok = f"{tokens[0]:,}" if len(tokens) == 1 else f"{tokens[0]:,}..{tokens[-1]:,}"
    return printable(f"{family_name(result)} · D = {min(result.widths):,}..{max(result.widths):,} · {tok} "
                     "calibration tokens per model")


def _width_ticks(ax, widths: np.ndarray) -> None:
    from matplotlib.ticker import NullLocator

    ax.set_xticks(widths)
    ax.set_xticklabels([f"{int(w)}" for w in widths], fontsize=8)
    ax.xaxis.set_minor_locator(NullLocator())


def _plain_log_ticks(axis) -> None:
    """Log-axis ticks at 1, 2, 5 x 10^k written as plain numbers (20, not 2 x 10^1)."""
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FormatStrFormatter("%g"))
    axis.set_minor_formatter(NullFormatter())


def _fmt(value: float) -> str:
    return "n/a" if not np.isfinite(value) else f"{value:.3f}"
