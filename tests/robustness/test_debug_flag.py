"""Class 11: --debug is accepted before and after the command, shows the traceback, and leaves the
exit code what it is without it: 2 for an input error (1 would read as a breached gate in CI)."""

import json

import pytest

from tests.robustness.clitools import cli, ids, model_folder


@pytest.fixture()
def work(tmp_path):
    model_folder(tmp_path / "m", vocab=64)
    ids(tmp_path / "ids.npy", vocab=64)
    (tmp_path / "bad.json").write_text(json.dumps({"schema": "sui-onnx/report", "schema_version": 1}))
    return tmp_path


@pytest.mark.parametrize("where", ["before", "after"])
@pytest.mark.parametrize("args", [["report", "nope.onnx"], ["check", "bad.json", "--min-sui", "0.1"],
                                  ["taps", "m", "--include", "("], ["merge", "ids.npy", "ids.npy", "-o", "x.npz"]])
def test_debug_anywhere_shows_the_traceback_and_keeps_exit_2(work, where, args):
    argv = ["--debug", *args] if where == "before" else [*args, "--debug"]
    r = cli(*argv, cwd=work)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("sui-onnx: error:")


def test_debug_after_the_command_does_not_change_a_good_run(work):
    r = cli("report", "m", "--calib", "ids.npy", "-q", "--json", "r.json", "--debug", cwd=work)
    assert r.returncode == 0, r.stderr
    assert (work / "r.json").is_file()
