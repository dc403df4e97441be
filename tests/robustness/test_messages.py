"""Class 12: messages say what happened. An onnxruntime that cannot be loaded is not "not installed";
an absurd --seq-len names the batch, not "0.00 GiB"; a malformed summary is exit 2; a multi-pass
checkpoint given to --stats says why it cannot be used; a BOM does not make a .jsonl line "not JSON";
a NaN that drops a layer says the layer is dropped."""

import json
import resource
import shutil
import subprocess
import sys

import numpy as np
import pytest
from onnx import numpy_helper

from sui_onnx.spectrum import load_accumulators
from tests.onnx_builders import tiny_lm
from tests.robustness.clitools import FIXTURES, cli, env, hook, ids, model_folder, one_error_line


@pytest.fixture()
def work(tmp_path):
    model_folder(tmp_path / "m", vocab=4096)
    ids(tmp_path / "ids.npy", vocab=64)
    return tmp_path


def test_an_onnxruntime_that_cannot_be_loaded_is_not_called_missing(work):
    fake = hook(work / "fake", "")  # a package that fails as a shared library does under a small ulimit -v
    (fake / "onnxruntime").mkdir()
    (fake / "onnxruntime" / "__init__.py").write_text(
        'raise ImportError("libonnxruntime.so.1: failed to map segment from shared object")\n')
    line = one_error_line(cli("report", "m", "--calib", "ids.npy", "-q", cwd=work, hook=fake), "cannot be loaded")
    assert "not installed" not in line and "address space" in line


def _first_limit_that_breaks_onnxruntime_only():
    """An RLIMIT_AS (bytes) under which numpy, onnx and rich import but onnxruntime does not, if any."""
    for kib in range(120_000, 420_000, 20_000):
        def limit(kib=kib):
            resource.setrlimit(resource.RLIMIT_AS, (kib * 1024, kib * 1024))

        def imports(mods):
            return subprocess.run([sys.executable, "-c", f"import {mods}"], capture_output=True, preexec_fn=limit,
                                  env=env(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1"), timeout=60).returncode == 0

        if imports("numpy, onnx, rich, tokenizers, sui_onnx.cli.options"):
            return None if imports("onnxruntime") else limit
    return None


def test_a_real_address_space_limit_is_not_called_missing(work):
    limit = _first_limit_that_breaks_onnxruntime_only()
    if limit is None:
        pytest.skip("no address-space limit here lets numpy load but not onnxruntime")
    r = cli("report", "m", "--calib", "ids.npy", "-q", cwd=work, preexec=limit, OPENBLAS_NUM_THREADS="1",
            OMP_NUM_THREADS="1")
    assert r.returncode == 2 and "not installed" not in r.stderr, r.stderr[-2000:]


def test_an_absurd_seq_len_names_the_batch(work):
    line = one_error_line(cli("report", "m", "-q", "--seq-len", "100000000", cwd=work), "--seq-len")
    assert "0.00 GiB" not in line and "8 x 100000000 tokens" in line


@pytest.mark.skipif(not (FIXTURES / "gpt2_w128").is_dir(), reason="fixtures not built")
def test_an_absurd_seq_len_names_the_position_table(work):
    shutil.copytree(FIXTURES / "gpt2_w128", work / "gpt2")
    line = one_error_line(cli("report", "gpt2", "-q", "--seq-len", "100000000", cwd=work), "position table")
    assert "0.00 GiB" not in line


def test_a_malformed_summary_is_exit_2_not_a_breach(work):
    assert cli("report", "m", "--calib", "ids.npy", "-q", "--json", "r.json", cwd=work).returncode == 0
    d = json.loads((work / "r.json").read_text())
    for summary, what in (({"n_layers": 2}, "is missing although layers have"), ("oops", "summary"),
                          ({**d["summary"], "sui": {"mean": 0.5}}, "no median")):
        (work / "bad.json").write_text(json.dumps({**d, "summary": summary}))
        one_error_line(cli("check", "bad.json", "--min-sui", "0.01", "-q", cwd=work), what)


def test_a_multi_pass_checkpoint_given_to_stats_says_why(work):
    r = cli("report", "m", "--calib", "ids.npy", "-q", "--max-memory", "20K", "--checkpoint", "ck.npz", cwd=work)
    assert r.returncode == 0, r.stderr
    _, meta = load_accumulators(work / "ck.npz")
    assert meta["complete"] and len(meta["identity"]["groups"]) == 2
    line = one_error_line(cli("report", "m", "--stats", "ck.npz", "-q", cwd=work), "several passes")
    assert "other taps" not in line and "--resume ck.npz" in line
    r = cli("report", "m", "--calib", "ids.npy", "-q", "--max-memory", "20K", "--resume", "ck.npz", "--json", "r.json",
            cwd=work)
    assert r.returncode == 0, r.stderr  # what the message advises works


def test_a_bom_at_the_start_of_jsonl_lines_is_not_an_error(work):
    text = "Some calibration text for the tokenizer. " * 20
    (work / "c.jsonl").write_bytes(("\ufeff" + json.dumps({"text": text}) + "\n" + "\ufeff"
                                    + json.dumps({"text": text}) + "\n").encode("utf-8"))
    r = cli("report", "m", "--calib", "c.jsonl", "-q", "--json", "r.json", cwd=work)
    assert r.returncode == 0, r.stderr
    assert json.loads((work / "r.json").read_text())["calibration"]["tokens"] > 100


def test_one_nan_token_says_the_layer_is_dropped(work):
    lm = tiny_lm(vocab=64)
    for t in lm.model.graph.initializer:
        if t.name == "emb":  # one token's embedding is NaN: only batches holding token 7 are bad
            emb = numpy_helper.to_array(t).copy()
            emb[7, 0] = np.nan
            t.CopyFrom(numpy_helper.from_array(emb, t.name))
    lm.save(work / "nan")
    rows = np.random.default_rng(0).integers(8, 64, (8, 16))
    rows[5, 3] = 7  # the NaN token, in the last batch only
    np.save(work / "nan_ids.npy", rows)
    r = cli("report", "nan", "--calib", "nan_ids.npy", "--batch-size", "2", "-q", "--json", "r.json", cwd=work)
    assert r.returncode == 0, r.stderr
    layers = json.loads((work / "r.json").read_text())["layers"]
    for x in layers:
        assert x["status"] == "non_finite" and x["sui"] is None
        assert "batch 3" in x["message"] and "statistics were discarded" in x["message"], x["message"]


def test_empty_paths_and_tiny_memory_caps_are_named(work):
    one_error_line(cli("report", "", "-q", cwd=work), "MODEL is an empty path")
    one_error_line(cli("report", "m", "--calib", "", "-q", cwd=work), "--calib")
    line = one_error_line(cli("report", "m", "--calib", "ids.npy", "--max-memory", "1k", "-q", cwd=work), "--max-memory")
    assert "1.0 KiB" in line and "18.4 KiB for D=48" in line
