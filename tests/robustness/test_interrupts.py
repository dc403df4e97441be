"""SIGINT / SIGTERM during a run: a loadable checkpoint, no half-written report, and --resume
gives the same result as an uninterrupted run.

The signal arrives at a deterministic point: the interrupted run is `python -m sui_onnx` preceded by a
hook (run_hooked.py, written by the test) that wraps onnxruntime's InferenceSession.run*; at the
STOP_AT-th forward pass it announces itself with a file and holds that pass until the test, having sent
the signal, says go. The run can therefore neither finish before the signal nor be caught before its
first periodic checkpoint, whatever the machine's load, and a small calibration set suffices."""

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from sui_onnx.spectrum import load_accumulators

MODEL = Path(__file__).parent.parent / "fixtures" / "gpt2_w128"
pytestmark = pytest.mark.skipif(not MODEL.is_dir(), reason="fixtures not built")
N_SEQ, SEQ = 60, 32  # 60 batches of one sequence: 1920 tokens, 15 D for D = 128
EVERY, STOP_AT = 20, 30  # a periodic checkpoint at batch 20, the signal during the 30th forward pass

HOOK = textwrap.dedent('''
    """python run_hooked.py READY GO STOP_AT args...: `python -m sui_onnx args...` whose STOP_AT-th
    onnxruntime forward pass (run, run_with_iobinding or run_with_ort_values) touches READY and waits (at most 60 s) for GO before it runs."""
    import os, runpy, sys, time
    import onnxruntime

    ready, go, stop_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    sys.argv = ["sui_onnx", *sys.argv[4:]]
    calls = [0]

    def hooked(real):
        def forward(self, *args, **kwargs):
            calls[0] += 1
            if calls[0] == stop_at:
                open(ready, "w").close()
                deadline = time.time() + 60
                while not os.path.exists(go) and time.time() < deadline:
                    time.sleep(0.005)
            return real(self, *args, **kwargs)
        return forward

    for name in ("run", "run_with_iobinding", "run_with_ort_values"):  # every way to run a forward pass
        setattr(onnxruntime.InferenceSession, name, hooked(getattr(onnxruntime.InferenceSession, name)))
    runpy.run_module("sui_onnx", run_name="__main__", alter_sys=True)
''')


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_leaves_checkpoint_and_resume_matches(tmp_path, sig):
    ids = np.random.default_rng(1).integers(0, 512, (N_SEQ, SEQ))
    np.save(tmp_path / "ids.npy", ids)
    (tmp_path / "run_hooked.py").write_text(HOOK)
    common = ["report", str(MODEL), "--calib", str(tmp_path / "ids.npy"), "--batch-size", "1", "--device", "cpu", "-q"]
    ck, out, ready, go = tmp_path / "ck.npz", tmp_path / "r.json", tmp_path / "ready", tmp_path / "go"
    proc = subprocess.Popen([sys.executable, str(tmp_path / "run_hooked.py"), str(ready), str(go), str(STOP_AT),
                             *common, "--checkpoint", str(ck), "--checkpoint-every", str(EVERY), "--json", str(out)],
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not ready.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.01)
        assert proc.poll() is None and ready.exists(), "the run never reached the hooked forward pass"
        _, meta = load_accumulators(ck)  # the periodic checkpoint of batch 20 is already there
        assert meta["batches_done"] == EVERY and not meta["complete"]
        proc.send_signal(sig)
        time.sleep(0.05)  # let the handler run while the forward pass is still held
    finally:
        go.touch()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "checkpoint saved" in err and "Traceback" not in err
    assert not out.exists()  # no half-written report
    accs, meta = load_accumulators(ck)
    # the signal came during the 30th pass: the run stops before or right after it, never at the end
    assert not meta["complete"] and meta["batches_done"] in (STOP_AT - 1, STOP_AT)
    assert accs[0].n == meta["tokens_done"] == SEQ * meta["batches_done"]

    resumed = subprocess.run([sys.executable, "-m", "sui_onnx", *common, "--resume", str(ck), "--json", str(out)],
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    whole = subprocess.run([sys.executable, "-m", "sui_onnx", *common, "--json", str(tmp_path / "w.json")],
                           capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr
    a, b = json.loads(out.read_text()), json.loads((tmp_path / "w.json").read_text())
    assert len(a["layers"]) == len(b["layers"]) == 2
    for x, y in zip(a["layers"], b["layers"]):
        assert x["tokens"] == y["tokens"] == ids.size
        for key in ("hard_rank", "soft_rank", "sui", "concentration"):
            assert x[key] == pytest.approx(y[key], rel=1e-9)
