"""How much memory a run may give to the D x D statistics when --max-memory is not set.

The statistics are 8 (D^2 + D) bytes per tap, whatever the number of tokens; for a large model
(LLaMA-7B: 32 taps of D = 11008, 31 GiB) that alone can exceed the machine. The default cap is half
of what is left once the model is loaded: the memory available now (Linux MemAvailable, lowered to
the cgroup limit of a container), less twice the weights (onnxruntime's copy and what it holds
while building the session; on CUDA once) and one batch of float32 tap outputs. Above the cap the
taps are analyzed in several passes (plan_groups); the numbers do not change, only the
run time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from .errors import SuiError, option

SHARE = 0.5  # of the memory left after the model, for the statistics
_UNLIMITED = 1 << 60  # cgroup v1 reports "no limit" as a huge number


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def available_host_memory(proc: Path = Path("/proc"), cgroup: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Bytes this process can still allocate, or None where that cannot be read (not Linux)."""
    avail = None
    try:
        for line in (proc / "meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        avail = None
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    # a container's limit: cgroup v2 (memory.max / memory.current), else v1
    for limit_file, usage_file in (("memory.max", "memory.current"),
                                   ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        limit, usage = _read_int(cgroup / limit_file), _read_int(cgroup / usage_file)
        if limit is not None and usage is not None and limit < _UNLIMITED:
            avail = min(avail, max(0, limit - usage))
            break
    return avail


def available_device_memory() -> int | None:
    """Free bytes on the current CUDA device (CuPy), or None."""
    try:
        from .xp import cuda_namespace

        cp = cuda_namespace()
        return int(cp.cuda.runtime.memGetInfo()[0])
    except Exception:  # no usable GPU: the caller falls back to host memory
        return None


def _declared_length(tensor) -> int | None:
    from .graph.source import external_info

    length = external_info(tensor).get("length")
    return int(length) if length and length.isdigit() else None


def external_bytes(model) -> int:
    """Bytes the model keeps in external data (declared lengths)."""
    from .graph.source import all_tensors

    return sum(_declared_length(t) or 0 for t in all_tensors(model.graph))


def weight_bytes(model) -> int:
    """Bytes of the model's initializers, embedded or in external data (declared lengths)."""
    from .graph.source import all_tensors

    return sum(_declared_length(t) or len(t.raw_data) or t.ByteSize() for t in all_tensors(model.graph))


def default_max_memory(model, widths: Sequence[int], batch_tokens: int, cuda: bool,
                       available: int | None = None) -> int | None:
    """The statistics cap to use when none was given; None when available memory is unknown."""
    if available is None:
        available = available_device_memory() if cuda else None
        if available is None:
            available = available_host_memory()
    if available is None:
        return None
    weights = weight_bytes(model)
    left = available - (weights if cuda else 2 * weights) - 4 * batch_tokens * sum(widths)
    return max(0, int(left * SHARE))


def accumulator_bytes(widths: Sequence[int]) -> int:
    """Memory of the float64 statistics: D^2 + D per tap, 8 bytes each."""
    return sum(8 * (w * w + w) for w in widths)


def plan_groups(widths: Sequence[int], max_memory: int | None, auto: bool = False) -> list[list[int]]:
    """Split tap indices into consecutive groups whose accumulators fit `max_memory` (``auto``:
    the cap was derived from the free memory, not given by the user; only the error differs)."""
    if max_memory is None:
        return [list(range(len(widths)))]
    groups: list[list[int]] = [[]]
    used = 0
    for i, w in enumerate(widths):
        need = accumulator_bytes([w])
        if need > max_memory and auto:
            raise SuiError(
                f"not enough memory for one layer's statistics ({need / 2**30:.2f} GiB for D={w}; "
                f"{max_memory / 2**30:.2f} GiB may be used once the model is loaded): free memory, "
                f"or pass {option('max_memory')} to try anyway"
            )
        if need > max_memory:
            from .safeio import size_text

            raise SuiError(f"{option('max_memory')} {size_text(max_memory)} is below one tap's statistics "
                           f"({size_text(need)} for D={w})")
        if groups[-1] and used + need > max_memory:
            groups.append([])
            used = 0
        groups[-1].append(i)
        used += need
    return groups
