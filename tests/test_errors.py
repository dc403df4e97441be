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
