"""PNG plots of a report (optional `plot` extra): eigen-spectra on log-log axes, utilization by
layer, cumulative energy with the k_q marks."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import SuiError
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

    from .spectrum import atomic_write_bytes

    try:
        atomic_write_bytes(path, lambda fh: fig.savefig(fh, format="png", dpi=120, bbox_inches="tight"))
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


def write_plots(report: Report, folder: Path) -> list[Path]:
    """Write spectra.png, utilization.png and energy.png into `folder` (created if needed)."""
    plt = require_matplotlib()
    folder = plot_folder(folder)
    written = []
    eigs = report.eigenvalues or [None] * len(report.layers)
    cmap = plt.get_cmap("viridis")
    n = max(1, len(report.layers))

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, (layer, ev) in enumerate(zip(report.layers, eigs)):
        if ev is None:
            continue
        ev = np.asarray(ev)
        ev = ev[ev > 0]
        ax.loglog(np.arange(1, ev.size + 1), ev / ev.sum(), color=cmap(i / n), lw=1.2, label=f"layer {layer.layer}")
    ax.set_xlabel("eigenvalue index i")
    ax.set_ylabel("p_i = lambda_i / sum lambda")
    ax.set_title("FFN activation covariance spectra")
    if len(report.layers) <= 12:
        ax.legend(fontsize=7)
    written.append(save_png(fig, folder / "spectra.png"))

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    xs = [x.layer for x in report.layers]
    for key, label in (("hard_util", "hard rank / D"), ("soft_util", "soft rank / D"), ("sui", "SUI"), ("concentration", "concentration")):
        ys = [np.nan if getattr(x, key) is None else getattr(x, key) for x in report.layers]
        ax.plot(xs, ys, marker="o", label=label)
    ax.set_xlabel("layer")
    ax.set_ylim(0, 1.02)
    ax.set_title("Utilization by layer")
    ax.legend(fontsize=8)
    written.append(save_png(fig, folder / "utilization.png"))

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, (layer, ev) in enumerate(zip(report.layers, eigs)):
        if ev is None:
            continue
        ev = np.asarray(ev)
        cum = np.cumsum(ev) / ev.sum()
        ax.plot(np.arange(1, ev.size + 1), cum, color=cmap(i / n), lw=1.2, label=f"layer {layer.layer}")
        k95 = layer.energy_widths.get("k95")
        if k95:
            ax.plot([k95], [cum[k95 - 1]], "k|", ms=10)
    for q in report.settings.get("energy_levels", [0.9, 0.95, 0.99]):
        ax.axhline(q, color="grey", lw=0.6, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("k (directions kept)")
    ax.set_ylabel("cumulative variance share")
    ax.set_title("Cumulative energy (| = k95)")
    if len(report.layers) <= 12:
        ax.legend(fontsize=7)
    written.append(save_png(fig, folder / "energy.png"))
    return written
