"""errors.first_line: the one way a message quotes another exception."""

from __future__ import annotations

import pytest

from sui_onnx.errors import first_line


class _Broken(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no message")


@pytest.mark.parametrize("exc, kwargs, expected", [
    (ValueError("bad value\nsecond line"), {}, "bad value"),
    (ValueError("  \n  padded\nmore"), {}, "padded"),
    (ValueError(""), {}, "ValueError"),
    (ValueError("   \n\n"), {}, "ValueError"),
    (KeyError(), {}, "KeyError"),
    (ValueError(""), {"fallback": ""}, ""),
    (OSError("x" * 500), {"limit": 200}, "x" * 200),
    (MemoryError(), {"limit": 3}, "Mem"),
    (_Broken(), {}, "_Broken"),
])
def test_first_line(exc, kwargs, expected):
    assert first_line(exc, **kwargs) == expected


def test_ctrl_c_while_the_parser_loads_is_exit_130_without_a_traceback(monkeypatch, capsys):
    import sui_onnx.cli as cli_module

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_module, "build_parser", interrupted)
    assert cli_module.main(["report"]) == 130
    err = capsys.readouterr().err
    assert err.strip() == "sui-onnx: interrupted" and "Traceback" not in err


def test_a_report_whose_last_output_fails_replaces_none_of_them(tmp_path, monkeypatch, capsys):
    """--json, --markdown and --html are written all or nothing: a full disk on the HTML leaves the
    JSON that was there untouched and no new markdown (each file alone was already atomic)."""
    import errno
    from pathlib import Path

    import sui_onnx.html as html_module
    from sui_onnx.cli import main

    class FullDisk(str):
        def encode(self, *a, **k):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(html_module, "report_html", lambda report: FullDisk("<html>"))
    old = tmp_path / "r.json"
    old.write_text("old")
    demo = Path(__file__).resolve().parent.parent / "sui_onnx" / "data" / "demo"
    rc = main(["report", str(demo), "--tokens", "512", "-q", "--device", "cpu", "--json", str(old),
               "--markdown", str(tmp_path / "r.md"), "--html", str(tmp_path / "r.html")])
    assert rc == 2
    assert "No space left" in capsys.readouterr().err
    assert old.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]  # no new file, no temporary left
