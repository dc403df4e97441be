"""The typed report (sui_onnx/report.py): each JSON object is a Section dataclass; a report read
and written again is byte-identical; keys a caller added survive; the energy-width columns follow
the configured energy levels."""

from __future__ import annotations

import copy
import io
import json
import pickle
import re
from pathlib import Path

import pytest
from rich.console import Console

from sui_onnx.advice import summarize, width_advice
from sui_onnx.report import (Advice, CalibrationInfo, LayerResult, ModelInfo, Report, RuntimeInfo, Settings, Spread,
                             Summary, load_report)

ROOT = Path(__file__).resolve().parents[1]
STORED = sorted(p for d in (ROOT / "tests" / "data" / "reports", ROOT / "models" / "reports")
                for p in d.rglob("*.json") if "sui-onnx/report" in p.read_text(encoding="utf-8")[:200])


@pytest.mark.parametrize("path", STORED, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_stored_report_reads_and_writes_back_byte_identical(path):
    text = path.read_text(encoding="utf-8")
    # a version 1 report is written as version 2 (the fields are the same; see SCHEMA_VERSION)
    expected = re.sub(r'"schema_version": 1,', '"schema_version": 2,', text, count=1)
    assert load_report(path).to_json() == expected


def test_sections_are_typed_and_keep_unknown_keys_in_their_order():
    d = {"path": "m.onnx", "family": "gpt2", "sha256": "ab", "train": {"seed": 3}, "opset": 17}
    m = ModelInfo.from_dict(d)
    assert (m.path, m.sha256, m.opset, m.producer) == ("m.onnx", "ab", 17, None)
    assert m.extra == {"family": "gpt2", "train": {"seed": 3}}
    assert list(m.to_dict()) == list(d) and m.to_dict() == d  # order as read, extras in place
    m.producer = "pytorch 2.4"  # a field set later is written after the keys read
    assert list(m.to_dict()) == [*d, "producer"]
    assert "producer" in m and "dequantized_from" not in m and m.get("family") == "gpt2"
    # a null that was written stays written; a field never given is left out
    r = RuntimeInfo.from_dict({"device": None, "providers": []})
    assert r.to_dict() == {"device": None, "providers": []}
    assert RuntimeInfo(device="cpu").to_dict() == {"device": "cpu"}


def test_report_reads_plain_dicts_into_sections_and_nested_spreads():
    layer = LayerResult(layer=0, tensor="t", width=8, site="post", activation="gelu", op="Gelu", tokens=100,
                        hard_rank=2.0, soft_rank=3.0, hard_util=0.25, soft_util=0.375, concentration=0.5, sui=0.1,
                        asymmetry=1.5, energy_widths={"k90": 4, "k95": 5, "k99": 7})
    rep = Report(model={"path": "m.onnx"}, calibration={"tokens": 100}, runtime={}, settings={"site": "post"},
                 layers=[layer])
    assert isinstance(rep.model, ModelInfo) and isinstance(rep.calibration, CalibrationInfo)
    assert isinstance(rep.settings, Settings) and isinstance(rep.advice, Advice) and not rep.advice
    rep.summary = summarize([layer])  # assignment of a plain dict reads it too
    assert isinstance(rep.summary, Summary) and isinstance(rep.summary.sui, Spread)
    assert rep.summary.median("sui") == 0.1 and rep.summary.sui.worst_layer == 0
    assert rep.summary.median("nope") is None
    with pytest.raises(TypeError):
        rep.model = 3
    again = Report.from_dict(json.loads(rep.to_json()))
    assert again == rep and again.to_json() == rep.to_json()
    assert copy.deepcopy(rep).to_json() == pickle.loads(pickle.dumps(rep)).to_json() == rep.to_json()


def test_energy_columns_follow_the_configured_levels():
    from sui_onnx.render import report_renderable, to_markdown

    layers = [LayerResult(layer=i, tensor=f"t{i}", width=16, site="post", activation="gelu", op="Gelu", tokens=400,
                          hard_rank=4.0, soft_rank=6.0, hard_util=0.25, soft_util=0.375, concentration=0.4, sui=0.2,
                          asymmetry=1.5, energy_widths={"k80": 3 + i, "k97.5": 9 + i}) for i in range(2)]
    rep = Report(model={"path": "m.onnx", "sha256": "00"}, calibration={"tokens": 400}, runtime={"device": "cpu"},
                 settings={"site": "post", "top_fraction": 0.1, "energy_levels": [0.8, 0.975]}, layers=layers)
    rep.summary = summarize(layers)
    assert rep.settings.energy_keys() == ["k80", "k97.5"]
    md = to_markdown(rep)
    assert "| SUI | k80 | k97.5 | status |" in md and "| 3 | 9 | ok |" in md and "k95" not in md
    console = Console(record=True, width=140, file=io.StringIO(), color_system=None)
    console.print(report_renderable(rep))
    text = console.export_text()
    assert "k80" in text and "k97.5" in text and "k90" not in text
    assert "keeping 80/97.5% of the variance" in text
    # the JSON keeps the columns the schema requires (null when not measured) beside the measured ones
    entry = json.loads(rep.to_json())["layers"][0]
    assert (entry["k80"], entry["k97.5"], entry["k90"], entry["k95"], entry["k99"]) == (3, 9, None, None, None)


def test_the_estimate_key_follows_the_advice_quantile():
    assert Advice(q=0.95).estimate_key() == "k95"
    assert Advice(q=0.9).estimate_key() == "k90"
    assert Advice().estimate_key() == "k95"  # a report without advice: the default q
    eig = [[4.0, 2.0, 1.0, 0.5]]
    layer = LayerResult(layer=0, tensor="t", width=4, site="post", activation="gelu", op="Gelu", tokens=64,
                        hard_rank=2.5, soft_rank=3.0, sui=0.4)
    assert Advice.from_dict(width_advice([layer], eig, q=0.99)).estimate_key() == "k99"


def test_console_prints_a_report_as_its_terminal_report():
    from sui_onnx.render import report_renderable

    rep = load_report(STORED[0])
    texts = []
    for renderable in (rep, report_renderable(rep)):  # Report.__rich__ is render.report_renderable
        console = Console(record=True, width=120, file=io.StringIO(), color_system=None)
        console.print(renderable)
        texts.append(console.export_text())
    assert texts[0] == texts[1] and "sui-onnx report" in texts[0]


def test_nested_objects_are_typed_too():
    from sui_onnx.report import AdviceSettings, CalibrationSource, EncoderRef, Withheld

    calib = CalibrationInfo.from_dict({"sources": [{"path": "a.txt", "kind": "text", "sha256": "ff", "tokens": 9},
                                                   {"path": "<bundled>/calib.txt", "kind": "text", "bundled": True}],
                                       "tokens": 9})
    assert all(isinstance(s, CalibrationSource) for s in calib.sources)
    assert calib.digests() == ["ff", None] and calib.sources[1].bundled is True
    assert calib.to_dict()["sources"][1] == {"path": "<bundled>/calib.txt", "kind": "text", "bundled": True}
    model = ModelInfo.from_dict({"path": "dec.onnx", "encoder": {"path": "enc.onnx", "sha256": "aa"}})
    assert isinstance(model.encoder, EncoderRef) and model.encoder.path == "enc.onnx"
    settings = Settings.from_dict({"site": "post", "advice": {"q": 0.9, "quantile": 1.0, "align": 64}})
    assert isinstance(settings.advice, AdviceSettings) and settings.advice.align == 64
    advice = Advice.from_dict({"recommended_width": None, "withheld": {"reason": "thin", "tokens": 10, "min_tokens": 64,
                                                                       "recommended_tokens": 160, "layers": [0]}})
    assert isinstance(advice.withheld, Withheld) and advice.withheld.recommended_tokens == 160
    assert advice.to_dict() == {"recommended_width": None, "withheld": {"reason": "thin", "tokens": 10, "min_tokens": 64,
                                                                        "recommended_tokens": 160, "layers": [0]}}


@pytest.mark.parametrize("section, key, value, message", [
    ("summary", "n_layers", -1, "summary.n_layers must be an integer >= 0, got -1"),
    ("summary", "min_tokens", None, "summary.min_tokens must be an integer >= 0, got None"),
    ("advice", "width_ratio", "0.5", "advice.width_ratio must be a finite number or null, got '0.5'"),
    ("advice", "q", True, "advice.q must be a finite number or null, got True"),
    ("advice", "recommended_width", 1.5, "advice.recommended_width must be an integer or null, got 1.5"),
    ("advice", "current_width", -64, "advice.current_width must be an integer or null, got -64"),
])
def test_a_field_that_breaks_its_rule_is_one_error_naming_it(section, key, value, message):
    from sui_onnx.errors import SuiError

    d = json.loads(STORED[0].read_text(encoding="utf-8"))
    original = d[section][key]
    d[section][key] = value
    with pytest.raises(SuiError) as exc:
        Report.from_dict(d)
    assert str(exc.value) == f"malformed report: {message}"
    d[section][key] = None if section == "advice" else original  # null is a value where the rule allows it
    Report.from_dict(d)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["layers"].clear(), "layers must be a non-empty list"),
    (lambda d: [x.update(sui=0.0) for x in d["layers"]], "summary.sui.median is"),
    (lambda d: d["layers"][0].update(sui=None), "layers[0].sui must be a number for a layer of status ok"),
    (lambda d: d["layers"][0].update(status="weird"), "layers[0].status must be one of non_finite, degenerate"),
    (lambda d: d["summary"].update(usable_layers=d["summary"]["usable_layers"] + 1), "summary.usable_layers is"),
])
def test_a_report_whose_summary_or_layers_were_edited_is_malformed(edit, message):
    """The gate reads the medians from the summary: one its layers do not give is refused."""
    from sui_onnx.errors import SuiError

    d = json.loads(STORED[0].read_text(encoding="utf-8"))
    Report.from_dict(d)
    edit(d)
    with pytest.raises(SuiError, match="malformed report: " + message.replace("[", r"\[").replace("]", r"\]")):
        Report.from_dict(d)
