"""A report people can act on (issue 17), through the real entry point: the terminal report explains
its columns and names the next step within 100 columns; thin calibration data withholds the width
advice and fails the gate; a --tokens budget the sources cannot fill warns; a baseline calibrated
differently is refused; the header says what was run (.npy rows, --stats, --tap)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "tests" / "fixtures" / "gpt2_w128"  # 2 layers, D = 128: 4·D = 512, 10·D = 1,280
pytestmark = pytest.mark.skipif(not MODEL.is_dir(), reason="fixtures not built")


def cli(*args, cwd=ROOT, columns=100):
    env = dict(os.environ, COLUMNS=str(columns))
    env.pop("GITHUB_ACTIONS", None)
    return subprocess.run([sys.executable, "-m", "sui_onnx", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def flat(text: str) -> str:
    """Terminal text without box drawing and line breaks: what a sentence says, however it wrapped."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def one_error_line(r, *words):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sui-onnx: error: "), r.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def enough(tmp_path_factory):
    """A report on enough tokens (2,000 >= 4·D), run from the repository root on an absolute path."""
    out = tmp_path_factory.mktemp("enough")
    r = cli("report", MODEL, "--tokens", 2000, "--seq-len", 50, "--json", out / "r.json", columns=200)
    assert r.returncode == 0, r.stderr
    return r, json.loads((out / "r.json").read_text()), out


def test_terminal_report_explains_every_measure_within_100_columns(enough):
    r, data, _ = enough
    lines = r.stdout.splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 100  # COLUMNS=200: the report still keeps to 100
    legend = {line.split()[0]: line for line in lines if re.match(r"^(hard|soft|SC|SUI|k90\.\.) ", line)}
    assert set(legend) == {"hard", "soft", "SC", "SUI", "k90.."}
    for name in ("hard", "soft"):
        assert "1..D" in legend[name] and "higher = more of the width used" in legend[name]
    assert "0..1" in legend["SC"] and "lower" in legend["SC"] and "10%" in legend["SC"]
    assert "0..1" in legend["SUI"] and "higher" in legend["SUI"] and "bar" in legend["SUI"]
    assert "90/95/99%" in legend["k90.."]
    header = next(line for line in lines if line.lstrip().startswith("layer"))
    assert header.split() == ["layer", "D", "hard", "soft", "SC", "SUI", "k90", "k95", "k99", "status"]
    for x in data["layers"]:
        row = next(line for line in lines if re.match(rf"^\s+{x['layer']}\s+128\s", line))
        assert row.split()[-4:] == [str(x["k90"]), str(x["k95"]), str(x["k99"]), "ok"]


def test_advice_box_shows_the_needed_width_the_layers_counted_and_the_caveat(enough):
    r, data, _ = enough
    a = data["advice"]
    text = flat(r.stdout)
    assert f"k95 needs {a['needed_width']} of 128 neurons; {a['recommended_width']} after rounding up" in text
    assert f"counted: all 2 usable layers (layer {a['counted']['set_by']} sets it)" in text
    assert "accuracy must be measured" in text and "estimate" in text
    assert "saves" not in text  # an unmeasured width promises no saving


def test_next_steps_name_eval_slim_and_the_baseline_gate_with_short_paths(enough):
    r, _, _ = enough
    steps = {m.group(1): m.group(2).strip() for m in re.finditer(r"^(?:next)?\s+(measure|narrow|baseline|gate)\s+(.*)$",
                                                                r.stdout, re.M)}
    model = "tests/fixtures/gpt2_w128"  # relative to the working folder, not the absolute path given
    run = f"{model} --seq-len 50"  # the calibration options of this report: the same data next time
    assert steps["measure"] == f"sui-onnx report {run} --eval HELDOUT.txt"
    assert steps["narrow"].startswith(f"sui-onnx slim {run} OUT --width ")
    assert steps["baseline"] == f"sui-onnx report {run} --json base.json"
    assert steps["gate"] == f"sui-onnx check {run} --baseline base.json"
    assert f"model  {model}/model.onnx" in r.stdout and str(ROOT) not in r.stdout


def test_next_steps_keep_the_calibration_sources_and_ask_npy_ids_for_more_ids(tmp_path):
    (tmp_path / "notes.txt").write_text("Calibration notes written for this test only. " * 40)
    r = cli("report", MODEL, "--calib", "notes.txt", "--tokens", 300, "--seq-len", 50, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    text = flat(r.stdout)
    assert "--calib notes.txt --seq-len 50 --tokens 1280" in text  # not the bundled text
    np.save(tmp_path / "ids.npy", np.zeros((6, 50), np.int64))
    r = cli("report", MODEL, "--calib", "ids.npy", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    text = flat(r.stdout)
    assert "--calib MORE_IDS.npy" in text and "--tokens 1280" not in text and "--seq-len" not in text


def test_advice_quantile_says_which_layers_were_counted(tmp_path):
    r = cli("report", MODEL, "--tokens", 2000, "--seq-len", 50, "--advice-quantile", "0.5", "--json", tmp_path / "r.json")
    assert r.returncode == 0, r.stderr
    a = json.loads((tmp_path / "r.json").read_text())["advice"]
    text = flat(r.stdout)
    assert "every layer" not in text and "all 2 usable layers" not in text
    assert "counted: the 50% quantile of 2 layers" in text
    above = a["counted"]["above_needed"]
    assert above == [e["layer"] for e in a["per_layer"] if e["k_q"] > a["needed_width"]]
    if above:
        assert f"layer {above[0]} needs more" in text


def test_thin_data_withholds_the_advice_but_prints_the_flagged_metrics(tmp_path):
    r = cli("report", MODEL, "--tokens", 300, "--seq-len", 50, "--json", tmp_path / "r.json", "--markdown", tmp_path / "r.md")
    assert r.returncode == 0, r.stderr
    data = json.loads((tmp_path / "r.json").read_text())
    a = data["advice"]
    reason = "not enough calibration tokens: 300 < 4·D = 512; pass --tokens ≥ 10·D = 1,280"
    assert a["withheld"]["reason"] == reason and a["recommended_width"] is None and a["width_ratio"] is None
    assert a["basis"] == "variance" and "ffn_param_saving" not in a
    text = flat(r.stdout)
    assert f"width advice withheld: {reason}" in text
    assert "recommended" not in text and "saves" not in text and "needs" not in text.split("withheld")[-1]
    for x in data["layers"]:  # the metrics are still there, flagged
        assert x["status"] == "low_tokens" and x["sui"] is not None
        assert re.search(rf"^\s+{x['layer']}\s+128\s+{x['hard_rank']:.1f}\s.*low_tokens\s*$", r.stdout, re.M)
    assert "thin data: 300 tokens < 4·D = 512" in text
    assert "sui-onnx report tests/fixtures/gpt2_w128 --seq-len 50 --tokens 1280" in text  # the next step: calibrate more
    md = (tmp_path / "r.md").read_text()
    assert f"**Width advice withheld**: {reason}." in md and "Width estimate" not in md


def test_model_paths_in_the_next_steps_are_text_not_markup(tmp_path):
    import shutil

    shutil.copytree(MODEL, tmp_path / "[red]m")
    r = cli("report", "[red]m", "--tokens", 2000, "--seq-len", 50, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "sui-onnx check [red]m --seq-len 50 --baseline base.json" in r.stdout and "model  [red]m/model.onnx" in r.stdout


def test_check_fails_on_rank_capped_layers_unless_low_tokens_are_allowed(tmp_path):
    assert cli("report", MODEL, "--tokens", 100, "--seq-len", 50, "--json", tmp_path / "thin.json", "-q").returncode == 0
    assert {x["status"] for x in json.loads((tmp_path / "thin.json").read_text())["layers"]} == {"rank_capped"}
    r = cli("check", tmp_path / "thin.json", "--min-sui", "0", "--json", tmp_path / "g.json")
    assert r.returncode == 1, r.stdout + r.stderr
    g = json.loads((tmp_path / "g.json").read_text())
    failed = {(c["rule_id"], c["scope_label"]) for c in g["checks"] if not c["passed"]}
    assert failed == {("sui-onnx/layer-status", "layer 0"), ("sui-onnx/layer-status", "layer 1")}
    assert "--allow-low-tokens" in r.stdout
    assert cli("check", tmp_path / "thin.json", "--min-sui", "0", "--scope", "model", "-q").returncode == 1
    r = cli("check", tmp_path / "thin.json", "--min-sui", "0", "--allow-low-tokens")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "WARN" in r.stdout
    # the same through a model analyzed on the spot, and with a width ratio the withheld advice cannot meet
    r = cli("check", MODEL, "--tokens", 100, "--seq-len", 50, "--max-width-ratio", "1", "--allow-low-tokens",
            "--json", tmp_path / "g2.json", "-q")
    assert r.returncode == 1
    msg = next(c["message"] for c in json.loads((tmp_path / "g2.json").read_text())["checks"]
               if c["rule_id"] == "sui-onnx/max-width-ratio")
    assert "withheld" in msg and "not enough calibration tokens" in msg


def test_a_budget_the_sources_cannot_fill_warns_with_the_tokens_used_and_npy_rows_are_the_seq(tmp_path):
    ids = np.random.default_rng(0).integers(0, 200, size=(10, 64))
    np.save(tmp_path / "ids.npy", ids)
    r = cli("report", MODEL, "--calib", tmp_path / "ids.npy", "--tokens", 200000, "--json", tmp_path / "r.json")
    assert r.returncode == 0, r.stderr
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["calibration"]["tokens"] == 640 and data["calibration"]["sources"][0]["seq_len"] == 64
    assert r.stderr.strip() == ("sui-onnx: warning: --tokens 200,000: the calibration sources hold only 640 tokens; "
                                "all 640 used")
    text = flat(r.stdout)
    assert "fewer tokens than the budget of 200,000: 640 tokens used" in text
    assert "seq 64 (rows of ids)" in text and "seq 256" not in text
    r = cli("report", MODEL, "--calib", tmp_path / "ids.npy", "--tokens", 640, "-q")
    assert r.returncode == 0 and r.stderr == ""  # a budget the sources fill says nothing


def test_baseline_calibrated_differently_is_refused_unless_allowed(tmp_path):
    (tmp_path / "other.txt").write_text("A different calibration text, written for this test only. " * 300)
    runs = {"base": ["--tokens", 2000], "more": ["--tokens", 3000], "other": ["--calib", tmp_path / "other.txt",
                                                                                "--tokens", 2000],
            "shorter": ["--tokens", 2000, "--seq-len", 25]}
    for name, extra in runs.items():
        r = cli("report", MODEL, "--seq-len", 50, *extra, "--json", tmp_path / f"{name}.json", "-q")
        assert r.returncode == 0, r.stderr
    base = tmp_path / "base.json"
    one_error_line(cli("check", tmp_path / "more.json", "--baseline", base), "2,000 tokens", "3,000",
                   "--allow-calibration-change")
    one_error_line(cli("check", tmp_path / "other.json", "--baseline", base), "other data", "sha256",
                   "--allow-calibration-change")
    one_error_line(cli("check", tmp_path / "shorter.json", "--baseline", base), "windows of 50 tokens",
                   "windows of 25 tokens", "--allow-calibration-change")
    for name in ("more", "other", "shorter"):
        r = cli("check", tmp_path / f"{name}.json", "--baseline", base, "--allow-calibration-change", "-q")
        assert r.returncode in (0, 1), r.stderr  # compared: the verdict is the gate's
    assert cli("check", base, "--baseline", tmp_path / "base.json", "-q").returncode == 0
    # a model gated on the spot: refused after the analysis, and --save-report writes nothing
    r = cli("check", MODEL, "--seq-len", 50, "--tokens", 3000, "--baseline", base, "--save-report", tmp_path / "s.json")
    one_error_line(r, "2,000 tokens", "3,000")
    assert not (tmp_path / "s.json").exists()
    r = cli("check", MODEL, "--seq-len", 50, "--tokens", 2000, "--baseline", base, "--save-report", tmp_path / "s.json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "s.json").exists()


def test_stats_header_says_no_calibration_ran(tmp_path):
    r = cli("report", MODEL, "--tokens", 2000, "--seq-len", 50, "--checkpoint", tmp_path / "ck.npz", "-q")
    assert r.returncode == 0, r.stderr
    r = cli("report", MODEL, "--stats", tmp_path / "ck.npz", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    text = flat(r.stdout)
    # a finished run's statistics carry its calibration record: the header names the data as the run's did
    assert "2,000 tokens · seq 50 · <bundled>/calib.txt" in text
    assert "from saved statistics ck.npz (no calibration run)" in text
    assert "seq -" not in text and "0 tok/s" not in text and "none (-)" not in text


def test_a_report_from_finished_statistics_keeps_the_calibration_record_and_gates_against_a_direct_one(tmp_path):
    run = ("report", MODEL, "--tokens", 2000, "--seq-len", 50, "-q")
    assert cli(*run, "--json", tmp_path / "direct.json").returncode == 0
    assert cli(*run, "--checkpoint", tmp_path / "ck.npz").returncode == 0
    r = cli("report", MODEL, "--stats", tmp_path / "ck.npz", "--json", tmp_path / "st.json", "-q")
    assert r.returncode == 0, r.stderr
    direct, st = (json.loads((tmp_path / n).read_text())["calibration"] for n in ("direct.json", "st.json"))
    assert st["seq_len"] == 50 and st["tokens"] == direct["tokens"] == 2000
    assert [x["sha256"] for x in st["sources"]] == [x["sha256"] for x in direct["sources"]]
    r = cli("check", tmp_path / "st.json", "--baseline", tmp_path / "direct.json", "-q")
    assert r.returncode == 0, r.stdout + r.stderr  # the same data: compared, and equal


def test_explicit_tap_is_not_called_site_post(tmp_path):
    taps = json.loads(cli("taps", MODEL, "--site", "pre", "--json").stdout)
    tensor = taps[0]["tensor"]
    r = cli("report", MODEL, "--tap", tensor, "--tokens", 2000, "--seq-len", 50)
    assert r.returncode == 0, r.stderr
    text = flat(r.stdout)
    assert "taps named with --tap" in text and "site post" not in text
    r = cli("taps", MODEL, "--tap", tensor)
    assert r.returncode == 0 and "(named with --tap)" in r.stdout and "site post" not in r.stdout


def test_an_explicit_tap_of_a_detected_block_keeps_its_layer_number():
    detected = json.loads(cli("taps", MODEL, "--json").stdout)
    last = detected[-1]
    assert last["layer"] == len(detected) - 1 > 0
    named = json.loads(cli("taps", MODEL, "--tap", last["tensor"], "--json").stdout)
    assert [(t["tensor"], t["layer"]) for t in named] == [(last["tensor"], last["layer"])]


def test_a_model_path_longer_than_100_columns_is_not_wrapped_on_a_wide_terminal(tmp_path):
    import shutil

    deep = tmp_path / ("snapshots-" + "0123456789abcdef" * 6) / "gpt2"
    shutil.copytree(MODEL, deep)
    r = cli("report", deep, "--tokens", 2000, "--seq-len", 50, columns=len(str(deep)) + 60)  # room for the path
    assert r.returncode == 0, r.stderr
    assert f"model  {deep / 'model.onnx'}" in r.stdout  # whole, on one line
    widest = max(len(line.rstrip()) for line in r.stdout.splitlines())
    assert 100 < widest <= len(str(deep / "model.onnx")) + 11  # the box grows for the path only
