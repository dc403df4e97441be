"""sui-onnx: spectral utilization of the FFN blocks of transformer ONNX models.

Public API (stable):
    spectral_metrics, hard_rank, soft_rank, spectral_concentration, energy_width, sui
        -- the metric suite over one eigenvalue vector (docs/metrics.md)
    CovarianceAccumulator, Spectrum, save_accumulators, load_accumulators
        -- streaming, mergeable covariance per tap

Importing the package imports nothing but its version and the lazy-name helper (lazy.py), and
changes nothing in the process: each name is loaded from its module on first use (PEP 562).
The CLI sets its environment where it starts (sui_onnx.cli.main).
"""

from __future__ import annotations

from ._version import __version__
from .lazy import lazy_names

_LAZY = {
    "SuiError": "errors",
    "SpectralMetrics": "metrics",
    "spectral_metrics": "metrics",
    "hard_rank": "metrics",
    "soft_rank": "metrics",
    "spectral_concentration": "metrics",
    "energy_width": "metrics",
    "sui": "metrics",
    "CovarianceAccumulator": "spectrum",
    "Spectrum": "spectrum",
    "save_accumulators": "spectrum",
    "load_accumulators": "spectrum",
}

__all__ = ["__version__", *_LAZY]


__getattr__, __dir__ = lazy_names(__name__, _LAZY, globals())
