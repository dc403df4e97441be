"""Class 10: terminal output is data, not markup. Tensor names, paths and messages that hold rich
markup (`[/]`, `[bold]`) are shown as written; escape sequences and control characters never reach
the terminal raw; JUnit XML stays well-formed whatever a message holds."""

import json
import xml.etree.ElementTree as ET

import onnx
import pytest

from tests.robustness.clitools import cli, ids, model_folder, one_error_line

EVIL = "[/]x[bold red]\x1b[31mRED\x1b]0;title\x07\u202eevil"


@pytest.fixture()
def work(tmp_path):
    """A tiny model whose first FFN activation tensor is named EVIL, in a folder named with markup."""
    folder = model_folder(tmp_path / "[bold]m[/]", vocab=64)
    m = onnx.load(str(folder / "model.onnx"))
    for node in m.graph.node:
        node.input[:] = [EVIL if x == "/h.0/mlp/act" else x for x in node.input]
        node.output[:] = [EVIL if x == "/h.0/mlp/act" else x for x in node.output]
    onnx.save(m, str(folder / "model.onnx"))
    (tmp_path / "[").mkdir()  # the path "[/]ids.npy": a folder "[" holding "]ids.npy"
    ids(tmp_path / "[/]ids.npy", vocab=64)
    return tmp_path


def _no_raw_controls(text: str) -> None:
    assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text, repr(text[:400])


def test_taps_shows_markup_in_names_as_written(work):
    r = cli("taps", "[bold]m[/]", cwd=work)
    assert r.returncode == 0, r.stderr
    _no_raw_controls(r.stdout)
    flat = "".join(r.stdout.split())
    assert "[/]x[boldred]\\x1b[31mRED" in flat  # the name, markup and all, escapes made visible
    assert "[bold]m[/]" in flat  # the folder in the title


def test_report_terminal_output_with_markup_in_paths_and_names(work):
    r = cli("report", "[bold]m[/]", "--calib", "[/]ids.npy", "--json", "out.json", cwd=work)
    assert r.returncode == 0, r.stderr
    _no_raw_controls(r.stdout + r.stderr)
    assert "[/]ids.npy" in r.stdout and "[bold]m[/]" in r.stdout
    assert json.loads((work / "out.json").read_text())["layers"][0]["tensor"] == EVIL  # the data is kept as is


def test_error_lines_are_printable(work):
    one_error_line(cli("report", "no\x1b[2Jsuch\nmodel.onnx", cwd=work), "no\\x1b[2Jsuch\\nmodel.onnx")
    one_error_line(cli("check", "r\x1b[31m.json", "--min-sui", "0.1", cwd=work), "\\x1b[31m")


def test_junit_and_check_output_stay_valid_with_control_characters(work):
    r = cli("report", "[bold]m[/]", "--calib", "[/]ids.npy", "-q", "--json", "r.json", cwd=work)
    assert r.returncode == 0, r.stderr
    d = json.loads((work / "r.json").read_text())
    for x in d["layers"]:  # a message as a report from elsewhere may carry it
        x["message"], x["status"], x["flags"] = "bad \x00\x01\x08\x1b[31m \ud800 [/] <&>", "degenerate", ["degenerate"]
    (work / "r.json").write_text(json.dumps(d))
    r = cli("check", "r.json", "--fail-on-status", "--junit", "j.xml", "--sarif", "s.sarif", cwd=work,
            GITHUB_ACTIONS="true")
    assert r.returncode == 1, r.stderr  # the gate is breached (degenerate layers fail), nothing crashed
    _no_raw_controls(r.stdout + r.stderr)
    root = ET.fromstring((work / "j.xml").read_bytes())  # well-formed XML 1.0
    messages = [f.get("message") for f in root.iter("failure")]
    assert messages and all("\\x1b[31m" in m and "[/]" in m for m in messages)
    json.loads((work / "s.sarif").read_text())


def test_text_calibration_from_paths_with_markup(work):
    model_folder(work / "[red]t[/red]", vocab=4096)
    (work / "[red]c.txt").write_text("Some calibration text. " * 60)
    r = cli("report", "[red]t[/red]", "--calib", "[red]c.txt", cwd=work)
    assert r.returncode == 0, r.stderr
    assert "[red]c.txt" in r.stdout
