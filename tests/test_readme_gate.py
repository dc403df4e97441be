"""README's "CI gate" section, run as written (issue 17): every shell command in it, in order, on the
bundled demo (a copy of sui_onnx/data/demo in a fresh folder, so the commands' relative paths hold),
the TOML block written to that folder's pyproject.toml where the section shows it; and every absolute
threshold that README.md or docs/gate.md shows passes the demo and the committed Gemma-3-270M report."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from sui_onnx import gate
from sui_onnx.report import load_report

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DEMO = ROOT / "sui_onnx" / "data" / "demo"
GEMMA = ROOT / "models" / "reports" / "gemma3_270m.json"


# the installed console script, as the README runs it: `python -m sui_onnx` would import the demo's
# copied sui_onnx/ folder in the working folder instead of the package
_SCRIPT = shutil.which("sui-onnx", path=str(Path(sys.executable).parent))
SUI_ONNX = [_SCRIPT] if _SCRIPT else [sys.executable, "-P", "-m", "sui_onnx"]


def gate_section(text: str) -> str:
    start = text.index("\n## CI gate\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def blocks(section: str) -> list[tuple[str, str]]:
    """("sh", command) for each line of an indented code block, ("toml", text) for a ```toml fence,
    in the order the section shows them."""
    out: list[tuple[str, str]] = []
    lines = section.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            lang = line[3:].strip()
            j = i + 1
            while not lines[j].startswith("```"):
                j += 1
            out.append((lang, "\n".join(lines[i + 1:j]) + "\n"))
            i = j + 1
            continue
        if line.startswith("    ") and line.strip() and (i == 0 or not lines[i - 1].strip()):
            while i < len(lines) and (lines[i].startswith("    ") or not lines[i].strip()):
                if lines[i].strip():
                    out.append(("sh", lines[i].strip()))
                i += 1
            continue
        i += 1
    return out


def test_the_gate_section_leads_with_the_baseline_workflow():
    section = gate_section(README.read_text(encoding="utf-8"))
    commands = [text for kind, text in blocks(section) if kind == "sh"]
    assert commands[0].startswith("sui-onnx report ") and "--json sui-baseline.json" in commands[0]
    assert commands[1].startswith("sui-onnx check ") and "--baseline sui-baseline.json" in commands[1]
    assert "--allow-calibration-change" in section and "--allow-low-tokens" in section


def test_every_gate_command_in_the_readme_passes_on_the_demo(tmp_path):
    section = gate_section(README.read_text(encoding="utf-8"))
    steps = blocks(section)
    assert sum(kind == "sh" for kind, _ in steps) >= 4 and any(kind == "toml" for kind, _ in steps)
    shutil.copytree(DEMO, tmp_path / "sui_onnx" / "data" / "demo")
    env = dict(os.environ, COLUMNS="100")
    env.pop("GITHUB_ACTIONS", None)
    for kind, text in steps:
        if kind == "toml":
            (tmp_path / "pyproject.toml").write_text(text)
            continue
        assert kind == "sh" and text.startswith("sui-onnx "), text  # only sui-onnx commands in the section
        argv = shlex.split(text)
        r = subprocess.run([*SUI_ONNX, *argv[1:]], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, (text, r.stdout, r.stderr)
        assert r.stderr == "", (text, r.stderr)
        if argv[1] == "check":
            assert "PASS" in r.stdout, (text, r.stdout)
    suite = ET.parse(tmp_path / "sui.xml").getroot()
    assert suite.get("failures") == "0" and int(suite.get("tests")) > 0
    assert json.loads((tmp_path / "sui.sarif").read_text())["version"] == "2.1.0"
    assert load_report(tmp_path / "sui-report.json").model["sha256"] == load_report(tmp_path / "sui-baseline.json").model["sha256"]


# every absolute threshold the documents show: --min-sui X, min_sui = X, Thresholds(min_sui=X), ...
_FLAG = re.compile(r"--(min-sui|min-hard-util|min-soft-util|max-concentration|max-width-ratio)[ =]([0-9.]+)")
_KEY = re.compile(r"\b(min_sui|min_hard_util|min_soft_util|max_concentration|max_width_ratio)\s*=\s*([0-9.]+)")


def shown_thresholds() -> list[tuple[str, str, float]]:
    found = []
    for doc in (README, ROOT / "docs" / "gate.md"):
        text = doc.read_text(encoding="utf-8")
        found += [(doc.name, m.group(1).replace("-", "_"), float(m.group(2))) for m in _FLAG.finditer(text)]
        found += [(doc.name, m.group(1), float(m.group(2))) for m in _KEY.finditer(text)]
    return [t for t in found if 0 <= t[2] <= 1]  # gate.md's `min_sui = 1.5` is its example of a rejected value


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo.json"
    r = subprocess.run([sys.executable, "-m", "sui_onnx", "report", "--json", str(out), "-q"], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return load_report(out)


def test_every_absolute_threshold_the_docs_show_passes_the_demo_and_gemma(demo_report):
    shown = shown_thresholds()
    assert {key for _, key, _ in shown} >= {"min_sui", "max_concentration"}
    for report, label in ((demo_report, "demo"), (load_report(GEMMA), "gemma3_270m")):
        for doc, key, value in shown:
            result = gate.evaluate(report, gate.Thresholds(**{key: value}))
            assert result.passed, (doc, key, value, label, [c.message for c in result.failures])
