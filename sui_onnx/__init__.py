"""sui-onnx: spectral utilization of the FFN blocks of transformer ONNX models.

Public API (stable):
    spectral_metrics, hard_rank, soft_rank, spectral_concentration, energy_width, sui
        -- the metric suite over one eigenvalue vector (docs/metrics.md)
    CovarianceAccumulator, Spectrum, save_accumulators, load_accumulators
        -- streaming, mergeable covariance per tap
"""

import os as _os

# OpenBLAS worker threads busy-wait after each BLAS call; between our per-batch X^T X and the next
# onnxruntime run they would steal the cores from onnxruntime (measured: +30% inference time on
# 2 cores). A short timeout lets them sleep. Only effective when numpy is not imported yet (the
# CLI); a value the user set is kept.
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

from ._version import __version__  # noqa: E402
from .errors import SuiError  # noqa: E402
from .metrics import (  # noqa: E402
    SpectralMetrics,
    energy_width,
    hard_rank,
    soft_rank,
    spectral_concentration,
    spectral_metrics,
    sui,
)
from .spectrum import CovarianceAccumulator, Spectrum, load_accumulators, save_accumulators  # noqa: E402

__all__ = [
    "__version__",
    "SuiError",
    "SpectralMetrics",
    "spectral_metrics",
    "hard_rank",
    "soft_rank",
    "spectral_concentration",
    "energy_width",
    "sui",
    "CovarianceAccumulator",
    "Spectrum",
    "save_accumulators",
    "load_accumulators",
]
