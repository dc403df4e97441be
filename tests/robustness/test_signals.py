"""Class 6: signals in every phase, fast. A hook (tests/robustness/clitools.py) sends the signal at
the exact phase: during eigvalsh (made slow, as on a wide layer), at a batch in a read-only working
folder. An interrupt exits 130 at once with the checkpoint --checkpoint asked for, or the default
one --help names; a resume then equals an uninterrupted run."""

import json
import os
import time

import pytest

from sui_onnx.spectrum import load_accumulators
from tests.robustness.clitools import SIGNAL_AT_BATCH, SIGNAL_IN_EIGVALSH, cli, hook, ids, model_folder


@pytest.fixture()
def work(tmp_path):
    model_folder(tmp_path / "m", vocab=64)
    ids(tmp_path / "ids.npy", rows=6, cols=8)
    return tmp_path


RUN = ("report", "m", "--calib", "ids.npy", "--device", "cpu", "-q")


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_signal_during_the_eigenvalue_phase_stops_at_once_with_the_checkpoint(work, sig):
    h = hook(work / "hook", SIGNAL_IN_EIGVALSH.format(sig=sig, sleep=30))
    started = time.monotonic()
    r = cli(*RUN, "--batch-size", "2", "--checkpoint", "ck.npz", "--json", "r.json", cwd=work, hook=h, timeout=120)
    assert r.returncode == 130, r.stderr
    assert time.monotonic() - started < 25  # not after the 30 s "eigvalsh"
    assert "checkpoint saved to ck.npz" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (work / "r.json").exists()  # no report from a stopped run
    accs, meta = load_accumulators(work / "ck.npz")
    assert meta["batches_done"] == 3 and all(a.n == 48 for a in accs)  # every batch is in

    resumed = cli(*RUN, "--batch-size", "2", "--resume", "ck.npz", "--json", "resumed.json", cwd=work)
    assert resumed.returncode == 0, resumed.stderr
    whole = cli(*RUN, "--batch-size", "2", "--json", "whole.json", cwd=work)
    a, b = (json.loads((work / n).read_text())["layers"] for n in ("resumed.json", "whole.json"))
    assert [x["sui"] for x in a] == pytest.approx([y["sui"] for y in b], rel=1e-12)


def test_default_checkpoint_is_named_in_help_and_saved_where_it_says(work):
    help_text = "".join(cli("report", "--help", cwd=work).stdout.split())  # argparse wraps at hyphens
    assert "savesthemtoMODEL.sui-checkpoint.npzinthecurrentfolder" in help_text
    h = hook(work / "hook", SIGNAL_AT_BATCH.format(batch=3, sig="SIGINT"))
    r = cli(*RUN, "--batch-size", "1", cwd=work, hook=h)
    assert r.returncode == 130, r.stderr
    assert "checkpoint saved to model.sui-checkpoint.npz" in r.stderr
    assert (work / "model.sui-checkpoint.npz").is_file()


def test_resuming_from_the_default_checkpoint_never_overwrites_it(work):
    h = hook(work / "hook", SIGNAL_AT_BATCH.format(batch=3, sig="SIGINT"))
    assert cli(*RUN, "--batch-size", "1", cwd=work, hook=h).returncode == 130
    before = (work / "model.sui-checkpoint.npz").read_bytes()
    r = cli(*RUN, "--batch-size", "1", "--resume", "model.sui-checkpoint.npz", cwd=work, hook=h)
    assert r.returncode == 130 and "model-2.sui-checkpoint.npz" in r.stderr, r.stderr
    assert (work / "model.sui-checkpoint.npz").read_bytes() == before  # the input is untouched


def test_an_interrupt_never_overwrites_a_file_of_the_default_checkpoint_name(work):
    (work / "model.sui-checkpoint.npz").write_bytes(b"another model's checkpoint")  # every model.onnx shares the name
    h = hook(work / "hook", SIGNAL_AT_BATCH.format(batch=3, sig="SIGINT"))
    r = cli(*RUN, "--batch-size", "1", cwd=work, hook=h)
    assert r.returncode == 130 and "checkpoint saved to model-2.sui-checkpoint.npz" in r.stderr, r.stderr
    assert (work / "model.sui-checkpoint.npz").read_bytes() == b"another model's checkpoint"
    accs, _ = load_accumulators(work / "model-2.sui-checkpoint.npz")
    assert accs and all(a.n > 0 for a in accs)


def test_sigint_in_a_read_only_working_folder_is_one_line_and_exit_130(work):
    if os.geteuid() == 0:
        cwd = "/proc"  # no one, root included, can create a file there
        paths = [str(work / "m"), "--calib", str(work / "ids.npy")]
    else:
        cwd = work
        paths = ["m", "--calib", "ids.npy"]
        os.chmod(work, 0o555)
    h = hook(work / "hook", SIGNAL_AT_BATCH.format(batch=2, sig="SIGINT"))
    try:
        r = cli("report", *paths, "--batch-size", "1", "--device", "cpu", "-q", cwd=cwd, hook=h)
    finally:
        os.chmod(work, 0o755)
    assert r.returncode == 130, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr and "unexpected" not in r.stderr, r.stderr
    assert "no checkpoint saved" in lines[0] and "--checkpoint FILE" in lines[0]


def test_sigterm_outside_the_run_loop_exits_130_and_leaves_no_temporary_file(work):
    """While the outputs are written (after the run loop): SIGTERM is an interrupt there too."""
    h = hook(work / "hook", """
        import os, signal, time

        _fsync, _calls = os.fsync, [0]

        def fsync(fd):  # the outputs' atomic write: half of it is in the temporary file now
            _calls[0] += 1
            if _calls[0] == 1:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
            return _fsync(fd)

        os.fsync = fsync
    """)
    (work / "out").mkdir()
    r = cli(*RUN, "--json", "out/r.json", cwd=work, hook=h)
    assert r.returncode == 130 and "interrupted" in r.stderr, (r.returncode, r.stderr)
    assert list((work / "out").iterdir()) == []  # neither r.json nor a temporary file
