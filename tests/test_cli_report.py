"""`sui-onnx report` through its real entry point: JSON against the schema, every rendering equal
to the library's numbers, 80-column terminal output, markdown, spectra, plots, errors."""

import json
import os
import re
import subprocess
import sys
from importlib import resources
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from sui_onnx.cli import main

FIXTURES = Path(__file__).parent / "fixtures"
MODEL = FIXTURES / "gpt2_w128"
SCHEMA = json.loads((Path(str(resources.files("sui_onnx"))) / "schema" / "report.schema.json").read_text())
pytestmark = pytest.mark.skipif(not MODEL.is_dir(), reason="fixtures not built")


def cli(*args, cwd=None, env=None):
    """Run the installed console entry point as a user would."""
    e = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "sui_onnx", *map(str, args)], capture_output=True, text=True, cwd=cwd, env=e)


@pytest.fixture(scope="module")
def report_files(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    r = cli("report", MODEL, "--tokens", "3000", "--seq-len", "64", "--json", out / "r.json", "--markdown", out / "r.md",
            "--spectra", out / "s.npz", env={"COLUMNS": "80"})
    assert r.returncode == 0, r.stderr
    return out, r.stdout


def test_json_validates_against_the_schema(report_files):
    out, _ = report_files
    data = json.loads((out / "r.json").read_text())
    jsonschema.validate(data, SCHEMA)
    assert data["schema"] == "sui-onnx/report" and data["schema_version"] == 2
    assert data["calibration"]["tokens"] == 3000 and data["runtime"]["providers"] == ["CPUExecutionProvider"]
    assert [x["layer"] for x in data["layers"]] == [0, 1]


def metrics_by_formula(eigs, f_num=1, f_den=10):
    """docs/metrics.md written out with NumPy (not sui_onnx.metrics): eigenvalues sorted and clamped,
    p = lambda / sum, hard = 1 / sum p^2, soft = exp(-sum p ln p), k = ceil(f D), SC, SUI, asymmetry, k_q."""
    lam = np.sort(np.clip(np.asarray(eigs, dtype=np.float64), 0, None))[::-1]
    p = lam / lam.sum()
    d = lam.size
    k = -(-f_num * d // f_den)
    hard = 1.0 / np.sum(p * p)
    soft = float(np.exp(-np.sum(p[p > 0] * np.log(p[p > 0]))))
    tail = p[k:].sum()
    cum = np.cumsum(p)
    out = {"hard_rank": hard, "soft_rank": soft, "concentration": p[:k].sum(),
           "sui": ((hard / d) * (soft / d) * tail / (1 - k / d)) ** (1 / 3), "asymmetry": np.log(soft) - np.log(hard)}
    for q in (90, 95, 99):
        out[f"k{q}"] = int(np.argmax(cum >= q / 100)) + 1
    return out


def test_json_numbers_equal_the_formulas_on_the_saved_spectra(report_files):
    out, _ = report_files
    data = json.loads((out / "r.json").read_text())
    spectra = np.load(out / "s.npz")
    assert spectra["tensors"].tolist() == [x["tensor"] for x in data["layers"]]
    for layer in data["layers"]:
        want = metrics_by_formula(spectra[f"layer_{layer['layer']}"])
        for key in ("hard_rank", "soft_rank", "concentration", "sui", "asymmetry"):
            assert layer[key] == pytest.approx(want[key], rel=1e-10)
        for key in ("k90", "k95", "k99"):
            assert layer[key] == want[key]


def test_json_numbers_equal_a_direct_covariance_of_the_hidden_activations(tmp_path):
    """Independent of the package: the layers' hidden tensors are added to the ONNX graph as outputs with
    onnx.helper, run by a plain onnxruntime session on the same token ids, and their covariance is
    computed in float64 two-pass; eigvalsh of it and the written-out formulas give the report's numbers."""
    import onnx
    import onnxruntime as ort

    ids = np.random.default_rng(5).integers(0, 512, (40, 32))
    np.save(tmp_path / "ids.npy", ids)
    r = cli("report", MODEL, "--calib", tmp_path / "ids.npy", "--device", "cpu", "--precision", "fp64",
            "--json", tmp_path / "r.json", "--spectra", tmp_path / "s.npz", "-q")
    assert r.returncode == 0, r.stderr
    data = json.loads((tmp_path / "r.json").read_text())
    graph = onnx.load(str(MODEL / "model.onnx"))
    names = [x["tensor"] for x in data["layers"]]
    graph.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names)
    sess = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {"input_ids": ids.astype(np.int64), "attention_mask": np.ones_like(ids, dtype=np.int64),
             "position_ids": np.broadcast_to(np.arange(ids.shape[1], dtype=np.int64), ids.shape).copy()}
    hidden = sess.run(names, feeds)
    spectra = np.load(tmp_path / "s.npz")
    for layer, h in zip(data["layers"], hidden):
        rows = np.asarray(h, dtype=np.float64).reshape(-1, layer["width"])
        assert layer["width"] == 128 and layer["tokens"] == rows.shape[0] == ids.size
        c = rows - rows.mean(axis=0)
        eigs = np.clip(np.linalg.eigvalsh(c.T @ c / (len(rows) - 1))[::-1], 0, None)
        np.testing.assert_allclose(spectra[f"layer_{layer['layer']}"], eigs, rtol=1e-6, atol=1e-9 * eigs[0])
        want = metrics_by_formula(eigs)
        for key in ("hard_rank", "soft_rank", "concentration", "sui", "asymmetry"):
            assert layer[key] == pytest.approx(want[key], rel=1e-6)
        for key in ("k90", "k95", "k99"):
            assert layer[key] == want[key]


def test_terminal_and_markdown_show_the_same_numbers(report_files):
    out, stdout = report_files
    data = json.loads((out / "r.json").read_text())
    md = (out / "r.md").read_text()
    for layer in data["layers"]:
        assert f"{layer['sui']:.3f}" in stdout and f"{layer['sui']:.3f}" in md
        assert f"{layer['hard_rank']:.1f}" in stdout and f"{layer['hard_rank']:.2f}" in md
    assert str(data["advice"]["recommended_width"]) in stdout
    assert md.startswith("## sui-onnx report")


def test_terminal_report_fits_80_columns_without_colour_when_piped(report_files):
    _, stdout = report_files
    assert "\x1b[" not in stdout  # not a TTY: plain text
    assert max(len(line) for line in stdout.splitlines()) <= 80
    rows = [line for line in stdout.splitlines() if re.match(r"^\s+\d+\s+128\s", line)]
    assert len(rows) == 2  # one unwrapped row per layer


def test_quiet_prints_nothing_and_json_to_stdout(tmp_path):
    r = cli("report", MODEL, "--tokens", "600", "-q", "--json", tmp_path / "a.json")
    assert r.returncode == 0 and r.stdout == ""
    r = cli("report", MODEL, "--tokens", "600", "--json", "-")
    assert r.returncode == 0
    assert json.loads(r.stdout)["schema"] == "sui-onnx/report"


def test_plots_are_written_or_clearly_refused(tmp_path):
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        r = cli("report", MODEL, "--tokens", "600", "--plot", tmp_path / "p")
        assert r.returncode == 2 and "pip install 'sui-onnx[plot]'" in r.stderr
        return
    assert main(["report", str(MODEL), "--tokens", "600", "-q", "--plot", str(tmp_path / "p")]) == 0
    for name in ("spectra.png", "utilization.png", "energy.png"):
        assert (tmp_path / "p" / name).read_bytes()[:4] == b"\x89PNG"


def test_no_argument_runs_the_bundled_demo_from_an_empty_folder(tmp_path):
    r = cli("report", "--json", "demo.json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    data = json.loads((tmp_path / "demo.json").read_text())
    assert data["model"]["path"].endswith("demo/model.onnx") and len(data["layers"]) >= 2
    assert data["calibration"]["sources"][0]["bundled"] is True
    assert data["summary"]["sui"]["median"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.json"]


@pytest.mark.parametrize(
    "args,match",
    [
        (["report", "missing.onnx"], "missing.onnx"),
        (["report", str(MODEL), "--calib", "nope.txt"], "nope.txt"),
        (["report", str(MODEL), "--tokens", "0"], "--tokens"),
        (["report", str(MODEL), "--top-fraction", "1.5"], "--top-fraction"),
        (["report", str(MODEL), "--json", str(MODEL / "model.onnx")], "refusing to write"),
        (["report", str(MODEL), "--json", "/no/such/folder/r.json"], "does not exist"),
        (["report", str(MODEL), "--resume", "nope.npz"], "nope.npz"),
    ],
)
def test_bad_input_is_one_line_exit_2(args, match, tmp_path):
    before = (MODEL / "model.onnx").read_bytes()
    r = cli(*args, cwd=tmp_path)
    assert r.returncode == 2
    assert match in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert (MODEL / "model.onnx").read_bytes() == before


def test_debug_shows_the_traceback(tmp_path):
    r = cli("--debug", "report", "missing.onnx", cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_version_and_help():
    r = cli("--version")
    assert r.returncode == 0 and r.stdout.startswith("sui-onnx ")
    r = cli("report", "--help")
    assert r.returncode == 0 and "--calib" in r.stdout and "--device" in r.stdout
