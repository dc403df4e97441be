"""SUI falls with D by construction (docs/metrics.md, "SUI across widths"): the same 60-direction
spectrum placed in D = 64 ... 1024 keeps its hard and soft rank while SUI goes 0.185 -> 0.0, and SUI
is exactly 0 whenever the rank is at most ceil(f D). Checked against closed forms with the
package's own metrics."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from sui_onnx.metrics import spectral_metrics

ROOT = Path(__file__).resolve().parents[1]
R, M = 0.8, 60                    # lambda_i = 0.8^(i-1), i = 1..60: the 60-direction spectrum
WIDTHS = (64, 128, 256, 512, 1024)
ROUNDED = (0.185, 0.074, 0.018, 0.002, 0.0)


def closed_form(width: int, f: float = 0.1) -> tuple[float, float, float]:
    """hard rank, soft rank and SUI of the truncated geometric spectrum, written out."""
    s1 = (1 - R ** M) / (1 - R)                      # sum lambda
    s2 = (1 - R ** (2 * M)) / (1 - R ** 2)           # sum lambda^2
    hard = s1 * s1 / s2
    mean_j = R / (1 - R) - M * R ** M / (1 - R ** M)  # E[i - 1] under p_i = lambda_i / s1
    soft = math.exp(math.log(s1) - math.log(R) * mean_j)
    k = math.ceil(round(f * width, 9))
    tail = (R ** k - R ** M) / (1 - R ** M) if k < M else 0.0
    sui = ((hard / width) * (soft / width) * tail / (1 - k / width)) ** (1 / 3)
    return hard, soft, sui


def placed(width: int) -> np.ndarray:
    lam = np.zeros(width)
    lam[:M] = R ** np.arange(M)
    return lam


def test_the_same_spectrum_in_wider_blocks_keeps_its_ranks_and_loses_sui():
    hard0, soft0, _ = closed_form(64)
    assert round(hard0, 2) == 9.0 and round(soft0, 2) == 12.21  # (1 + r) / (1 - r) = 9 for the untruncated series
    got = []
    for width, rounded in zip(WIDTHS, ROUNDED):
        m = spectral_metrics(placed(width))
        hard, soft, sui = closed_form(width)
        assert m.hard_rank == pytest.approx(hard0, rel=1e-12) and m.soft_rank == pytest.approx(soft0, rel=1e-12)
        assert m.hard_rank == pytest.approx(hard, rel=1e-12) and m.soft_rank == pytest.approx(soft, rel=1e-12)
        assert m.sui == pytest.approx(sui, rel=1e-9, abs=1e-15)
        assert round(m.sui, 3) == rounded
        got.append(m.sui)
    assert got == sorted(got, reverse=True)
    assert got[-1] == 0.0  # k = ceil(102.4) = 103 >= 60 directions: no tail beyond the top k


@pytest.mark.parametrize("f", [0.1, 0.25])
@pytest.mark.parametrize("width", [16, 100, 768, 2048])
def test_sui_is_exactly_zero_when_the_rank_is_at_most_ceil_f_d(width, f):
    rng = np.random.default_rng(width)
    k = math.ceil(round(f * width, 9))
    for rank in sorted({1, max(1, k // 2), k}):
        lam = np.zeros(width)
        lam[:rank] = rng.uniform(0.1, 1.0, rank)
        m = spectral_metrics(lam, top_fraction=f)
        assert m.sui == 0.0 and m.hard_rank > 0 and m.soft_rank >= m.hard_rank
    lam = np.zeros(width)
    lam[:k + 1] = 1.0  # one direction more than the top k: the tail share is positive
    assert spectral_metrics(lam, top_fraction=f).sui > 0.0


def test_the_docs_state_these_numbers():
    numbers = " → ".join(f"{v:.3f}" if v else "0.0" for v in ROUNDED)
    for doc in ("docs/metrics.md", "docs/results.md"):
        text = " ".join((ROOT / doc).read_text(encoding="utf-8").split())
        assert numbers in text, f"{doc} does not state {numbers}"
