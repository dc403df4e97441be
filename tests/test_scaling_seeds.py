"""`sui-onnx scaling` against closed forms, through the real entry point where the CLI is the subject:
synthetic reports whose ranks follow known power laws (median and per layer), seeds with a known
spread, the asymmetry interval (excludes 0 for a constructed asymmetry, includes it for equal
exponents), the R^2 flag, and how a report says its seed (docs/scaling.md, "Seeds")."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sui_onnx.errors import SuiError
from sui_onnx.report import LayerResult, Report
from sui_onnx.scaling import report_seed, scaling_analysis

ROOT = Path(__file__).resolve().parents[1]
WIDTHS = [128, 256, 512, 1024, 2048, 4096]  # 6 widths over 32x, as the recipe uses
T975 = {3: 3.182446305, 4: 2.776445105, 7: 2.364624252}  # Student t_{0.975, dof} from tables


def layer(i: int, width: int, hard: float, soft: float, sui: float = 0.2) -> LayerResult:
    return LayerResult(layer=i, tensor=f"t{i}", width=width, site="post", activation="gelu", op="Mul",
                       tokens=16 * width, hard_rank=hard, soft_rank=soft, sui=sui)


def report(width: int, layers: list[LayerResult], **model) -> Report:
    return Report(model={"path": f"m{width}.onnx", "family": "synthetic", **model},
                  calibration={"tokens": 16 * width}, runtime={}, settings={"site": "post", "top_fraction": 0.1},
                  layers=layers)


def write(tmp_path: Path, reports: list[Report], stem: str = "r") -> list[str]:
    paths = []
    for k, r in enumerate(reports):
        path = tmp_path / f"{stem}{k}.json"
        path.write_text(r.to_json())
        paths.append(str(path))
    return paths


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sui_onnx", "scaling", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120, env={**os.environ, "COLUMNS": "120"})


def table_rows(stdout: str) -> dict[str, list[str]]:
    """First cell -> the other cells, for every row of the rich tables."""
    return {cells[0]: cells[1:] for line in stdout.splitlines()
            if len(cells := [c.strip() for c in line.strip("│ ").split("│")]) > 2}


def ols(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Slope, its standard error and R^2 of y on x, written out (independent of the code under test)."""
    xc, yc = x - x.mean(), y - y.mean()
    slope = float(xc @ yc / (xc @ xc))
    resid = yc - slope * xc
    se = math.sqrt(float(resid @ resid) / (x.size - 2) / float(xc @ xc))
    return slope, se, 1.0 - float(resid @ resid) / float(yc @ yc)


# ------------------------------------------------------------------------------ known power laws
LAWS = [  # per layer: (A_soft, beta_soft, A_hard, beta_hard); layer 1 is the median layer at every width
    (1.5, 0.45, 2.0, 0.15),
    (2.0, 0.52, 2.5, 0.21),
    (2.5, 0.60, 3.0, 0.27),
]


def law_family(seed=None) -> list[Report]:
    return [report(w, [layer(i, w, ah * w ** bh, a * w ** b) for i, (a, b, ah, bh) in enumerate(LAWS)],
                   **({} if seed is None else {"seed": seed})) for w in WIDTHS]


def test_cli_prints_the_fitted_betas_of_a_known_law(tmp_path):
    """The printed and written betas are the generating exponents (0.52 and 0.21, not the paper's 0.661
    and 0.289): a fit that doubled or replaced beta would fail here."""
    out = tmp_path / "s.json"
    proc = cli(*write(tmp_path, law_family()), "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    rows = table_rows(proc.stdout)
    assert rows["soft rank"][0] == "0.520" and rows["hard rank"][0] == "0.210" and rows["soft - hard"][0] == "0.310"
    assert rows["soft rank"][3] == rows["hard rank"][3] == "1.000"  # R^2, not flagged
    assert rows["paper: soft rank"][0] == "0.661" and rows["paper: hard rank"][0] == "0.289"
    d = json.loads(out.read_text())
    soft, hard = d["median_fits"]["soft_rank"], d["median_fits"]["hard_rank"]
    assert soft["beta"] == pytest.approx(0.52, abs=1e-12) and soft["A"] == pytest.approx(2.0, rel=1e-12)
    assert hard["beta"] == pytest.approx(0.21, abs=1e-12) and hard["A"] == pytest.approx(2.5, rel=1e-12)
    assert soft["r2"] == pytest.approx(1.0, abs=1e-12) and not soft["low_r2"] and not hard["low_r2"]
    assert d["median_fits"]["asymmetry"]["beta_soft_minus_hard"] == pytest.approx(0.31, abs=1e-12)
    assert d["median_fits"]["asymmetry"]["verdict"] == "above 0"
    # per layer: every layer's own law, in the table and the JSON
    for x, (a, b, ah, bh) in zip(d["layers"], LAWS):
        assert x["soft_rank"]["beta"] == pytest.approx(b, abs=1e-12) and x["soft_rank"]["A"] == pytest.approx(a, rel=1e-12)
        assert x["hard_rank"]["beta"] == pytest.approx(bh, abs=1e-12) and x["hard_rank"]["A"] == pytest.approx(ah, rel=1e-12)
        assert x["asymmetry"]["beta_soft_minus_hard"] == pytest.approx(b - bh, abs=1e-12)
        assert rows[str(x["layer"])][0] == f"{b:.3f} ± 0.000" and rows[str(x["layer"])][2] == f"{bh:.3f} ± 0.000"
    assert "above 0 (soft rank grows faster" in " ".join(proc.stdout.split())


def test_doubled_exponents_are_seen_as_doubled(tmp_path):
    """The same laws with doubled exponents (smaller prefactors keep the ranks within D): the output must
    say 1.040 / 0.420, not 0.520 / 0.210."""
    squared = [report(w, [layer(i, w, ah / 5 * w ** (2 * bh), a / 40 * w ** (2 * b)) for i, (a, b, ah, bh) in enumerate(LAWS)])
               for w in WIDTHS]
    out = tmp_path / "s.json"
    proc = cli(*write(tmp_path, squared), "--json", str(out), "-q")
    assert proc.returncode == 0, proc.stderr
    d = json.loads(out.read_text())
    assert d["median_fits"]["soft_rank"]["beta"] == pytest.approx(1.04, abs=1e-12)
    assert d["median_fits"]["hard_rank"]["beta"] == pytest.approx(0.42, abs=1e-12)


# ------------------------------------------------------------------------------ seeds
def test_seeds_are_pooled_with_their_known_spread(tmp_path):
    """Three seeds with ranks law * (1 - d), law, law * (1 + d): mean = the law, SD = law * d (ddof 1),
    range = law * (1 -+ d); the pooled fit and every seed's own fit recover beta exactly."""
    d = 0.1
    factors = {0: 1 - d, 1: 1.0, 2: 1 + d}
    reports = [report(w, [layer(i, w, f * ah * w ** bh, f * a * w ** b, sui=0.3 * f) for i, (a, b, ah, bh) in enumerate(LAWS)],
                      seed=s) for s, f in factors.items() for w in WIDTHS]
    out = tmp_path / "s.json"
    proc = cli(*write(tmp_path, reports), "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    res = json.loads(out.read_text())
    assert res["inputs"]["seeds"] == [0, 1, 2] and len(res["inputs"]["models"]) == 18
    assert res["inputs"]["widths"] == WIDTHS
    for pw, w in zip(res["per_width"], WIDTHS):
        soft = 2.0 * w ** 0.52
        assert pw["n_seeds"] == 3 and pw["seeds"] == [0, 1, 2]
        assert pw["soft_rank"]["mean"] == pytest.approx(soft, rel=1e-12)
        assert pw["soft_rank"]["sd"] == pytest.approx(soft * d, rel=1e-9)
        assert pw["soft_rank"]["min"] == pytest.approx(soft * (1 - d), rel=1e-12)
        assert pw["soft_rank"]["max"] == pytest.approx(soft * (1 + d), rel=1e-12)
        assert pw["hard_rank"]["sd"] == pytest.approx(2.5 * w ** 0.21 * d, rel=1e-9)
        assert pw["sui"]["mean"] == pytest.approx(0.3, rel=1e-12) and pw["sui"]["sd"] == pytest.approx(0.03, rel=1e-9)
    fits = res["median_fits"]
    assert fits["soft_rank"]["beta"] == pytest.approx(0.52, abs=1e-12) and fits["soft_rank"]["n"] == 6
    assert fits["soft_rank"]["A"] == pytest.approx(2.0, rel=1e-12)
    assert [f["seed"] for f in res["seed_fits"]] == [0, 1, 2]
    for f in res["seed_fits"]:
        assert f["soft_rank"]["beta"] == pytest.approx(0.52, abs=1e-12)
        assert f["soft_rank"]["A"] == pytest.approx(2.0 * factors[f["seed"]], rel=1e-12)
        assert f["hard_rank"]["beta"] == pytest.approx(0.21, abs=1e-12)
    rows = table_rows(proc.stdout)
    w = 1024
    assert rows[str(w)][0] == "3"  # the seeds column
    assert rows[str(w)][4] == f"{2.0 * w ** 0.52:.2f} ± {2.0 * w ** 0.52 * d:.2f}"
    assert "3 seeds (0, 1, 2)" in proc.stdout and "Per seed" in proc.stdout


def test_seed_noise_enters_the_pooled_point_as_its_mean():
    """Three seeds, unequal noise: the pooled point is the arithmetic mean of the medians (neither their
    median nor their geometric mean), and the fit is the least-squares line through ln of those means."""
    rng = np.random.default_rng(11)
    noise = np.exp(rng.normal(0, 0.2, (3, len(WIDTHS))))
    reports = [report(w, [layer(0, w, 3.0, 2 * w ** 0.5 * noise[s, k])], seed=s)
               for s in (0, 1, 2) for k, w in enumerate(WIDTHS)]
    res = scaling_analysis(reports)
    means = noise.mean(axis=0) * 2 * np.asarray(WIDTHS, dtype=float) ** 0.5
    assert [m.median_soft for m in res.models] == pytest.approx(list(means), rel=1e-12)
    slope, se, r2 = ols(np.log(WIDTHS), np.log(means))
    assert res.soft.beta == pytest.approx(slope, rel=1e-12) and res.soft.r2 == pytest.approx(r2, rel=1e-12)
    assert res.soft.beta_ci95[1] - res.soft.beta == pytest.approx(T975[4] * se, rel=1e-8)


def test_how_a_report_says_its_seed():
    base = report(256, [layer(0, 256, 3.0, 9.0)])
    assert report_seed(base) is None
    assert report_seed(report(256, [], seed=4)) == 4
    assert report_seed(report(256, [], train={"seed": 7})) == 7  # model.train.seed, bench/results.py's layout
    assert report_seed(report(256, [], seed=4, train={"seed": 7})) == 4  # model.seed first
    assert report_seed(report(256, [], run={"id": "b"}), "run.id") == "b"
    assert report_seed(report(256, [], seed=4), "run.id") is None
    with pytest.raises(SuiError, match="not a number or a name"):
        report_seed(report(256, [], seed={"x": 1}))
    with pytest.raises(SuiError, match="not a number or a name"):
        report_seed(report(256, [], seed=True))


def test_same_width_same_seed_is_refused_and_seed_key_selects_the_field(tmp_path):
    runs = [report(w, [layer(0, w, w ** 0.2, w ** 0.5)], run={"id": rid}) for rid in ("a", "b") for w in (256, 512, 1024)]
    paths = write(tmp_path, runs)
    proc = cli(*paths, "-q")  # no model.seed: both runs of a width have "no seed"
    assert proc.returncode == 2 and "duplicate width D=256 with the same seed" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    out = tmp_path / "s.json"
    proc = cli(*paths, "-q", "--seed-key", "run.id", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    d = json.loads(out.read_text())
    assert d["inputs"]["seeds"] == ["a", "b"] and d["inputs"]["seed_key"] == "run.id"
    assert [w["n_seeds"] for w in d["per_width"]] == [2, 2, 2]
    proc = cli(paths[0], paths[3], paths[1], "-q", "--seed-key", "run.id")  # a and b at 256, a at 512
    assert proc.returncode == 2 and "at least 3 distinct FFN widths; got 2 width(s)" in proc.stderr


# ------------------------------------------------------------------------------ the asymmetry interval
EPS = np.array([0.06, -0.04, -0.07, 0.05, 0.08, -0.06])   # fixed, not collinear with ln D
ETA = np.array([-0.05, 0.07, 0.03, -0.08, 0.02, 0.04])


def noisy_family(beta_soft: float, beta_hard: float) -> list[Report]:
    return [report(w, [layer(0, w, 3.0 * w ** beta_hard * math.exp(e), 2.0 * w ** beta_soft * math.exp(s))])
            for w, s, e in zip(WIDTHS, EPS, ETA)]


@pytest.mark.parametrize("beta_soft, beta_hard, verdict", [(0.55, 0.25, "above 0"), (0.40, 0.40, "includes 0"),
                                                           (0.20, 0.45, "below 0")])
def test_asymmetry_interval_against_the_closed_form(tmp_path, beta_soft, beta_hard, verdict):
    """The interval of beta_soft - beta_hard is the t interval of the slope of ln(soft / hard) on ln D:
    with these residuals it lies above 0 for a 0.30 asymmetry, includes 0 for equal exponents and lies
    below 0 when hard rank grows faster."""
    out = tmp_path / "s.json"
    proc = cli(*write(tmp_path, noisy_family(beta_soft, beta_hard)), "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    asym = json.loads(out.read_text())["median_fits"]["asymmetry"]
    slope, se, _ = ols(np.log(WIDTHS), np.log(2.0 / 3.0) + (beta_soft - beta_hard) * np.log(WIDTHS) + EPS - ETA)
    lo, hi = slope - T975[4] * se, slope + T975[4] * se
    assert asym["beta_soft_minus_hard"] == pytest.approx(slope, rel=1e-10)
    assert asym["ci95"] == pytest.approx([lo, hi], rel=1e-8)
    assert asym["verdict"] == verdict
    assert {"above 0": lo > 0, "includes 0": lo < 0 < hi, "below 0": hi < 0}[verdict]
    assert f"95% CI [{lo:.3f}, {hi:.3f}]: {verdict}" in " ".join(proc.stdout.split())


# ------------------------------------------------------------------------------ the R^2 flag
def test_low_r2_is_flagged_at_the_stated_level(tmp_path):
    """Hard ranks with large fixed residuals: R^2 (computed here) below 0.95 is flagged '!' and
    low_r2, the clean soft law is not; --min-r2 moves the level; a level outside [0, 1] is refused."""
    bumps = np.array([0.5, -0.4, 0.3, -0.5, 0.4, -0.3])
    reports = [report(w, [layer(0, w, 3.0 * w ** 0.2 * math.exp(b), 2.0 * w ** 0.5)]) for w, b in zip(WIDTHS, bumps)]
    paths = write(tmp_path, reports)
    _, _, r2 = ols(np.log(WIDTHS), np.log(3.0 * np.asarray(WIDTHS, float) ** 0.2 * np.exp(bumps)))
    assert r2 < 0.95
    out = tmp_path / "s.json"
    proc = cli(*paths, "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    rows = table_rows(proc.stdout)
    assert rows["hard rank"][3] == f"{r2:.3f} !" and rows["soft rank"][3] == "1.000"
    assert "R^2 below 0.95 (--min-r2: not a clean power law): median hard" in " ".join(proc.stdout.split())
    d = json.loads(out.read_text())
    assert d["median_fits"]["hard_rank"]["r2"] == pytest.approx(r2, rel=1e-10)
    assert d["median_fits"]["hard_rank"]["low_r2"] is True and d["median_fits"]["soft_rank"]["low_r2"] is False
    assert d["layers"][0]["hard_rank"]["low_r2"] is True and d["settings"]["min_r2"] == 0.95
    proc = cli(*paths, "--min-r2", f"{r2 - 0.01:.4f}", "--json", str(out))
    assert proc.returncode == 0 and "!" not in table_rows(proc.stdout)["hard rank"][3]
    assert json.loads(out.read_text())["median_fits"]["hard_rank"]["low_r2"] is False
    proc = cli(*paths, "--min-r2", "1.5")
    assert proc.returncode == 2 and "--min-r2" in proc.stderr


def test_a_report_without_a_seed_is_shown_as_no_seed(tmp_path):
    """Mixing reports with and without a seed pools them as two seeds; the header names the
    missing one in words, not as Python's None."""
    paths = write(tmp_path, law_family(seed=0)) + write(tmp_path, law_family(), stem="n")
    proc = cli(*paths, "--plain") if "--plain" in cli("--help").stdout else cli(*paths)
    assert proc.returncode == 0, proc.stderr
    assert "2 seeds (0, no seed)" in proc.stdout and "None" not in proc.stdout


def test_saturation_widths_below_ten_keep_three_significant_digits():
    from sui_onnx.fmt import fmt_width

    assert [fmt_width(x) for x in (0.7516, 9.994, 10.4, 12345.6)] == ["0.752", "9.99", "10", "12,346"]
