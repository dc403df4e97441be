"""Checkpoints of a calibration run: what one holds, how a resume checks it, how it is saved.

A checkpoint (spectrum.save_accumulators) holds the run's identity (model, taps, packing, plan of
passes), how far through the deterministic batch sequence it got, the statistics of the pass it
stopped in, the results of the passes before, and the SHA-256 of the token ids consumed, which a
resume checks before it adds anything. The run loop (analyze.py) and the Ray driver
(distributed.py) write them; ``load_stats`` reads a finished (or merged) one for a report.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .collect import TapResult, new_accumulators
from .errors import SuiError, option
from .spectrum import CovarianceAccumulator, load_accumulators, save_accumulators
from .stopping import Interrupted


class RunState:
    """What a checkpoint holds: finished groups' spectra, the current group's statistics, how far
    through the (deterministic) batch sequence it got, and the SHA-256 of the token ids consumed
    so far (``stream``; ``stream_full`` once a whole pass is done), which a resume checks before it
    adds anything: a checkpoint continues only the data it was made on."""

    def __init__(self) -> None:
        self.group = 0
        self.batches_done = 0
        self.tokens_done = 0
        self.bad: dict[int, str] = {}
        self.finished: dict[int, TapResult] = {}
        self.accs: dict[int, CovarianceAccumulator] = {}
        self.identity: dict[str, Any] = {}
        self.path: Path | None = None  # the checkpoint resumed from
        self.stream_prefix: tuple[int, str] | None = None  # (batches, sha256) the resumed pass consumed
        self.stream_full: tuple[int, str] | None = None  # (batches, sha256) of one whole pass
        self._hashed = 0
        self._digests: dict[int, str] = {}  # batches hashed -> digest (the last two)

    @classmethod
    def start(cls, opts, sha: str, taps, calib, stream,
              groups: list[list[int]] | None = None) -> "RunState":
        st = cls()
        st.identity = {
            "model_sha256": sha,
            "taps": [t.tensor for t in taps],
            "widths": [t.width for t in taps],
            "seq_len": calib.seq_len,
            "batch_size": calib.batch_size,
            "sources": [str(s) for s in stream.sources],
            "token_budget": stream.budget,
            "max_memory": opts.runtime.max_memory,
            "groups": groups,
        }
        if calib.mix != "sequential":  # absent for the default, so earlier checkpoints stay valid
            st.identity["mix"] = calib.mix
        if opts.runtime.encoder is not None:  # absent for other models, so their checkpoints stay as they were
            st.identity["encoder_sha256"] = opts.extra_provenance.get("encoder", {}).get("sha256")
        if opts.run.resume is not None:
            st._load(opts.run.resume)
            if st.group >= len(st.identity["groups"] or [0]) and st.stream_full is not None:
                for _ in st.track(stream, st.group):  # nothing left to run: check the data all the same
                    pass
        return st

    def _load(self, path: Path) -> None:
        from .safeio import printable

        accs, meta = load_accumulators(path)
        label = f"{option('resume')} {printable(path)}"
        ident = meta.get("identity", {})
        if not isinstance(ident, dict):
            raise SuiError(f"{label}: not a checkpoint (no run identity)")
        if meta.get("merged"):
            raise SuiError(f"{label}: merged statistics (sui-onnx merge), not an interrupted run's checkpoint: "
                           f"there is nothing to resume; report them with {option('stats')} {printable(path)}")
        planned = ident.get("groups")
        if self.identity["max_memory"] is None and ident.get("max_memory") is None and _is_plan(planned, self.identity):
            self.identity["groups"] = planned  # automatic cap: keep the interrupted run's passes
        for key, value in self.identity.items():
            if key == "groups" and planned is None:
                continue  # a checkpoint from before plans were recorded: max_memory decides
            if ident.get(key) != value:
                raise SuiError(
                    f"{label}: checkpoint was made with other settings ({key.replace('_', ' ')}: "
                    f"{printable(repr(ident.get(key)))[:120]} vs {printable(repr(value))[:120]})"
                )
        groups = self.identity["groups"] or [list(range(len(self.identity["taps"])))]
        widths = self.identity["widths"]
        self.group = _count(meta, "group", label, len(groups))
        self.batches_done = _count(meta, "batches_done", label)
        self.tokens_done = _count(meta, "tokens_done", label)
        if self.tokens_done < self.batches_done or (self.batches_done == 0 and self.tokens_done):
            raise SuiError(f"{label}: inconsistent checkpoint ({self.tokens_done} tokens in {self.batches_done} batches)")
        self.path = Path(path)
        self.stream_prefix = _digest(meta.get("stream"), label, "stream")
        self.stream_full = _digest(meta.get("stream_full"), label, "stream_full")
        if self.stream_prefix is None and self.batches_done:
            raise SuiError(f"{label}: the checkpoint records no digest of the token ids it consumed (written by an "
                           "older sui-onnx), so it cannot be told whether this calibration data is the same; "
                           f"start afresh without {option('resume')}")
        if self.stream_prefix is not None and self.stream_prefix[0] != self.batches_done:
            raise SuiError(f"{label}: inconsistent checkpoint (digest of {self.stream_prefix[0]} batches, "
                           f"{self.batches_done} done)")
        bad = meta.get("bad", {})
        if not isinstance(bad, dict) or not all(isinstance(v, str) and _tap_index(k, widths) is not None
                                                for k, v in bad.items()):
            raise SuiError(f"{label}: malformed checkpoint ('bad' is not a map of tap index to message)")
        self.bad = {_tap_index(k, widths): v for k, v in bad.items()}
        by_name = {a.name: a for a in accs}
        current = set(groups[self.group]) if self.group < len(groups) else set()
        for i, name in enumerate(self.identity["taps"]):
            key = f"{i}:{name}"
            if key in by_name:
                acc = by_name.pop(key)
                if acc.width != widths[i]:
                    raise SuiError(f"{label}: statistics of tap {i} have width {acc.width}, the tap {widths[i]}")
                if self.group >= len(groups):
                    continue  # a finished one-pass run keeps its statistics for merge; a resume needs none
                if i not in current:
                    raise SuiError(f"{label}: malformed checkpoint (statistics of tap {i}, which is not in the "
                                   "pass it stopped in)")
                if i not in self.bad and acc.n > self.tokens_done:  # an expert of a mixture sees fewer
                    raise SuiError(f"{label}: inconsistent checkpoint (tap {i} holds {acc.n} tokens, the run "
                                   f"{self.tokens_done})")
                self.accs[i] = acc
        if by_name:
            raise SuiError(f"{label}: statistics for taps this run does not have "
                           f"({printable(', '.join(sorted(by_name))[:120])})")
        missing = [i for i in current if i not in self.accs and i not in self.bad and self.batches_done]
        if missing:
            raise SuiError(f"{label}: malformed checkpoint (no statistics for tap {missing[0]})")
        self.finished = {}
        finished = meta.get("finished", {})
        if not isinstance(finished, dict):
            raise SuiError(f"{label}: malformed checkpoint ('finished' is not a map)")
        for i_str, item in finished.items():
            i = _tap_index(i_str, widths)
            if i is None or not isinstance(item, dict):
                raise SuiError(f"{label}: malformed checkpoint (finished entry {printable(i_str)[:20]!r})")
            self.finished[i] = _finished_entry(item, widths[i], f"{label}: tap {i}")
        done = [i for g in groups[: self.group] for i in g]
        if any(i not in self.finished for i in done):
            raise SuiError(f"{label}: malformed checkpoint (a finished pass lacks a tap's results)")

    def track(self, stream, group: int):
        """Iterate ``stream``, hashing each batch's token ids (shape, then int64 little-endian) so a
        checkpoint records what it consumed. In the pass a resume continues, the batches the
        checkpoint holds are checked against its digest before anything is added; every pass is
        checked against the digest of a whole pass once one is known. A difference is a SuiError:
        the statistics would otherwise mix two data sets."""
        h = hashlib.sha256()
        self._hashed, self._digests = 0, {0: h.hexdigest()}
        want = self.stream_prefix if group == self.group else None
        for b, batch in enumerate(stream):
            if want is not None and b == want[0]:
                self._verify(want, h.hexdigest(), "the part of the calibration data it holds")
                want = None
            ids = np.ascontiguousarray(batch.input_ids, dtype="<i8")
            h.update(np.asarray(ids.shape, dtype="<i8").tobytes())
            h.update(memoryview(ids).cast("B"))
            self._hashed = b + 1
            self._digests = {b: self._digests.get(b, ""), b + 1: h.hexdigest()}
            yield batch
        if want is not None:
            self._verify(want, h.hexdigest() if self._hashed == want[0] else "", "the part of the calibration data it holds",
                         short=self._hashed < want[0])
        if self.stream_full is not None:
            self._verify(self.stream_full, h.hexdigest() if self._hashed == self.stream_full[0] else "",
                         "the whole calibration data of its finished pass", short=self._hashed < self.stream_full[0])
        self.stream_full = (self._hashed, h.hexdigest())

    def _verify(self, want: tuple[int, str], got: str, what: str, short: bool = False) -> None:
        if got == want[1]:
            return
        from .safeio import printable

        where = printable(self.path) if self.path is not None else "the checkpoint"
        why = (f"this data gives only {self._hashed} batches, the checkpoint consumed {want[0]}" if short
               else f"the token ids of its first {want[0]} batches differ (sha256 {want[1][:12]} in the checkpoint)")
        raise SuiError(f"{option('resume')} {where}: the calibration data is not the data of the interrupted run ({why}; "
                       f"checked: {what}); resume with the same {option('sources')} and options, or start afresh")

    def digest(self, batches: int) -> dict[str, Any] | None:
        """The ``stream`` entry of a checkpoint made after ``batches`` batches of this pass."""
        sha = self._digests.get(batches)
        return None if sha is None else {"batches": batches, "sha256": sha}

    def accumulators_for(self, group, taps, xp, exact: bool) -> list[CovarianceAccumulator]:
        """The group's accumulators, holding the resumed statistics where there are any."""
        out = new_accumulators(taps, group, xp, exact)
        for acc, i in zip(out, group):
            if i in self.accs:
                acc.merge(self.accs.pop(i))
        return out

    def save(self, path, group: int, accs, batches_done: int, tokens_done: int, bad: dict[int, str],
             results: Sequence[TapResult | None], complete: bool = False, final_accs=None,
             calibration: dict | None = None) -> None:
        """Write the checkpoint: stopped in pass ``group`` after ``batches_done`` batches (its
        statistics ``accs``), the results of the passes before; ``complete`` with ``final_accs``
        (group, accumulators) of a one-pass run keeps its full statistics, for merging. A finished
        run's ``calibration`` record (sources and their sha256, window length, mix) goes with it,
        so that a report built with --stats says what data it came from."""
        finished = {str(i): res.to_json() for i, res in enumerate(results) if res is not None}
        meta = {
            "identity": self.identity,
            "group": group,
            "batches_done": batches_done,
            "tokens_done": tokens_done,
            "bad": {str(k): v for k, v in bad.items()},
            "finished": finished,
            "complete": complete,
            "stream": self.digest(batches_done) if batches_done else {"batches": 0, "sha256": _EMPTY_SHA},
        }
        if self.stream_full is not None:
            meta["stream_full"] = {"batches": self.stream_full[0], "sha256": self.stream_full[1]}
        if complete and calibration is not None:
            meta["calibration"] = {k: v for k, v in calibration.items() if k != "tokens"}
            meta["run_tokens"] = calibration.get("tokens")  # what `run_tokens` reads back
        to_save = list(accs)
        if final_accs is not None and complete and len(final_accs[0]) == len(self.identity["taps"]):
            to_save = list(final_accs[1])  # one-pass run: keep the full statistics for merging
            meta["mergeable"] = True
            if self.stream_full is not None:  # merge refuses two shards of the same data
                meta["shards"] = [self.stream_full[1]]
        save_accumulators(path, to_save, meta)

    def interrupted(self, opts, model: Path, group: int, accs, batches_done: int, tokens_done: int,
                    bad: dict[int, str], results: Sequence[TapResult | None], consistent: bool) -> Interrupted:
        """The Interrupted error of a run stopped here. With a ``checkpoint`` path the statistics are
        saved there first (a failed save is said); without one the error's ``save`` writes them where
        the caller picks (the CLI: its default checkpoint). A stop in the middle of a batch
        (``consistent`` False) has no whole-batch state to save."""
        from .safeio import printable

        where = dict(tokens=tokens_done, model=Path(model), resume=opts.run.resume)
        path = opts.run.checkpoint
        if not consistent:
            return Interrupted("aborted in the middle of a batch; no new checkpoint written"
                               + (f" (the last one, if any, is {printable(path)})" if path else ""), **where)

        def save(to: Path) -> None:
            self.save(to, group, accs, batches_done, tokens_done, bad, results)

        if path is None:
            return Interrupted(f"interrupted after {tokens_done} tokens; no checkpoint saved (no "
                               f"{option('checkpoint')} given)", save=save, **where)
        try:
            save(path)
        except (SuiError, OSError) as exc:
            return Interrupted(interrupted_unsaved(tokens_done, exc), **where)
        return Interrupted(interrupted_saved(tokens_done, path), checkpoint=Path(path), **where)


def interrupted_saved(tokens: int, path: Path) -> str:
    """What an interrupted run whose statistics were saved to ``path`` says."""
    from .safeio import printable

    shown = printable(path)
    return f"interrupted after {tokens} tokens; checkpoint saved to {shown} (continue with {option('resume')} {shown})"


def interrupted_unsaved(tokens: int, exc: BaseException) -> str:
    """What an interrupted run says when saving its statistics failed with ``exc``."""
    from .safeio import printable

    return (f"interrupted after {tokens} tokens; no checkpoint saved ({printable(str(exc))}); "
            f"pass {option('checkpoint')} FILE in a writable folder to keep the statistics of an interrupted run")


_EMPTY_SHA = hashlib.sha256().hexdigest()


def _count(meta: dict, key: str, label: str, most: int | None = None) -> int:
    v = meta.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0 or (most is not None and v > most):
        raise SuiError(f"{label}: malformed checkpoint ({key!r} is not a count{'' if most is None else f' <= {most}'})")
    return v


def _digest(entry: Any, label: str, key: str) -> tuple[int, str] | None:
    if entry is None:
        return None
    if (not isinstance(entry, dict) or isinstance(entry.get("batches"), bool) or not isinstance(entry.get("batches"), int)
            or entry["batches"] < 0 or not isinstance(entry.get("sha256"), str) or len(entry["sha256"]) != 64):
        raise SuiError(f"{label}: malformed checkpoint ({key!r} is not a token-stream digest)")
    return entry["batches"], entry["sha256"]


def _tap_index(key: Any, widths: Sequence[int]) -> int | None:
    try:
        i = int(key)
    except (TypeError, ValueError):
        return None
    return i if 0 <= i < len(widths) and str(i) == str(key) else None


def _finished_entry(item: dict, width: int, label: str) -> TapResult:
    n, ev, flags, message = item.get("n"), item.get("eigenvalues"), item.get("flags"), item.get("message", "")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise SuiError(f"{label}: malformed checkpoint (token count {n!r})")
    if not (isinstance(flags, list) and all(isinstance(f, str) for f in flags)) or not isinstance(message, str):
        raise SuiError(f"{label}: malformed checkpoint (flags or message)")
    if ev is not None:
        if not isinstance(ev, list) or len(ev) != width or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in ev):
            raise SuiError(f"{label}: malformed checkpoint (eigenvalues are not {width} numbers)")
        ev = np.asarray(ev, dtype=np.float64)
        if not np.isfinite(ev).all() or (ev < 0).any():
            raise SuiError(f"{label}: malformed checkpoint (eigenvalues must be finite and >= 0)")
    return TapResult(n, ev, tuple(flags), message)


def _is_plan(groups: Any, identity: dict) -> bool:
    """True when ``groups`` splits this run's taps, in order, into non-empty passes."""
    try:
        flat = [int(i) for g in groups for i in g]
        return all(len(g) for g in groups) and flat == list(range(len(identity["taps"])))
    except TypeError:
        return False


def run_tokens(accs, meta: dict) -> int:
    """The calibration tokens of the run that wrote statistics ``accs`` with ``meta``: its recorded
    count (``run_tokens``; a merge records the sum over its shards), else the most any tap saw.
    Every tap of a dense model sees every token; an expert of a mixture sees only those routed to
    it, so the first tap's count is not the run's."""
    seen = max((a.n for a in accs), default=0)
    told = meta.get("run_tokens")
    return told if isinstance(told, int) and not isinstance(told, bool) and told >= seen else seen


def load_stats(path: Path, sha: str, names, widths):
    accs, meta = load_accumulators(path)
    ident = meta.get("identity", {})
    if not isinstance(ident, dict):
        raise SuiError(f"{option('stats')} {path}: not a statistics file of a run (no run identity)")
    if not accs and meta.get("complete") and meta.get("finished"):
        raise SuiError(f"{option('stats')} {path}: a run made in several passes keeps the eigenvalues, not the statistics, so it "
                       f"cannot be reported with {option('stats')}; rebuild its report with {option('resume')} {path} (same calibration "
                       f"options: no batch is run again), or rerun in one pass with a larger {option('max_memory')}")
    if ident.get("model_sha256") not in (None, sha):
        raise SuiError(f"{option('stats')} {path}: statistics belong to another model (sha256 differs)")
    if [a.width for a in accs] != list(widths) or ident.get("taps", names) != list(names):
        raise SuiError(f"{option('stats')} {path}: statistics are for other taps than this model's {len(names)} FFN blocks")
    if not meta.get("complete", False) and not meta.get("merged", False):
        raise SuiError(f"{option('stats')} {path}: the run that wrote it did not finish; continue it with {option('resume')}")
    return accs, meta


