"""Classes 2-4: outputs. Two outputs of one run never share a file; a FIFO, a device node or a link
to one is refused ('-' is standard output, for every output that can take it); every output is
checked before the analysis, so nothing is written when one is wrong; outputs get the permissions
an ordinary write gives (the umask, or the mode of the file they replace)."""

import io
import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest

from tests.robustness.clitools import assert_clean_failure, cli, env, ids, model_folder, one_error_line, snapshot


@pytest.fixture()
def work(tmp_path):
    model_folder(tmp_path / "m")
    ids(tmp_path / "ids.npy")
    (tmp_path / "out").mkdir()
    return tmp_path


RUN = ("report", "m", "--calib", "ids.npy", "-q")


# -- class 2: outputs that collide, special files, '-' -------------------------------------------
@pytest.mark.parametrize("flags", [
    ["--json", "out/x", "--checkpoint", "out/x"],
    ["--spectra", "out/x.npz", "--markdown", "out/x.npz"],
    ["--json", "out/a.json", "--markdown", "out/../out/a.json"],
    ["--json", "out/a.json", "--markdown", "out/link.md"],  # a symlink to the other output
    ["--json", "-", "--markdown", "-"],
])
def test_report_outputs_never_collide(work, flags):
    (work / "out" / "a.json").write_text("{}")
    os.symlink("a.json", work / "out" / "link.md")
    before = snapshot(work)
    r = cli(*RUN, *flags, cwd=work)
    line = assert_clean_failure(r, work, before)
    assert "same file" in line or "standard output" in line


@pytest.mark.parametrize("make", ["fifo", "link_to_dev_null", "link_to_fifo", "char_device"])
def test_special_files_are_never_outputs(work, make):
    target = work / "out" / "r.json"
    if make == "fifo":
        os.mkfifo(target)
    elif make == "link_to_dev_null":
        os.symlink("/dev/null", target)
    elif make == "link_to_fifo":
        os.mkfifo(work / "out" / "pipe")
        os.symlink("pipe", target)
    else:
        if os.geteuid() != 0:
            pytest.skip("creating a device node needs root")
        os.mknod(target, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # a /dev/null of our own
    before = snapshot(work)
    r = cli(*RUN, "--markdown", "out/r.md", "--json", "out/r.json", cwd=work)
    line = assert_clean_failure(r, work, before, "not a regular file")
    assert "'-'" in line  # says how to reach standard output


@pytest.mark.parametrize("stream", ["/dev/fd/1", "/proc/self/fd/1"])
def test_standard_output_by_name_is_refused_even_when_redirected_to_a_file(work, stream):
    """/dev/stdout and its kin name the stream, not a file: replacing them (as root) would break the
    machine's /dev. With stdout redirected to a regular file they look like one; still refused."""
    with open(work / "out" / "stdout.txt", "wb") as fh:
        r = subprocess.run([sys.executable, "-m", "sui_onnx", *RUN, "--json", stream], cwd=work, stdout=fh,
                           stderr=subprocess.PIPE, text=True, env=env(), timeout=120)
    line = one_error_line(r, "not a file of yours")
    assert "'-'" in line and (work / "out" / "stdout.txt").read_bytes() == b""


def test_dash_is_standard_output_for_every_report_output(work):
    r = cli(*RUN, "--json", "-", cwd=work)
    assert r.returncode == 0 and json.loads(r.stdout)["schema"] == "sui-onnx/report"
    r = cli(*RUN, "--markdown", "-", cwd=work)
    assert r.returncode == 0 and r.stdout.startswith("## sui-onnx report")
    r = cli(*RUN, "--spectra", "-", cwd=work, text=False)
    assert r.returncode == 0
    with np.load(io.BytesIO(r.stdout), allow_pickle=False) as z:
        assert "layer_0" in z.files
    assert not (work / "-").exists()  # never a file named '-'
    r = cli(*RUN, "--checkpoint", "-", cwd=work)
    one_error_line(r, "standard output")
    assert cli(*RUN, "--json", "out/r.json", cwd=work).returncode == 0
    for flag in ("--junit", "--sarif", "--json"):
        r = cli("check", "out/r.json", "--min-sui", "0", "-q", flag, "-", cwd=work)
        assert r.returncode == 0 and r.stdout.lstrip().startswith("<?xml" if flag == "--junit" else "{"), (flag, r.stderr)
    r = cli("check", "m", "--calib", "ids.npy", "--min-sui", "0", "--save-report", "-", cwd=work)
    assert r.returncode == 0 and json.loads(r.stdout)["schema"] == "sui-onnx/report"
    r = cli("scaling", "out/r.json", "out/r.json", "out/r.json", "--json", "-", cwd=work)
    assert "Traceback" not in r.stderr  # (three equal widths: refused as a family, but not for the '-')
    for command, flags in (("report", ("--json", "--spectra", "--markdown")), ("scaling", ("--json",)),
                           ("check", ("--junit", "--sarif", "--json", "--save-report"))):
        help_text = cli(command, "--help", cwd=work).stdout
        for flag in flags:
            assert "'-' for stdout" in _option_help(help_text, flag), (command, flag)


def _option_help(help_text: str, flag: str) -> str:
    """The help of one option: its line of argparse's help and the indented lines that continue it."""
    lines = help_text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith(f"{flag} "))
    out = [lines[start]]
    for line in lines[start + 1:]:
        if not line.startswith(" " * 6) or line.lstrip().startswith("-"):
            break
        out.append(line)
    return " ".join(" ".join(out).split())


# -- class 3: every output checked before the analysis --------------------------------------------
@pytest.mark.parametrize("bad", [
    ["--plot", "out/file.txt"],           # exists and is not a folder
    ["--markdown", "out/missing/r.md"],   # its folder does not exist
    ["--markdown", "out/sub/r.md"],       # its folder is a file
    ["--markdown", "/proc/sui-onnx-r.md"],  # a folder nobody may write (even root), a system tree
    ["--markdown", "/dev/sui-onnx-r.md"],   # a system tree root may write
    ["--spectra", "out"],                 # a folder
])
def test_every_output_is_checked_before_the_analysis(work, bad):
    (work / "out" / "file.txt").write_text("keep me")
    (work / "out" / "sub").write_text("a file, not a folder")
    before = snapshot(work)
    r = cli(*RUN, "--json", "out/r.json", "--checkpoint", "out/ck.npz", *bad, cwd=work)
    assert_clean_failure(r, work, before)  # neither r.json nor ck.npz was written


def test_an_output_name_too_long_for_its_temporary_file_is_refused_first(work):
    before = snapshot(work)
    r = cli(*RUN, "--json", "out/r.json", "--markdown", "out/" + "x" * 250, cwd=work)
    assert_clean_failure(r, work, before, "too long")


def test_standard_output_closed_or_gone_is_one_line(work):
    r = cli(*RUN, "--json", "-", cwd=work, preexec=lambda: os.close(1))
    one_error_line(r, "standard output")


def test_check_and_scaling_check_outputs_first_too(work):
    before = snapshot(work)
    r = cli("check", "m", "--calib", "ids.npy", "--min-sui", "0", "-q", "--json", "out/g.json",
            "--junit", "/proc/sui-onnx-j.xml", cwd=work)
    assert "sui-onnx-j.xml" in assert_clean_failure(r, work, before)
    r = cli("scaling", "m", "m", "m", "--calib", "ids.npy", "-q", "--json", "out/s.json", "--plot", "ids.npy", cwd=work)
    assert_clean_failure(r, work, before, "not a folder")


# -- class 4: permissions ------------------------------------------------------------------------
def _umask(mask):
    return lambda: os.umask(mask)


@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_new_outputs_honour_the_umask(work, mask, mode):
    r = cli(*RUN, "--json", "out/r.json", "--spectra", "out/s.npz", "--checkpoint", "out/ck.npz", cwd=work,
            preexec=_umask(mask))
    assert r.returncode == 0, r.stderr
    for name in ("r.json", "s.npz", "ck.npz"):
        assert stat.S_IMODE(os.stat(work / "out" / name).st_mode) == mode, name
    assert [p.name for p in (work / "out").iterdir() if p.name.startswith(".")] == []  # no temp file left


def test_a_replaced_output_keeps_its_mode(work):
    (work / "out" / "r.json").write_text("old")
    os.chmod(work / "out" / "r.json", 0o664)
    r = cli(*RUN, "--json", "out/r.json", cwd=work, preexec=_umask(0o077))
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(os.stat(work / "out" / "r.json").st_mode) == 0o664
    assert json.loads((work / "out" / "r.json").read_text())["schema"] == "sui-onnx/report"


def test_an_output_symlink_is_replaced_never_followed(work):
    """A write never follows a link to wherever it points (a link planted in a shared folder, or
    pointing at a file of another run): the link is replaced, its target is untouched."""
    (work / "elsewhere.json").write_text("precious")
    os.symlink("../elsewhere.json", work / "out" / "r.json")
    r = cli(*RUN, "--json", "out/r.json", cwd=work)
    assert r.returncode == 0, r.stderr
    assert not os.path.islink(work / "out" / "r.json")
    assert json.loads((work / "out" / "r.json").read_text())["schema"] == "sui-onnx/report"
    assert (work / "elsewhere.json").read_text() == "precious"


if sys.platform != "linux":  # /proc as the folder nobody may write
    pytestmark = pytest.mark.skip("Linux only")
