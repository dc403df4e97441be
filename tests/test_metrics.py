"""The metric suite against closed-form spectra, an independent pure-Python computation, and its
invariants (docs/metrics.md)."""

import dataclasses
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
    assert top_k(1, 1e-10) == 1 and top_k(3, 0.01) == 1  # at least one direction, however small f D is
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
    m = spectral_metrics(np.arange(1, 21.0))
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.sui = 0.0  # a result is a value: it cannot be changed after the fact
    d = m.to_dict()
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


# ------------------------------------------------------------------------------ energy shares and width advice
# (sui_onnx/advice.py, docs/metrics.md "Width advice"): hand-built layers and spectra, hand-derived answers.
from sui_onnx.advice import status_message, summarize, thin_data, token_flags, width_advice, worst_status  # noqa: E402
from sui_onnx.metrics import energy_shares  # noqa: E402
from sui_onnx.report import LayerResult  # noqa: E402


def test_energy_shares_are_the_sorted_clamped_fractions():
    assert energy_shares(np.array([1.0, 4.0, -1e-18, 8.0, 2.0])).tolist() == pytest.approx([8 / 15, 4 / 15, 2 / 15, 1 / 15, 0.0], abs=1e-16)


@pytest.mark.parametrize("n, width, flags", [(10, 10, ["rank_capped", "low_tokens"]), (11, 10, ["low_tokens"]),
                                             (39, 10, ["low_tokens"]), (40, 10, []), (1000, 10, [])])
def test_token_flags_at_their_boundaries(n, width, flags):
    """rank_capped when N - 1 < D, low_tokens when N < 4 D."""
    assert token_flags(n, width) == flags


def test_worst_status_and_the_messages():
    assert worst_status([]) == "ok" and worst_status(["low_tokens", "rank_capped"]) == "rank_capped"
    assert worst_status(["low_tokens", "degenerate", "non_finite"]) == "non_finite"
    assert status_message([], 100, 10) == ""
    assert status_message(["rank_capped", "low_tokens"], 10, 10) == "N-1=9 < D=10: rank capped by the token count"
    assert status_message(["low_tokens"], 30, 10) == "N=30 < 4D=40: metrics biased low; use N >= 100"
    assert status_message(["non_finite", "degenerate"], 5, 10) == (
        "activations contained NaN/Inf (fp16 overflow?); layer excluded; zero variance: every token gives the same activation")


def _layer(i, width=16, tokens=1000, hard=3.0, soft=5.0, sui=0.5, conc=0.4, k=(1, 2, 3)):
    return LayerResult(layer=i, tensor=f"t{i}", width=width, site="post", activation="gelu", op="Mul", tokens=tokens,
                       hard_rank=hard, soft_rank=soft, hard_util=hard / width, soft_util=soft / width,
                       concentration=conc, sui=sui, asymmetry=math.log(soft / hard),
                       energy_widths=dict(zip(("k90", "k95", "k99"), k)))


def test_summarize_by_hand():
    """Four usable layers (values 1..4 in shuffled order) and an unusable one: numpy's linear quantiles of
    1, 2, 3, 4 are q25 = 1.75, median 2.5, q75 = 3.25; the worst layer is the lowest value, except for
    concentration, where it is the highest."""
    layers = [_layer(i, hard=h, soft=10.0 * h, sui=h / 10, conc=h / 10, tokens=t)
              for i, (h, t) in enumerate([(3.0, 900), (1.0, 800), (4.0, 1000), (2.0, 700)])]
    bad = LayerResult(layer=4, tensor="t4", width=32, site="post", activation="gelu", op="Mul", tokens=600,
                      status="degenerate", flags=["degenerate"])
    s = summarize([*layers, bad])
    assert (s["n_layers"], s["usable_layers"], s["widths"], s["min_tokens"]) == (5, 4, [16, 32], 600)
    assert s["statuses"] == {"degenerate": 1, "ok": 4}
    assert s["hard_rank"] == {"median": 2.5, "mean": 2.5, "min": 1.0, "max": 4.0, "q25": 1.75, "q75": 3.25, "worst_layer": 1}
    assert s["soft_rank"]["q75"] == pytest.approx(32.5) and s["sui"]["worst_layer"] == 1
    assert s["concentration"]["worst_layer"] == 2 and s["concentration"]["max"] == pytest.approx(0.4)
    assert summarize([bad])["hard_rank"] is None and summarize([])["min_tokens"] == 0


def test_width_advice_by_hand():
    """D = 16. Layer 0: lambda = 8, 4, 2, 1 (k95 = 4: 14/15 < 0.95 <= 15/15). Layer 1: flat on 6 directions
    (k95 = ceil(0.95 * 6) = 6). Every layer (quantile 1) needs 6; aligned to 4 that is 8: half the width.
    quantile 0 (the 'higher' of the smallest) needs 4; aligned to 1 that is 4, and layer 1 then loses 2/6."""
    ev = [np.r_[8.0, 4.0, 2.0, 1.0, np.zeros(12)], np.r_[np.full(6, 2.0), np.zeros(10)]]
    layers = [_layer(0, hard=3.2, soft=3.0), _layer(1, hard=6.0, soft=6.0)]
    a = width_advice(layers, ev, q=0.95, quantile=1.0, align=4)
    assert (a["current_width"], a["needed_width"], a["recommended_width"]) == (16, 6, 8)
    assert a["width_ratio"] == 0.5 and a["ffn_param_saving"] == a["ffn_flop_saving"] == 0.5
    assert a["max_variance_lost"] == 0.0 and a["basis"] == "variance"
    assert [e["k_q"] for e in a["per_layer"]] == [4, 6]
    assert [(e["hard_width"], e["soft_width"]) for e in a["per_layer"]] == [(4, 3), (6, 6)]  # ceil, exact integers kept
    assert a["per_layer"][0]["k95"] == 2 and a["per_layer"][0]["width"] == 16  # the layer's own k_q fields, passed on
    assert a["counted"] == {"layers": [0, 1], "excluded": 0, "above_needed": [], "set_by": 1}
    low = width_advice(layers, ev, q=0.95, quantile=0.0, align=1)
    assert (low["needed_width"], low["recommended_width"]) == (4, 4) and low["ffn_param_saving"] == 0.75
    assert [e["variance_lost"] for e in low["per_layer"]] == pytest.approx([0.0, 2 / 6], abs=1e-15)
    assert low["max_variance_lost"] == pytest.approx(2 / 6, abs=1e-15)
    assert low["counted"] == {"layers": [0, 1], "excluded": 0, "above_needed": [1], "set_by": 0}
    assert width_advice(layers, ev, quantile=0.5, align=1)["needed_width"] == 6  # 'higher' of 4 and 6
    assert width_advice(layers, ev, q=0.5, align=1)["needed_width"] == 3  # flat on 6: 3/6 reaches 0.5
    assert width_advice(layers, ev, align=64)["recommended_width"] == 16  # never above the current width
    # a layer without a spectrum is not counted
    skip = width_advice(layers, [ev[0], None], align=1)
    assert skip["counted"] == {"layers": [0], "excluded": 1, "above_needed": [], "set_by": 0}
    none = width_advice(layers, [None, None])
    assert none["recommended_width"] is None and none["per_layer"] == [] and none["current_width"] == 16
    assert width_advice([], [])["current_width"] == 0  # no layers at all: nothing to advise on


def test_width_advice_refuses_bad_settings_and_withholds_on_thin_data():
    layers = [_layer(0), _layer(1)]
    ev = [np.ones(16), np.ones(16)]
    for kw, match in (({"q": 0.0}, "advice energy level q must be in"), ({"q": 1.01}, "advice energy level q must be in"),
                      ({"quantile": -0.1}, "advice quantile must be in"), ({"quantile": 1.1}, "advice quantile must be in"),
                      ({"align": 0}, "alignment must be a positive integer")):
        with pytest.raises(ValueError, match=match):
            width_advice(layers, ev, **kw)
    assert width_advice(layers, ev, q=1.0, quantile=0.0, align=1)["recommended_width"] == 16
    assert thin_data(layers) is None and thin_data([_layer(0, tokens=64)]) is None  # 64 = 4 D: enough
    thin = [_layer(0, tokens=63), _layer(1, width=8, tokens=20), _layer(2, tokens=2000)]
    want = {"reason": "not enough calibration tokens: 20 < 4·D = 64; pass --tokens ≥ 10·D = 160",
            "tokens": 20, "min_tokens": 64, "recommended_tokens": 160, "layers": [0, 1]}
    assert thin_data(thin) == want
    a = width_advice(thin, [np.ones(16), np.ones(8), np.ones(16)], align=1)
    assert a["recommended_width"] is None and a["withheld"] == want and a["width_ratio"] is None
    assert [e["k_q"] for e in a["per_layer"]] == [16, 8, 16]  # the per-layer numbers are still given


def test_the_closed_ends_of_the_ranges():
    """f = 1 and q = 1 are allowed: k = D (SC = 1, SUI's tail factor taken as 1) and k_1 = the rank."""
    eigs = np.array([8.0, 4.0, 2.0, 1.0, 0.0, 0.0])
    assert top_k(10, 1.0) == 10 and top_k(6, 1.0) == 6
    m = spectral_metrics(eigs, top_fraction=1.0, energy_levels=(1.0,))
    assert m.concentration == 1.0 and m.energy_widths == {"k100": 4}
    assert m.sui == pytest.approx(((45 / 17) / 6 * m.soft_rank / 6) ** (1 / 3), rel=1e-14)
    assert energy_width(eigs, 1.0) == 4 and energy_width(eigs, 0.5) == 1 and energy_width(eigs, 0.54) == 2
