"""`sui-onnx scaling` end to end: committed report JSONs, models analyzed on the spot, --json, --plot,
--tau, and every refusal as exit 2 with one line on stderr (docs/scaling.md)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sui_onnx.cli import main
from sui_onnx.scaling import saturation_width

from tests.onnx_builders import tiny_lm

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data" / "reports"
FAMILY = [str(DATA / f"gpt2_w{w}.json") for w in (768, 1536, 3072, 4608, 6144)]


def one_error_line(capsys, rc):
    out, err = capsys.readouterr()
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("sui-onnx: error: ") and "Traceback" not in err
    return lines[0]


# the committed family's layers follow rank = r0 * (D / 768)^beta exactly (tests/data/reports/make_reports.py);
# its median layer has the paper's exponents, so it is tilted here by a known factor (D / 768)^TILT to
# give laws that the paper's reference row cannot match: soft 0.661 + 0.2, hard 0.289 - 0.1.
TILT = {"soft_rank": 0.2, "hard_rank": -0.1}
MEDIAN_LAW = {"soft_rank": (200.0, 0.661 + 0.2), "hard_rank": (24.0, 0.289 - 0.1)}  # (rank at D = 768, beta)


def tilted_family(tmp_path: Path) -> list[str]:
    paths = []
    for src in FAMILY:
        d = json.loads(Path(src).read_text())
        for layer in d["layers"]:
            for key, t in TILT.items():
                layer[key] *= (layer["width"] / 768) ** t
                layer[key.replace("rank", "util")] = layer[key] / layer["width"]
        del d["summary"]  # stale now: a report without one gets it derived from its layers
        paths.append(tmp_path / Path(src).name)
        paths[-1].write_text(json.dumps(d))
    return [str(p) for p in paths]


def hand_fit(widths, ranks):
    """Closed-form least squares of ln rank on ln D, written out here (not the code under test)."""
    x, y = [math.log(w) for w in widths], [math.log(r) for r in ranks]
    mx, my = sum(x) / len(x), sum(y) / len(y)
    beta = sum((a - mx) * (b - my) for a, b in zip(x, y)) / sum((a - mx) ** 2 for a in x)
    return beta, math.exp(my - beta * mx)


def test_real_entry_point_prints_the_fitted_betas_beside_the_paper_reference(tmp_path):
    out = tmp_path / "scaling.json"
    proc = subprocess.run([sys.executable, "-m", "sui_onnx", "scaling", *tilted_family(tmp_path), "--json", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    for text in ("Per width", "Power-law fits", "soft rank", "hard rank", "soft - hard", "Per layer",
                 "saturation", "SUI peak"):
        assert text in proc.stdout
    rows = {cells[0]: cells[1:] for line in proc.stdout.splitlines()
            if len(cells := [c.strip() for c in line.strip("│ ").split("│")]) > 2}
    # the fit rows show the generating exponents of the tilted laws: a doubled or copied beta fails here
    assert rows["soft rank"][0] == "0.861" and rows["hard rank"][0] == "0.189"
    assert rows["soft - hard"][0] == "0.672"
    # the paper's values only in the rows labelled as the paper's
    assert rows["paper: soft rank"][0] == "0.661" and rows["paper: hard rank"][0] == "0.289"
    assert rows["paper: soft rank"][3] == "0.971" and rows["paper: hard rank"][3] == "0.338"
    assert "paper = Jha & Reagen" in proc.stdout
    d = json.loads(out.read_text())
    assert d["schema"] == "sui-onnx/scaling" and d["schema_version"] == 2
    widths = [768, 1536, 3072, 4608, 6144]
    for key, (r0, beta) in MEDIAN_LAW.items():
        fit = d["median_fits"][key]
        assert fit["beta"] == pytest.approx(beta, abs=1e-9)
        assert fit["A"] == pytest.approx(r0 * 768 ** -beta, rel=1e-9)
        # the same numbers by a least-squares fit written out on the medians read from the inputs
        medians = [sorted(x[key] for x in json.loads(Path(p).read_text())["layers"])[1] for p in tilted_family(tmp_path)]
        assert (fit["beta"], fit["A"]) == pytest.approx(hand_fit(widths, medians), rel=1e-9)
        assert fit["r2"] == pytest.approx(1.0, abs=1e-12)
    assert d["median_fits"]["asymmetry"]["beta_soft_minus_hard"] == pytest.approx(0.672, abs=1e-9)


def test_paper_reference_is_a_labelled_row_not_the_result(tmp_path):
    """On a family whose fit differs from the paper, the fit rows show the fit (the reference row cannot
    make a check on the printed numbers pass)."""
    llama = sorted((ROOT / "models" / "reports" / "scaling").glob("llama_w*.json"))
    proc = subprocess.run([sys.executable, "-m", "sui_onnx", "scaling", *map(str, llama), "--json", str(tmp_path / "s.json")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120, env={**os.environ, "COLUMNS": "100"})
    assert proc.returncode == 0, proc.stderr
    fit = json.loads((tmp_path / "s.json").read_text())["median_fits"]
    rows = {cells[0]: cells[1:] for line in proc.stdout.splitlines()
            if len(cells := [c.strip() for c in line.strip("│ ").split("│")]) > 2}
    assert rows["soft rank"][0] == f"{fit['soft_rank']['beta']:.3f}" != "0.661"
    assert rows["hard rank"][0] == f"{fit['hard_rank']['beta']:.3f}" != "0.289"
    assert rows["paper: soft rank"][0] == "0.661" and rows["paper: soft rank"][3] == "0.971"


def test_json_content(tmp_path, capsys):
    out = tmp_path / "s.json"
    assert main(["scaling", *reversed(FAMILY), "--json", str(out), "-q"]) == 0
    assert capsys.readouterr().out == ""
    d = json.loads(out.read_text())
    assert d["inputs"]["widths"] == [768, 1536, 3072, 4608, 6144]
    soft, hard = d["median_fits"]["soft_rank"], d["median_fits"]["hard_rank"]
    assert soft["beta"] == pytest.approx(0.661, abs=1e-9) and hard["beta"] == pytest.approx(0.289, abs=1e-9)
    assert soft["r2"] == pytest.approx(1.0) and hard["n"] == 5
    assert d["median_fits"]["asymmetry"]["beta_soft_minus_hard"] == pytest.approx(0.372, abs=1e-9)
    assert d["sui_peak"]["width"] == 768 and d["sui_peak"]["position"] == "smallest"
    assert d["saturation"]["width"] == pytest.approx(saturation_width(hard["beta"], hard["A"], 0.05), rel=1e-12)
    assert [x["layer"] for x in d["layers"]] == [0, 1, 2]


def test_json_to_stdout_and_tau(capsys):
    assert main(["scaling", *FAMILY, "--json", "-", "--tau", "0.005"]) == 0
    d = json.loads(capsys.readouterr().out)
    hard = d["median_fits"]["hard_rank"]
    assert d["settings"]["tau"] == 0.005
    assert d["saturation"]["width"] == pytest.approx(saturation_width(hard["beta"], hard["A"], 0.005), rel=1e-12)
    assert d["saturation"]["position"] == "within"


def test_refuses_two_widths(capsys):
    line = one_error_line(capsys, main(["scaling", *FAMILY[:2]]))
    assert "at least 3" in line


def test_refuses_mixed_depths(capsys):
    line = one_error_line(capsys, main(["scaling", *FAMILY, str(DATA / "depth2_w2304.json")]))
    assert "mixed depths" in line and "depth2_w2304.json" in line


def test_refuses_mixed_families(capsys):
    line = one_error_line(capsys, main(["scaling", *FAMILY[:3], str(DATA / "llama_w2048.json")]))
    assert "mixed families" in line and "synthetic-llama" in line


def test_refuses_duplicate_widths(tmp_path, capsys):
    copy = tmp_path / "rerun_w1536.json"
    shutil.copy(FAMILY[1], copy)
    line = one_error_line(capsys, main(["scaling", *FAMILY, str(copy)]))
    assert "duplicate width D=1536" in line


@pytest.mark.parametrize("content, match", [
    ('{"hello": "world"}', "not a sui-onnx report"),
    ('{"schema": "sui-onnx/scaling", "schema_version": 1}', "not a sui-onnx report"),
    ("not json at all", "not a JSON report"),
])
def test_refuses_non_report_inputs(tmp_path, capsys, content, match):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    line = one_error_line(capsys, main(["scaling", *FAMILY[:3], str(bad)]))
    assert match in line and "bad.json" in line


def test_refuses_missing_inputs_and_bad_outputs(tmp_path, capsys):
    assert "no such file" in one_error_line(capsys, main(["scaling", *FAMILY[:3], str(tmp_path / "nope.json")]))
    assert "without model.onnx" in one_error_line(capsys, main(["scaling", *FAMILY[:3], str(tmp_path)]))
    assert "input of this run" in one_error_line(capsys, main(["scaling", *FAMILY, "--json", FAMILY[0]]))
    assert "does not exist" in one_error_line(capsys, main(["scaling", *FAMILY, "--json", str(tmp_path / "x" / "o.json")]))


def test_rejects_bad_tau(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["scaling", *FAMILY, "--tau", "0"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--tau" in err and len(err.strip().splitlines()) == 1


def test_plot_writes_pngs(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    folder = tmp_path / "plots"
    assert main(["scaling", *FAMILY, "--plot", str(folder), "-q"]) == 0
    for name in ("scaling_ranks.png", "scaling_sui.png"):
        data = (folder / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_plot_without_matplotlib_is_a_clear_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    line = one_error_line(capsys, main(["scaling", *FAMILY, "--plot", str(tmp_path / "p"), "--json", str(tmp_path / "o.json")]))
    assert "matplotlib" in line and "pip install" in line
    assert not (tmp_path / "o.json").exists()  # refused before any work


def test_models_are_analyzed_on_the_spot_with_the_shared_options(tmp_path, capsys):
    """Three tiny FFN stacks (d_ff 24, 32, 48): one given as a report made by `sui-onnx report`,
    one as an .onnx file, one as a folder; --calib / --top-fraction reach the analysis."""
    np.save(tmp_path / "ids.npy", np.random.default_rng(0).integers(0, 64, (40, 32)))
    folders = {w: tmp_path / f"m{w}" for w in (24, 32, 48)}
    for w, folder in folders.items():
        tiny_lm(d_ff=w, seed=w).save(folder)
    calib = ["--calib", str(tmp_path / "ids.npy"), "--top-fraction", "0.2"]
    report = tmp_path / "r24.json"
    assert main(["report", str(folders[24]), *calib, "--json", str(report), "-q"]) == 0
    out = tmp_path / "s.json"
    rc = main(["scaling", str(report), str(folders[32] / "model.onnx"), str(folders[48]), *calib,
               "--json", str(out), "-q"])
    assert rc == 0, capsys.readouterr().err
    d = json.loads(out.read_text())
    assert d["inputs"]["widths"] == [24, 32, 48] and d["inputs"]["n_layers"] == 2
    assert d["inputs"]["top_fraction"] == 0.2
    assert all(m["min_tokens"] == 40 * 32 for m in d["inputs"]["models"])
    assert d["median_fits"]["soft_rank"]["n"] == 3
    # a model analyzed with another --top-fraction than the report is refused (SUI not comparable)
    line = one_error_line(capsys, main(["scaling", str(report), str(folders[32]), str(folders[48]),
                                        "--calib", str(tmp_path / "ids.npy"), "-q"]))
    assert "top-fraction" in line


def test_table_shows_undefined_numbers_and_layers_without_a_fit(tmp_path, capsys):
    """Constant hard rank (R^2 undefined, beta_hard = 0: no saturation) and a layer usable at
    only two widths render as 'n/a' and a note; the JSON carries null."""
    from sui_onnx.report import LayerResult, Report

    paths = []
    for w in (256, 512, 1024):
        layers = [LayerResult(layer=i, tensor=f"t{i}", width=w, site="post", activation="gelu", op="Mul",
                              tokens=10 * w, hard_rank=8.0, soft_rank=w ** 0.6, sui=0.3) for i in range(2)]
        if w == 512:
            layers[1].sui, layers[1].status = None, "degenerate"
        report = Report(model={"path": f"m{w}.onnx"}, calibration={"tokens": 10 * w}, runtime={},
                        settings={"site": "post", "top_fraction": 0.1}, layers=layers)
        paths.append(tmp_path / f"r{w}.json")
        paths[-1].write_text(report.to_json())
    out = tmp_path / "s.json"
    assert main(["scaling", *map(str, paths), "--json", str(out)]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "n/a" in text and "no fit (2 widths)" in text and "does not grow" in text
    d = json.loads(out.read_text())
    assert d["median_fits"]["hard_rank"]["r2"] is None and d["layers"][1]["soft_rank"] is None
    assert d["saturation"] == {"tau": 0.05, "width": None, "status": "no_growth", "position": None,
                               "slope_at_max_width": 0.0}


def test_the_same_model_twice_is_refused_before_any_calibration(tmp_path, capsys, monkeypatch):
    """By another path or as a copy of its file: refused up front (the fit would refuse the duplicate
    width only after calibrating every model)."""
    import sui_onnx.analyze as analyze_module

    fixtures = Path(__file__).parent / "fixtures"
    copy = tmp_path / "copy"
    shutil.copytree(fixtures / "gpt2_w128", copy)
    monkeypatch.setattr(analyze_module, "analyze", lambda *a, **k: pytest.fail("calibrated before refusing"))
    for twin in (fixtures / "gpt2_w128" / "model.onnx", copy):
        assert main(["scaling", str(fixtures / "gpt2_w128"), str(fixtures / "gpt2_w256"), str(twin), "-q"]) == 2
        err = capsys.readouterr().err
        assert "are the same model: give one model per width and seed" in err and str(twin) in err


def _recalibrated(tmp_path: Path, edits: dict[int, dict]) -> list[str]:
    """The committed family (tokens = 12 x D: in proportion to width) with some inputs' calibration
    edited, named relative to tmp_path (the caller works there): the terminal folds a word longer
    than its width, and pytest's own folder names would make the paths that long."""
    paths = []
    for i, src in enumerate(FAMILY):
        d = json.loads(Path(src).read_text())
        d["calibration"].update(edits.get(i, {}))
        paths.append(tmp_path / Path(src).name)
        paths[-1].write_text(json.dumps(d))
    return [p.name for p in paths]


def test_differing_calibrations_are_warned_about_in_the_table_json_and_stderr(tmp_path, capsys, monkeypatch):
    """Token counts not in proportion to width, or other window lengths / data, make the fit mix
    width with calibration: said in the terminal table, in the JSON's warnings and (with -q) on
    stderr. The committed family's tokens grow in proportion to D and are not warned about."""
    assert main(["scaling", *FAMILY, "--json", str(tmp_path / "same.json")]) == 0
    out, err = capsys.readouterr()
    assert "calibrated on" not in out + err
    assert json.loads((tmp_path / "same.json").read_text())["warnings"] == []

    monkeypatch.chdir(tmp_path)
    paths = _recalibrated(tmp_path, {0: {"tokens": 999, "seq_len": 128}, 2: {"seq_len": 64},
                                     4: {"sources": [{"path": "x.txt", "sha256": "ab" * 32}]}})
    assert main(["scaling", *paths, "--json", str(tmp_path / "w.json")]) == 0
    out, err = capsys.readouterr()
    flat = " ".join(out.split())
    assert "different token counts (999 tokens in" in flat and "gpt2_w768.json" in flat
    assert "different window lengths" in flat
    warnings = json.loads((tmp_path / "w.json").read_text())["warnings"]
    assert len(warnings) == 2 and "token counts" in warnings[0] and "window lengths" in warnings[1], warnings
    assert "different data" not in flat  # only one input records its sources: nothing to compare

    paths = _recalibrated(tmp_path, {i: {"sources": [{"path": "x.txt", "sha256": (c * 64)}]}
                                     for i, c in enumerate("aabbb")})
    assert main(["scaling", *paths, "-q", "--html", str(tmp_path / "s.html")]) == 0
    out, err = capsys.readouterr()
    assert out == ""
    assert 'class="note">the inputs were calibrated on different data' in (tmp_path / "s.html").read_text()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sui-onnx: warning: the inputs were calibrated on different data")
    assert "aaaaaaaaaaaa in" in lines[0] and "bbbbbbbbbbbb in" in lines[0]
