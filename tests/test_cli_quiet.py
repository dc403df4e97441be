"""-q silences the terminal table and the progress bar of report, eval and slim, never a warning:
what the table would have said in yellow goes to stderr, one `sui-onnx: warning:` line each."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
FIXTURES = Path(__file__).parent / "fixtures"
GPT2 = FIXTURES / "gpt2_w128"
HELDOUT = Path(__file__).parent.parent / "sui_onnx" / "data" / "heldout.txt"


def cli(*args):
    return subprocess.run([sys.executable, "-m", "sui_onnx", *map(str, args)], capture_output=True, text=True,
                          env=dict(os.environ, COLUMNS="100"))


def warnings_on_stderr(r):
    return [line for line in r.stderr.splitlines() if line.startswith("sui-onnx: warning: ")]


def test_report_quiet_still_warns_about_thin_data(tmp_path):
    loud = cli("report", GPT2, "--tokens", 300)
    assert loud.returncode == 0 and "thin data" in loud.stdout
    r = cli("report", GPT2, "--tokens", 300, "-q", "--json", tmp_path / "r.json")
    assert r.returncode == 0 and r.stdout == ""
    said = warnings_on_stderr(r)
    assert len(said) == 1 and "thin data: 300 tokens" in said[0] and "--tokens >= 1,280" in said[0]
    r = cli("report", GPT2, "--tokens", 300, "--json", "-")  # the JSON on stdout: the warning beside it
    assert r.stdout.lstrip().startswith("{") and any("thin data" in w for w in warnings_on_stderr(r))


def test_report_quiet_is_silent_when_there_is_nothing_to_warn_about(tmp_path):
    r = cli("report", GPT2, "--tokens", 2000, "-q", "--json", tmp_path / "r.json")
    assert r.returncode == 0 and r.stdout == "" and warnings_on_stderr(r) == []


def test_eval_quiet_still_warns_that_the_data_is_the_calibration_data(tmp_path):
    slim = tmp_path / "s"
    assert cli("slim", GPT2, slim, "--ratio", 0.5, "--tokens", 1500, "--seq-len", 64, "-q").returncode == 0
    calib = Path(__file__).parent.parent / "sui_onnx" / "data" / "calib.txt"
    loud = cli("eval", slim, "--data", calib, "--tokens", 512, "--seq-len", 64)
    assert loud.returncode == 0 and "is the calibration data" in " ".join(loud.stdout.split())
    r = cli("eval", slim, "--data", calib, "--tokens", 512, "--seq-len", 64, "-q")
    assert r.returncode == 0 and r.stdout == ""
    assert any("is the calibration data" in w for w in warnings_on_stderr(r))


def test_slim_quiet_still_warns(tmp_path):
    r = cli("slim", GPT2, tmp_path / "s", "--ratio", 0.5, "--tokens", 300, "--seq-len", 64, "-q")
    assert r.returncode == 0 and r.stdout == ""
    said = warnings_on_stderr(r)
    assert any("calibration tokens for FFNs 128 wide" in w for w in said)
    assert any("no --eval" in w for w in said)
