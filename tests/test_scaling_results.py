"""docs/results.md and the committed reports agree (bench/results.py --check); the generator states
the fits of a synthetic recipe set with known laws, seeds and loss curves; and the issue-20 goals on
the committed recipe reports (skipped until `python -m models.scaling_families` has been run and its
reports committed)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from sui_onnx.report import LayerResult, Report, load_report
from sui_onnx.scaling import scaling_analysis

ROOT = Path(__file__).resolve().parents[1]
SETS = ROOT / "models" / "reports" / "scaling"  # one folder per recipe set (--name)
RECIPE_SET = SETS / "bytes"  # models/scaling_families.py's default --name


def results_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "bench/results.py", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


def test_results_md_is_what_the_committed_reports_give():
    proc = results_cli("--check")
    assert proc.returncode == 0, proc.stderr


def curve(steps: range) -> list[list[float]]:
    return [[s, round(3.0 + 2.0 * math.exp(-s / 100.0), 4)] for s in steps]


def make_set(root: Path) -> None:
    """Recipe set 'syn': gpt2 at 4 widths x 2 seeds, ranks on known laws times (1 -+ 0.1) per seed;
    the training-distribution calibration has soft rank growing faster (beta 0.6)."""
    for seed, f in ((0, 0.9), (1, 1.1)):
        for w in (128, 256, 512, 1024):
            rec = {"seed": seed, "d_ff": w, "final_loss": 3.2 - w / 10_000, "heldout_ppl": 30.0, "steps": 600,
                   "loss_curve": curve(range(10, 601, 10)), "eval_curve": curve(range(0, 601, 50))}
            for calib, b_soft in (("heldout", 0.52), ("train", 0.6)):
                layers = [LayerResult(layer=i, tensor=f"t{i}", width=w, site="post", activation="gelu", op="Mul",
                                      tokens=32768, hard_rank=f * 2.5 * w ** 0.21, soft_rank=f * 2.0 * w ** b_soft,
                                      sui=0.2, energy_widths={"k95": 10}) for i in range(2)]
                rep = Report(model={"path": f"m{w}.onnx", "family": "gpt2", "seed": seed, "train": rec},
                             calibration={"tokens": 32768}, runtime={}, settings={"site": "post", "top_fraction": 0.1},
                             layers=layers)
                out = root / "syn" / calib / f"gpt2_w{w}_s{seed}.json"
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(rep.to_json())
            (root / "syn" / "training").mkdir(exist_ok=True)
            (root / "syn" / "training" / f"gpt2_w{w}_s{seed}.json").write_text(json.dumps(rec))


def test_generator_states_the_fits_seeds_and_loss_of_a_known_set(tmp_path):
    reports, docs = tmp_path / "reports", tmp_path / "docs"
    make_set(reports)
    docs.mkdir()
    proc = results_cli("--reports", str(reports), "--docs", str(docs), "--no-plots")
    assert proc.returncode == 0, proc.stderr
    text = (docs / "results.md").read_text()
    assert "## Recipe `syn`" in text and "## Baseline" not in text
    assert ("| held-out text | 0.520 (0.520 to 0.520) | 1.000 | 0.210 (0.210 to 0.210) | 1.000 | "
            "0.310 (0.310 to 0.310) | above 0 |") in text
    assert "| training-distribution text | 0.600 (0.600 to 0.600) | 1.000 |" in text
    assert "| *paper (GPT-2 160M, D = 768..6144), for comparison* | *0.661* | *0.971* |" in text
    # per width: 2 seeds, mean (the law) +- SD (law * 0.1 * sqrt 2), loss drop over the last 20% of steps
    loss = {s: 3.0 + 2.0 * math.exp(-s / 100.0) for s in (450, 500, 600)}
    drop = (round(loss[450], 4) + round(loss[500], 4)) / 2 - round(loss[600], 4)
    soft = 2.0 * 256 ** 0.52
    assert (f"| 256 | 2 | {3.2 - 256 / 10_000:.3f} | 30.00 | {drop:.3f} | {2.5 * 256 ** 0.21:.1f} ± "
            f"{2.5 * 256 ** 0.21 * 0.1 * math.sqrt(2):.1f} | {soft:.1f} ± {soft * 0.1 * math.sqrt(2):.1f} | 10.0 |") in text
    assert "| 0 | 0.520 | 1.000 | 0.210 | 1.000 | 0.310 (0.310 to 0.310) |" in text  # seed 0 alone
    assert "| gpt2 | held-out text | yes (1.000) | yes (0.310 to 0.310) | 0.520 | 0.210 |" in text
    assert "0.185 → 0.074 → 0.018 → 0.002 → 0.0" in text
    assert results_cli("--reports", str(reports), "--docs", str(docs), "--check").returncode == 0
    (docs / "results.md").write_text(text.replace("0.520 (0.520 to 0.520)", "0.521 (0.520 to 0.520)"))
    stale = results_cli("--reports", str(reports), "--docs", str(docs), "--check")
    assert stale.returncode == 1 and "out of date" in stale.stderr


NO_RECIPE = pytest.mark.skipif(not (RECIPE_SET / "heldout").is_dir(),
                               reason="the issue-20 recipe reports are not committed (python -m models.scaling_families)")
# (recipe set, family) pairs whose committed reports the goals are checked on: the default recipe
# (600 steps) for every paper family, and `bytes1800` (the same settings trained 3x longer) for
# GPT-2 and nGPT
GOAL_RUNS = [("bytes", "gpt2"), ("bytes", "llama"), ("bytes", "ngpt"), ("bytes1800", "gpt2"), ("bytes1800", "ngpt"),
             ("bytes-ngpt-lr0.01", "ngpt")]
# The soft-rank goal as the committed reports measure it (docs/results.md): strict, so a recipe that
# comes to meet it makes this list fail until it is updated.
SOFT_R2_UNMET = {
    ("bytes", "gpt2"): "GPT-2's soft rank stops growing at D = 768 in 600 steps: R^2 0.83 (bytes1800 meets it)",
    ("bytes", "ngpt"): "nGPT: soft R^2 0.948 on held-out text (0.959 on training-distribution text)",
    ("bytes1800", "ngpt"): "nGPT at 1800 steps: soft R^2 0.940 on held-out text (0.954 on training-distribution text)",
}


def _fit(family: str, calibration: str = "heldout", recipe: str = "bytes"):
    paths = sorted((SETS / recipe / calibration).glob(f"{family}_w*.json"))
    if not paths:
        pytest.skip(f"no committed {recipe}/{calibration} reports of {family}")
    return scaling_analysis([load_report(p) for p in paths], [p.name for p in paths])


@NO_RECIPE
@pytest.mark.parametrize("calibration", ["heldout", "train"])
@pytest.mark.parametrize("recipe,family", GOAL_RUNS)
def test_committed_recipe_spans_the_widths_and_seeds_and_shows_the_asymmetry(recipe, family, calibration):
    """Re-fit the committed reports: >= 6 widths over >= 16x, >= 2 seeds at every width, and the 95%
    interval of beta_soft - beta_hard above 0 on the median over layers, for each paper family."""
    result = _fit(family, calibration, recipe)
    assert len(result.widths) >= 6 and max(result.widths) >= 16 * min(result.widths)
    assert len(result.seeds) >= 2 and all(len(m.seeds) >= 2 for m in result.models)
    assert result.soft.beta > result.hard.beta
    assert result.asymmetry.beta_ci95[0] > 0, f"{family}: asymmetry interval {result.asymmetry.beta_ci95}"


@NO_RECIPE
@pytest.mark.parametrize("recipe,family", [
    pytest.param(*run, marks=pytest.mark.xfail(strict=True, reason=SOFT_R2_UNMET[run])) if run in SOFT_R2_UNMET else run
    for run in GOAL_RUNS])
def test_committed_recipe_soft_rank_is_a_near_perfect_power_law(recipe, family):
    """The issue-20 goal: soft-rank R^2 >= 0.95 on the median over layers, held-out calibration."""
    result = _fit(family, recipe=recipe)
    assert result.soft.r2 >= 0.95, f"{recipe}/{family}: soft-rank R^2 {result.soft.r2:.3f}"


def test_the_longer_recipe_differs_from_the_default_only_in_its_steps():
    """bytes1800 is the default recipe with 3x the training steps: every other setting is the same."""
    a, b = (json.loads((SETS / name / "recipe.json").read_text())["settings"] for name in ("bytes", "bytes1800"))
    assert (a["steps"], b["steps"]) == (600, 1800)
    assert {k: v for k, v in a.items() if k != "steps"} == {k: v for k, v in b.items() if k != "steps"}


def test_the_ngpt_lr_set_differs_from_the_default_only_in_ngpts_lr_and_family():
    """bytes-ngpt-lr0.01 is the default recipe for nGPT with the peak lr the probe measured
    (bench/results/ngpt_lr_probe.json: the lowest held-out perplexity over its widths)."""
    a, b = (json.loads((SETS / name / "recipe.json").read_text()) for name in ("bytes", "bytes-ngpt-lr0.01"))
    assert (a["settings"]["ngpt_lr"], b["settings"]["ngpt_lr"]) == (0.015, 0.01)
    assert {k: v for k, v in a["settings"].items() if k != "ngpt_lr"} == \
        {k: v for k, v in b["settings"].items() if k != "ngpt_lr"}
    assert b["sweep"]["families"] == ["ngpt"] and b["sweep"]["widths"] == a["sweep"]["widths"]
    assert b["sweep"]["seeds"] == a["sweep"]["seeds"]
    probe = json.loads((Path(__file__).parents[1] / "bench" / "results" / "ngpt_lr_probe.json").read_text())
    mean_ppl = {}
    for row in probe["rows"]:
        mean_ppl.setdefault(row["ngpt_lr"], []).append(row["heldout_ppl"])
    assert min(mean_ppl, key=lambda lr: sum(mean_ppl[lr])) == b["settings"]["ngpt_lr"]
