"""sui_onnx.gate: thresholds, boundaries, baseline regression, config files, JUnit, SARIF, annotations.

Reports are built from LayerResult + advice.summarize / width_advice; no model runs here.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from sui_onnx import gate
from sui_onnx.advice import summarize, width_advice
from sui_onnx.errors import ConfigError, SuiError
from sui_onnx.report import Report, LayerResult

WIDTH = 64


def make_layer(i: int, sui: float | None = 0.5, *, hard: float = 0.6, soft: float = 0.7, conc: float = 0.3,
               width: int = WIDTH, status: str = "ok", tokens: int = 4096) -> LayerResult:
    if sui is None or status in ("degenerate", "non_finite"):
        return LayerResult(layer=i, tensor=f"/h.{i}/mlp/act_out", width=width, site="post", activation="Gelu",
                           op="MatMul", tokens=tokens, status=status, flags=[status] if status != "ok" else [],
                           message="zero variance: every token gives the same activation" if status == "degenerate" else "")
    flags = [] if status == "ok" else [status]
    return LayerResult(
        layer=i, tensor=f"/h.{i}/mlp/act_out", width=width, site="post", activation="Gelu", op="MatMul",
        tokens=tokens, hard_rank=hard * width, soft_rank=soft * width, hard_util=hard, soft_util=soft,
        concentration=conc, sui=sui, asymmetry=0.1, energy_widths={"k90": 20, "k95": 30, "k99": 50},
        status=status, flags=flags, message="N=100 < 4D=256: metrics biased low" if status == "low_tokens" else "",
    )


def make_report(layers: list[LayerResult] | None = None, *, suis=(0.4, 0.5, 0.6), width_ratio: float | None = 0.5,
                **kw) -> Report:
    """A schema-valid report: summary from advice.summarize, advice from advice.width_advice on
    synthetic spectra (width_ratio then overwritten when given, to control it exactly)."""
    if layers is None:
        layers = [make_layer(i, s, **kw) for i, s in enumerate(suis)]
    eig = [np.linspace(2.0, 0.01, x.width) if x.usable else None for x in layers]
    advice = width_advice(layers, eig, align=16)
    if width_ratio is not None and advice.get("recommended_width") is not None:
        advice["width_ratio"] = width_ratio
    return Report(
        tool={"name": "sui-onnx", "version": "0.0.test"},
        created="2025-01-01T00:00:00Z",
        model={"path": "model.onnx", "sha256": "0" * 64, "opset": 17, "n_taps": len(layers), "site": "post"},
        calibration={"tokens": 4096},
        runtime={"device": "cpu", "providers": ["CPUExecutionProvider"]},
        settings={"site": "post", "top_fraction": 0.1, "energy_levels": [0.9, 0.95, 0.99]},
        layers=layers,
        summary=summarize(layers),
        advice=advice,
    )


def sarif_validator():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((Path(__file__).parent / "data" / "sarif-2.1.0.json").read_text(encoding="utf-8"))  # tests only
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema, format_checker=jsonschema.FormatChecker())


def rules(result, failed_only=True):
    return sorted({(c.rule_id, c.scope_label) for c in result.checks if (not c.passed or not failed_only)})


# ------------------------------------------------------------------------------------------------


def test_fixture_report_is_schema_valid():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((resources.files("sui_onnx") / "schema" / "report.schema.json").read_text(encoding="utf-8"))
    jsonschema.validate(json.loads(make_report().to_json()), schema)


@pytest.mark.parametrize("key, metric, direction", [
    ("min_sui", "sui", "min"),
    ("min_hard_util", "hard_util", "min"),
    ("min_soft_util", "soft_util", "min"),
    ("max_concentration", "concentration", "max"),
])
def test_limit_boundaries_model_scope(key, metric, direction):
    report = make_report(hard=0.6, soft=0.7, conc=0.3)
    median = report.summary[metric]["median"]
    rule = "sui-onnx/" + key.replace("_", "-")
    eps = 1e-6
    # value == limit passes, for minima and maxima alike
    at = gate.evaluate(report, gate.Thresholds(**{key: median}, scope="model"))
    assert at.passed and [c.rule_id for c in at.checks] == [rule]
    assert at.checks[0].value == median and at.checks[0].limit == median
    beyond = median + eps if direction == "min" else median - eps
    bad = gate.evaluate(report, gate.Thresholds(**{key: beyond}, scope="model"))
    assert not bad.passed and bad.exit_code == 1
    assert rules(bad) == [(rule, "model")]
    assert ("below" if direction == "min" else "above") in bad.checks[0].message


def test_min_sui_layer_boundary_names_each_layer():
    report = make_report(suis=(0.4, 0.5, 0.6))
    at = gate.evaluate(report, gate.Thresholds(min_sui=0.4, scope="layer"))
    assert at.passed
    assert [c.scope_label for c in at.checks if c.rule_id == "sui-onnx/min-sui"] == ["layer 0", "layer 1", "layer 2"]
    bad = gate.evaluate(report, gate.Thresholds(min_sui=0.5000001, scope="both"))
    assert rules(bad) == [("sui-onnx/min-sui", "layer 0"), ("sui-onnx/min-sui", "layer 1"),
                          ("sui-onnx/min-sui", "model")]


def test_max_width_ratio_boundary_and_model_only():
    report = make_report(width_ratio=0.75)
    assert gate.evaluate(report, gate.Thresholds(max_width_ratio=0.75)).passed
    bad = gate.evaluate(report, gate.Thresholds(max_width_ratio=0.7499))
    assert rules(bad) == [("sui-onnx/max-width-ratio", "model")]
    assert all(c.layer is None for c in bad.checks if c.rule_id == "sui-onnx/max-width-ratio")
    with pytest.raises(ConfigError, match="max_width_ratio"):
        gate.evaluate(report, gate.Thresholds(max_width_ratio=0.5, scope="layer"))


def test_scope_model_has_no_layer_checks():
    result = gate.evaluate(make_report(), gate.Thresholds(min_sui=0.1, scope="model"))
    assert {c.scope for c in result.checks} == {"model"}


def test_nothing_to_check_and_drop_without_baseline():
    with pytest.raises(ConfigError, match="nothing to check: give a threshold or --baseline"):
        gate.evaluate(make_report(), gate.Thresholds())
    with pytest.raises(ConfigError, match="baseline"):
        gate.Thresholds(min_sui=0.1, max_drop=0.1).validate()


def test_no_usable_layers_fails_model_threshold():
    layers = [make_layer(i, None, status="degenerate") for i in range(2)]
    result = gate.evaluate(make_report(layers), gate.Thresholds(min_sui=0.1))
    assert not result.passed
    assert "no usable layers" in result.failures[0].message


def test_layer_status_warns_unless_fail_on_status():
    layers = [make_layer(0, 0.5), make_layer(1, None, status="degenerate"), make_layer(2, 0.5, status="low_tokens"),
              make_layer(3, 0.5, status="rank_capped")]
    report = make_report(layers)
    # a rank_capped layer (N - 1 < D) fails unless allow_low_tokens; low_tokens only warns
    default = gate.evaluate(report, gate.Thresholds(min_sui=0.1))
    assert rules(default) == [("sui-onnx/layer-status", "layer 3")]
    assert "--allow-low-tokens" in default.failures[0].message
    soft = gate.evaluate(report, gate.Thresholds(min_sui=0.1, allow_low_tokens=True))
    assert soft.passed and soft.exit_code == 0
    assert sorted(c.scope_label for c in soft.warnings) == ["layer 1", "layer 2", "layer 3"]
    assert {c.rule_id for c in soft.warnings} == {"sui-onnx/layer-status"}
    hard = gate.evaluate(report, gate.Thresholds(min_sui=0.1, fail_on_status=True, allow_low_tokens=True))
    assert rules(hard) == [("sui-onnx/layer-status", "layer 1")]
    assert sorted(c.scope_label for c in hard.warnings) == ["layer 2", "layer 3"]  # low tokens never fail
    # fail_on_status alone is something to check, and applies at scope model too
    alone = gate.evaluate(report, gate.Thresholds(fail_on_status=True, scope="model", allow_low_tokens=True))
    assert rules(alone) == [("sui-onnx/layer-status", "layer 1")]
    # the rank_capped rule applies at scope model too
    model_only = gate.evaluate(report, gate.Thresholds(min_sui=0.1, scope="model"))
    assert rules(model_only) == [("sui-onnx/layer-status", "layer 3")]


# --- baseline regression ------------------------------------------------------------------------


def test_baseline_absolute_drop_boundary():
    base = make_report(suis=(0.5, 0.6, 0.7))
    cur = make_report(suis=(0.45, 0.5, 0.7))  # median 0.6 -> 0.5; layer 0 -0.05, layer 1 -0.1
    th = dict(baseline=Path("base.json"), drop_metrics=("sui",))
    at = gate.evaluate(cur, gate.Thresholds(**th, max_drop=0.1), base)  # 0.6 - 0.5 == 0.1 (within float slack)
    assert at.passed, [c.message for c in at.failures]
    drops = {c.scope_label: c.value for c in at.checks if c.rule_id == "sui-onnx/max-drop-sui"}
    assert drops["model"] == pytest.approx(0.1) and drops["layer 0"] == pytest.approx(0.05)
    bad = gate.evaluate(cur, gate.Thresholds(**th, max_drop=0.07), base)
    assert rules(bad) == [("sui-onnx/max-drop-sui", "layer 1"), ("sui-onnx/max-drop-sui", "model")]
    improved = gate.evaluate(base, gate.Thresholds(**th, max_drop=0.0), cur)  # gains never fail
    assert improved.passed


@pytest.mark.parametrize("base, cur", [(0.8, 0.7), (0.3, 0.2), (0.7, 0.6), (0.9, 0.8)])
def test_drop_boundary_is_robust_to_float_subtraction(base, cur):
    result = gate.evaluate(make_report(suis=(cur,)), gate.Thresholds(baseline=Path("b"), max_drop=0.1,
                                                                      drop_metrics=("sui",)), make_report(suis=(base,)))
    assert result.passed


def test_baseline_relative_drop_boundary():
    base = make_report(suis=(0.5, 0.5, 0.5))
    cur = make_report(suis=(0.45, 0.45, 0.45))  # 10% relative drop everywhere
    th = dict(baseline=Path("b.json"), drop_metrics=("sui",))
    ok = gate.evaluate(cur, gate.Thresholds(**th, max_drop_rel=0.1), base)
    assert ok.passed
    assert {c.rule_id for c in ok.checks} - {"sui-onnx/layer-status"} == {"sui-onnx/max-drop-rel-sui"}  # no abs default
    bad = gate.evaluate(cur, gate.Thresholds(**th, max_drop_rel=0.0999), base)
    assert {c.rule_id for c in bad.failures} == {"sui-onnx/max-drop-rel-sui"}
    assert len(bad.failures) == 4  # model + 3 layers
    assert "relative drop 10.00%" in bad.failures[0].message


def test_concentration_rise_counts_as_drop():
    base = make_report(conc=0.30)
    cur = make_report(conc=0.35)
    th = dict(baseline=Path("b"), drop_metrics=("concentration",))
    assert gate.evaluate(cur, gate.Thresholds(**th, max_drop=0.05), base).passed
    bad = gate.evaluate(cur, gate.Thresholds(**th, max_drop=0.04), base)
    assert {c.rule_id for c in bad.failures} == {"sui-onnx/max-drop-concentration"}
    assert "rise" in bad.failures[0].message
    assert gate.evaluate(base, gate.Thresholds(**th, max_drop=0.0), cur).passed  # falling concentration is fine


def test_baseline_default_metrics_and_default_drop():
    th = gate.Thresholds(baseline=Path("b"))
    assert th.drop_metrics == ("sui", "hard_util", "soft_util") and th.effective_max_drop() == gate.DEFAULT_MAX_DROP
    result = gate.evaluate(make_report(), th, make_report())
    assert result.passed
    assert {c.rule_id for c in result.checks} == {"sui-onnx/max-drop-sui", "sui-onnx/max-drop-hard-util",
                                                  "sui-onnx/max-drop-soft-util", "sui-onnx/layer-status"}
    bad = gate.evaluate(make_report(hard=0.58), th, make_report(hard=0.6))
    assert {c.rule_id for c in bad.failures} == {"sui-onnx/max-drop-hard-util"}


def test_baseline_relative_to_zero():
    base = make_report(suis=(0.0,))
    assert gate.evaluate(make_report(suis=(0.0,)), gate.Thresholds(baseline=Path("b"), max_drop_rel=0.1,
                                                                    drop_metrics=("sui",)), base).passed
    risen = make_report(conc=0.2)
    result = gate.evaluate(risen, gate.Thresholds(baseline=Path("b"), max_drop_rel=0.1,
                                                  drop_metrics=("concentration",)), make_report(conc=0.0))
    assert not result.passed and math.isinf(result.failures[0].value)
    assert result.to_dict()["checks"][0]["value"] is None  # JSON-safe


def test_baseline_with_different_layers_or_widths_is_an_error():
    cur = make_report(suis=(0.5, 0.5, 0.5))
    with pytest.raises(SuiError, match=r"baseline old\.json has 2 FFN layers \(layers 0\.\.1\).*has 3 \(layers 0\.\.2\)"):
        gate.evaluate(cur, gate.Thresholds(baseline=Path("old.json")), make_report(suis=(0.5, 0.5)),
                      baseline_label="old.json")
    gapped = make_report([make_layer(i, 0.5) for i in (5, 1)])  # not contiguous: listed, not "1..5"
    with pytest.raises(SuiError, match=r"has 2 FFN layers \(layers 1, 5\)"):
        gate.evaluate(cur, gate.Thresholds(baseline=Path("old.json")), gapped, baseline_label="old.json")
    wide = make_report([make_layer(i, 0.5, width=128 if i == 1 else WIDTH) for i in range(3)])
    with pytest.raises(SuiError, match=r"old\.json: layer 1 has width 128, this model 64"):
        gate.evaluate(cur, gate.Thresholds(baseline=Path("old.json")), wide, baseline_label="old.json")
    other = make_report(suis=(0.5, 0.5, 0.5))
    other.settings["top_fraction"] = 0.2
    with pytest.raises(SuiError, match=r"old\.json was measured with top_fraction = 0\.2, this report with 0\.1"):
        gate.evaluate(cur, gate.Thresholds(baseline=Path("old.json")), other, baseline_label="old.json")


# --- validation and config ----------------------------------------------------------------------


@pytest.mark.parametrize("key, value, match", [
    ("min_sui", "high", "must be a number"),
    ("min_sui", 1.5, r"must be in \[0, 1\]"),
    ("max_concentration", -0.1, r"must be in \[0, 1\]"),
    ("min_hard_util", True, "must be a number"),
    ("max_drop_rel", -1, ">= 0"),
    ("max_drop", float("nan"), "finite"),
    ("scope", "layers", "must be one of"),
    ("fail_on_status", "yes", "true or false"),
    ("drop_metrics", ["sui", "rank"], "unknown metric"),
    ("baseline", 3, "path"),
])
def test_from_mapping_rejects_malformed_values(key, value, match):
    with pytest.raises(ConfigError, match=rf"^cfg\.toml: {key}: .*{match}"):
        gate.Thresholds.from_mapping({key: value}, source="cfg.toml")


def test_from_mapping_rejects_unknown_keys_with_a_hint():
    with pytest.raises(ConfigError, match=r"cfg\.toml: unknown key 'min_suii' \(did you mean 'min_sui'\?\)"):
        gate.Thresholds.from_mapping({"min_suii": 0.3}, source="cfg.toml")


def test_from_mapping_normalizes():
    th = gate.Thresholds.from_mapping({"min_sui": 0, "drop_metrics": ["hard-util", "sui"], "baseline": "r.json"},
                                      base_dir=Path("/x"))
    assert th.min_sui == 0.0 and isinstance(th.min_sui, float)
    assert th.drop_metrics == ("hard_util", "sui")
    assert th.baseline == Path("/x/r.json")


def test_load_config_finds_nearest_pyproject(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[tool.sui-onnx.check]\nmin_sui = 0.3\nbaseline = "base.json"\n')
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    table, source = gate.load_config(None, deep)
    assert table == {"min_sui": 0.3, "baseline": "base.json"} and source == tmp_path / "pyproject.toml"
    th = gate.thresholds_from_config(table, source)
    assert th.baseline == tmp_path / "base.json"  # relative to the file, not the working directory
    # a nearer pyproject without the table stops the search
    (deep / "pyproject.toml").write_text('[project]\nname = "x"\n')
    assert gate.load_config(None, deep) == ({}, None)


def test_load_config_explicit_file(tmp_path):
    cfg = tmp_path / "gate.toml"
    cfg.write_text("[check]\nmax_concentration = 0.5\nscope = \"model\"\n")
    assert gate.load_config(cfg, tmp_path) == ({"max_concentration": 0.5, "scope": "model"}, cfg)
    (tmp_path / "empty.toml").write_text("[other]\nx = 1\n")
    with pytest.raises(ConfigError, match=r"empty\.toml: no \[check\] table"):
        gate.load_config(tmp_path / "empty.toml", tmp_path)
    (tmp_path / "broken.toml").write_text("[check\nmin_sui = ")
    with pytest.raises(ConfigError, match=r"broken\.toml: not valid TOML"):
        gate.load_config(tmp_path / "broken.toml", tmp_path)
    with pytest.raises(ConfigError, match="no such config file"):
        gate.load_config(tmp_path / "missing.toml", tmp_path)


# --- renderings ---------------------------------------------------------------------------------


def _mixed_result():
    layers = [make_layer(0, 0.2), make_layer(1, 0.5), make_layer(2, 0.5, status="low_tokens")]
    return gate.evaluate(make_report(layers), gate.Thresholds(min_sui=0.3, max_concentration=0.9),
                         target="models/model.onnx")


def test_junit_parses_with_expected_testcases():
    result = _mixed_result()
    root = ET.fromstring(gate.to_junit(result))
    assert root.tag == "testsuites"
    suite = root.find("testsuite")
    cases = suite.findall("testcase")
    assert len(cases) == len(result.checks) == int(suite.get("tests")) == int(root.get("tests"))
    names = {(c.get("classname"), c.get("name")) for c in cases}
    assert len(names) == len(cases)  # one testcase per rule and scope
    assert ("sui-onnx.min-sui", "model") in names and ("sui-onnx.min-sui", "layer 0") in names
    failed = [c for c in cases if c.find("failure") is not None]
    assert int(suite.get("failures")) == len(failed) == 1
    assert failed[0].get("classname") == "sui-onnx.min-sui" and failed[0].get("name") == "layer 0"
    assert "below the minimum" in failed[0].find("failure").get("message")
    assert suite.get("errors") == "0" and suite.get("skipped") == "0"
    warned = [c for c in cases if c.find("system-out") is not None]
    assert [c.get("name") for c in warned] == ["layer 2"]


def test_junit_all_pass():
    result = gate.evaluate(make_report(), gate.Thresholds(min_sui=0.1))
    suite = ET.fromstring(gate.to_junit(result)).find("testsuite")
    assert suite.get("failures") == "0" and not suite.findall(".//failure")


def test_sarif_validates_against_the_2_1_0_schema():
    validator = sarif_validator()
    result = _mixed_result()
    log = gate.to_sarif(result, "models/model.onnx", tool_version="1.2.3")
    errors = sorted(validator.iter_errors(log), key=str)
    assert not errors, errors[0]
    run = log["runs"][0]
    rule_ids = [r["id"] for r in run["tool"]["driver"]["rules"]]
    assert "sui-onnx/min-sui" in rule_ids and "sui-onnx/max-drop-rel-concentration" in rule_ids
    levels = sorted((r["ruleId"], r["level"]) for r in run["results"])
    assert levels == [("sui-onnx/layer-status", "warning"), ("sui-onnx/min-sui", "error")]
    err = next(r for r in run["results"] if r["level"] == "error")
    assert rule_ids[err["ruleIndex"]] == err["ruleId"]
    loc = err["locations"][0]
    assert loc["physicalLocation"]["artifactLocation"]["uri"] == "models/model.onnx"
    assert loc["logicalLocations"][0]["name"] == "layer 0"
    assert run["invocations"][0]["exitCode"] == 1
    # a passing run is valid too, with no results
    ok = gate.to_sarif(gate.evaluate(make_report(), gate.Thresholds(min_sui=0.1)), "r.json")
    assert not list(validator.iter_errors(ok)) and ok["runs"][0]["results"] == []


def test_sarif_schema_catches_an_invalid_log():
    validator = sarif_validator()
    log = gate.to_sarif(_mixed_result(), "m.onnx")
    log["runs"][0]["results"][0]["level"] = "fatal"
    assert list(validator.iter_errors(log))


def test_report_json_lines_point_at_layers():
    text = make_report().to_json()
    lines = gate.report_json_lines(text)
    rows = text.splitlines()
    assert set(lines) == {0, 1, 2}
    for idx, lineno in lines.items():
        assert rows[lineno - 1].strip() == f'"layer": {idx},'
        assert lineno < text[: text.index('"advice"')].count("\n") + 1


def test_github_annotations_format_and_escaping():
    result = _mixed_result()
    out = gate.github_annotations(result, file="models/m,1.onnx", layer_lines={0: 40})
    assert out[0].startswith("::error file=models/m%2C1.onnx,line=40,title=sui-onnx/min-sui (layer 0)::layer 0: SUI")
    assert out[1].startswith("::warning ") and "sui-onnx/layer-status (layer 2)" in out[1]
    assert len(out) == 2
    assert all("\n" not in line for line in out)
    assert gate.escape_workflow_data("a%b\nc") == "a%25b%0Ac"


def test_result_to_dict_is_json():
    d = _mixed_result().to_dict()
    text = json.dumps(d, allow_nan=False)
    assert json.loads(text)["counts"] == {"checks": len(d["checks"]), "failures": 1, "warnings": 1}
    assert d["schema"] == "sui-onnx/check" and d["exit_code"] == 1


def test_console_prints_a_gate_result_as_its_table():
    import io

    from rich.console import Console

    from sui_onnx.render import check_renderable

    result = gate.evaluate(make_report(suis=(0.01, 0.5, 0.6)), gate.Thresholds(min_sui=0.4))
    texts = []
    for renderable in (result, check_renderable(result)):  # __rich__ is the renderer of render/check.py
        console = Console(record=True, width=120, file=io.StringIO(), color_system=None)
        console.print(renderable)
        texts.append(console.export_text())
    assert texts[0] == texts[1]
    assert "FAIL: 1 of 7 checks breached (sui-onnx/min-sui)" in texts[0] and "layer 0" in texts[0]


def test_a_baseline_of_other_explicit_taps_is_not_comparable():
    """--tap may number the tensors it names by position, so layer 0 of two runs may be two different
    tensors of the same width: refused, naming both. Detected taps are matched by block, so a
    re-export that renames the tensors is still compared."""
    import dataclasses

    from sui_onnx.errors import SuiError

    def with_taps(report, names, explicit=True):
        layers = [dataclasses.replace(x, tensor=n) for x, n in zip(report.layers, names)]
        r = dataclasses.replace(report, layers=layers)
        r.settings.taps = "explicit" if explicit else None
        return r

    base = with_taps(make_report(suis=(0.5, 0.5)), ["/a/act", "/b/act"])
    same = with_taps(make_report(suis=(0.5, 0.5)), ["/a/act", "/b/act"])
    swapped = with_taps(make_report(suis=(0.5, 0.5)), ["/b/act", "/a/act"])
    gate.check_comparable(same, base, "base.json")
    with pytest.raises(SuiError, match=r"layer 0 is tensor /a/act, this report's is /b/act"):
        gate.check_comparable(swapped, base, "base.json")
    renamed = with_taps(make_report(suis=(0.5, 0.5)), ["/x/act", "/y/act"], explicit=False)
    gate.check_comparable(renamed, with_taps(make_report(suis=(0.5, 0.5)), ["/a/act", "/b/act"], explicit=False), "b")
