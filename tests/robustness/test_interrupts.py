"""SIGINT / SIGTERM during a run: a loadable checkpoint, no half-written report, and --resume
gives the same result as an uninterrupted run."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sui_onnx.spectrum import load_accumulators

MODEL = Path(__file__).parent.parent / "fixtures" / "gpt2_w128"
pytestmark = pytest.mark.skipif(not MODEL.is_dir(), reason="fixtures not built")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_leaves_checkpoint_and_resume_matches(tmp_path, sig):
    ids = np.random.default_rng(1).integers(0, 512, (3000, 32))
    np.save(tmp_path / "ids.npy", ids)
    common = ["report", str(MODEL), "--calib", str(tmp_path / "ids.npy"), "--batch-size", "1", "--device", "cpu", "-q"]
    ck, out = tmp_path / "ck.npz", tmp_path / "r.json"
    proc = subprocess.Popen([sys.executable, "-m", "sui_onnx", *common, "--checkpoint", str(ck), "--checkpoint-every", "20",
                             "--json", str(out)], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not ck.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "run finished before it could be interrupted"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "checkpoint saved" in err and "Traceback" not in err
    assert not out.exists()  # no half-written report
    accs, meta = load_accumulators(ck)
    assert not meta["complete"] and 0 < meta["batches_done"] < 3000 and accs[0].n == meta["tokens_done"]

    resumed = subprocess.run([sys.executable, "-m", "sui_onnx", *common, "--resume", str(ck), "--json", str(out)],
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    whole = subprocess.run([sys.executable, "-m", "sui_onnx", *common, "--json", str(tmp_path / "w.json")],
                           capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr
    a, b = json.loads(out.read_text()), json.loads((tmp_path / "w.json").read_text())
    for x, y in zip(a["layers"], b["layers"]):
        assert x["tokens"] == y["tokens"] == ids.size
        for key in ("hard_rank", "soft_rank", "sui", "concentration"):
            assert x[key] == pytest.approx(y[key], rel=1e-9)
