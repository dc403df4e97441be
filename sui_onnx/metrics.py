"""The spectral utilization suite: pure functions of one covariance eigenvalue vector.

Every formula is written out in docs/metrics.md; this module is the single implementation.
Functions accept NumPy or CuPy arrays (one code path through ``xp``) and return Python floats.
Spectral concentration and SUI are project-defined (the paper gives no closed formulas); their
parameters (``top_fraction``) are arguments, never constants buried in the code.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

from .xp import array_namespace

DEFAULT_TOP_FRACTION = 0.10
# the per-layer metrics a report carries and summarizes, in table order
METRIC_KEYS = ("hard_rank", "soft_rank", "hard_util", "soft_util", "concentration", "sui", "asymmetry")
DEFAULT_ENERGY_LEVELS: tuple[float, ...] = (0.90, 0.95, 0.99)
_TOL = 1e-12  # tolerance for cumulative-energy and top-k comparisons against round-off


def _as_spectrum(eigenvalues: Any) -> tuple[Any, Any]:
    """Return (xp, eigenvalues sorted descending, clamped at 0, float64)."""
    xp = array_namespace(eigenvalues)
    lam = xp.asarray(eigenvalues, dtype=xp.float64).reshape(-1)
    if lam.size == 0:
        raise ValueError("empty eigenvalue vector")
    if not bool(xp.all(xp.isfinite(lam))):
        raise ValueError("eigenvalues contain NaN or Inf")
    lam = xp.clip(lam, 0.0, None)
    lam = xp.sort(lam)[::-1]
    return xp, lam


def _probabilities(eigenvalues: Any) -> tuple[Any, Any]:
    xp, lam = _as_spectrum(eigenvalues)
    total = float(xp.sum(lam))
    if total <= 0.0:
        raise ValueError("degenerate spectrum: all eigenvalues are zero")
    return xp, lam / total


def energy_shares(eigenvalues: Any) -> Any:
    """p_i = lambda_i / sum lambda: each direction's share of the variance, largest first
    (eigenvalues clamped at 0; the array namespace of the input)."""
    return _probabilities(eigenvalues)[1]


def hard_rank(eigenvalues: Any) -> float:
    """Participation ratio (sum l)^2 / sum l^2 = 1 / sum p_i^2, in [1, D]."""
    xp, p = _probabilities(eigenvalues)
    return float(1.0 / xp.sum(p * p))


def soft_rank(eigenvalues: Any) -> float:
    """Shannon effective rank exp(-sum p_i ln p_i), terms with p_i = 0 skipped, in [1, D]."""
    xp, p = _probabilities(eigenvalues)
    nz = p[p > 0]
    return float(xp.exp(-xp.sum(nz * xp.log(nz))))


def top_k(width: int, top_fraction: float = DEFAULT_TOP_FRACTION) -> int:
    """k = ceil(f * D), at least 1; the product is rounded first so 0.1 * 30 gives 3, not 4."""
    if not 0.0 < top_fraction <= 1.0:
        raise ValueError(f"top fraction must be in (0, 1], got {top_fraction}")
    return max(1, math.ceil(round(top_fraction * width, 9)))


def spectral_concentration(eigenvalues: Any, top_fraction: float = DEFAULT_TOP_FRACTION) -> float:
    """Share of variance in the top ceil(f D) directions (project-defined), in [k/D, 1]."""
    xp, p = _probabilities(eigenvalues)
    k = top_k(p.size, top_fraction)
    return float(min(1.0, float(xp.sum(p[:k]))))


def energy_width(eigenvalues: Any, q: float) -> int:
    """Smallest k with sum_{i<=k} p_i >= q: the width a rank-k FFN needs to keep q of the variance."""
    if not 0.0 < q <= 1.0:
        raise ValueError(f"energy level must be in (0, 1], got {q}")
    xp, p = _probabilities(eigenvalues)
    reached = xp.cumsum(p) >= q - _TOL
    return int(xp.argmax(reached)) + 1 if bool(xp.any(reached)) else int(p.size)


def sui(
    hard: float,
    soft: float,
    concentration: float,
    width: int,
    top_fraction: float = DEFAULT_TOP_FRACTION,
    tail_share: float | None = None,
) -> float:
    """Spectral Utilization Index (project-defined): geometric mean of hard/D, soft/D and
    (1 - SC) / (1 - k/D). The last factor is 1 for a flat spectrum; when k = D it is taken as 1.
    ``tail_share`` (sum of p beyond the top k) may be passed instead of 1 - SC to avoid cancellation."""
    k = top_k(width, top_fraction)
    tail = max(0.0, 1.0 - concentration) if tail_share is None else tail_share
    spread = 1.0 if k >= width else tail / (1.0 - k / width)
    value = (hard / width) * (soft / width) * min(1.0, spread)
    return float(value ** (1.0 / 3.0))


@dataclass(frozen=True)
class SpectralMetrics:
    """All measures of one spectrum; field names are the report JSON keys."""

    width: int
    hard_rank: float
    soft_rank: float
    hard_util: float
    soft_util: float
    concentration: float
    sui: float
    asymmetry: float
    energy_widths: dict[str, int]  # {"k90": .., "k95": .., "k99": ..}
    top_fraction: float

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(d.pop("energy_widths"))
        return d


def energy_key(q: float) -> str:
    """Report key of an energy level: 0.95 -> 'k95', 0.999 -> 'k99.9'."""
    pct = round(q * 100, 6)
    return f"k{int(pct)}" if pct == int(pct) else f"k{pct:g}"


def spectral_metrics(
    eigenvalues: Any,
    top_fraction: float = DEFAULT_TOP_FRACTION,
    energy_levels: Sequence[float] = DEFAULT_ENERGY_LEVELS,
) -> SpectralMetrics:
    """Compute the whole suite for one eigenvalue vector (raises ValueError if degenerate)."""
    _, lam = _as_spectrum(eigenvalues)
    width = int(lam.size)
    hard = hard_rank(lam)
    soft = soft_rank(lam)
    conc = spectral_concentration(lam, top_fraction)
    tail = float(lam[top_k(width, top_fraction):].sum() / lam.sum())
    return SpectralMetrics(
        width=width,
        hard_rank=hard,
        soft_rank=soft,
        hard_util=hard / width,
        soft_util=soft / width,
        concentration=conc,
        sui=sui(hard, soft, conc, width, top_fraction, tail),
        asymmetry=max(0.0, math.log(soft) - math.log(hard)),
        energy_widths={energy_key(q): energy_width(lam, q) for q in energy_levels},
        top_fraction=top_fraction,
    )
