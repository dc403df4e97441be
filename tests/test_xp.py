"""Array-namespace selection: NumPy arrays stay on NumPy; CuPy only when a CuPy array is given."""

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


def test_cuda_namespace_explains_why_not():
    try:
        import cupy  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="cupy is not installed"):
            cuda_namespace()
        return
    try:
        xp = cuda_namespace()
    except RuntimeError as exc:
        assert str(exc)
    else:
        assert xp.__name__ == "cupy"
