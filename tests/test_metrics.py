"""The metric suite against closed-form spectra, an independent pure-Python computation, and its
invariants (docs/metrics.md)."""

import math
from fractions import Fraction

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


LEVELS = ("0.90", "0.95", "0.99")


def reference_metrics(eigs, f="0.1"):
    """Independent implementation straight from the formulas in docs/metrics.md, in exact rational
    arithmetic where the formulas allow it (Fraction of each float eigenvalue): k = ceil(f D) with f the
    exact decimal, SC, the tail share and the cumulative energies compared with the exact decimal q.
    Returns (hard, soft, SC, SUI, {q: k_q}, margin): margin is how close an exact cumulative sum comes to
    a level q without being equal to it (where float round-off may legitimately decide)."""
    lam = sorted((Fraction(max(0.0, float(v))) for v in eigs), reverse=True)
    total = sum(lam)
    p = [v / total for v in lam]
    hard = float(total * total / sum(v * v for v in lam))
    soft = math.exp(-math.fsum(float(x) * (math.log(x.numerator) - math.log(x.denominator)) for x in p if x > 0))
    d = len(lam)
    k = math.ceil(Fraction(f) * d)
    sc, tail = float(sum(p[:k])), float(sum(p[k:]))
    spread = 1.0 if k == d else tail / (1 - k / d)
    s = ((hard / d) * (soft / d) * spread) ** (1 / 3)
    widths, margin, acc = {}, math.inf, Fraction(0)
    for i, x in enumerate(p, 1):
        acc += x
        for q in map(Fraction, LEVELS):
            if acc != q:
                margin = min(margin, abs(float(acc - q)))
            if acc >= q and q not in widths:
                widths[q] = i
    return hard, soft, sc, s, {float(q): k for q, k in widths.items()}, margin


# D: (k = ceil(0.1 D), k90, k95, k99), by hand; D = 10, 30, 100 put exact ties on the levels (0.9 * 10 = 9:
# the ninth direction reaches exactly 90%, although nine float additions of 0.1 give 0.8999999999999999)
FLAT = {1: (1, 1, 1, 1), 2: (1, 2, 2, 2), 7: (1, 7, 7, 7), 10: (1, 9, 10, 10), 30: (3, 27, 29, 30),
        64: (7, 58, 61, 64), 100: (10, 90, 95, 99), 1000: (100, 900, 950, 990)}


@pytest.mark.parametrize("d", sorted(FLAT))
def test_flat_spectrum_uses_the_whole_width(d):
    eigs = np.full(d, 3.5)
    k, k90, k95, k99 = FLAT[d]
    m = spectral_metrics(eigs)
    assert m.hard_rank == pytest.approx(d, rel=1e-12)
    assert m.soft_rank == pytest.approx(d, rel=1e-12)
    assert m.hard_util == pytest.approx(1.0) and m.soft_util == pytest.approx(1.0)
    assert top_k(d) == k
    assert m.concentration == pytest.approx(k / d, rel=1e-12)
    assert m.sui == pytest.approx(1.0, rel=1e-12)
    assert m.asymmetry == pytest.approx(0.0, abs=1e-12)
    assert m.energy_widths == {"k90": k90, "k95": k95, "k99": k99}


def test_geometric_spectrum_of_four_by_hand():
    """lambda = 8, 4, 2, 1 (r = 1/2, D = 4): p = (8, 4, 2, 1) / 15; hard = 15^2 / 85 = 45/17; k = 1, SC =
    8/15, tail 7/15 over 1 - 1/4 gives 28/45; cumulative 8/15, 12/15, 14/15, 1 gives k90 = 3, k95 = k99 = 4."""
    m = spectral_metrics(np.array([1.0, 4.0, 8.0, 2.0]))
    p = [8 / 15, 4 / 15, 2 / 15, 1 / 15]
    soft = math.exp(-sum(x * math.log(x) for x in p))
    assert m.hard_rank == pytest.approx(45 / 17, rel=1e-14)
    assert m.soft_rank == pytest.approx(soft, rel=1e-14)
    assert m.concentration == pytest.approx(8 / 15, rel=1e-14)
    assert m.sui == pytest.approx(((45 / 17) / 4 * soft / 4 * 28 / 45) ** (1 / 3), rel=1e-14)
    assert m.asymmetry == pytest.approx(math.log(soft) - math.log(45 / 17), rel=1e-14)
    assert m.energy_widths == {"k90": 3, "k95": 4, "k99": 4}
    # the top 25% (k = 1) and the top 50% (k = 2): SC 8/15 and 12/15, tail factors (7/15) / (3/4) and (3/15) / (1/2)
    half = spectral_metrics(np.array([8.0, 4.0, 2.0, 1.0]), top_fraction=0.5)
    assert half.concentration == pytest.approx(12 / 15, rel=1e-14)
    assert half.sui == pytest.approx(((45 / 17) / 4 * soft / 4 * (3 / 15) / (1 / 2)) ** (1 / 3), rel=1e-14)


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
    assert b.concentration == pytest.approx(reference_metrics(eigs, "0.2")[2], rel=1e-12)
    assert a.concentration == pytest.approx((1 - 0.8**5) / (1 - 0.8**50), rel=1e-12)  # k = 5 of 50
    assert b.concentration == pytest.approx((1 - 0.8**10) / (1 - 0.8**50), rel=1e-12)  # k = 10 of 50


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
    hard, soft, sc, s, widths, margin = reference_metrics(eigs)
    m = spectral_metrics(eigs)
    assert m.hard_rank == pytest.approx(hard, rel=1e-9)
    assert m.soft_rank == pytest.approx(soft, rel=1e-9)
    assert m.concentration == pytest.approx(sc, rel=1e-9, abs=1e-15)
    assert m.sui == pytest.approx(s, rel=1e-7, abs=1e-9)
    if margin > 1e-9:  # no cumulative sum within round-off of a level (exact ties are fine)
        assert m.energy_widths == {"k90": widths[0.9], "k95": widths[0.95], "k99": widths[0.99]}
