"""Helpers for the robustness tests: run the real entry point (`python -m sui_onnx`), snapshot
folders byte for byte, build tiny models, and hook a subprocess at an exact phase.

A hook is a ``sitecustomize.py`` put first on the child's PYTHONPATH: Python imports it at start-up,
before ``-m sui_onnx`` runs, so the entry point stays the real one and the hook only wraps a
function (send a signal at batch k, during eigvalsh, ...)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
from importlib import resources
from pathlib import Path

import numpy as np

from tests.onnx_builders import tiny_lm

TOKENIZER = Path(str(resources.files("sui_onnx") / "data" / "demo" / "tokenizer.json"))
FIXTURES = Path(__file__).parent.parent / "fixtures"


def env(hook: Path | None = None, **extra: str) -> dict[str, str]:
    e = dict(os.environ, COLUMNS="100", NO_COLOR="1")
    e.pop("SUI_ONNX_DEBUG", None)
    paths = [str(hook)] if hook is not None else []
    if e.get("PYTHONPATH"):
        paths.append(e["PYTHONPATH"])
    if paths:
        e["PYTHONPATH"] = os.pathsep.join(paths)
    e.update(extra)
    return e


def cli(*args, cwd, hook: Path | None = None, timeout: float = 300, input: bytes | None = None,
        text: bool = True, preexec=None, **extra_env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sui_onnx", *map(str, args)], capture_output=True, text=text,
                          cwd=cwd, env=env(hook, **extra_env), timeout=timeout, input=input, preexec_fn=preexec)


def cli_main(*args, cwd) -> subprocess.CompletedProcess:
    """The same command through ``sui_onnx.cli.main`` in this process (its stdout and stderr
    captured, the working folder switched for the call): the CLI's own code path without the ~0.7 s
    interpreter start. For long tables of bad inputs; each test that uses it also runs at least one
    case through the real entry point with :func:`cli`."""
    import contextlib
    import io

    from sui_onnx.cli import main

    out, err = io.StringIO(), io.StringIO()
    here = os.getcwd()
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in args])
            except SystemExit as exc:  # argparse's own exits
                code = exc.code if isinstance(exc.code, int) else 2
    finally:
        os.chdir(here)
    return subprocess.CompletedProcess(["sui-onnx", *map(str, args)], code, out.getvalue(), err.getvalue())


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every entry under ``folder``: file content hashes, link targets, kinds and modes."""
    out = {}
    for root, dirs, files in os.walk(folder, followlinks=False):
        for name in dirs + files:
            p = Path(root) / name
            rel = str(p.relative_to(folder))
            st = os.lstat(p)
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_file():
                out[rel] = ("file", hashlib.sha256(p.read_bytes()).hexdigest(), oct(st.st_mode))
            else:
                out[rel] = ("other", oct(st.st_mode))
    return out


def one_error_line(r, match: str = "", code: int = 2) -> str:
    """The run exited ``code`` with exactly one line on stderr, no traceback, no raw control
    character; returns the line."""
    assert r.returncode == code, (r.returncode, r.stdout[-2000:], r.stderr[-3000:])
    err = r.stderr if isinstance(r.stderr, str) else r.stderr.decode("utf-8", "replace")
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert not any(ord(c) < 32 for c in lines[0]), repr(lines[0])
    assert "unexpected" not in lines[0], lines[0]
    assert match.lower() in lines[0].lower(), lines[0]
    return lines[0]


def assert_clean_failure(r, folder: Path, before: dict, match: str = "") -> str:
    line = one_error_line(r, match)
    assert snapshot(folder) == before  # inputs identical, nothing written
    return line


def model_folder(folder: Path, vocab: int = 4096, tokenizer: bool = True, **kw) -> Path:
    """A tiny two-layer model (D = 48) in ``folder`` with the bundled tokenizer beside it."""
    tiny_lm(vocab=vocab, **kw).save(folder)
    if tokenizer:
        shutil.copy(TOKENIZER, folder / "tokenizer.json")
    return folder


def external_model(folder: Path) -> Path:
    """A tiny model whose weights are in ``weights.bin`` beside model.onnx."""
    import onnx

    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(tiny_lm(vocab=64).model, str(folder / "model.onnx"), save_as_external_data=True,
              all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    return folder


def ids(path: Path, rows: int = 8, cols: int = 16, vocab: int = 64, seed: int = 0) -> Path:
    np.save(path, np.random.default_rng(seed).integers(0, vocab, (rows, cols)))
    return path


def hook(folder: Path, code: str) -> Path:
    """A folder holding a sitecustomize.py with ``code`` (see the module doc)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(textwrap.dedent(code))
    return folder


SIGNAL_AT_BATCH = """
    import os, signal
    import sui_onnx.runner as _r

    _run, _calls = _r.TapRunner.run, [0]

    def run(self, ids, widths):
        _calls[0] += 1
        if _calls[0] == {batch}:
            os.kill(os.getpid(), signal.{sig})
        return _run(self, ids, widths)

    _r.TapRunner.run = run
"""

SIGNAL_IN_EIGVALSH = """
    import os, signal, time
    import numpy.linalg as _la

    _eig, _calls = _la.eigvalsh, [0]

    def eigvalsh(*a, **k):
        _calls[0] += 1
        if _calls[0] == 1:  # the first layer's eigenvalues: a wide layer takes minutes
            os.kill(os.getpid(), signal.{sig})
            time.sleep({sleep})
        return _eig(*a, **k)

    _la.eigvalsh = eigvalsh
"""
