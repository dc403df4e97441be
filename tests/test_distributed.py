"""`--ray`: the calibration sharded over a local Ray instance gives the single-process spectra
(float64 exact merge), with layer groups, after a worker crash, through the CLI; a task's own
SuiError reaches the caller as one line; NaN/Inf and missing ray handled like the local run."""

import json
import os
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from sui_onnx import distributed
from sui_onnx.analyze import AnalysisOptions, analyze
from sui_onnx.calib import CalibrationSpec
from sui_onnx.errors import CalibrationError, SuiError
from sui_onnx.memory import accumulator_bytes

FIXTURES = Path(__file__).parent / "fixtures"
pytestmark = pytest.mark.skipif(not (FIXTURES / "gpt2_w128").is_dir(), reason="fixtures not built")


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def ids_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("ids") / "ids.npy"
    np.save(path, np.random.default_rng(0).integers(0, 512, (20, 24)))
    return path


def run_both(model, spec, **kw):
    local = analyze(model, spec, AnalysisOptions(device="cpu", precision="fp64", **{k: v for k, v in kw.items() if k == "max_memory"}))
    dist = analyze(model, spec, AnalysisOptions(device="cpu", precision="fp64", ray="", **kw))
    return local, dist


def assert_same_spectra(local, dist):
    assert [x.tokens for x in dist.layers] == [x.tokens for x in local.layers]
    assert [x.flags for x in dist.layers] == [x.flags for x in local.layers]
    for ev_local, ev_dist in zip(local.eigenvalues, dist.eigenvalues):
        np.testing.assert_allclose(ev_dist, ev_local, rtol=0, atol=1e-10 * ev_local[0])


@pytest.mark.ray
@pytest.mark.parametrize("name", ["gpt2_w128", "llama_w128"])
def test_sharded_spectra_equal_the_single_process_run(ray_local, ids_path, name):
    spec = CalibrationSpec([ids_path], batch_size=3)  # 7 batches, the last one short
    local, dist = run_both(FIXTURES / name, spec, ray_shards=3)
    assert_same_spectra(local, dist)
    assert dist.calibration == local.calibration
    ray_info = dist.runtime["ray"]
    assert ray_info["shards"] == 3 and ray_info["contributing_shards"] == [0, 1, 2]
    assert ray_info["retries"] == 0 and ray_info["workers"] >= 1
    assert dist.runtime["device"] == "cpu" and dist.runtime["passes"] == 1


@pytest.mark.ray
def test_transformers_js_and_hub_snapshot_layouts_on_ray_equal_the_single_process_run(ray_local, tmp_path):
    """Text calibration with the tokenizer above onnx/ (transformers.js), and a Hugging Face cache
    snapshot whose external data are links into blobs/: the workers get the tokenizer and the
    data folder the local run uses (they read tokenizer.json beside the model and the snapshot
    folder before)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from models import deployed_fixtures as layouts

    tjs = tmp_path / "tjs"
    layouts.build_transformers_js(tjs)
    hub = layouts.build_hub_cache(tmp_path / "hub")
    spec = CalibrationSpec([Path(__file__).resolve().parents[1] / "sui_onnx" / "data" / "heldout.txt"],
                           seq_len=32, batch_size=4, tokens=768)
    for model in (tjs, hub):
        local, dist = run_both(model, spec, ray_shards=2)
        assert_same_spectra(local, dist)
        assert dist.calibration["tokens"] == local.calibration["tokens"] == 768


@pytest.mark.ray
def test_layer_groups_times_shards(ray_local, ids_path):
    spec = CalibrationSpec([ids_path], batch_size=4)
    one_tap = accumulator_bytes([128])  # every layer its own group: 2 groups x 4 shards
    local, dist = run_both(FIXTURES / "llama_w128", spec, ray_shards=4, max_memory=one_tap)
    assert local.runtime["passes"] == dist.runtime["passes"] == 2
    assert dist.runtime["ray"]["tasks"] == 8
    assert_same_spectra(local, dist)


@pytest.mark.ray
def test_more_shards_than_batches_and_text_calibration(ray_local, tmp_path):
    text = tmp_path / "calib.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 60 + "\nA second line of text.\n")
    spec = CalibrationSpec([text], seq_len=40, batch_size=4, tokens=600)  # tokenizer.json shipped to the workers
    local, dist = run_both(FIXTURES / "gpt2_w128", spec, ray_shards=50)
    assert dist.runtime["ray"]["shards"] == 4  # one per batch, never an empty shard
    assert dist.calibration == local.calibration and dist.calibration["tokens"] == 600
    assert_same_spectra(local, dist)


@pytest.mark.ray
def test_checkpoint_of_a_ray_run_feeds_stats(ray_local, ids_path, tmp_path):
    spec, ckpt = CalibrationSpec([ids_path], batch_size=4), tmp_path / "ray.npz"
    dist = analyze(FIXTURES / "gpt2_w128", spec, AnalysisOptions(device="cpu", precision="fp64", ray="", ray_shards=2, checkpoint=ckpt))
    again = analyze(FIXTURES / "gpt2_w128", None, AnalysisOptions(stats=ckpt))
    assert [x.tokens for x in again.layers] == [480, 480]
    for a, b in zip(dist.eigenvalues, again.eigenvalues):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(SuiError, match="`resume` does not combine with `ray`"):
        analyze(FIXTURES / "gpt2_w128", spec, AnalysisOptions(device="cpu", ray="", resume=ckpt))


@pytest.mark.ray
def test_a_crashed_worker_is_retried_and_the_result_unchanged(ray_local, ids_path, tmp_path, monkeypatch):
    """The remote task is replaced by one whose first attempt on shard 1 kills its worker process
    (os._exit: a WorkerCrashedError for the driver); every other attempt runs the real task."""
    marker = str(tmp_path / "crashed")
    real_task = distributed._shard_task

    def crash_once(job, model, tokenizer_json):  # a local function: Ray ships it by value
        if job["shard"] == 1:
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                pass
            else:
                os._exit(1)
        return real_task(job, model, tokenizer_json)

    monkeypatch.setattr(distributed, "_REMOTE", ray_local.remote(crash_once))
    spec = CalibrationSpec([ids_path], batch_size=3)
    local, dist = run_both(FIXTURES / "gpt2_w128", spec, ray_shards=3)
    assert os.path.isfile(marker)  # the first attempt of shard 1 really died (os._exit)
    assert dist.runtime["ray"]["retries"] == 1
    assert dist.runtime["ray"]["contributing_shards"] == [0, 1, 2]
    assert_same_spectra(local, dist)


@pytest.mark.ray
def test_a_sui_error_inside_a_task_surfaces_as_one_line(ray_local, ids_path, tmp_path):
    model = onnx.load(str(FIXTURES / "gpt2_w128" / "model.onnx"))
    model.graph.input.append(onnx.helper.make_tensor_value_info("mystery", onnx.TensorProto.FLOAT, [1]))
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    with pytest.raises(CalibrationError) as info:
        analyze(path, CalibrationSpec([ids_path], batch_size=4), AnalysisOptions(device="cpu", ray="", ray_shards=2))
    msg = str(info.value)
    assert "cannot feed model input 'mystery'" in msg and "\n" not in msg and "Traceback" not in msg


@pytest.mark.ray
def test_cli_report_with_ray(ray_local, ids_path, tmp_path):
    from sui_onnx.cli import main

    out, ref = tmp_path / "ray.json", tmp_path / "local.json"
    model = FIXTURES / "gpt2_w128"
    assert main(["report", str(model), "--calib", str(ids_path), "--ray", "--ray-shards", "3", "--json", str(out), "-q"]) == 0
    assert main(["report", str(model), "--calib", str(ids_path), "--json", str(ref), "-q"]) == 0
    dist, local = json.loads(out.read_text()), json.loads(ref.read_text())
    assert dist["runtime"]["ray"]["shards"] == 3 and dist["calibration"]["tokens"] == 480
    for a, b in zip(dist["layers"], local["layers"]):  # fp32 GEMM: equal to float32 rounding
        assert a["tokens"] == b["tokens"]
        assert a["sui"] == pytest.approx(b["sui"], rel=1e-4) and a["soft_rank"] == pytest.approx(b["soft_rank"], rel=1e-4)


def test_missing_ray_is_a_one_line_install_hint(monkeypatch, ids_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(SuiError, match=r"`ray` needs the ray extra: pip install 'sui-onnx\[ray\]'"):
        analyze(FIXTURES / "gpt2_w128", CalibrationSpec([ids_path]), AnalysisOptions(device="cpu", ray=""))


def test_non_finite_shard_stops_the_tap_like_the_single_process_run():
    """Driver merge without Ray: a tap with NaN in shard 1 keeps shards 0..1's tokens, not shard 2's."""
    from sui_onnx.collect import new_accumulators
    from sui_onnx.distributed import _merge_shard
    from sui_onnx.spectrum import CovarianceAccumulator

    class T:
        def __init__(self, name):
            self.width, self.tensor = 3, name

    taps, rng = [T("a"), T("b")], np.random.default_rng(1)
    accs, bad = new_accumulators(taps, [0, 1], exact=True), {}
    for shard in range(3):
        states = []
        for _ in taps:
            acc = CovarianceAccumulator(3, exact=True)
            acc.update(rng.normal(size=(5, 3)))
            states.append(acc.state())
        _merge_shard(accs, bad, [0, 1], states, {"bad": {1: "NaN in tap b"} if shard == 1 else {}})
    assert accs[0].n == 15 and accs[1].n == 10 and bad == {1: "NaN in tap b"}


@pytest.mark.ray
def test_seq2seq_decoder_on_ray_equals_the_single_process_run(ray_local, tmp_path):
    """The workers run the decoder's encoder too (found beside it, passed by path)."""
    from .onnx_builders import tiny_seq2seq

    tiny_seq2seq(64).save(tmp_path)
    ids = tmp_path / "ids.npy"
    np.save(ids, np.random.default_rng(1).integers(0, 64, (10, 12)))
    local, dist = run_both(tmp_path / "decoder_model.onnx", CalibrationSpec([ids], batch_size=2), ray_shards=3)
    assert_same_spectra(local, dist)
    assert dist.model["encoder"] == local.model["encoder"]
