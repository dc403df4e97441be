"""sui-onnx: spectral utilization of the FFN blocks of transformer ONNX models.

Public API (stable):
    spectral_metrics, hard_rank, soft_rank, spectral_concentration, energy_width, sui
        -- the metric suite over one eigenvalue vector (docs/metrics.md)
    CovarianceAccumulator, Spectrum, save_accumulators, load_accumulators
        -- streaming, mergeable covariance per tap
"""

from ._version import __version__
from .errors import SuiError
from .metrics import (
    SpectralMetrics,
    energy_width,
    hard_rank,
    soft_rank,
    spectral_concentration,
    spectral_metrics,
    sui,
)
from .spectrum import CovarianceAccumulator, Spectrum, load_accumulators, save_accumulators

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
