"""The whole chain on models we train ourselves: train one family at 3 FFN widths for a few steps
(models/train.py, on the shipped text), export, `sui-onnx report` each, then `sui-onnx scaling`."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "sui_onnx" / "data"


@pytest.mark.export
@pytest.mark.slow
def test_train_three_widths_then_report_and_fit(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    pytest.importorskip("optimum")
    from tokenizers import Tokenizer

    sys.path.insert(0, str(ROOT))
    import models.train as train_mod

    from sui_onnx.cli import main

    ids = train_mod.encode_file(Tokenizer.from_file(str(DATA / "demo" / "tokenizer.json")), DATA / "calib.txt")
    monkeypatch.setattr(train_mod, "training_tokens", lambda tok_path: ids)  # shipped text, no download
    reports = []
    for width in (32, 64, 128):
        out = tmp_path / f"gpt2_w{width}"
        rec = train_mod.train("gpt2", d_model=32, n_layers=2, d_ff=width, steps=6, seed=0, out=out, batch=4, seq=32)
        assert rec["final_loss"] < rec["initial_loss"] and (out / "model.onnx").is_file()
        report = tmp_path / f"r{width}.json"
        assert main(["report", str(out), "--tokens", "4096", "--seq-len", "64", "-q", "--json", str(report)]) == 0
        layers = json.loads(report.read_text())["layers"]
        assert [x["width"] for x in layers] == [width, width]
        reports.append(str(report))
    assert main(["scaling", *reports, "-q", "--json", str(tmp_path / "s.json")]) == 0
    fit = json.loads((tmp_path / "s.json").read_text())
    assert fit["inputs"]["widths"] == [32, 64, 128]
    soft, hard = fit["median_fits"]["soft_rank"], fit["median_fits"]["hard_rank"]
    assert soft["n"] == hard["n"] == 3 and soft["beta"] is not None and hard["beta"] is not None
