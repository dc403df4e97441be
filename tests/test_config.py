"""The analysis options: small frozen configs validated when made (before any file is read), the
flat-keyword shorthand; the library's stop and interrupt contract (no signal handler installed,
nothing written that was not asked for); library errors naming options, shown as flags by the CLI."""

import dataclasses
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from sui_onnx.analyze import AnalysisOptions, Interrupted, analyze
from sui_onnx.calib import CalibrationSpec
from sui_onnx.config import Hooks, MetricConfig, RunControl, RuntimeConfig, TapConfig
from sui_onnx.errors import CalibrationError, ConfigError, SuiError
from sui_onnx.spectrum import load_accumulators
from sui_onnx.stopping import StopRequest

FIXTURES = Path(__file__).parent / "fixtures"


def test_flat_keywords_fill_the_groups_and_groups_take_fields_on_top():
    opts = AnalysisOptions(device="cpu", precision="fp64", site="pre", align=16, checkpoint="ck.npz", ray_shards=3)
    assert opts.runtime == RuntimeConfig(device="cpu", precision="fp64")
    assert opts.taps == TapConfig(site="pre") and opts.metrics == MetricConfig(align=16)
    assert opts.run == RunControl(checkpoint=Path("ck.npz"), ray_shards=3) and isinstance(opts.run.checkpoint, Path)
    both = AnalysisOptions(runtime=RuntimeConfig(device="cpu"), threads=2)
    assert both.runtime == RuntimeConfig(device="cpu", threads=2)
    again = dataclasses.replace(opts, site="post", statistics=print)
    assert again.taps.site == "post" and again.hooks.statistics is print and again.runtime == opts.runtime
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.runtime.device = "cuda"
    with pytest.raises(TypeError, match="unexpected keyword argument 'devise'"):
        AnalysisOptions(devise="cpu")
    with pytest.raises(TypeError, match="takes a RuntimeConfig"):
        AnalysisOptions(runtime=TapConfig())


@pytest.mark.parametrize("kw, option", [
    ({"site": "mid"}, "site"), ({"explicit": "a"}, "explicit"), ({"device": "tpu"}, "device"),
    ({"precision": "fp16"}, "precision"), ({"threads": 0}, "threads"), ({"max_memory": -1}, "max_memory"),
    ({"top_fraction": 0}, "top_fraction"), ({"energy_levels": (0.9, 1.5)}, "energy_levels"),
    ({"energy_levels": ()}, "energy_levels"), ({"advice_q": float("nan")}, "advice_q"),
    ({"advice_quantile": -0.1}, "advice_quantile"), ({"align": 0}, "align"), ({"checkpoint_every": 0}, "checkpoint_every"),
    ({"ray_shards": 0}, "ray_shards"), ({"checkpoint": ""}, "checkpoint"), ({"threads": True}, "threads"),
])
def test_each_field_is_validated_when_the_options_are_made(kw, option):
    with pytest.raises(ConfigError) as info:
        AnalysisOptions(**kw)
    assert info.value.options == (option,) and str(info.value).startswith(f"`{option}` must be")


def test_precision_is_refused_before_a_resume_checkpoint_is_read(tmp_path):
    missing = tmp_path / "no-such-checkpoint.npz"
    with pytest.raises(ConfigError, match="`precision` must be fp32 or fp64"):
        AnalysisOptions(device="cpu", precision="fp16", resume=missing)
    assert not missing.exists()


@pytest.fixture
def ids(tmp_path):
    path = tmp_path / "ids.npy"
    np.save(path, np.random.default_rng(0).integers(0, 512, (8, 16)))
    return path


def _stop_at(tokens):
    seen = []

    def progress(done, total, desc):
        seen.append(signal.getsignal(signal.SIGINT))
        if done >= tokens:
            raise KeyboardInterrupt

    return progress, seen


@pytest.mark.skipif(not (FIXTURES / "gpt2_w128").is_dir(), reason="fixtures not built")
def test_without_a_checkpoint_an_interrupted_run_writes_nothing_and_hands_its_statistics_over(ids, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    progress, seen = _stop_at(64)
    spec = CalibrationSpec([ids], batch_size=2)

    def ours(signum, frame):  # a handler of the caller's (the process may start with SIGINT ignored, as under nohup)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, ours)
    try:
        with pytest.raises(Interrupted) as info:
            analyze(FIXTURES / "gpt2_w128", spec, AnalysisOptions(device="cpu", progress=progress))
    finally:
        signal.signal(signal.SIGINT, previous)
    exc = info.value
    assert seen and all(h is ours for h in seen)  # the library left the caller's handler in place
    assert sorted(os.listdir(tmp_path)) == ["ids.npy"]  # nothing written into the working folder
    assert exc.tokens == 64 and exc.checkpoint is None and exc.save is not None and exc.model.name == "model.onnx"
    assert "no checkpoint saved (no `checkpoint` given)" in str(exc)
    exc.save(tmp_path / "mine.npz")
    _, meta = load_accumulators(tmp_path / "mine.npz")
    assert meta["batches_done"] == 2 and meta["tokens_done"] == 64 and not meta["complete"]
    resumed = analyze(FIXTURES / "gpt2_w128", spec, AnalysisOptions(device="cpu", resume=tmp_path / "mine.npz"))
    whole = analyze(FIXTURES / "gpt2_w128", spec, AnalysisOptions(device="cpu"))
    for a, b in zip(resumed.eigenvalues, whole.eigenvalues):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15 * b[0])


@pytest.mark.skipif(not (FIXTURES / "gpt2_w128").is_dir(), reason="fixtures not built")
def test_a_stop_request_stops_at_the_next_batch_boundary_and_saves_the_checkpoint(ids, tmp_path):
    stop = StopRequest()

    def progress(done, total, desc):
        if done >= 32:
            stop.request()  # as a signal handler would

    ck = tmp_path / "ck.npz"
    with pytest.raises(Interrupted) as info:
        analyze(FIXTURES / "gpt2_w128", CalibrationSpec([ids], batch_size=2),
                AnalysisOptions(device="cpu", checkpoint=ck, hooks=Hooks(progress=progress, stop=stop)))
    assert info.value.checkpoint == ck and info.value.save is None and "checkpoint saved to" in str(info.value)
    assert load_accumulators(ck)[1]["batches_done"] == 1


def test_the_cli_shows_each_option_a_library_error_names_as_its_flag():
    from sui_onnx.cli import cli_message

    exc = CalibrationError("`seq_len` 4 leaves no room; lower `seq_len` or `batch_size`, resume with the same "
                           "`sources` and `explicit`; `not_an_option` and `sui-onnx slim` stay")
    assert exc.options == ("seq_len", "batch_size", "sources", "explicit", "not_an_option")
    assert cli_message(exc) == ("--seq-len 4 leaves no room; lower --seq-len or --batch-size, resume with the same "
                                "--calib and --tap; `not_an_option` and `sui-onnx slim` stay")
    assert cli_message(SuiError(f"wrapped: {exc}")).startswith("wrapped: --seq-len 4")


def test_an_option_is_shown_as_the_flag_of_the_command_that_failed(tmp_path):
    """evaluate's `eval_tokens` is --eval-tokens under report/slim and --tokens under eval, through
    the real entry point (the library message is the same)."""
    import subprocess
    import sys

    heldout = Path(__file__).resolve().parents[1] / "sui_onnx" / "data" / "heldout.txt"
    model = Path(__file__).resolve().parents[1] / "sui_onnx" / "data" / "demo" / "model.onnx"
    runs = {"eval": ["eval", str(model), "--data", str(heldout), "--tokens", "1"],
            "report": ["report", str(model), "--tokens", "2048", "--eval", str(heldout), "--eval-tokens", "1"]}
    for command, argv in runs.items():
        proc = subprocess.run([sys.executable, "-m", "sui_onnx", *argv], capture_output=True, text=True,
                              cwd=tmp_path, timeout=300)
        flag = "--tokens" if command == "eval" else "--eval-tokens"
        assert proc.returncode == 2, (command, proc.stderr)
        assert proc.stderr.strip().splitlines() == [
            f"sui-onnx: error: {flag} must be at least 2 (a prediction needs two tokens), got 1"], (command, proc.stderr)
    assert not list(tmp_path.iterdir())
