"""Turning tap tensors into per-tap results: one definition for every run loop.

:func:`accumulate` adds one batch to a layer group's accumulators (a tap whose batch holds NaN/Inf
is dropped for the rest of the run), :func:`finalize` turns one accumulator into a
:class:`TapResult` and :func:`finish_group` does it for a whole group, and
:func:`calibration_record` describes the data a run consumed. The local loop (analyze.py), the
Ray worker and the Ray driver (distributed.py) all use them, so their results agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, MutableSequence, Sequence

import numpy as np

from .advice import token_flags
from .errors import NumericalError
from .spectrum import CovarianceAccumulator


@dataclass(frozen=True)
class TapResult:
    """One tap's outcome: tokens counted, eigenvalues (descending; None when there are no metrics),
    flags (``degenerate``, ``non_finite``, token-count flags) and a message ("" for the default)."""

    n: int
    eigenvalues: np.ndarray | None
    flags: tuple[str, ...] = ()
    message: str = ""

    def to_json(self) -> dict[str, Any]:
        """The checkpoint's ``finished`` entry."""
        return {"n": int(self.n), "eigenvalues": None if self.eigenvalues is None else self.eigenvalues.tolist(),
                "flags": list(self.flags), "message": self.message}


def finalize(acc: CovarianceAccumulator) -> TapResult:
    """The eigenvalues of one tap's statistics, or the reason there are none."""
    if acc.n < 2:
        return TapResult(acc.n, None, ("degenerate",), f"only {acc.n} token(s): no covariance")
    if not (bool(acc.xp.isfinite(acc.gram).all()) and bool(acc.xp.isfinite(acc.sum).all())):
        return TapResult(acc.n, None, ("non_finite",), "statistics overflowed (activations too large)")
    try:
        spec = acc.finalize()
    except np.linalg.LinAlgError:
        return TapResult(acc.n, None, ("degenerate",), "the eigenvalue solver did not converge on this covariance")
    ev = spec.eigenvalues
    flags = tuple(token_flags(spec.n, spec.width))
    if not np.isfinite(ev).all():
        return TapResult(spec.n, None, ("non_finite",) + flags)
    if ev.sum() <= 0 or ev[0] <= 1e-300:
        return TapResult(spec.n, None, ("degenerate",) + flags)
    return TapResult(spec.n, ev, flags)


def rejected(exc: Exception, batch: int) -> str:
    """A tap's message once a batch gave NaN/Inf: its statistics are dropped for the whole run
    (a layer measured on part of the data would be a different measurement)."""
    return (f"{exc} in batch {batch + 1}; this layer's statistics were discarded, no metrics for it "
            "(the other layers go on)")


def new_accumulators(taps, group: Sequence[int], xp: Any = np, exact: bool = False) -> list[CovarianceAccumulator]:
    """Empty accumulators for the taps ``group`` (indices into ``taps``), named ``i:tensor``."""
    return [CovarianceAccumulator(taps[i].width, f"{i}:{taps[i].tensor}", xp, exact) for i in group]


def accumulate(accs: Sequence[CovarianceAccumulator], group: Sequence[int], outs: Sequence[Any],
               bad: dict[int, str], batch: int, activations: Callable[[int, Any], None] | None = None) -> None:
    """Add batch number ``batch`` (its tap outputs ``outs``, one per tap of ``group``) to the
    group's accumulators. A tap already in ``bad`` is skipped; one whose batch holds NaN/Inf goes
    into ``bad`` with its message. ``activations(i, out)`` sees each output first (the array is a
    reused buffer, valid only during the call)."""
    for acc, i, out in zip(accs, group, outs):
        if i in bad:
            continue
        try:
            if activations is not None:
                activations(i, out)
            acc.update(out, overwrite=True)
        except NumericalError as exc:
            bad[i] = rejected(exc, batch)


def finish_group(accs: Sequence[CovarianceAccumulator], group: Sequence[int], bad: dict[int, str],
                 results: MutableSequence[TapResult | None],
                 statistics: Callable[[int, CovarianceAccumulator], None] | None = None,
                 before: Callable[[int], None] | None = None,
                 call: Callable[..., Any] | None = None, threaded: bool = True) -> None:
    """The results of a finished group into ``results[i]``, tap by tap: ``before(j)`` first
    (progress, stop checks: eigvalsh of a wide layer takes seconds to minutes), then
    ``statistics(i, acc)`` for a tap with usable statistics, then its eigenvalues, through
    ``call(finalize, acc, threaded=...)`` when given (stopping.StopRequest.call)."""
    for j, (i, acc) in enumerate(zip(group, accs)):
        if before is not None:
            before(j)
        if i in bad:
            results[i] = TapResult(acc.n, None, ("non_finite",), bad[i])
            continue
        if statistics is not None:
            statistics(i, acc)
        results[i] = call(finalize, acc, threaded=threaded) if call is not None else finalize(acc)


def calibration_record(stream, calib, tokens: int) -> dict[str, Any]:
    """The report's ``calibration`` section for ``tokens`` tokens of ``stream`` (``calib``: the
    CalibrationSpec it was made from)."""
    return {
        "sources": stream.describe(),
        "tokens": tokens,
        "token_budget": stream.budget,
        "seq_len": calib.seq_len,
        "batch_size": calib.batch_size,
        "order": "sequential",
        "mix": calib.mix,
        "tokenizer": "tokenizer.json" if stream.tokenizer is not None else None,
        "prefix": stream.prefix,  # the special tokens each text window starts with (BOS)
    }
