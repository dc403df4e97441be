"""PNG plots of a report (optional `plot` extra): eigen-spectra on log-log axes, utilization by
layer, cumulative energy with the k_q marks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .errors import SuiError
from .layout import DECODER_FILE, ENCODER_FILE, MODEL_FILE
from .report import Report


def require_matplotlib():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SuiError("--plot needs matplotlib: pip install 'sui-onnx[plot]'") from None
    return plt


def save_png(fig, path: Path) -> Path:
    """Write a figure as PNG atomically, then close it (also when writing fails)."""
    import matplotlib.pyplot as plt

    from .safeio import atomic_write

    try:
        atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=120, bbox_inches="tight"))
    finally:
        plt.close(fig)
    return path


def plot_folder(folder: Path) -> Path:
    """The --plot folder, created if needed; a file in its place is a clear error."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise SuiError(f"--plot {folder}: exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def model_name(report: Report) -> str:
    """A short name for the model in titles: the folder of a model.onnx, else the file's stem."""
    path = Path(str(report.model.path or "model"))
    if path.name in (MODEL_FILE, DECODER_FILE, ENCODER_FILE) and path.parent.name:
        name = path.parent.name if path.parent.name != "onnx" else path.parent.parent.name
        return name if path.name == MODEL_FILE else f"{name}/{path.stem}"
    return path.stem or "model"


def subtitle(report: Report) -> str:
    """Model name, token count and tap site: the line every plot of a report carries."""
    from .safeio import printable

    site = report.settings.site if "site" in report.settings else "?"
    return printable(f"{model_name(report)} · {report.calibration.tokens or 0:,} calibration tokens · site {site}")


def layer_ticks(ax, layers: list[int]) -> None:
    """Integer layer ticks: every layer when there are few, else integer steps only."""
    from matplotlib.ticker import MaxNLocator

    if len(layers) <= 16:
        ax.set_xticks(layers)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def fitted_limits(values, pad: float = 0.08, floor: float | None = None, ceiling: float | None = None):
    """A y-range around the finite values (never squashed into a fixed 0..1), clipped to the
    measure's own bounds."""
    from .svg import fitted  # one definition of the range, for the PNG and the SVG plots

    return fitted([float(x) for x in values if x is not None and np.isfinite(x)], pad, floor, ceiling)


# the measures of the utilization plot: key, panel title (range and direction)
UTILIZATION_PANELS = (
    ("hard_util", "hard rank / D (higher = more of the width used)", 0.0, 1.0),
    ("soft_util", "soft rank / D (higher = more used)", 0.0, 1.0),
    ("concentration", "concentration SC (lower = more used)", 0.0, 1.0),
    ("sui", "SUI (higher = more used)", 0.0, 1.0),
)


def advice_widths(report: Report) -> dict[str, Any]:
    """The widths the advice recommends, per layer: the k_q estimate and, when measured, the
    measured width (None where there is none)."""
    a = report.advice
    n = len(report.layers)
    out: dict[str, Any] = {"estimate": None, "measured": None, "needed": a.needed_width}
    if a.recommended_width is not None:
        out["estimate"] = [min(a.recommended_width, x.width) for x in report.layers]
    m = a.measured
    widths = m.recommended_widths if m is not None else None
    if isinstance(widths, list) and len(widths) == n:
        out["measured"] = widths
    elif m is not None and m.recommended_width is not None:
        out["measured"] = [min(m.recommended_width, x.width) for x in report.layers]
    return out


def write_plots(report: Report, folder: Path) -> list[Path]:
    """Write spectra.png, utilization.png and energy.png into `folder` (created if needed)."""
    plt = require_matplotlib()
    folder = plot_folder(folder)
    written = []
    eigs = report.eigenvalues or [None] * len(report.layers)
    cmap = plt.get_cmap("viridis")
    n = max(1, len(report.layers))
    colors = [cmap(i / max(1, n - 1) * 0.9) for i in range(n)]
    sub = subtitle(report)
    legend = len(report.layers) <= 12

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for i, (layer, ev) in enumerate(zip(report.layers, eigs)):
        if ev is None:
            continue
        ev = np.asarray(ev)
        ev = ev[ev > 0]
        if ev.size:
            ax.loglog(np.arange(1, ev.size + 1), ev / ev.sum(), color=colors[i], lw=1.2, label=f"layer {layer.layer}")
    ax.set_xlabel("eigenvalue index i (directions, largest first)")
    ax.set_ylabel("share of variance p_i = λ_i / Σλ")
    ax.set_title(f"FFN activation covariance spectra\n{sub}", fontsize=10)
    _layer_legend(fig, ax, plt, cmap, report, legend)
    written.append(save_png(fig, folder / "spectra.png"))

    xs = [x.layer for x in report.layers]
    fig, axes = plt.subplots(2, 2, figsize=(8.0, 5.6), sharex=True)
    for ax, (key, label, lo, hi) in zip(axes.flat, UTILIZATION_PANELS):
        ys = [np.nan if getattr(x, key) is None else getattr(x, key) for x in report.layers]
        ax.plot(xs, ys, marker="o", color="tab:blue" if key != "concentration" else "tab:red")
        ax.set_title(label, fontsize=9)
        ax.set_ylim(*fitted_limits(ys, floor=lo, ceiling=hi))
        ax.grid(alpha=0.3)
        layer_ticks(ax, xs)
    for ax in axes[-1]:
        ax.set_xlabel("layer")
    fig.suptitle(f"Utilization by layer\n{sub}", fontsize=10)
    fig.tight_layout()
    written.append(save_png(fig, folder / "utilization.png"))

    estimate = report.advice.estimate_key()  # the energy key the width advice keeps: "k95" for q = 0.95
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10.0, 4.4), gridspec_kw={"width_ratios": [3, 2]})
    for i, (layer, ev) in enumerate(zip(report.layers, eigs)):
        if ev is None or not np.asarray(ev).sum() > 0:
            continue
        ev = np.clip(np.asarray(ev, dtype=np.float64), 0, None)
        cum = np.cumsum(ev) / ev.sum()
        ax.plot(np.arange(1, ev.size + 1), cum, color=colors[i], lw=1.2, label=f"layer {layer.layer}")
        k = layer.energy_widths.get(estimate)
        if k:
            ax.plot([k], [cum[k - 1]], "o", color=colors[i], ms=5, mec="black", mew=0.5)
    levels = report.settings.levels()
    for q in levels:
        ax.axhline(q, color="grey", lw=0.6, ls="--")
        ax.annotate(f"{q:.0%}", xy=(0.0, q), xycoords=("axes fraction", "data"), xytext=(2, 2),
                    textcoords="offset points", fontsize=7, color="dimgrey")
    widths = advice_widths(report)
    if widths["estimate"]:
        w = max(widths["estimate"])
        ax.axvline(w, color="tab:orange", lw=1.0, ls=":", label=f"recommended {w} ({estimate} estimate)")
    if widths["measured"]:
        w = max(widths["measured"])
        ax.axvline(w, color="tab:green", lw=1.0, ls="-.", label=f"recommended {w} (measured)")
    ax.set_xscale("log")
    ax.set_ylim(max(0.0, min(levels) - 0.35), 1.005)
    ax.set_xlabel("k (directions kept)")
    ax.set_ylabel("cumulative variance share")
    ax.set_title(f"Cumulative energy (dots: {estimate} of each layer)", fontsize=9)
    if legend:
        ax.legend(fontsize=7, loc="lower right")
    # per layer: the widths the energy levels need, and the recommended width
    q = report.advice.q if isinstance(report.advice.q, (int, float)) else 0.95
    for level, key in zip(levels, report.settings.energy_keys()):
        marker = "o" if key == estimate else "v" if level < q else "^"
        ys = [x.energy_widths.get(key, np.nan) for x in report.layers]
        bx.plot(xs, ys, marker=marker, ls="", color="tab:blue", alpha=1.0 if key == estimate else 0.5, label=key)
    for key, color, ls, label in (("estimate", "tab:orange", ":", "recommended (estimate)"),
                                  ("measured", "tab:green", "-.", "recommended (measured)")):
        if widths[key]:
            bx.step(xs, widths[key], where="mid", color=color, ls=ls, lw=1.4, label=label)
    bx.set_xlabel("layer")
    bx.set_ylabel("width (neurons)")
    bx.set_title("Width each layer needs", fontsize=9)
    all_w = [v for x in report.layers for v in x.energy_widths.values()]
    all_w += [v for k in ("estimate", "measured") for v in (widths[k] or [])]
    bx.set_ylim(*fitted_limits(all_w, floor=0))
    layer_ticks(bx, xs)
    bx.grid(alpha=0.3)
    bx.legend(fontsize=7)
    fig.suptitle(f"Cumulative energy and the width each layer needs\n{sub}", fontsize=10)
    fig.tight_layout()
    written.append(save_png(fig, folder / "energy.png"))
    return written


def _layer_legend(fig, ax, plt, cmap, report: Report, legend: bool) -> None:
    """A legend for a few layers, a colour bar of layer indices for many."""
    if legend:
        ax.legend(fontsize=7)
        return
    from matplotlib.colors import Normalize

    layers = [x.layer for x in report.layers]
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=Normalize(min(layers), max(layers) / 0.9 if max(layers) else 1))
    bar = fig.colorbar(sm, ax=ax, fraction=0.04, pad=0.02)
    bar.set_label("layer", fontsize=8)
