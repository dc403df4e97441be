"""`sui-onnx check` through its real entry point, on report JSON files built in the test (no model
run), plus one run on the gpt2 fixture model when it is there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from sui_onnx.cli import main

from .test_gate import make_layer, make_report, sarif_validator

ROOT = Path(__file__).resolve().parents[1]
MODEL = Path(__file__).parent / "fixtures" / "gpt2_w128"


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Run in an empty folder (no pyproject.toml above it to pick up) and outside GitHub Actions."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "120")


def cli(*args, cwd, env=None):
    e = {k: v for k, v in os.environ.items() if k != "GITHUB_ACTIONS"}
    e["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), e.get("PYTHONPATH")]))
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "sui_onnx", "check", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=e, timeout=120)


def write(tmp_path: Path, name: str = "report.json", **kw) -> Path:
    path = tmp_path / name
    path.write_text(make_report(**kw).to_json(), encoding="utf-8")
    return path


# --- through the console entry point (subprocess) ------------------------------------------------


def test_subprocess_pass_fail_and_error_exit_codes(tmp_path):
    report = write(tmp_path, suis=(0.4, 0.5, 0.6))
    ok = cli(report, "--min-sui", "0.4", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "PASS" in ok.stdout and "min-sui" in ok.stdout
    bad = cli(report, "--min-sui", "0.45", cwd=tmp_path)
    assert bad.returncode == 1, bad.stderr
    assert "FAIL: 1 of" in bad.stdout and "(sui-onnx/min-sui)" in bad.stdout
    row = next(line for line in bad.stdout.splitlines() if line.startswith("FAIL "))
    assert row.split() == ["FAIL", "min-sui", "layer", "0", "0.4", ">=", "0.45"]
    usage = cli(report, "--min-sui", "1.5", cwd=tmp_path)
    assert usage.returncode == 2 and "--min-sui" in usage.stderr and "[0, 1]" in usage.stderr


def test_analysis_options_with_a_report_target_are_refused_not_ignored(tmp_path):
    """A report JSON is checked as written: --tokens, --top-fraction or --calib with it would change
    nothing, so the run is a one-line usage error naming them, and writes no output."""
    report = write(tmp_path, suis=(0.4, 0.5, 0.6))
    for extra, named in ((["--tokens", "500", "--calib", "x.txt"], ["--calib", "--tokens"]),
                         (["--top-fraction", "0.2"], ["--top-fraction"]),
                         (["--include", "mlp"], ["--include"])):
        r = cli(report, "--min-sui", "0.1", *extra, "--json", tmp_path / "gate.json", cwd=tmp_path)
        assert r.returncode == 2, r.stderr
        err = r.stderr.strip().splitlines()
        assert len(err) == 1 and "report JSON" in err[0] and "Traceback" not in r.stderr, r.stderr
        assert all(flag in err[0] for flag in named), err
        assert not (tmp_path / "gate.json").exists()
    ok = cli(report, "--min-sui", "0.1", cwd=tmp_path)  # the thresholds alone still pass
    assert ok.returncode == 0, ok.stderr


def test_github_annotation_names_a_file_with_spaces_and_non_ascii_as_it_is(tmp_path):
    """file= in a workflow command is a path, not a URI: GitHub unescapes only %25, %0D, %0A, %3A
    and %2C, so a percent-encoded (then escaped again) name pointed at a file that does not exist.
    The SARIF artifact stays a URI reference."""
    (tmp_path / "uni dir").mkdir()
    report = write(tmp_path / "uni dir", name="rép, ort.json", suis=(0.2, 0.5, 0.6))
    sarif = tmp_path / "out.sarif"
    r = cli(report, "--min-sui", "0.3", "--sarif", sarif, cwd=tmp_path, env={"GITHUB_ACTIONS": "true"})
    assert r.returncode == 1, r.stderr
    ann = [line for line in r.stdout.splitlines() if line.startswith("::")]
    assert ann and ann[0].startswith("::error file=uni dir/rép%2C ort.json,line="), ann
    uri = json.loads(sarif.read_text())["runs"][0]["artifacts"][0]["location"]["uri"]
    assert uri == "uni%20dir/r%C3%A9p%2C%20ort.json"


def test_a_report_without_its_width_advice_is_malformed_not_a_breach(tmp_path):
    """Usable layers always give a width recommendation (or say why it was withheld): a report
    edited to lack it is exit 2, not an exit-1 'no usable layers' it does not have."""
    report = write(tmp_path, suis=(0.4, 0.5, 0.6))
    d = json.loads(report.read_text())
    assert d["advice"]["width_ratio"] is not None
    del d["advice"]
    report.write_text(json.dumps(d))
    r = cli(report, "--min-sui", "0.3", "--max-width-ratio", "0.9", cwd=tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "advice.width_ratio is missing" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert cli(report, "--min-sui", "0.3", cwd=tmp_path).returncode == 0  # no width rule: nothing is missing


def test_subprocess_github_annotations_and_config_error(tmp_path):
    report = write(tmp_path, suis=(0.2, 0.5, 0.6))
    r = cli(report, "--min-sui", "0.3", cwd=tmp_path, env={"GITHUB_ACTIONS": "true"})
    assert r.returncode == 1
    ann = [line for line in r.stdout.splitlines() if line.startswith("::")]
    assert ann == [ann[0]] and ann[0].startswith("::error file=report.json,line=")
    assert "title=sui-onnx/min-sui (layer 0)::layer 0: SUI 0.2 is below the minimum 0.3" in ann[0]
    # with the JSON on stdout the annotations go to stderr: the JSON stays JSON, the runner sees both
    r = cli(report, "--min-sui", "0.3", "--json", "-", cwd=tmp_path, env={"GITHUB_ACTIONS": "true"})
    assert r.returncode == 1 and json.loads(r.stdout)["schema"] == "sui-onnx/check"
    assert [line for line in r.stderr.splitlines() if line.startswith("::")] == ann
    (tmp_path / "gate.toml").write_text('[check]\nmin_sui = "high"\n')
    bad = cli(report, "--config", "gate.toml", cwd=tmp_path)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [bad.stderr.strip()]  # one line
    assert "gate.toml" in bad.stderr and "min_sui" in bad.stderr and "Traceback" not in bad.stderr


# --- through sui_onnx.cli.main -----------------------------------------------------------------


CASES = {
    "pass": (["--min-sui", "0.4"], 0),
    "fail": (["--min-sui", "0.6", "--max-concentration", "0.2"], 1),
    "nothing": ([], 2),
    "bad-baseline": (["--baseline", "small.json"], 2),
}


@pytest.mark.parametrize("case", CASES)
def test_exit_codes_identical_with_and_without_junit_sarif(tmp_path, case, capsys):
    report = write(tmp_path)
    write(tmp_path, "small.json", suis=(0.5,))
    args, code = CASES[case]
    assert main(["check", str(report), *args]) == code
    out = ["--junit", str(tmp_path / "g.xml"), "--sarif", str(tmp_path / "g.sarif"), "--json", str(tmp_path / "g.json")]
    assert main(["check", str(report), *args, *out]) == code
    written = [(tmp_path / n).exists() for n in ("g.xml", "g.sarif", "g.json")]
    assert written == [code != 2] * 3  # usage errors write nothing
    if code != 2:
        suite = ET.parse(tmp_path / "g.xml").getroot().find("testsuite")
        assert (int(suite.get("failures")) > 0) == (code == 1)
        log = json.loads((tmp_path / "g.sarif").read_text())
        assert not list(sarif_validator().iter_errors(log))
        assert json.loads((tmp_path / "g.json").read_text())["exit_code"] == code


def test_junit_and_sarif_from_the_cli(tmp_path, capsys):
    layers = [make_layer(0, 0.2), make_layer(1, 0.5), make_layer(2, 0.5, status="low_tokens")]
    report = tmp_path / "r.json"
    report.write_text(make_report(layers).to_json())
    assert main(["check", str(report), "--min-sui", "0.3", "--junit", "j.xml", "--sarif", "s.sarif", "-q"]) == 1
    assert capsys.readouterr().out == ""  # --quiet
    root = ET.parse(tmp_path / "j.xml").getroot()
    cases = root.iter("testcase")
    names = sorted((c.get("classname"), c.get("name"), c.find("failure") is not None) for c in cases)
    assert ("sui-onnx.min-sui", "layer 0", True) in names
    assert ("sui-onnx.min-sui", "model", False) in names
    assert ("sui-onnx.layer-status", "layer 2", False) in names
    log = json.loads((tmp_path / "s.sarif").read_text())
    assert not list(sarif_validator().iter_errors(log))
    results = log["runs"][0]["results"]
    assert {(r["ruleId"], r["level"]) for r in results} == {("sui-onnx/min-sui", "error"),
                                                            ("sui-onnx/layer-status", "warning")}
    err = next(r for r in results if r["level"] == "error")
    loc = err["locations"][0]
    assert loc["physicalLocation"]["artifactLocation"]["uri"] == "r.json"
    line = loc["physicalLocation"]["region"]["startLine"]
    assert report.read_text().splitlines()[line - 1].strip() == '"layer": 0,'
    assert loc["logicalLocations"][0]["name"] == "layer 0"


def test_json_result_to_stdout(tmp_path, capsys):
    report = write(tmp_path)
    assert main(["check", str(report), "--min-sui", "0.1", "--json", "-"]) == 0
    data = json.loads(capsys.readouterr().out)  # nothing else on stdout
    assert data["passed"] and data["thresholds"]["min_sui"] == 0.1


def test_malformed_and_unknown_config_keys_exit_2_naming_key_and_file(tmp_path, capsys):
    report = write(tmp_path)
    cfg = tmp_path / "gate.toml"
    for body, words in [("min_sui = 1.5", ["min_sui", "[0, 1]"]),
                        ("min_sui = \"high\"", ["min_sui", "number"]),
                        ("scope = \"all\"", ["scope"]),
                        ("fail_on_status = 1", ["fail_on_status"]),
                        ("max_drop_pct = 0.1", ["unknown key 'max_drop_pct'"])]:
        cfg.write_text(f"[check]\n{body}\n")
        assert main(["check", str(report), "--config", str(cfg)]) == 2, body
        err = capsys.readouterr().err
        assert str(cfg) in err and all(w in err for w in words), (body, err)


def test_pyproject_discovery_and_flag_override(tmp_path, capsys):
    report = write(tmp_path, suis=(0.4, 0.5, 0.6))
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "m"\n\n[tool.sui-onnx.check]\nmin_sui = 0.45\n'
                                             'scope = "model"\n')
    sub = tmp_path / "ci"
    sub.mkdir()
    os.chdir(sub)  # found from the working directory upward
    assert main(["check", str(report)]) == 0  # model median 0.5 >= 0.45 (scope from the file)
    assert main(["check", str(report), "--scope", "both"]) == 1  # flag overrides: layer 0 fails
    assert main(["check", str(report), "--min-sui", "0.6"]) == 1
    assert main(["check", str(report), "--min-sui", "0.3", "--scope", "both"]) == 0
    assert main(["check", str(report), "--no-config"]) == 2
    assert "nothing to check: give a threshold or --baseline" in capsys.readouterr().err
    (tmp_path / "pyproject.toml").write_text("[tool.sui-onnx.check]\nmin_suii = 0.3\n")
    assert main(["check", str(report)]) == 2
    err = capsys.readouterr().err
    assert "pyproject.toml" in err and "min_suii" in err and "did you mean 'min_sui'" in err


def test_config_baseline_relative_to_config_file(tmp_path, capsys):
    cur = write(tmp_path, "cur.json", suis=(0.4, 0.4, 0.4))
    (tmp_path / "gates").mkdir()
    write(tmp_path / "gates", "base.json", suis=(0.5, 0.5, 0.5))
    cfg = tmp_path / "gates" / "sui.toml"
    cfg.write_text('[check]\nbaseline = "base.json"\nmax_drop = 0.1\ndrop_metrics = ["sui"]\n')
    assert main(["check", str(cur), "--config", str(cfg)]) == 0
    assert main(["check", str(cur), "--config", str(cfg), "--max-drop", "0.05"]) == 1
    out = capsys.readouterr().out
    assert "(sui-onnx/max-drop-sui)" in out and "0.5 -> 0.4" in out
    assert main(["check", str(cur), "--config", str(cfg), "--max-drop-rel", "0.2"]) == 0  # both limits apply
    assert main(["check", str(cur), "--config", str(cfg), "--max-drop-rel", "0.19"]) == 1


def test_baseline_mismatch_names_the_baseline(tmp_path, capsys):
    cur = write(tmp_path, "cur.json")
    write(tmp_path, "old.json", suis=(0.5, 0.5))
    assert main(["check", str(cur), "--baseline", "old.json"]) == 2
    err = capsys.readouterr().err
    assert "old.json" in err and "2 FFN layers" in err and "not comparable" in err


@pytest.mark.parametrize("args, words", [
    (["--min-sui", "0.3", "--junit", "{report}"], "refusing to write"),
    (["--min-sui", "0.3", "--sarif", "nowhere/x.sarif"], "does not exist"),
    (["--max-drop", "0.1"], "need a baseline"),
    (["--min-sui", "0.3", "--baseline", "missing.json"], "missing.json: no such file"),
    (["--min-sui", "0.3", "--junit", "a.xml", "--sarif", "a.xml"], "same file"),
])
def test_usage_errors(tmp_path, capsys, args, words):
    report = write(tmp_path)
    args = [a.replace("{report}", str(report)) for a in args]
    assert main(["check", str(report), *args]) == 2
    assert words in capsys.readouterr().err
    assert main(["check", str(tmp_path / "nope.json"), "--min-sui", "0.1"]) == 2
    assert "no such report" in capsys.readouterr().err


def test_table_summarizes_passing_layers_in_80_columns(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    report = write(tmp_path, suis=(0.4, 0.5, 0.6))
    assert main(["check", str(report), "--min-sui", "0.3", "--max-width-ratio", "0.5"]) == 0
    out = capsys.readouterr().out
    assert max(len(line.rstrip()) for line in out.splitlines()) <= 80
    assert "3 layers" in out and "worst layer 0" in out and "max-width-ratio" in out
    # min-sui: model + 3 layers; max-width-ratio: model; layer-status: 3 layers (all ok)
    assert "PASS: 8 checks passed" in out
    data_checks = 1 + 3 + 1 + 3
    assert main(["check", str(report), "--min-sui", "0.3", "--max-width-ratio", "0.5", "--json", "g.json", "-q"]) == 0
    assert json.loads((tmp_path / "g.json").read_text())["counts"]["checks"] == data_checks


# --- a real model (skipped when the fixtures or the graph module are absent) --------------------


def test_check_on_a_real_model(tmp_path, capsys):
    if not (MODEL / "model.onnx").is_file():
        pytest.skip("fixture gpt2_w128 not built")
    pytest.importorskip("onnxruntime")
    try:
        from sui_onnx.graph import find_taps  # noqa: F401
    except ImportError:
        pytest.skip("sui_onnx.graph not available")
    args = ["check", str(MODEL), "--tokens", "1500", "--seq-len", "64", "--min-sui", "0", "-q"]
    assert main([*args, "--save-report", "r.json", "--sarif", "m.sarif"]) == 0
    log = json.loads((tmp_path / "m.sarif").read_text())
    assert not list(sarif_validator().iter_errors(log))
    # the saved report gates like the model did, and serves as a baseline for itself
    assert main(["check", "r.json", "--min-sui", "1.0", "-q"]) == 1
    assert main(["check", "r.json", "--baseline", "r.json", "--max-drop", "0", "--json", "g.json", "-q"]) == 0


def test_fail_on_status_and_annotations_under_quiet(tmp_path, capsys, monkeypatch):
    layers = [make_layer(0, 0.5), make_layer(1, None, status="degenerate")]
    report = tmp_path / "r.json"
    report.write_text(make_report(layers).to_json())
    assert main(["check", str(report), "--min-sui", "0.1", "-q"]) == 0  # degenerate layers warn...
    assert capsys.readouterr().out == ""
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    assert main(["check", str(report), "--min-sui", "0.1", "-q", "--fail-on-status"]) == 1  # ...or fail
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith("::error file=r.json,line=")
    assert "title=sui-onnx/layer-status (layer 1)::layer 1: status degenerate" in out[0]
    (tmp_path / "pyproject.toml").write_text("[tool.sui-onnx.check]\nfail_on_status = true\n")
    assert main(["check", str(report), "-q"]) == 1  # fail_on_status alone is a check
    assert main(["check", str(report), "-q", "--no-fail-on-status", "--min-sui", "0.1"]) == 0


def test_drop_metrics_flag(tmp_path, capsys):
    cur = write(tmp_path, "cur.json", conc=0.4)
    write(tmp_path, "base.json", conc=0.3)
    assert main(["check", str(cur), "--baseline", "base.json", "-q"]) == 0  # default metrics: no concentration
    assert main(["check", str(cur), "--baseline", "base.json", "--drop-metrics", "sui,concentration", "-q"]) == 1
    with pytest.raises(SystemExit) as exc:
        main(["check", str(cur), "--baseline", "base.json", "--drop-metrics", "rank"])
    assert exc.value.code == 2 and "unknown metric 'rank'" in capsys.readouterr().err


def test_threshold_group_parses_into_a_gate_config(tmp_path):
    from sui_onnx.cli import build_parser
    from sui_onnx.cli.check import THRESHOLD_ARGS, GateConfig

    (tmp_path / "pyproject.toml").write_text('[tool.sui-onnx.check]\nmin_sui = 0.1\nscope = "model"\n')
    args = build_parser().parse_args(["check", "r.json", "--min-hard-util", "0.2", "--scope", "both"])
    config = THRESHOLD_ARGS.parse(args, tmp_path)
    assert isinstance(config, GateConfig) and config.config_path == tmp_path / "pyproject.toml"
    t = config.thresholds  # the file's min_sui, the flags' min_hard_util and scope (flags win)
    assert (t.min_sui, t.min_hard_util, t.scope) == (0.1, 0.2, "both")
    args = build_parser().parse_args(["check", "r.json", "--min-sui", "0.3", "--no-config"])
    from sui_onnx.gate import Thresholds

    assert THRESHOLD_ARGS.parse(args, tmp_path) == GateConfig(Thresholds(min_sui=0.3), None)
