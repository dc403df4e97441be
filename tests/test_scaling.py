"""The spectral scaling law (sui_onnx/scaling.py, docs/scaling.md): Student-t quantiles against
tables and closed forms, power-law fits against exact laws and an independent least-squares
solution, interval coverage by simulation, the saturation width against a numeric derivative, and
`scaling_analysis` over the committed synthetic reports in tests/data/reports/."""

from __future__ import annotations

import copy
import json
import math
import random
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sui_onnx.errors import SuiError
from sui_onnx.report import LayerResult, Report, json_safe, load_report
from sui_onnx.scaling import (DEFAULT_TAU, SCHEMA, SCHEMA_VERSION, PowerLawFit, betainc, fit_power_law,
                              saturation, saturation_width, scaling_analysis, student_t_quantile, student_t_sf)

DATA = Path(__file__).parent / "data" / "reports"
FAMILY = [DATA / f"gpt2_w{w}.json" for w in (768, 1536, 3072, 4608, 6144)]
sys.path.insert(0, str(DATA))
import make_reports  # noqa: E402

sys.path.remove(str(DATA))
PAPER_WIDTHS = np.array([768, 1536, 3072, 4608, 6144], dtype=np.float64)


# ------------------------------------------------------------------------------ Student t
@pytest.mark.parametrize("dof, expected", [(1, 12.706205), (2, 4.302653), (5, 2.570582), (30, 2.042272)])
def test_t_quantile_matches_table_values(dof, expected):
    assert student_t_quantile(0.975, dof) == pytest.approx(expected, abs=1e-6)


# 17-digit values from mpmath (40 digits: findroot on 1 - I_{n/(n+t^2)}(n/2, 1/2) / 2 = p)
@pytest.mark.parametrize("dof, p, expected", [
    (3, 0.975, 3.1824463052837084), (10, 0.975, 2.2281388519862742), (4, 0.995, 4.604094871349992),
    (60, 0.95, 1.6706488649046361), (7, 0.9, 1.4149239276505086), (2.5, 0.999, 13.82219311086596),
    (0.5, 0.9, 10.270324410234511),
])
def test_t_quantile_high_precision_values(dof, p, expected):
    assert student_t_quantile(p, dof) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("p", [0.6, 0.9, 0.975, 0.995, 0.9999])
def test_t_quantile_against_closed_form_cdfs_for_three_and_four_dof(p):
    t3, t4 = student_t_quantile(p, 3), student_t_quantile(p, 4)
    f3 = 0.5 + (t3 / (math.sqrt(3) * (1 + t3 * t3 / 3)) + math.atan(t3 / math.sqrt(3))) / math.pi
    u = t4 * t4 / 4
    f4 = 0.5 + 0.375 * (t4 / math.sqrt(1 + u)) * (1 - t4 * t4 / (12 * (1 + u)))
    assert f3 == pytest.approx(p, abs=1e-14) and f4 == pytest.approx(p, abs=1e-14)


@pytest.mark.parametrize("p", [0.51, 0.6, 0.75, 0.9, 0.975, 0.999, 0.9999999])
def test_t_quantile_closed_forms_for_one_and_two_dof(p):
    # dof 1 (Cauchy): t = 1 / tan(pi (1 - p)) (cot form avoids the pole of tan(pi (p - 1/2)))
    assert student_t_quantile(p, 1) == pytest.approx(1.0 / math.tan(math.pi * (1.0 - p)), rel=1e-11)
    # dof 2: t = (2p - 1) / sqrt(2 p (1 - p))
    assert student_t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-11)


def test_t_quantile_symmetry_limits_and_round_trip():
    assert student_t_quantile(0.5, 3) == 0.0
    assert student_t_quantile(0.025, 5) == -student_t_quantile(0.975, 5)
    assert student_t_quantile(0.975, 1e7) == pytest.approx(1.959963984540054, abs=1e-6)  # normal limit
    for t in (-7.5, -1.0, 0.0, 0.3, 2.0, 40.0):  # upper tails in closed form: Cauchy (dof 1) and dof 2
        assert student_t_sf(t, 1) == pytest.approx(0.5 - math.atan(t) / math.pi, abs=1e-14)
        assert student_t_sf(t, 2) == pytest.approx(0.5 - t / (2 * math.sqrt(2 + t * t)), abs=1e-14)
    for bad_p in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError):
            student_t_quantile(bad_p, 3)
    with pytest.raises(ValueError):
        student_t_quantile(0.9, 0)


def test_betainc_closed_forms():
    for x in (0.0, 1e-9, 0.2, 0.5, 0.93, 1.0):
        assert betainc(1, 1, x) == pytest.approx(x, abs=1e-15)
        assert betainc(2.5, 1, x) == pytest.approx(x ** 2.5, abs=1e-14)
        assert betainc(1, 3.5, x) == pytest.approx(1 - (1 - x) ** 3.5, abs=1e-14)
        assert betainc(0.5, 0.5, x) == pytest.approx(2 / math.pi * math.asin(math.sqrt(x)), abs=1e-14)
        assert betainc(3.2, 0.7, x) == pytest.approx(1 - betainc(0.7, 3.2, 1 - x), abs=1e-14)
    with pytest.raises(ValueError):
        betainc(0, 1, 0.5)
    with pytest.raises(ValueError):
        betainc(1, 1, 1.5)


# ------------------------------------------------------------------------------ fits
@pytest.mark.parametrize("beta", [-0.3, 0.0, 0.289, 0.661, 1.0, 1.7])
@pytest.mark.parametrize("a", [0.01, 3.5, 1000.0])
def test_fit_recovers_exact_power_laws(beta, a):
    fit = fit_power_law(PAPER_WIDTHS, a * PAPER_WIDTHS ** beta)
    assert fit.beta == pytest.approx(beta, abs=1e-9)
    assert fit.A == pytest.approx(a, rel=1e-9)
    assert fit.n == 5
    assert fit.residual_sd < 1e-12
    lo, hi = fit.beta_ci95
    assert lo <= fit.beta <= hi and hi - lo < 1e-9
    if beta != 0.0:
        assert fit.r2 == pytest.approx(1.0, abs=1e-12)
    else:
        assert math.isnan(fit.r2) or fit.r2 == pytest.approx(1.0)  # constant ranks: R^2 undefined


@settings(max_examples=60, deadline=None)
@given(
    beta=st.floats(-1.0, 2.0),
    log_a=st.floats(-5.0, 5.0),
    widths=st.lists(st.integers(16, 20000), min_size=2, max_size=8, unique=True),
)
def test_fit_recovers_random_exact_laws(beta, log_a, widths):
    d = np.asarray(widths, dtype=np.float64)
    fit = fit_power_law(d, math.exp(log_a) * d ** beta)
    assert fit.beta == pytest.approx(beta, abs=1e-9)
    assert fit.A == pytest.approx(math.exp(log_a), rel=1e-9)


def test_fit_matches_an_independent_least_squares_solution():
    rng = np.random.default_rng(7)
    d = np.array([512, 768, 1024, 2048, 3072, 4096, 6144], dtype=np.float64)
    r = 2.0 * d ** 0.5 * np.exp(rng.normal(0, 0.15, d.size))
    fit = fit_power_law(d, r)
    x, y = np.log(d), np.log(r)
    design = np.column_stack([np.ones_like(x), x])
    coef, sse, *_ = np.linalg.lstsq(design, y, rcond=None)
    s2 = float(sse[0]) / (d.size - 2)
    se = math.sqrt(s2 * np.linalg.inv(design.T @ design)[1, 1])
    assert fit.beta == pytest.approx(coef[1], rel=1e-12)
    assert fit.A == pytest.approx(math.exp(coef[0]), rel=1e-12)
    assert fit.r2 == pytest.approx(np.corrcoef(x, y)[0, 1] ** 2, rel=1e-12)
    assert fit.residual_sd == pytest.approx(math.sqrt(s2), rel=1e-12)
    assert fit.beta_se == pytest.approx(se, rel=1e-12)
    t = 2.570581835636314  # t_{0.975, 5}
    assert fit.beta_ci95[0] == pytest.approx(coef[1] - t * se, rel=1e-10)
    assert fit.beta_ci95[1] == pytest.approx(coef[1] + t * se, rel=1e-10)
    assert 0 < fit.r2 < 1


def test_fit_is_equivariant_to_rank_scale_and_width_units():
    rng = np.random.default_rng(1)
    d = PAPER_WIDTHS
    r = 3 * d ** 0.4 * np.exp(rng.normal(0, 0.1, d.size))
    base = fit_power_law(d, r)
    scaled = fit_power_law(d, 10 * r)
    assert scaled.beta == pytest.approx(base.beta, rel=1e-12) and scaled.A == pytest.approx(10 * base.A, rel=1e-12)
    assert scaled.r2 == pytest.approx(base.r2, rel=1e-12)
    units = fit_power_law(d / 768, r)
    assert units.beta == pytest.approx(base.beta, rel=1e-12)
    assert units.A == pytest.approx(base.A * 768 ** base.beta, rel=1e-10)
    order = fit_power_law(d[::-1], r[::-1])
    assert order.beta == pytest.approx(base.beta, rel=1e-12)


@pytest.mark.parametrize("widths", [np.array([256.0, 512, 1024, 2048]), PAPER_WIDTHS])
def test_t_interval_covers_the_truth_at_the_nominal_rate(widths):
    """2000 fits on log-normal noise: coverage of the 95% interval within 0.93 - 0.97 (binomial
    SD ~ 0.005). With 4 widths (2 dof) a normal-quantile interval would cover only ~0.82."""
    rng = np.random.default_rng(2025)
    beta, a, sigma = 0.289, 3.5, 0.3
    sims = 2000
    noise = rng.normal(0.0, sigma, (sims, widths.size))
    ranks = a * widths ** beta * np.exp(noise)
    covered = z_covered = 0
    for row in ranks:
        fit = fit_power_law(widths, row)
        lo, hi = fit.beta_ci95
        covered += lo <= beta <= hi
        z_covered += abs(fit.beta - beta) <= 1.959963984540054 * fit.beta_se
    coverage = covered / sims
    assert 0.93 <= coverage <= 0.97, coverage
    if widths.size == 4:
        assert z_covered / sims < 0.88  # the t quantile is what makes the interval right


def test_fit_edge_cases():
    two = fit_power_law([100, 400], [10, 20])
    assert two.beta == pytest.approx(0.5) and two.n == 2
    assert all(math.isnan(v) for v in two.beta_ci95) and math.isnan(two.residual_sd)
    flat = fit_power_law([100, 200, 400], [7, 7, 7])
    assert flat.beta == 0.0 and math.isnan(flat.r2)
    # equal ranks that went through arithmetic (a median of equal values, a mean of seeds) differ in
    # the last bit: still undefined, never a fit of R^2 0
    rounded = fit_power_law([128, 256, 512, 1024], [8.000000000000002, 8.0, 7.999999999999999, 8.000000000000002])
    assert abs(rounded.beta) < 1e-12 and math.isnan(rounded.r2)
    noisy = fit_power_law([100, 200, 400, 800], [5, 1, 9, 2])
    assert 0.0 <= noisy.r2 <= 1.0
    for widths, ranks in (([100], [3]), ([100, 200], [3]), ([100, 100, 100], [1, 2, 3]),
                          ([100, 0, 300], [1, 2, 3]), ([100, 200, 300], [1, -2, 3]),
                          ([100, 200, 300], [1, math.nan, 3])):
        with pytest.raises(ValueError):
            fit_power_law(widths, ranks)


def test_fit_predict_and_slope():
    fit = fit_power_law(PAPER_WIDTHS, 2 * PAPER_WIDTHS ** 0.5)
    assert fit.predict(1024) == pytest.approx(64.0, rel=1e-12)
    assert fit.slope(1024) == pytest.approx(0.5 * 64.0 / 1024, rel=1e-12)
    d = fit.to_dict()
    assert set(d) == {"beta", "A", "r2", "beta_ci95", "beta_se", "n", "residual_sd"}


# ------------------------------------------------------------------------------ saturation
@pytest.mark.parametrize("beta, a, tau", [(0.289, 3.5, 0.05), (0.5, 2.0, 0.01), (0.9, 0.4, 0.2), (0.1, 50.0, 0.05)])
def test_saturation_width_closed_form_against_numeric_derivative(beta, a, tau):
    d_star = saturation_width(beta, a, tau)
    assert d_star is not None and d_star > 0

    def hard(d):
        return a * d ** beta

    h = d_star * 1e-5
    numeric = (hard(d_star + h) - hard(d_star - h)) / (2 * h)
    assert numeric == pytest.approx(tau, rel=1e-8)
    for factor in (1.01, 2.0, 100.0):  # beyond D* the gain stays below tau
        d = d_star * factor
        assert (hard(d * (1 + 1e-6)) - hard(d)) / (d * 1e-6) < tau
    d = d_star * 0.99
    assert (hard(d * (1 + 1e-6)) - hard(d)) / (d * 1e-6) > tau


def test_saturation_status_and_position():
    assert saturation_width(0.0, 2.0) is None and saturation_width(-0.2, 2.0) is None
    assert saturation_width(1.0, 0.01) is None and saturation_width(1.3, 2.0) is None
    with pytest.raises(ValueError):
        saturation_width(0.5, 2.0, tau=0)
    widths = [768, 1536, 3072]

    def fit(beta, a):
        return PowerLawFit(beta=beta, A=a, r2=1.0, beta_ci95=(beta, beta), n=3, residual_sd=0.0)

    assert saturation(fit(-0.1, 5.0), widths).status == "no_growth"
    assert saturation(fit(1.2, 5.0), widths).status == "not_reached"
    # choose A so that D* = 1000, 100 and 10000 respectively
    for target, position in ((1000.0, "within"), (100.0, "below"), (10000.0, "above")):
        beta = 0.5
        a = DEFAULT_TAU / (beta * target ** (beta - 1))
        sat = saturation(fit(beta, a), widths)
        assert sat.status == "reached" and sat.position == position
        assert sat.width == pytest.approx(target, rel=1e-12)
        assert sat.slope_at_max_width == pytest.approx(beta * a * 3072 ** (beta - 1), rel=1e-12)


# ------------------------------------------------------------------------------ analysis
def family(order=None):
    reports = [load_report(p) for p in FAMILY]
    labels = [p.name for p in FAMILY]
    if order is not None:
        reports = [reports[i] for i in order]
        labels = [labels[i] for i in order]
    return reports, labels


def test_committed_reports_follow_their_generating_laws():
    result = scaling_analysis(*family())
    assert result.widths == [768, 1536, 3072, 4608, 6144]
    mid = make_reports.law_params(1)
    assert result.soft.beta == pytest.approx(mid["beta_soft"], abs=1e-9)
    assert result.soft.A == pytest.approx(mid["A_soft"], rel=1e-9)
    assert result.hard.beta == pytest.approx(mid["beta_hard"], abs=1e-9)
    assert result.hard.A == pytest.approx(mid["A_hard"], rel=1e-9)
    assert result.soft.r2 == pytest.approx(1.0, abs=1e-12) and result.hard.r2 == pytest.approx(1.0, abs=1e-12)
    assert result.asymmetry.beta == pytest.approx(mid["beta_soft"] - mid["beta_hard"], abs=1e-9)
    assert [x.layer for x in result.layers] == [0, 1, 2]
    for layer in result.layers:
        law = make_reports.law_params(layer.layer)
        assert layer.soft.beta == pytest.approx(law["beta_soft"], abs=1e-9)
        assert layer.hard.beta == pytest.approx(law["beta_hard"], abs=1e-9)
        assert layer.soft.A == pytest.approx(law["A_soft"], rel=1e-9)
        assert layer.hard.A == pytest.approx(law["A_hard"], rel=1e-9)
        assert layer.saturation.width == pytest.approx(saturation_width(law["beta_hard"], law["A_hard"]), rel=1e-8)
    sat = result.saturation
    assert sat.width == pytest.approx(saturation_width(mid["beta_hard"], mid["A_hard"], DEFAULT_TAU), rel=1e-8)
    assert sat.status == "reached" and sat.position == "below"


def test_medians_sui_and_peak_against_an_independent_computation():
    """Worked by hand. Widths 64, 128, 256 (ln D = ln 2 * (6, 7, 8)); four layers per width, listed out of
    order, so each median is the mean of the two middle values: hard medians 2, 8, 4; soft medians 16,
    32, 64; SUI medians 0.3, 0.5, 0.2 (the peak is interior, at 128).
    In log2 units the hard fit is the least-squares line through (6, 1), (7, 3), (8, 2): slope
    (2 - 1) / 2 = 0.5, intercept 2 - 0.5 * 7 = -1.5 (A = 2^-1.5); residuals (-0.5, 1, -0.5), SSE = 1.5,
    SST = 2, R^2 = 0.25, se(beta) = sqrt(1.5 / 1) / sqrt(2), 95% interval 0.5 +- t_{0.975,1} * se.
    The soft medians lie on 2^(y) with y = x - 2 exactly: beta 1, A = 1/4, R^2 = 1."""
    layers = {  # width: (hard, soft, sui) per layer, the median pair in the middle of the sorted values
        64: ([30.0, 1.5, 1.0, 2.5], [16.5, 15.5, 1.0, 60.0], [0.9, 0.25, 0.35, 0.1]),
        128: ([7.5, 8.5, 90.0, 0.5], [2.0, 31.0, 100.0, 33.0], [0.45, 0.05, 0.55, 0.6]),
        256: ([4.25, 3.75, 3.0, 5.0], [64.5, 63.5, 200.0, 10.0], [0.15, 0.25, 0.01, 0.99]),
    }
    reports = [_report([_layer(i, w, h, s, u) for i, (h, s, u) in enumerate(zip(*v))]) for w, v in layers.items()]
    result = scaling_analysis(reports)
    assert [m.median_hard for m in result.models] == [2.0, 8.0, 4.0]
    assert [m.median_soft for m in result.models] == [16.0, 32.0, 64.0]
    assert [m.median_sui for m in result.models] == pytest.approx([0.3, 0.5, 0.2], abs=1e-15)
    assert result.sui_peak["width"] == 128 and result.sui_peak["position"] == "interior"
    assert result.sui_peak["median_sui"] == pytest.approx(0.5, abs=1e-15)
    hard, soft = result.hard, result.soft
    assert hard.beta == pytest.approx(0.5, rel=1e-12) and hard.A == pytest.approx(2 ** -1.5, rel=1e-12)
    assert hard.r2 == pytest.approx(0.25, rel=1e-12) and hard.n == 3
    se = math.sqrt(1.5) / math.sqrt(2)
    assert hard.beta_ci95 == pytest.approx((0.5 - 12.706204736174698 * se, 0.5 + 12.706204736174698 * se), rel=1e-9)
    # residual SD in ln units: sqrt(SSE / (n - 2)) with SSE = 1.5 (ln 2)^2
    d = hard.to_dict()
    assert d.pop("beta_ci95") == pytest.approx([0.5 - 12.706204736174698 * se, 0.5 + 12.706204736174698 * se], rel=1e-9)
    assert d == pytest.approx({"beta": 0.5, "A": 2 ** -1.5, "r2": 0.25, "beta_se": se, "n": 3,
                               "residual_sd": math.sqrt(1.5) * math.log(2)}, rel=1e-9)
    assert soft.beta == pytest.approx(1.0, rel=1e-12) and soft.A == pytest.approx(0.25, rel=1e-12)
    assert soft.r2 == pytest.approx(1.0, abs=1e-12)
    assert result.asymmetry.beta == pytest.approx(0.5, rel=1e-12)


def test_asymmetry_is_the_difference_of_the_slopes_on_noisy_data():
    rng = np.random.default_rng(3)
    reports = []
    for w in (512, 1024, 2048, 4096):
        layers = [_layer(i, w, hard=4 * w ** 0.3 * math.exp(rng.normal(0, 0.3)),
                         soft=2 * w ** 0.7 * math.exp(rng.normal(0, 0.05)), sui=0.2) for i in range(4)]
        reports.append(_report(layers))
    result = scaling_analysis(reports)
    assert result.asymmetry.beta == pytest.approx(result.soft.beta - result.hard.beta, abs=1e-12)
    for layer in result.layers:
        assert layer.asymmetry.beta == pytest.approx(layer.soft.beta - layer.hard.beta, abs=1e-12)
    assert result.hard.r2 < 1 and result.soft.r2 < 1


def test_input_order_does_not_matter():
    a = scaling_analysis(*family())
    b = scaling_analysis(*family(order=[3, 0, 4, 2, 1]))
    assert json.dumps(json_safe(a.to_dict())) == json.dumps(json_safe(b.to_dict()))


def test_to_dict_layout():
    result = scaling_analysis(*family(), tau=0.01)
    d = json_safe(result.to_dict())
    text = json.dumps(d, allow_nan=False)
    d = json.loads(text)
    assert d["schema"] == SCHEMA == "sui-onnx/scaling"
    assert isinstance(d["schema_version"], int) and d["schema_version"] == SCHEMA_VERSION
    assert d["inputs"]["widths"] == [768, 1536, 3072, 4608, 6144]
    assert d["inputs"]["n_layers"] == 3 and d["inputs"]["site"] == "post"
    assert d["inputs"]["family"] == {"family": "synthetic-gpt2", "architecture": "GPT2LMHeadModel", "activations": ["gelu"]}
    assert [m["label"] for m in d["inputs"]["models"]] == [p.name for p in FAMILY]
    assert d["settings"]["tau"] == 0.01
    for key in ("soft_rank", "hard_rank"):
        fit = d["median_fits"][key]
        assert set(fit) >= {"beta", "A", "r2", "beta_ci95", "n", "residual_sd"}
        assert len(fit["beta_ci95"]) == 2
    assert set(d["median_fits"]["asymmetry"]) == {"beta_soft_minus_hard", "ci95", "beta_se", "n", "verdict"}
    assert d["median_fits"]["asymmetry"]["verdict"] == "above 0"  # 0.661 - 0.289 with R^2 = 1
    assert d["median_fits"]["soft_rank"]["low_r2"] is False and d["settings"]["min_r2"] == 0.95
    assert [w["n_seeds"] for w in d["per_width"]] == [1] * 5 and d["seed_fits"] == []
    assert len(d["layers"]) == 3 and d["layers"][0]["soft_rank"]["n"] == 5
    assert [s["width"] for s in d["sui"]] == d["inputs"]["widths"]
    assert d["saturation"]["tau"] == 0.01 and d["saturation"]["status"] == "reached"
    assert set(d["sui_peak"]) == {"width", "median_sui", "position"}


# refusals -------------------------------------------------------------------------------
def _layer(i, width, hard, soft, sui, activation="gelu"):
    return LayerResult(layer=i, tensor=f"t{i}", width=width, site="post", activation=activation, op="Mul",
                       tokens=10 * width, hard_rank=hard, soft_rank=soft, sui=sui)


def _report(layers, **model):
    return Report(model={"path": "m.onnx", "site": "post", **model}, calibration={"tokens": 1}, runtime={},
                  settings={"site": "post", "top_fraction": 0.1}, layers=layers)


def _simple(width, n_layers=2, activation="gelu", **model):
    return _report([_layer(i, width, width ** 0.3, width ** 0.6, 0.3, activation) for i in range(n_layers)], **model)


@pytest.mark.parametrize("reports, match", [
    ([_simple(256), _simple(512)], "at least 3"),
    ([_simple(256), _simple(512), _simple(1024, n_layers=3)], "mixed depths"),
    ([_simple(256, family="gpt2"), _simple(512, family="gpt2"), _simple(1024, family="llama")], "mixed families"),
    ([_simple(256, architecture="A"), _simple(512), _simple(1024, architecture="B")], "mixed families"),
    ([_simple(256), _simple(512), _simple(1024, activation="swiglu")], "mixed families"),
    ([_simple(256), _simple(512), _simple(512), _simple(1024)], "duplicate width D=512"),
    ([_simple(256), _simple(512), _simple(512)], "duplicate width D=512"),
])
def test_refusals(reports, match):
    with pytest.raises(SuiError, match=match):
        scaling_analysis(reports)


def test_refuses_mixed_sites_and_top_fractions_and_unusable_models():
    reports = [_simple(256), _simple(512), _simple(1024)]
    pre = copy.deepcopy(reports)
    pre[1].settings["site"] = "pre"
    with pytest.raises(SuiError, match="mixed tap sites"):
        scaling_analysis(pre)
    frac = copy.deepcopy(reports)
    frac[2].settings["top_fraction"] = 0.2
    with pytest.raises(SuiError, match="mixed `top_fraction` values"):
        scaling_analysis(frac)
    dead = copy.deepcopy(reports)
    for layer in dead[0].layers:
        layer.sui = layer.hard_rank = layer.soft_rank = None
    with pytest.raises(SuiError, match="no usable layer"):
        scaling_analysis(dead, labels=["a.json", "b.json", "c.json"])
    with pytest.raises(SuiError, match="tau"):
        scaling_analysis(reports, tau=0)


def test_family_hints_missing_on_some_reports_and_unknown_activations_are_tolerated():
    reports = [_simple(256, family="gpt2"), _simple(512), _simple(1024, family="gpt2", activation="unknown")]
    result = scaling_analysis(reports)
    assert result.family == {"family": "gpt2", "activations": ["gelu"]}


def test_unusable_layer_is_left_out_of_its_own_fit_only():
    reports = [_simple(w, n_layers=2) for w in (256, 512, 1024, 2048)]
    reports[1].layers[0].sui = None  # unusable at one width
    result = scaling_analysis(reports)
    assert result.layers[0].soft.n == 3 and result.layers[0].widths == [256, 1024, 2048]
    assert result.layers[1].soft.n == 4
    reports[2].layers[0].sui = None
    result = scaling_analysis(reports)
    assert result.layers[0].soft is None and "usable width" in result.layers[0].note
    assert result.soft.beta == pytest.approx(0.6, abs=1e-12)


def test_sui_peak_tie_and_interior():
    reports = [_report([_layer(0, w, w ** 0.3, w ** 0.6, s)]) for w, s in ((256, 0.2), (512, 0.5), (1024, 0.5), (2048, 0.1))]
    random.Random(0).shuffle(reports)
    peak = scaling_analysis(reports).sui_peak
    assert peak == {"width": 512, "median_sui": 0.5, "position": "interior"}


# the committed data ---------------------------------------------------------------------
def test_committed_reports_are_reproducible_and_valid():
    fresh = make_reports.all_reports()
    assert sorted(fresh) == sorted(p.name for p in DATA.glob("*.json"))
    for name, report in fresh.items():
        stored = load_report(DATA / name)
        assert stored.model == json.loads(json.dumps(report.model.to_dict()))
        for a, b in zip(stored.layers, report.layers):
            for key in ("hard_rank", "soft_rank", "sui", "concentration"):
                assert getattr(a, key) == pytest.approx(getattr(b, key), rel=1e-9)
            assert a.energy_widths == b.energy_widths and a.activation == b.activation
        h, s = make_reports.law(1, stored.layers[0].width)
        assert stored.layers[1].hard_rank == pytest.approx(h, rel=1e-12)
        assert stored.layers[1].soft_rank == pytest.approx(s, rel=1e-12)


def test_committed_reports_match_the_report_schema():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((Path(__file__).parents[1] / "sui_onnx" / "schema" / "report.schema.json").read_text())
    for path in DATA.glob("*.json"):
        jsonschema.validate(json.loads(path.read_text()), schema)


# ------------------------------------------------------------------------------ boundaries and seeds
# (each pins a behaviour that a mutant of sui_onnx/scaling.py changed without any other test noticing)
def _fit(beta=0.5, a=1.0, r2=1.0, ci=(0.4, 0.6), n=3):
    return PowerLawFit(beta=beta, A=a, r2=r2, beta_ci95=ci, n=n, residual_sd=0.0)


def test_results_are_values():
    import dataclasses

    from sui_onnx.scaling import Spread

    for value, name in ((_fit(), "beta"), (saturation(_fit(), [1, 2, 4]), "width"), (Spread.of([1.0, 2.0]), "mean")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(value, name, 0.0)


def test_saturation_exactly_at_the_smallest_or_largest_width_is_within():
    """"below" / "above" mean strictly outside the measured range."""
    star = saturation_width(0.5, 16.0, 0.25)
    assert star == pytest.approx(1024.0, rel=1e-12)  # (0.5 * 16 / 0.25)^2
    assert saturation(_fit(0.5, 16.0), [star, 2 * star, 4 * star], 0.25).position == "within"
    assert saturation(_fit(0.5, 16.0), [star / 4, star / 2, star], 0.25).position == "within"
    assert saturation(_fit(0.5, 16.0), [1.01 * star, 2 * star, 4 * star], 0.25).position == "below"
    assert saturation(_fit(0.5, 16.0), [star / 4, star / 2, 0.99 * star], 0.25).position == "above"


def test_asymmetry_verdict_at_zero_and_without_an_interval():
    from sui_onnx.scaling import asymmetry_verdict

    assert asymmetry_verdict(_fit(ci=(0.1, 0.3))) == "above 0" and asymmetry_verdict(_fit(ci=(-0.3, -0.1))) == "below 0"
    assert asymmetry_verdict(_fit(ci=(0.0, 0.3))) == "includes 0"  # an interval touching 0 includes it
    assert asymmetry_verdict(_fit(ci=(-0.3, 0.0))) == "includes 0"
    assert asymmetry_verdict(_fit(ci=(math.nan, math.nan))) == "undefined" and asymmetry_verdict(None) == "undefined"
    assert asymmetry_verdict(_fit(ci=(math.nan, 0.3))) == "undefined"  # one bound missing: no interval
    assert asymmetry_verdict(_fit(ci=(0.1, math.inf))) == "undefined"


def test_low_r2_means_strictly_below_the_level():
    reports = [_report([_layer(i, w, h, s, 0.2) for i, (h, s) in enumerate(zip(*v))])
               for w, v in {64: ([2.0, 2.0], [16.0, 16.0]), 128: ([8.0, 8.0], [32.0, 32.0]), 256: ([4.0, 4.0], [64.0, 64.0])}.items()]
    r2 = scaling_analysis(reports).hard.r2
    assert r2 == pytest.approx(0.25, rel=1e-12)
    at = scaling_analysis(reports, min_r2=r2)
    assert at.low_r2(at.hard) is False and at.to_dict()["median_fits"]["hard_rank"]["low_r2"] is False
    above = scaling_analysis(reports, min_r2=math.nextafter(r2, 1.0))
    assert above.low_r2(above.hard) is True and above.to_dict()["median_fits"]["hard_rank"]["low_r2"] is True
    for ok in (0.0, 1.0):  # the closed ends of [0, 1]
        assert scaling_analysis(reports, min_r2=ok).min_r2 == ok
    for bad in (-0.01, 1.01, 2.0, math.nan, math.inf):
        with pytest.raises(SuiError, match=r"`min_r2` must be a number in \[0, 1\]"):
            scaling_analysis(reports, min_r2=bad)
    for bad in ("", ".seed", "train..seed", "seed."):
        with pytest.raises(SuiError, match="`seed_key` must be a dotted path"):
            scaling_analysis(reports, seed_key=bad)


def test_seeds_are_ordered_numbers_then_names_then_none_and_pooled_labels_count_them():
    widths = (64, 128, 256)

    def run(w, seed):
        model = {} if seed is None else {"seed": seed}
        return _report([_layer(0, w, w ** 0.3, w ** 0.6, 0.3), _layer(1, w, w ** 0.3, w ** 0.6, 0.3)], **model)

    seeds = ["b", 10, None, "a", 2]
    reports = [run(w, s) for s in seeds for w in widths]
    labels = [f"{w}-{s}" for s in seeds for w in widths]
    result = scaling_analysis(reports, labels)
    assert result.seeds == [2, 10, "a", "b", None]
    assert [r.seed for r in result.runs[:5]] == [2, 10, "a", "b", None]  # runs: by width, then seed
    assert [f.seed for f in result.seed_fits] == [2, 10, "a", "b", None]
    assert result.models[0].label == "64-2 (+4 more seeds)"  # the label of the width's first seed
    two = scaling_analysis([run(w, s) for s in (1, 2) for w in widths], [f"{w}-{s}" for s in (1, 2) for w in widths])
    assert [f.seed for f in two.seed_fits] == [1, 2] and [f.widths for f in two.seed_fits] == [[64, 128, 256]] * 2
    assert two.models[1].label == "128-1 (+1 more seed)"
    one = scaling_analysis([run(w, 7) for w in widths], ["a", "b", "c"])
    assert [m.label for m in one.models] == ["a", "b", "c"] and one.seed_fits == []
    # a seed at only two widths gets no fit of its own
    partial = scaling_analysis([run(w, 1) for w in widths] + [run(w, 2) for w in widths[:2]])
    assert [f.seed for f in partial.seed_fits] == [1]


def test_mixed_depths_message_groups_the_inputs():
    reports = [_simple(256), _simple(512), _simple(768), _simple(1024, n_layers=3)]
    with pytest.raises(SuiError) as exc:
        scaling_analysis(reports, ["a.json", "b.json", "c.json", "d.json"])
    assert str(exc.value) == ("mixed depths (2 FFN layers in a.json (+2 more), 3 in d.json); "
                              "a scaling fit needs one family at one depth")
    with pytest.raises(SuiError) as exc:
        scaling_analysis(reports[2:] + [_simple(2048)], ["c.json", "d.json", "e.json"])
    assert str(exc.value).startswith("mixed depths (2 FFN layers in c.json (+1 more), 3 in d.json)")
    with pytest.raises(SuiError) as exc:
        scaling_analysis([_simple(256), _simple(512, n_layers=3), _simple(1024, n_layers=4)], ["a", "b", "c"])
    assert str(exc.value).startswith("mixed depths (2 FFN layers in a, 3 in b, 4 in c)")


def test_sui_peak_at_the_largest_width():
    reports = [_report([_layer(i, w, w ** 0.3, w ** 0.6, sui) for i in range(2)])
               for w, sui in ((256, 0.1), (512, 0.2), (1024, 0.3))]
    assert scaling_analysis(reports).sui_peak == {"width": 1024, "median_sui": 0.3, "position": "largest"}


def test_r2_of_a_flat_fit_is_zero_even_when_round_off_makes_the_residuals_exceed_the_total():
    """These ranks are uncorrelated with ln D (beta ~ 1e-12), so R^2 = beta^2 Sxx / SST ~ 1e-25: zero. Here
    round-off makes the residual sum of squares exceed the total sum by an ulp; R^2 stays 0, never 1."""
    fit = fit_power_law([64, 128, 256, 512], [5.018072720790686, 5.023192633448548, 5.023456656709491, 5.017984805811691])
    assert abs(fit.beta) < 1e-11
    assert fit.r2 == pytest.approx(0.0, abs=1e-12)
