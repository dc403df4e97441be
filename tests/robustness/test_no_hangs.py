"""Class 8: no hangs, no unbounded reads. A FIFO or a device given as any input is refused at once
(never opened for a blocking read); a huge .jsonl record is tokenized in pieces; --threads and
--max-memory reject absurd values with one line. Every run here is time-limited and, for safety on
shared machines, memory-limited: a regression fails instead of eating the machine."""

import os
import resource
import sys

import pytest

from tests.robustness.clitools import cli, env, ids, model_folder, one_error_line, snapshot

LIMIT = 6 << 30  # address space for a child: far above what these runs need, far below "unbounded"


def limited():
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT))


@pytest.fixture()
def work(tmp_path):
    model_folder(tmp_path / "m")
    ids(tmp_path / "ids.npy")
    r = cli("report", "m", "--calib", "ids.npy", "-q", "--json", "good.json", "--checkpoint", "good.npz", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    return tmp_path


def special(work, kind: str, name: str):
    path = work / name
    if kind == "fifo":
        os.mkfifo(path)
    else:  # a symlink to /dev/zero under an innocent name
        os.symlink("/dev/zero", path)
    return name


@pytest.mark.parametrize("kind", ["fifo", "zero"])
@pytest.mark.parametrize("args", [
    ["report", "m", "--calib", "{x.txt}"],
    ["report", "m", "--calib", "{x.jsonl}"],
    ["report", "m", "--calib", "{x.npy}"],
    ["report", "m", "--calib", "ids.npy", "--resume", "{x.npz}"],
    ["report", "m", "--stats", "{x.npz}"],
    ["check", "{x.json}", "--min-sui", "0"],
    ["check", "good.json", "--min-sui", "0", "--baseline", "{x.json}"],
    ["check", "good.json", "--min-sui", "0", "--config", "{x.toml}"],
    ["merge", "good.npz", "{x.npz}", "-o", "merged.npz"],
    ["scaling", "good.json", "good.json", "{x.json}"],
])
def test_special_files_as_inputs_are_refused_at_once(work, kind, args):
    filled = []
    for a in args:
        if a.startswith("{x"):
            a = special(work, kind, "x" + a[2:-1])
        filled.append(a)
    before = snapshot(work)
    quiet = [] if filled[0] == "merge" else ["-q"]
    one_error_line(cli(*filled, *quiet, cwd=work, timeout=30, preexec=limited), "not a regular file")
    assert snapshot(work) == before


def test_dev_zero_itself_as_calibration(work):
    one_error_line(cli("report", "m", "--calib", "/dev/zero", "-q", cwd=work, timeout=60, preexec=limited),
                   "character device")


def test_a_huge_jsonl_record_is_tokenized_in_pieces(work):
    """One 30 MB record: the peak memory stays that of the text (as for the same text in a .txt),
    not the gigabytes of tokenizing it in one call."""
    word = "calibration text with some words in it. "
    (work / "big.jsonl").write_text('{"text": "' + word * (30_000_000 // len(word)) + '"}\n')
    pid = os.fork()
    if pid == 0:  # the child: exec the CLI under the address-space limit
        try:
            os.chdir(work)
            limited()
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            os.execve(sys.executable, [sys.executable, "-m", "sui_onnx", "report", "m", "--calib", "big.jsonl",
                                       "--tokens", "4096", "-q"], env())
        finally:
            os._exit(127)
    _, status, usage = os.wait4(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert usage.ru_maxrss * 1024 < 1.5 * 2**30, f"peak RSS {usage.ru_maxrss / 2**20:.2f} GiB"


@pytest.mark.parametrize("flag,value,what", [
    ("--threads", "100000", "--threads"),
    ("--max-memory", "inf", "--max-memory"),
    ("--max-memory", "1e400", "--max-memory"),
    ("--max-memory", "nan", "--max-memory"),
    ("--max-memory", "-4G", "--max-memory"),
    ("--max-memory", "1e30G", "--max-memory"),
])
def test_absurd_resource_values_are_one_line(work, flag, value, what):
    one_error_line(cli("report", "m", "--calib", "ids.npy", "-q", flag, value, cwd=work, timeout=120, preexec=limited),
                   what)
