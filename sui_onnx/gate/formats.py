"""The gate result as CI reads it: JUnit XML, SARIF 2.1.0 and GitHub Actions annotations."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Mapping

from .evaluate import GateResult, fmt_value
from .rules import RULES, SARIF_SCHEMA_URI


def to_junit(result: GateResult, suite_name: str | None = None) -> str:
    """JUnit XML: one testcase per rule and scope (classname = rule id with dots, name = scope),
    a <failure> for each breach, warnings as passing testcases with a <system-out> line. Text XML
    1.0 cannot hold (control characters from a path or a tensor name) is written as escapes, so
    the document always parses."""
    from ..safeio import xml_text as x

    name = suite_name or (f"sui-onnx check {result.target}".strip())
    n, nfail = len(result.checks), len(result.failures)
    counts = {"tests": str(n), "failures": str(nfail), "errors": "0", "skipped": "0", "time": "0"}
    suites = ET.Element("testsuites", {"name": "sui-onnx check", **counts})
    suite = ET.SubElement(suites, "testsuite", {"name": x(name), **counts})
    props = ET.SubElement(suite, "properties")
    for key, value in (("target", result.target), ("baseline", result.baseline or ""),
                       ("model_sha256", str(result.model.get("sha256", "")))):
        ET.SubElement(props, "property", {"name": key, "value": x(value)})
    for c in result.checks:
        case = ET.SubElement(suite, "testcase", {"classname": x(c.rule_id.replace("/", ".")), "name": x(c.scope_label),
                                                 "time": "0"})
        if not c.passed:
            fail = ET.SubElement(case, "failure", {"message": x(c.message), "type": x(c.rule_id)})
            fail.text = x(f"{c.rule_id} at {c.scope_label}: value {fmt_value(c.value)}, limit {c.comparator} "
                          f"{fmt_value(c.limit)}".rstrip() + f"\n{c.message}")
        elif c.level == "warning":
            ET.SubElement(case, "system-out").text = x(f"warning: {c.message}")
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def report_json_lines(text: str) -> dict[int, int]:
    """1-based line of each layer's entry in a report JSON written by ``Report.to_json`` (the first
    ``"layer": N`` of each N; the layers array comes before the advice)."""
    lines: dict[int, int] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        m = re.match(r'\s*"layer":\s*(\d+)\s*,?\s*$', line)
        if m:
            lines.setdefault(int(m.group(1)), lineno)
    return lines


def to_sarif(result: GateResult, artifact_uri: str, *, tool_version: str = "",
             layer_lines: Mapping[int, int] | None = None) -> dict[str, Any]:
    """A SARIF 2.1.0 log: every rule in tool.driver.rules, one result per breach (level error)
    and warning (level warning), located at ``artifact_uri`` (region: the layer's line in a report
    JSON when ``layer_lines`` is given, else line 1) with the logical location "model" / "layer N"."""
    rule_ids = list(RULES)
    layer_lines = layer_lines or {}
    rules = [{
        "id": r.id,
        "name": r.name,
        "shortDescription": {"text": r.short},
        "fullDescription": {"text": r.full},
        "help": {"text": f"{r.full} See docs/gate.md of sui-onnx."},
        "defaultConfiguration": {"level": "warning" if r.id == "sui-onnx/layer-status" else "error"},
        "properties": {"tags": ["efficiency", "sui-onnx"]},
    } for r in RULES.values()]
    results = []
    for c in result.checks:
        if c.level == "none":
            continue
        line = layer_lines.get(c.layer, 1) if c.layer is not None else 1
        res: dict[str, Any] = {
            "ruleId": c.rule_id,
            "ruleIndex": rule_ids.index(c.rule_id),
            "level": c.level,
            "kind": "fail",
            "message": {"text": c.message},
            "locations": [{
                "physicalLocation": {
                    "artifactLocation": {"uri": artifact_uri, "index": 0},
                    "region": {"startLine": line},
                },
                "logicalLocations": [{"name": c.scope_label, "kind": "module",
                                      "fullyQualifiedName": f"{artifact_uri}/{c.scope_label}"}],
            }],
            "partialFingerprints": {"suiOnnxCheck/v1": f"{c.rule_id}:{c.scope_label}"},
            "properties": {k: v for k, v in c.to_dict().items()
                           if k in ("scope", "layer", "value", "limit", "comparator", "baseline", "current")},
        }
        results.append(res)
    driver: dict[str, Any] = {"name": "sui-onnx", "rules": rules}
    if tool_version:
        driver["version"] = tool_version
        driver["semanticVersion"] = tool_version
    return {
        "$schema": SARIF_SCHEMA_URI,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": driver},
            "automationDetails": {"id": "sui-onnx/check/"},
            "artifacts": [{"location": {"uri": artifact_uri}}],
            "invocations": [{"executionSuccessful": True, "exitCode": result.exit_code}],
            "results": results,
            "properties": {"passed": result.passed, "checks": len(result.checks),
                           "failures": len(result.failures), "warnings": len(result.warnings)},
        }],
    }


def artifact_uri(path: Path | str, cwd: Path | str) -> str:
    """A URI reference for a local file: relative (POSIX, percent-encoded) when under ``cwd`` — as
    GitHub code scanning wants, repository-relative — else an absolute file: URI."""
    from urllib.parse import quote

    rel = workspace_path(path, cwd)
    return Path(path).resolve().as_uri() if rel is None else quote(rel)


def workspace_path(path: Path | str, cwd: Path | str) -> str | None:
    """The plain relative POSIX path of a local file under ``cwd`` (what a GitHub workflow
    command's ``file=`` names, escaped only by `escape_workflow_property`), else None."""
    try:
        return Path(path).resolve().relative_to(Path(cwd).resolve()).as_posix()
    except ValueError:
        return None


def escape_workflow_data(text: str) -> str:
    from ..safeio import printable

    # workflow commands are one line: %, CR and LF as GitHub escapes them, other controls as visible escapes
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return printable(text)


def escape_workflow_property(text: str) -> str:
    return escape_workflow_data(text).replace(":", "%3A").replace(",", "%2C")


def github_annotations(result: GateResult, file: str | None = None,
                       layer_lines: Mapping[int, int] | None = None) -> list[str]:
    """GitHub Actions workflow commands (``::error title=...::message``), one per breach / warning."""
    out = []
    layer_lines = layer_lines or {}
    for c in result.checks:
        if c.level == "none":
            continue
        props = []
        if file:
            props.append(f"file={escape_workflow_property(file)}")
            if c.layer is not None and c.layer in layer_lines:
                props.append(f"line={layer_lines[c.layer]}")
        props.append(f"title={escape_workflow_property(f'{c.rule_id} ({c.scope_label})')}")
        out.append(f"::{c.level} {','.join(props)}::{escape_workflow_data(c.message)}")
    return out
