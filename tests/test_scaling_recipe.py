"""The scaling recipe (models/scaling_families.py, issue 20): its defaults are the settings the issue
asks for, the byte-level tokenizer is the UTF-8 bytes, the plan and the budget check print, and a tiny
sweep (3 widths, 2 seeds, 3 steps) trains, analyzes both calibrations, keeps its results, resumes
after an interruption, refuses other settings under the same name, and feeds `sui-onnx scaling`
with its seeds pooled."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.scaling_families import CALIBRATIONS, Recipe, Run  # noqa: E402

TINY = ["--families", "gpt2", "--widths", "32", "64", "128", "--seeds", "0", "1", "--steps", "3", "--d-model", "32",
        "--text", "shipped", "--calib-tokens", "1024", "--eval-every", "2", "--name", "tiny"]


def recipe_argv(*args: str, tmp_path: Path) -> list[str]:
    return [sys.executable, "-m", "models.scaling_families", *args, "--reports", str(tmp_path / "reports"),
            "--work", str(tmp_path / "work")]


def recipe_cli(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(recipe_argv(*args, tmp_path=tmp_path), capture_output=True, text=True, cwd=ROOT, timeout=600)


def test_defaults_are_the_settings_issue_20_measured():
    r = Recipe()
    assert (r.vocab, r.d_model, r.n_layers, r.n_heads) == (256, 128, 2, 4)
    assert (r.steps, r.batch, r.seq, r.lr, r.weight_decay) == (600, 16, 128, 2e-3, 0.1)
    assert set(r.families) == {"gpt2", "llama", "ngpt", "mixln"}
    assert len(r.widths) >= 6 and max(r.widths) >= 16 * min(r.widths) and min(r.widths) == 128
    assert len(r.seeds) >= 2
    assert r.tokens >= 10 * max(r.widths) and r.tokens % r.seq == 0  # one budget for every width
    assert Recipe(widths=(128, 8192)).tokens == 81920 and Recipe(calib_tokens=4096).tokens == 4096
    assert [x.id for x in Recipe(families=("gpt2", "llama"), widths=(64, 128), seeds=(0, 1)).runs()][:3] == \
        ["gpt2_w64_s0", "gpt2_w128_s0", "llama_w64_s0"]  # seed by seed: a cut-short sweep has whole families


def test_byte_tokenizer_is_the_utf8_bytes(tmp_path):
    from tokenizers import Tokenizer

    from models.byte_level import encode_text, ensure_byte_tokenizer

    path = ensure_byte_tokenizer(tmp_path / "tokenizer.json")
    tok = Tokenizer.from_file(str(path))
    text = (ROOT / "sui_onnx" / "data" / "heldout.txt").read_text(encoding="utf-8")[:3000] + "\n\tünï — 漢字 \x00\n\n"
    ids = tok.encode(text).ids
    assert tok.get_vocab_size() == 256 and ids == list(text.encode("utf-8")) == encode_text(text).tolist()
    assert tok.decode(ids) == text


def test_dry_run_prints_the_plan(tmp_path):
    proc = recipe_cli("--dry-run", "--text", "shipped", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "4 families x 9 widths x 2 seeds = 72 models; 0 done, 72 to run" in proc.stdout
    assert "32,768 tokens per model" in proc.stdout and "note:" not in proc.stdout
    assert proc.stdout.count(" todo") == 72 and "mixln_w2048_s1" in proc.stdout
    assert not (tmp_path / "reports").exists()  # a dry run writes nothing
    short = recipe_cli("--dry-run", "--text", "shipped", "--widths", "128", "256", "512", "--seeds", "0", tmp_path=tmp_path)
    assert "note: 3 widths over 4x" in short.stdout and "note: one seed" in short.stdout


def test_recipe_json_keeps_every_command_that_added_to_the_set(tmp_path):
    """A set grown by a second command (here another family) records the union of the sweeps and
    both commands in order; running a command again adds nothing; a set written before "commands"
    keeps its one "command" as the first."""
    from types import SimpleNamespace

    from models.scaling_families import write_recipe

    paths = SimpleNamespace(reports=tmp_path)
    settings = {"steps": 3}
    first, second = ["--families", "gpt2", "--widths", "32", "64"], ["--families", "ngpt", "--widths", "64", "128"]
    write_recipe(Recipe(families=("gpt2",), widths=(32, 64), seeds=(0,)), paths, settings, first)
    write_recipe(Recipe(families=("ngpt",), widths=(64, 128), seeds=(1,)), paths, settings, second)
    write_recipe(Recipe(families=("ngpt",), widths=(64, 128), seeds=(1,)), paths, settings, second)
    d = json.loads((tmp_path / "recipe.json").read_text())
    assert d["sweep"] == {"families": ["gpt2", "ngpt"], "widths": [32, 64, 128], "seeds": [0, 1]}
    assert d["commands"] == ["python -m models.scaling_families " + " ".join(a) for a in (first, second)]
    assert "command" not in d
    old = {"recipe": "x", "settings": settings, "sweep": {}, "command": "python -m models.scaling_families --jobs 2"}
    (tmp_path / "recipe.json").write_text(json.dumps(old))
    write_recipe(Recipe(families=("gpt2",), widths=(32,), seeds=(0,)), paths, settings, first)
    assert json.loads((tmp_path / "recipe.json").read_text())["commands"] == [
        old["command"], "python -m models.scaling_families " + " ".join(first)]


@pytest.mark.export
@pytest.mark.slow
def test_tiny_sweep_trains_analyzes_keeps_and_resumes(tmp_path):
    pytest.importorskip("optimum")
    proc = recipe_cli(*TINY, "--jobs", "2", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "6 of 6 models done" in proc.stdout
    reports = tmp_path / "reports" / "tiny"
    runs = [Run("gpt2", w, s) for s in (0, 1) for w in (32, 64, 128)]
    for run in runs:
        record = json.loads((reports / "training" / f"{run.id}.json").read_text())
        assert record["d_ff"] == run.width and record["seed"] == run.seed and record["vocab"] == 256
        assert record["loss_curve"][0][0] == 1 and [s for s, _ in record["eval_curve"]] == [0, 2, 3]
        for calibration in CALIBRATIONS:
            rep = json.loads((reports / calibration / f"{run.id}.json").read_text())
            assert rep["model"]["seed"] == run.seed and rep["model"]["family"] == "gpt2"
            assert rep["model"]["calibration_set"] == calibration
            assert rep["model"]["train"]["loss_curve"] == record["loss_curve"]
            assert rep["calibration"]["tokens"] == 1024 and [x["width"] for x in rep["layers"]] == [run.width] * 2
        texts = [json.loads((reports / c / f"{run.id}.json").read_text())["calibration"]["sources"][0]["path"]
                 for c in CALIBRATIONS]
        assert [Path(t).name for t in texts] == ["heldout.txt", "calib.txt"]  # --text shipped: held out, trained on
    assert json.loads((reports / "recipe.json").read_text())["settings"]["calib_tokens"] == 1024

    # the reports feed `sui-onnx scaling`: two seeds per width, pooled
    out = tmp_path / "s.json"
    fit = subprocess.run([sys.executable, "-m", "sui_onnx", "scaling", *sorted(map(str, (reports / "heldout").glob("*.json"))),
                          "--json", str(out), "-q"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert fit.returncode == 0, fit.stderr
    d = json.loads(out.read_text())
    assert d["inputs"]["widths"] == [32, 64, 128] and d["inputs"]["seeds"] == [0, 1]
    assert [w["n_seeds"] for w in d["per_width"]] == [2, 2, 2] and len(d["seed_fits"]) == 2

    # an interrupted run: one report lost, one trained model lost after it was done, one model cut short
    work = tmp_path / "work" / "tiny"
    (reports / "heldout" / "gpt2_w64_s1.json").unlink()
    trained = (work / "gpt2_w64_s1" / "train.json").read_text()
    import shutil
    shutil.rmtree(work / "gpt2_w128_s0")
    (reports / "training" / "gpt2_w32_s0.json").unlink()
    (work / "gpt2_w32_s0" / "train.json").unlink()  # as if killed before training finished
    # the budget check (a probe that trains, exports and analyzes, and writes nothing) runs on a fresh
    # folder on the second core while the interrupted sweep resumes on the first
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    check = subprocess.Popen(recipe_argv(*TINY, "--seeds", "0", "1", "2", "--budget-check", tmp_path=fresh),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    again = recipe_cli(*TINY, tmp_path=tmp_path)
    check_out, check_err = check.communicate(timeout=600)
    assert check.returncode == 0, check_err
    assert "0 done, 9 to run" in check_out and "estimate (CPU time" in check_out and "gpt2_w32_s2" in check_out
    assert not any(p.is_file() for p in fresh.rglob("*"))  # it wrote nothing
    assert again.returncode == 0, again.stdout + again.stderr
    assert "4 done, 2 to run" in again.stdout and "2 of 2 models done" in again.stdout
    assert (work / "gpt2_w64_s1" / "train.json").read_text() == trained  # analyzed again, not retrained
    assert (reports / "heldout" / "gpt2_w64_s1.json").is_file()
    assert (work / "gpt2_w32_s0" / "train.json").is_file()  # retrained
    assert not (work / "gpt2_w128_s0").exists()  # done: its reports are kept, nothing redone
    assert "6 done, 0 to run" in recipe_cli(*TINY, "--dry-run", tmp_path=tmp_path).stdout

    # other settings under the same name are refused; a longer seed list is planned on top of what is done
    other = recipe_cli(*TINY, "--steps", "4", tmp_path=tmp_path)
    assert other.returncode != 0 and "other settings (steps)" in other.stderr
    plan = recipe_cli(*TINY, "--seeds", "0", "1", "2", "--dry-run", tmp_path=tmp_path)
    assert "6 done, 3 to run" in plan.stdout and "gpt2_w32_s2" in plan.stdout
    assert not (reports / "training" / "gpt2_w32_s2.json").exists()
