"""Where a calibration run may stop, and what it raises when it does.

The run loops (analyze.py, distributed.py) call ``stop.check()`` at every batch boundary and run
long computations (eigvalsh of a wide layer: minutes) through ``stop.call``; what requests a stop
is the caller's policy. The library default, :class:`StopRequest`, requests nothing: Ctrl-C in a
program that uses the library is the plain KeyboardInterrupt it always is (caught at a batch
boundary all the same, so an explicit checkpoint stays whole). The CLI passes a
:class:`StopOnSignal`, which turns SIGINT and SIGTERM into requests while the run is under way.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any, Callable

from .errors import SuiError


class Interrupted(SuiError):
    """The run was interrupted (a stop request or KeyboardInterrupt).

    ``tokens``: the tokens counted when it stopped; ``checkpoint``: where its statistics were
    saved (None: nowhere); ``save``: when the run had no checkpoint path, ``save(path)`` writes its
    statistics there (the caller picks the path: the CLI's default checkpoint); ``model`` and
    ``resume``: the model analyzed and the checkpoint the run continued, if any."""

    def __init__(self, message: str, tokens: int = 0, checkpoint: Path | None = None,
                 save: Callable[[Path], None] | None = None, model: Path | None = None,
                 resume: Path | None = None) -> None:
        super().__init__(message)
        self.tokens = tokens
        self.checkpoint = checkpoint
        self.save = save
        self.model = model
        self.resume = resume


class StopRequest:
    """A run's stop points. ``request()`` asks the run to stop at the next batch boundary (a
    second request stops at once); this class never requests a stop by itself."""

    def __init__(self) -> None:
        self.requested = False

    def request(self) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def check(self) -> None:
        """KeyboardInterrupt when a stop was requested."""
        if self.requested:
            raise KeyboardInterrupt

    def call(self, fn: Callable[..., Any], *args: Any, threaded: bool = True) -> Any:
        """``fn(*args)`` (subclasses may run it where a stop is honoured during it)."""
        return fn(*args)

    def __enter__(self) -> "StopRequest":
        return self

    def __exit__(self, *exc: Any) -> bool:
        return False


class StopOnSignal(StopRequest):
    """SIGINT and SIGTERM request a stop at the next batch boundary while the run is under way
    (``with``), so the statistics saved in the checkpoint are always whole batches; a second signal
    aborts at once. ``call`` runs a long computation in a worker thread while this thread keeps
    handling signals, so a stop is honoured during it too."""

    def __init__(self) -> None:
        super().__init__()
        self._old: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        self.request()

    def call(self, fn: Callable[..., Any], *args: Any, threaded: bool = True) -> Any:
        """``fn(*args)``; with ``threaded`` (host arrays only) in a daemon thread, polled every
        0.1 s: a requested stop raises KeyboardInterrupt here at once, abandoning the result."""
        if not threaded or not self._old or threading.current_thread() is not threading.main_thread():
            return fn(*args)
        self.check()
        box: dict[str, Any] = {}

        def work() -> None:
            try:
                box["value"] = fn(*args)
            except BaseException as exc:  # handed to the waiting thread
                box["error"] = exc

        worker = threading.Thread(target=work, name="sui-onnx-eigenvalues", daemon=True)
        try:
            worker.start()
        except RuntimeError:  # no thread to be had (thread or memory limits): compute here
            return fn(*args)
        while worker.is_alive():
            worker.join(0.1)
            self.check()
        if "error" in box:
            raise box["error"]
        return box["value"]

    def __enter__(self) -> "StopOnSignal":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals stay as they are
                pass
        return self

    def __exit__(self, *exc: Any) -> bool:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()
        return False
