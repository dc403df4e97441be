"""Array-namespace selection: the pure stages run unchanged on NumPy (CPU) and CuPy (CUDA).

Only this module knows that CuPy exists; everything else receives an ``xp`` namespace or asks
``array_namespace(array)`` and never branches on the device beyond that.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np


def array_namespace(*arrays: Any) -> ModuleType:
    """Return ``cupy`` if any argument is a CuPy array, else ``numpy``."""
    for a in arrays:
        if type(a).__module__.split(".")[0] == "cupy":
            import cupy  # noqa: PLC0415 - imported only when a CuPy array is already in hand

            return cupy
    return np


def to_numpy(a: Any) -> np.ndarray:
    """Copy an array of either namespace to host memory (no copy for NumPy arrays)."""
    if type(a).__module__.split(".")[0] == "cupy":
        return a.get()
    return np.asarray(a)


def cuda_namespace() -> ModuleType:
    """Return ``cupy`` when a CUDA device is usable, else raise RuntimeError saying why."""
    try:
        import cupy  # noqa: PLC0415
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise RuntimeError("cupy is not installed (pip install 'sui-onnx[gpu]')") from exc
    try:
        if not cupy.cuda.is_available():
            raise RuntimeError("cupy finds no usable CUDA device (driver missing or no GPU)")
        cupy.zeros(1).sum()  # the first real op is where a wrong CUDA major version fails
    except RuntimeError:
        raise
    except Exception as exc:  # pragma: no cover - depends on the machine
        raise RuntimeError(f"cupy cannot use the GPU: {exc}") from exc
    return cupy
