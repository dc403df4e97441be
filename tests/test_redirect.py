"""safeio.redirected_fds, the one place that points the process's stdout/stderr elsewhere, and
captured_stderr on top of it."""

from __future__ import annotations

import os

import pytest

from sui_onnx.safeio import captured_stderr, redirected_fds


def test_redirected_fds_sends_native_writes_to_the_target_and_restores_them(tmp_path):
    before = os.fstat(2)
    with open(tmp_path / "log", "wb") as fh, redirected_fds(fh.fileno(), (1, 2)) as done:
        os.write(1, b"one ")
        os.write(2, b"two")
    assert done == (1, 2)
    assert (tmp_path / "log").read_bytes() == b"one two"
    after = os.fstat(2)
    assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)


def test_redirected_fds_restores_after_an_error_and_skips_a_closed_descriptor(tmp_path):
    with open(tmp_path / "log", "wb") as fh:
        closed = 987  # far above what the dup of fd 2 gets
        with pytest.raises(OSError):
            os.fstat(closed)
        with pytest.raises(RuntimeError), redirected_fds(fh.fileno(), (2, closed)) as done:
            assert done == (2,)
            os.write(2, b"x")
            raise RuntimeError
    assert (tmp_path / "log").read_bytes() == b"x"
    os.fstat(2)  # still open


def test_captured_stderr_keeps_what_native_code_wrote_even_on_an_error():
    with captured_stderr() as box:
        os.write(2, b"panicked at src/lib.rs\n")
    assert box == ["panicked at src/lib.rs\n"]
    with pytest.raises(ValueError), captured_stderr() as box:
        os.write(2, b"before the error")
        raise ValueError
    assert box == ["before the error"]
