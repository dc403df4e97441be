"""Class 7: numbers in a report JSON given to `check` (target or --baseline) or `scaling`. Non-finite
numbers (Infinity, NaN, 1e400) and wrong types or ranges are input errors: exit 2, never a pass and
never exit 1 (which a CI job reads as a breached gate)."""

import json

import pytest

from tests.robustness.clitools import cli, ids, model_folder, one_error_line


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    work = tmp_path_factory.mktemp("reports")
    model_folder(work / "m", vocab=64)
    ids(work / "ids.npy", rows=40, cols=16)
    r = cli("report", "m", "--calib", "ids.npy", "-q", "--json", "good.json", cwd=work)
    assert r.returncode == 0, r.stderr
    return work, (work / "good.json").read_text()


def _set(text: str, path: str, raw: str) -> str:
    """``text`` with the JSON value at ``path`` (dots, list indices) replaced by the raw token ``raw``."""
    marker = "__SUI_ONNX_RAW__"
    d = json.loads(text)
    *parents, last = path.split(".")
    node = d
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if isinstance(node, list):
        node[int(last)] = marker
    else:
        node[last] = marker
    return json.dumps(d, indent=2).replace(f'"{marker}"', raw)


CASES = [
    ("summary.sui.median", "Infinity", "not a number JSON allows"),
    ("layers.0.sui", "Infinity", "not a number JSON allows"),
    ("summary.concentration.median", "-Infinity", "not a number JSON allows"),
    ("layers.1.hard_rank", "NaN", "not a number JSON allows"),
    ("summary.sui.median", "1e400", "not finite"),
    ("layers.0.sui", '"0.9"', "layers[0].sui"),
    ("layers.0.sui", "true", "layers[0].sui"),
    ("layers.0.sui", "7.5", "layers[0].sui"),
    ("layers.0.layer", '"zero"', "layers[0].layer"),
    ("layers.0.width", "-3", "layers[0].width"),
    ("layers.1.layer", "0", "appears twice"),
    ("summary", '"oops"', "summary"),
    ("summary.sui", "[1, 2]", "summary.sui"),
    ("summary.sui.median", '"high"', "summary.sui.median"),
    ("advice.width_ratio", '"small"', "advice.width_ratio"),
    ("model", "[]", "model"),
    ("layers", "{}", "layers"),
]


@pytest.mark.parametrize("path,raw,what", CASES)
def test_bad_numbers_and_types_are_exit_2(good, path, raw, what):
    work, text = good
    (work / "bad.json").write_text(_set(text, path, raw))
    # a threshold the good report passes: a bad one must neither pass (0) nor breach (1)
    one_error_line(cli("check", "bad.json", "--min-sui", "0.0", "-q", cwd=work), what)


def test_a_bad_baseline_is_exit_2_too(good):
    work, text = good
    (work / "bad.json").write_text(_set(text, "summary.sui.median", "NaN"))
    one_error_line(cli("check", "good.json", "--baseline", "bad.json", "-q", cwd=work), "bad.json")


@pytest.mark.parametrize("raw,what", [("0", "rank in (0"), ("-2.0", "rank in (0"), ("NaN", "not a number JSON allows")])
def test_scaling_refuses_zero_or_nan_ranks(good, raw, what):
    work, text = good
    for w in (1, 2, 3):
        d = json.loads(text)
        for x in d["layers"]:
            x["width"] *= w
        (work / f"w{w}.json").write_text(json.dumps(d))
    (work / "w2.json").write_text(_set((work / "w2.json").read_text(), "layers.0.hard_rank", raw))
    one_error_line(cli("scaling", "w1.json", "w2.json", "w3.json", "-q", cwd=work), what)


def test_the_good_report_passes(good):
    work, _ = good
    assert cli("check", "good.json", "--min-sui", "0.0", "-q", cwd=work).returncode == 0
