"""Array-namespace selection: NumPy arrays stay on NumPy; CuPy only when a CuPy array is given."""

import re
import sys

import numpy as np
import pytest

from sui_onnx.xp import array_namespace, cuda_namespace, to_numpy


class FakeCupyArray:
    __module__ = "cupy._core.core"

    def get(self):
        return np.arange(3)


def test_numpy_arrays_select_numpy_and_copy_nothing():
    a = np.arange(4.0)
    assert array_namespace(a) is np and array_namespace(1.0, [2]) is np
    assert to_numpy(a) is a


def test_cupy_like_arrays_are_moved_to_host():
    fake = FakeCupyArray()
    FakeCupyArray.__module__ = "cupy._core.core"
    assert to_numpy(fake).tolist() == [0, 1, 2]


def _fake_cupy(available=True, first_op=None):
    """A stand-in cupy module: cuda.is_available() and zeros(1).sum() behave as told."""
    import types

    mod = types.ModuleType("cupy")
    mod.cuda = types.SimpleNamespace(is_available=lambda: available)

    class Zeros:
        def sum(self):
            if first_op is not None:
                raise first_op
            return 0.0

    mod.zeros = lambda n: Zeros()
    return mod


def test_cuda_namespace_without_cupy_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # `import cupy` now raises ImportError
    with pytest.raises(RuntimeError, match=re.escape("cupy is not installed (pip install 'sui-onnx[gpu]')")):
        cuda_namespace()


def test_cuda_namespace_without_a_device_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(available=False))
    with pytest.raises(RuntimeError, match=re.escape("cupy finds no usable CUDA device (driver missing or no GPU)")):
        cuda_namespace()


def test_cuda_namespace_reports_the_first_failing_operation(monkeypatch):
    """A wrong CUDA major version fails at the first real operation: the message carries its cause."""
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(first_op=OSError("libcublas.so.12: cannot open")))
    with pytest.raises(RuntimeError, match=re.escape("cupy cannot use the GPU: libcublas.so.12: cannot open")) as exc:
        cuda_namespace()
    assert isinstance(exc.value.__cause__, OSError)


def test_cuda_namespace_returns_a_working_cupy(monkeypatch):
    fake = _fake_cupy()
    monkeypatch.setitem(sys.modules, "cupy", fake)
    assert cuda_namespace() is fake


def test_cuda_namespace_on_this_machine():
    """Whatever this machine has, the answer is cupy itself or one of the three messages above."""
    try:
        xp = cuda_namespace()
    except RuntimeError as exc:
        assert re.fullmatch(r"cupy is not installed \(pip install 'sui-onnx\[gpu\]'\)"
                            r"|cupy finds no usable CUDA device \(driver missing or no GPU\)"
                            r"|cupy cannot use the GPU: .+", str(exc)), str(exc)
    else:
        assert xp.__name__ == "cupy" and float(xp.arange(3).sum()) == 3.0
