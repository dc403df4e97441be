"""The metric suite against closed-form spectra, an independent pure-Python computation, and its
invariants (docs/metrics.md)."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from sui_onnx.metrics import (
    energy_key,
    energy_width,
    hard_rank,
    soft_rank,
    spectral_concentration,
    spectral_metrics,
    sui,
    top_k,
)


def reference_metrics(eigs, f=0.10):
    """Independent scalar-loop implementation straight from the formulas in docs/metrics.md."""
    lam = sorted((max(0.0, float(v)) for v in eigs), reverse=True)
    total = math.fsum(lam)
    p = [v / total for v in lam]
    hard = 1.0 / math.fsum(x * x for x in p)
    soft = math.exp(-math.fsum(x * math.log(x) for x in p if x > 0))
    d = len(lam)
    k = math.ceil(round(f * d, 9))
    sc = math.fsum(p[:k])
    s = ((hard / d) * (soft / d) * math.fsum(p[k:]) / (1 - k / d)) ** (1 / 3) if k < d else None
    widths = {}
    for q in (0.90, 0.95, 0.99):
        acc = 0.0
        for i, x in enumerate(p, 1):
            acc += x
            if acc >= q - 1e-12:
                widths[q] = i
                break
    return hard, soft, sc, s, widths


@pytest.mark.parametrize("d", [1, 2, 7, 64, 1000])
def test_flat_spectrum_uses_the_whole_width(d):
    eigs = np.full(d, 3.5)
    m = spectral_metrics(eigs)
    assert m.hard_rank == pytest.approx(d, rel=1e-12)
    assert m.soft_rank == pytest.approx(d, rel=1e-12)
    assert m.hard_util == pytest.approx(1.0) and m.soft_util == pytest.approx(1.0)
    assert m.concentration == pytest.approx(top_k(d) / d, rel=1e-12)
    assert m.sui == pytest.approx(1.0, rel=1e-12)
    assert m.asymmetry == pytest.approx(0.0, abs=1e-12)
    for q, key in ((0.90, "k90"), (0.95, "k95"), (0.99, "k99")):
        assert m.energy_widths[key] == math.ceil(round(q * d, 9))


@pytest.mark.parametrize("d", [2, 10, 333])
def test_rank_one_spectrum_has_rank_one(d):
    eigs = np.zeros(d)
    eigs[d // 2] = 2.0
    m = spectral_metrics(eigs)
    assert m.hard_rank == pytest.approx(1.0) and m.soft_rank == pytest.approx(1.0)
    assert m.concentration == pytest.approx(1.0)
    assert m.sui == pytest.approx(0.0, abs=1e-12)
    assert m.energy_widths == {"k90": 1, "k95": 1, "k99": 1}


@pytest.mark.parametrize("d,r", [(16, 0.5), (256, 0.9), (1024, 0.99), (50, 0.999)])
def test_geometric_decay_matches_closed_forms(d, r):
    eigs = r ** np.arange(d)
    hard_closed = (1 + r) * (1 - r**d) / ((1 - r) * (1 + r**d))
    c = (1 - r) / (1 - r**d)
    mean_index = r / (1 - r) - d * r**d / (1 - r**d)  # E[i - 1] under p
    soft_closed = math.exp(-math.log(c) - math.log(r) * mean_index)
    k = top_k(d)
    sc_closed = (1 - r**k) / (1 - r**d)
    assert hard_rank(eigs) == pytest.approx(hard_closed, rel=1e-10)
    assert soft_rank(eigs) == pytest.approx(soft_closed, rel=1e-10)
    assert spectral_concentration(eigs) == pytest.approx(sc_closed, rel=1e-10)
    for q in (0.9, 0.95, 0.99):  # smallest k with (1 - r^k) / (1 - r^d) >= q
        k_closed = math.ceil(math.log(1 - q * (1 - r**d)) / math.log(r) - 1e-9)
        assert energy_width(eigs, q) == min(d, k_closed)


@pytest.mark.parametrize("m,d", [(3, 10), (17, 64), (100, 100)])
def test_uniform_on_m_directions_has_rank_m(m, d):
    eigs = np.r_[np.full(m, 2.0), np.zeros(d - m)]
    assert hard_rank(eigs) == pytest.approx(m) and soft_rank(eigs) == pytest.approx(m)


def test_two_level_mixture_matches_closed_form():
    m, d, a, b = 5, 40, 10.0, 1.0
    eigs = np.r_[np.full(m, a), np.full(d - m, b)]
    t = m * a + (d - m) * b
    pa, pb = a / t, b / t
    assert hard_rank(eigs) == pytest.approx(1 / (m * pa**2 + (d - m) * pb**2), rel=1e-12)
    assert soft_rank(eigs) == pytest.approx(math.exp(-(m * pa * math.log(pa) + (d - m) * pb * math.log(pb))), rel=1e-12)


def test_sui_of_known_values():
    # D = 10, k = 1: ((5/10) * (8/10) * (1 - 0.3) / 0.9) ** (1/3)
    assert sui(5.0, 8.0, 0.3, 10) == pytest.approx((0.5 * 0.8 * 0.7 / 0.9) ** (1 / 3), rel=1e-12)
    assert sui(1.0, 1.0, 1.0, 1) == pytest.approx(1.0)  # D = 1: k = D, the spread factor is 1


def test_top_k_rounds_the_product_before_the_ceiling():
    assert top_k(30) == 3  # 0.1 * 30 = 3.0000000000000004 in floating point
    assert top_k(31) == 4 and top_k(1) == 1 and top_k(100, 0.25) == 25
    with pytest.raises(ValueError):
        top_k(10, 0.0)


def test_configurable_top_fraction_changes_concentration_and_sui():
    eigs = 0.8 ** np.arange(50)
    a, b = spectral_metrics(eigs, top_fraction=0.1), spectral_metrics(eigs, top_fraction=0.2)
    assert b.concentration > a.concentration and b.top_fraction == 0.2
    assert b.concentration == pytest.approx(reference_metrics(eigs, 0.2)[2], rel=1e-12)


def test_energy_keys_name_levels():
    assert [energy_key(q) for q in (0.9, 0.95, 0.99, 0.999)] == ["k90", "k95", "k99", "k99.9"]
    m = spectral_metrics(np.arange(1, 11.0), energy_levels=(0.5,))
    assert set(m.energy_widths) == {"k50"}


def test_degenerate_and_invalid_spectra_are_rejected():
    with pytest.raises(ValueError, match="degenerate"):
        spectral_metrics(np.zeros(8))
    with pytest.raises(ValueError, match="NaN"):
        spectral_metrics(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="empty"):
        spectral_metrics(np.array([]))
    for q in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="energy level must be in"):
            energy_width(np.arange(1, 5.0), q)


def test_round_off_negatives_are_clamped_to_zero():
    eigs = np.array([4.0, 2.0, -1e-15])
    assert hard_rank(eigs) == pytest.approx(hard_rank(np.array([4.0, 2.0, 0.0])))


def test_to_dict_has_report_keys():
    d = spectral_metrics(np.arange(1, 21.0)).to_dict()
    for key in ("hard_rank", "soft_rank", "hard_util", "soft_util", "concentration", "sui", "asymmetry", "k90", "k95", "k99"):
        assert key in d


spectra = arrays(
    np.float64,
    st.integers(1, 80),
    elements=st.floats(0.0, 1e6, allow_nan=False, allow_infinity=False),
).filter(lambda a: a.sum() > 1e-300 and a.max() > 0)


@settings(max_examples=200, deadline=None)
@given(spectra)
def test_rank_bounds_hold(eigs):
    m = spectral_metrics(eigs)
    d = eigs.size
    assert 1 - 1e-9 <= m.hard_rank <= m.soft_rank * (1 + 1e-9)
    assert m.soft_rank <= d * (1 + 1e-9)
    assert top_k(d) / d - 1e-9 <= m.concentration <= 1 + 1e-12
    assert -1e-12 <= m.sui <= 1 + 1e-9
    assert m.asymmetry >= 0
    assert 1 <= m.energy_widths["k90"] <= m.energy_widths["k95"] <= m.energy_widths["k99"] <= d


@settings(max_examples=150, deadline=None)
@given(spectra, st.floats(1e-6, 1e6), st.randoms(use_true_random=False))
def test_scale_and_permutation_invariance(eigs, scale, rnd):
    base = spectral_metrics(eigs)
    perm = np.array(eigs)
    rnd.shuffle(perm)
    for other in (spectral_metrics(eigs * scale), spectral_metrics(perm)):
        assert other.hard_rank == pytest.approx(base.hard_rank, rel=1e-9)
        assert other.soft_rank == pytest.approx(base.soft_rank, rel=1e-9)
        assert other.concentration == pytest.approx(base.concentration, rel=1e-9, abs=1e-12)
        assert other.sui == pytest.approx(base.sui, rel=1e-9, abs=1e-12)


@settings(max_examples=150, deadline=None)
@given(spectra)
def test_agrees_with_independent_reference(eigs):
    hard, soft, sc, s, widths = reference_metrics(eigs)
    m = spectral_metrics(eigs)
    assert m.hard_rank == pytest.approx(hard, rel=1e-9)
    assert m.soft_rank == pytest.approx(soft, rel=1e-9)
    assert m.concentration == pytest.approx(sc, rel=1e-9, abs=1e-15)
    if s is not None:
        assert m.sui == pytest.approx(s, rel=1e-7, abs=1e-9)
    assert m.energy_widths == {"k90": widths[0.9], "k95": widths[0.95], "k99": widths[0.99]}
