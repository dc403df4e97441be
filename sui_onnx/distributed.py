"""``--ray``: the calibration run of :func:`sui_onnx.analyze.analyze` spread over Ray workers.

The deterministic batch sequence of :class:`~sui_onnx.calib.CalibrationStream` is cut into
contiguous shards of batch indices; when the statistics of all taps exceed ``--max-memory`` the
taps are also split into layer groups (:func:`sui_onnx.memory.plan_groups`).  One Ray task runs
per (shard, group): it re-creates the same stream, skips the batches outside its range, feeds
the rest through a :class:`~sui_onnx.runner.TapRunner` over the tapped model (shipped as bytes
through the object store) and returns the host copies of its accumulators' sufficient
statistics.  The worker accumulates with the single-process code (:func:`sui_onnx.collect.accumulate`);
the driver merges the shards in order with the exact float64 merge of
:class:`~sui_onnx.spectrum.CovarianceAccumulator`, one group at a time, and finalizes them with
the single-process code too (:func:`sui_onnx.collect.finish_group`), so the result is the
single-process result up to float64 rounding. This module never imports analyze.py.

Faults: a task whose worker process or node dies (or whose result object is lost) is resubmitted
by the driver up to ``max_retries`` times (counted in ``runtime.ray.retries``); an error raised by
the task itself (a :class:`~sui_onnx.errors.SuiError`: unfeedable input, bad data, ...) is never
retried and reaches the caller as the same one-line error.  See docs/ray.md.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .calib import CalibrationSpec, CalibrationStream, tokenizer_path
from .checkpoint import RunState
from .collect import accumulate, calibration_record, finish_group, new_accumulators
from .errors import SuiError, first_line, option
from .memory import accumulator_bytes, plan_groups
from .stopping import Interrupted, StopRequest

MAX_RETRIES = 3  # resubmissions of a (shard, group) task after a worker/node/object failure
_WAIT_S = 0.25  # how often the driver looks at signals while waiting for tasks

_RUNNER_CACHE: dict[str, Any] = {}  # per worker process: the last TapRunner (same model, next shard)
_REMOTE: Any = None


def import_ray():
    """Import ray, or explain which extra to install."""
    try:
        import ray
    except ImportError:
        raise SuiError(f"{option('ray')} needs the ray extra: pip install 'sui-onnx[ray]'") from None
    return ray


# -- the driver ----------------------------------------------------------------------------
def run_on_ray(src, taps, calib: CalibrationSpec, opts, max_retries: int = MAX_RETRIES):
    """The calibration run on Ray; returns ``(results, runtime, calibration)`` as the local run
    does (``opts``: config.AnalysisOptions)."""
    from .graph import tapped_model

    ray = import_ray()
    rt, run, hooks = opts.runtime, opts.run, opts.hooks
    if run.resume is not None:
        raise SuiError(f"{option('resume')} does not combine with {option('ray')} (a Ray run resubmits failed shards "
                       f"itself; rerun without {option('resume')})")
    widths = [t.width for t in taps]
    groups = plan_groups(widths, rt.max_memory)

    # The driver reads the calibration once, without running the model: batch count and token
    # count (to cut shards and size the progress bar) and a digest of every batch (so a worker
    # that sees other data at the same path is caught instead of silently merged).
    stream = CalibrationStream(calib, src.folder, widths)
    batch_tokens, batch_digests = [], []
    for batch in stream:
        batch_tokens.append(batch.tokens)
        batch_digests.append(_batch_digest(batch.input_ids))
    total_tokens = int(sum(batch_tokens))
    # workers: absolute paths (their working directory differs) and the budget fixed explicitly
    spec = CalibrationSpec(sources=[Path(p).resolve() for p in calib.sources], seq_len=calib.seq_len,
                           batch_size=calib.batch_size, tokens=stream.budget, mix=calib.mix)
    tokenizer_json = tokenizer_path(src.folder).read_bytes() if stream.tokenizer is not None else None

    _connect(ray, run.ray)
    resources = ray.cluster_resources()
    threads = int(rt.threads or 1)
    if rt.device == "cuda" and resources.get("GPU", 0) < 1:
        raise SuiError(f"{option('device')} cuda with {option('ray')}: the Ray cluster has no GPU (drop "
                       f"{option('device')} cuda or add GPU nodes)")
    # A task that runs on a GPU must hold it as a Ray resource (Ray hides the other GPUs from it);
    # `auto` therefore means: one GPU per task when the cluster has GPUs, else CPU only.
    cuda = rt.device == "cuda" or (rt.device == "auto" and resources.get("GPU", 0) >= 1)
    task_device = rt.device if cuda else "cpu"
    alive = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    largest_node = max((r.get("CPU", 0) for r in alive), default=0)
    node_memory = int(max((r.get("memory", 0) for r in alive), default=0)) or None
    if threads > largest_node:
        raise SuiError(f"{option('threads')} {threads} with {option('ray')}: no Ray node has {threads} CPUs (largest: {largest_node:g})")
    slots = int(resources.get("GPU", 0)) if cuda else max(1, int(resources.get("CPU", 1)) // threads)
    n_shards = max(1, min(run.ray_shards or 2 * slots, len(batch_tokens)))
    bounds = [round(k * len(batch_tokens) / n_shards) for k in range(n_shards + 1)]
    shards = [_Shard(k, bounds[k], bounds[k + 1], int(sum(batch_tokens[bounds[k]:bounds[k + 1]])),
                     _combine(batch_digests[bounds[k]:bounds[k + 1]])) for k in range(n_shards)]

    # one tapped model per layer group, shipped once through the object store
    models = []  # (object ref, sha256, memory to reserve per task)
    for group in groups:
        proto = tapped_model(src, [taps[i] for i in group])
        data = proto.SerializeToString()
        need = _task_memory(proto, len(data), [widths[i] for i in group], spec.batch_size * spec.seq_len)
        models.append((ray.put(data), hashlib.sha256(data).hexdigest(), min(need, node_memory) if node_memory else need))
    tok_ref = ray.put(tokenizer_json) if tokenizer_json is not None else None

    from ._version import __version__

    def job(g: int, s: _Shard) -> dict[str, Any]:
        return {
            "version": __version__, "group": g, "shard": s.index, "start": s.start, "stop": s.stop,
            "taps": [(i, taps[i].tensor, taps[i].width) for i in groups[g]], "widths": widths,
            "sources": [str(p) for p in spec.sources], "seq_len": spec.seq_len, "batch_size": spec.batch_size,
            "tokens": spec.tokens, "device": task_device, "threads": threads, "exact": rt.exact,
            "model_key": models[g][1],
            "external_folder": str(Path(src.data_folder).resolve()) if src.data_folder is not None else None,
            "encoder": str(Path(rt.encoder).resolve()) if rt.encoder is not None else None,
        }

    # One task per (group, shard). Ray runs as many at once per node as its CPUs (GPUs) allow and,
    # through the logical `memory` resource, only as many as the node's memory holds copies of
    # the model: a task reserves about twice the tapped weights plus its statistics.
    options = dict(num_cpus=1 if cuda else threads, num_gpus=1 if cuda else 0, num_returns=2,
                   max_retries=0, retry_exceptions=False)  # the driver resubmits system failures (counted)
    remotes = [_remote_task(ray).options(memory=m[2], **options) for m in models]
    tasks = _Tasks(ray, lambda g, k: remotes[g].remote(job(g, shards[k]), models[g][0], tok_ref), shards, max_retries)
    total = total_tokens * len(groups)
    results: list[Any] = [None] * len(taps)
    all_bad: dict[int, str] = {}
    last_accs: list[Any] = []
    if hooks.progress:
        hooks.progress(0, total, "ray")

    def progress() -> None:
        if hooks.progress:
            hooks.progress(min(tasks.tokens_done, total), total, "ray")

    try:
        for g in range(len(groups)):
            for k in range(n_shards):
                tasks.submit(g, k)
        with hooks.stop or StopRequest() as stop:
            for g, group in enumerate(groups):  # one group's statistics in driver memory at a time
                accs, bad = new_accumulators(taps, group, np, rt.exact), {}
                for k in range(n_shards):  # in shard order: the same sums whatever finishes first
                    state, meta = tasks.result(g, k, stop, progress)
                    _merge_shard(accs, bad, group, state, meta)
                    del state

                def eigenvalues(j: int, group: list[int] = group) -> None:
                    if hooks.progress:
                        hooks.progress(min(tasks.tokens_done, total), total, f"ray: eigenvalues {j + 1}/{len(group)}")

                finish_group(accs, group, bad, results, statistics=hooks.statistics, before=eigenvalues)
                all_bad.update(bad)
                last_accs = accs
                del accs
    except KeyboardInterrupt:
        tasks.abort()
        raise Interrupted(
            f"interrupted after {tasks.tokens_done} of {total} tokens; Ray tasks cancelled "
            f"(a {option('ray')} run keeps no checkpoint: rerun to start over)",
            tokens=tasks.tokens_done, model=Path(src.path),
        ) from None
    except BaseException:
        tasks.abort()
        raise

    done = tasks.done
    metas = [done[(0, k)] for k in range(n_shards)]
    all_metas = list(done.values())
    devices = sorted({m["device"] for m in all_metas})
    runtime: dict[str, Any] = {
        "device": devices[0] if len(devices) == 1 else "+".join(devices),
        "providers": list(metas[0]["providers"]),
        "passes": len(groups),
        "precision": rt.precision,
        "ray": {
            "address": _address(ray),
            "workers": len({(m["node"], m["pid"]) for m in all_metas}),
            "nodes": len({m["node"] for m in all_metas}),
            "shards": n_shards,
            "tasks": n_shards * len(groups),
            "retries": tasks.retries,
            "contributing_shards": sorted({k for (_, k) in done}),
        },
    }
    calibration = calibration_record(stream, calib, int(sum(m["tokens"] for m in metas)))
    if run.checkpoint:  # the finished statistics, in the format `stats` and `merge` read
        state = RunState.start(opts, src.sha256, taps, calib, stream, groups=groups)
        state.save(run.checkpoint, len(groups), [], 0, 0, all_bad, results, complete=True,
                   final_accs=(groups[-1], last_accs), calibration=calibration)
    return results, runtime, calibration


@dataclass(frozen=True)
class _TapShape:
    """What the worker knows of a tap: its tensor and width."""

    tensor: str
    width: int


@dataclass(frozen=True)
class _Shard:
    index: int
    start: int  # first batch index
    stop: int  # one past the last batch index
    tokens: int
    digest: str


def _connect(ray, address: str | None) -> None:
    """ray.init once per process (an existing connection is reused); one line on failure."""
    if ray.is_initialized():
        return
    where = address or os.environ.get("RAY_ADDRESS") or "a new local Ray instance"
    try:
        ray.init(address=address or None, ignore_reinit_error=True, log_to_driver=False, include_dashboard=False,
                 logging_level=logging.WARNING)
    except KeyboardInterrupt:
        raise
    except ValueError as exc:
        if "ray[client]" in str(exc):
            raise SuiError(
                f"{option('ray')} {where}: ray:// addresses need the Ray Client: pip install 'ray[client]' "
                f"(or run sui-onnx on a cluster node with {option('ray')} HEAD_IP:6379)"
            ) from None
        raise SuiError(f"{option('ray')}: cannot connect to {where}: {_first_line(exc)}") from None
    except (Exception, SystemExit) as exc:  # ray exits the process when the GCS never answers
        raise SuiError(
            f"{option('ray')}: cannot connect to {where}: {_first_line(exc) or 'no answer'} (check the address; a cluster "
            "with token authentication also needs RAY_AUTH_MODE=token and its token here, see docs/ray.md)"
        ) from None


def _task_memory(proto, model_bytes: int, widths: Sequence[int], batch_tokens: int) -> int:
    """Bytes one task holds: the model bytes and onnxruntime's copy of the weights (external
    data counted by its declared lengths), two copies of the statistics (accumulators and the
    state returned) and the float32 tap outputs of one batch."""
    from .memory import external_bytes

    external = external_bytes(proto)
    return int(2 * model_bytes + external + 2 * accumulator_bytes(widths) + 4 * batch_tokens * sum(widths) + (64 << 20))


def _address(ray) -> str | None:
    try:
        return ray.get_runtime_context().gcs_address
    except Exception:  # Ray Client: no GCS address on this side
        return os.environ.get("RAY_ADDRESS")


def _remote_task(ray):
    global _REMOTE
    if _REMOTE is None:
        _REMOTE = ray.remote(_shard_task)
    return _REMOTE


def _system_errors(ray) -> tuple[type[BaseException], ...]:
    """Failures of the machinery rather than of the task's own code: worth a retry."""
    ex = ray.exceptions
    names = ("WorkerCrashedError", "NodeDiedError", "LocalRayletDiedError", "ObjectLostError",
             "OutOfMemoryError", "RaySystemError", "OwnerDiedError")
    return tuple(getattr(ex, n) for n in names if hasattr(ex, n))


class _Tasks:
    """The (group, shard) tasks in flight: submission, resubmission after system failures, and
    collection in any order while the driver consumes results in (group, shard) order."""

    def __init__(self, ray, launch, shards: Sequence[_Shard], max_retries: int):
        self.ray = ray
        self.launch = launch  # (group, shard) -> (meta ref, statistics ref)
        self.shards = shards
        self.max_retries = max_retries
        self.attempts: dict[tuple[int, int], int] = {}
        self.pending: dict[Any, tuple[int, int]] = {}  # meta ref -> (group, shard)
        self.data: dict[tuple[int, int], Any] = {}  # (group, shard) -> statistics ref of the live attempt
        self.done: dict[tuple[int, int], dict] = {}  # (group, shard) -> meta of the successful attempt
        self.tokens_done = 0
        self.system_errors = _system_errors(ray)

    @property
    def retries(self) -> int:
        return sum(self.attempts.values()) - len(self.attempts)

    def submit(self, g: int, k: int) -> None:
        self.attempts[(g, k)] = self.attempts.get((g, k), 0) + 1
        meta_ref, data_ref = self.launch(g, k)
        self.pending[meta_ref] = (g, k)
        self.data[(g, k)] = data_ref

    def result(self, g: int, k: int, stop, progress) -> tuple[list[dict], dict]:
        """Wait for (g, k), handling every other task that finishes meanwhile; fetch its statistics."""
        while True:
            while (g, k) not in self.done:
                self._collect(stop)
                progress()
            try:
                state = self.ray.get(self.data[(g, k)])
            except self.system_errors as exc:  # e.g. the node holding the object died
                meta = self.done.pop((g, k))
                self.tokens_done -= meta["tokens"]
                self._failed(g, k, exc)
                continue
            del self.data[(g, k)]  # the object store may free it now
            return state, self.done[(g, k)]

    def _collect(self, stop) -> None:
        stop.check()
        if not self.pending:  # cannot happen while a result is awaited; never hang on it
            raise SuiError(f"{option('ray')}: internal error: waiting with no task in flight")
        ready, _ = self.ray.wait(list(self.pending), num_returns=1, timeout=_WAIT_S)
        for ref in ready:
            g, k = self.pending.pop(ref)
            try:
                meta = self.ray.get(ref)
            except self.ray.exceptions.RayTaskError as exc:  # the task's own error: never retried
                self._discard(self.data.pop((g, k), None))
                cause = getattr(exc, "cause", None)
                if isinstance(cause, SuiError):
                    raise cause from None
                if isinstance(cause, BaseException):
                    raise cause from exc
                raise
            except self.system_errors as exc:
                self._failed(g, k, exc)
                continue
            shard = self.shards[k]
            if meta["digest"] != shard.digest or meta["tokens"] != shard.tokens:
                raise SuiError(
                    f"{option('ray')}: shard {k} read other calibration data on {meta['host']} than this machine "
                    f"({meta['tokens']} vs {shard.tokens} tokens); every node must see the same files at the same paths"
                )
            self.done[(g, k)] = meta
            self.tokens_done += meta["tokens"]

    def _failed(self, g: int, k: int, exc: BaseException) -> None:
        """A system failure: resubmit, or give up with one line."""
        self._discard(self.data.pop((g, k), None))
        if self.attempts[(g, k)] > self.max_retries:
            s = self.shards[k]
            raise SuiError(
                f"{option('ray')}: shard {k} (batches {s.start}-{s.stop - 1}) of layer group {g + 1} failed "
                f"{self.attempts[(g, k)]} times: {_first_line(exc)}"
            ) from None
        self.submit(g, k)

    def _discard(self, ref: Any, timeout: float = 10.0) -> None:
        """Read a failed object's error, so Ray does not print it later as 'unhandled'."""
        if ref is None:
            return
        try:
            self.ray.get(ref, timeout=timeout)
        except Exception:
            pass

    def abort(self) -> None:
        """Cancel what still runs and read the errors of what failed (the run ends with one line)."""
        for ref in list(self.pending):
            try:
                self.ray.cancel(ref)
            except Exception:  # already finished, or its worker already gone
                pass
        refs = list(self.pending)
        if refs:
            try:
                self.ray.wait(refs, num_returns=len(refs), timeout=5.0, fetch_local=False)
            except Exception:
                pass
        for ref, key in list(self.pending.items()):
            try:
                self.ray.get(ref, timeout=0.5)
            except Exception:
                self._discard(self.data.pop(key, None), timeout=0.5)
        self.pending.clear()
        self.data.clear()


def _merge_shard(accs, bad: dict[int, str], group, states: list[dict], meta: dict) -> None:
    """Merge one shard into the group's accumulators. A tap with NaN/Inf stops at the first bad
    batch in shard order, so its token count is what the single-process run reports."""
    from .spectrum import CovarianceAccumulator

    for j, i in enumerate(group):
        if i in bad:
            continue
        accs[j].merge(CovarianceAccumulator.from_state(states[j], accs[j].name))
        if i in meta["bad"]:
            bad[i] = meta["bad"][i]


def _batch_digest(ids: np.ndarray) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    h.update(np.asarray(ids.shape, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(ids, dtype=np.int64).tobytes())
    return h.digest()


def _combine(digests: Sequence[bytes]) -> str:
    return hashlib.blake2b(b"".join(digests), digest_size=16).hexdigest()


def _first_line(exc: BaseException) -> str:
    return first_line(exc, limit=300)


# -- the worker ----------------------------------------------------------------------------
def _shard_task(job: dict, model: bytes, tokenizer_json: bytes | None):
    """One (shard, group): its batches through the tapped model into accumulators.

    Returns ``(meta, states)``: meta is small (tokens, digest, NaN/Inf per tap, where it ran);
    states holds one ``CovarianceAccumulator.state()`` per tap of the group."""
    from ._version import __version__

    if job["version"] != __version__:
        raise SuiError(
            f"{option('ray')}: worker on {socket.gethostname()} has sui-onnx {__version__}, the driver {job['version']}; "
            "install the same version on every node"
        )
    spec = CalibrationSpec(sources=[Path(s) for s in job["sources"]], seq_len=job["seq_len"],
                           batch_size=job["batch_size"], tokens=job["tokens"])
    stream = CalibrationStream(spec, _tokenizer_folder(tokenizer_json), job["widths"])
    names = [name for _, name, _ in job["taps"]]
    widths = [w for _, _, w in job["taps"]]
    runner = _runner(job, model, names)
    group = [i for i, _, _ in job["taps"]]
    accs = new_accumulators({i: _TapShape(name, w) for i, name, w in job["taps"]}, group, runner.xp, job["exact"])
    bad: dict[int, str] = {}
    digests: list[bytes] = []
    tokens = 0
    for b, batch in enumerate(stream):
        if b < job["start"]:
            continue  # before this shard: cheap for token ids, re-tokenized for text
        if b >= job["stop"]:
            break
        digests.append(_batch_digest(batch.input_ids))
        accumulate(accs, group, runner.run(batch.input_ids, widths), bad, b)
        tokens += batch.tokens
    meta = {
        "tokens": tokens, "digest": _combine(digests), "bad": bad,
        "device": "cuda" if runner.device.cuda else "cpu", "providers": list(runner.device.providers),
        "host": socket.gethostname(), "node": _node_id(), "pid": os.getpid(),
    }
    return meta, [acc.state() for acc in accs]


def _runner(job: dict, model: bytes, names: list[str]):
    """A TapRunner, reused by the next task of the same model in this worker process."""
    from .runner import TapRunner

    key = f"{job['model_key']}|{job['device']}|{job['threads']}|{job['external_folder']}|{job.get('encoder')}"
    cached = _RUNNER_CACHE.get("key")
    if cached != key:
        _RUNNER_CACHE.clear()  # at most one model per worker process
        folder = Path(job["external_folder"]) if job["external_folder"] else None
        if folder is not None and not folder.is_dir():
            raise SuiError(
                f"{option('ray')}: the model's external data folder {folder} does not exist on {socket.gethostname()}; "
                "every node must see the model folder at the same path"
            )
        encoder = Path(job["encoder"]) if job.get("encoder") else None
        if encoder is not None and not encoder.is_file():
            raise SuiError(
                f"{option('ray')}: the encoder {encoder} does not exist on {socket.gethostname()}; "
                "every node must see the model folder at the same path"
            )
        _RUNNER_CACHE["runner"] = TapRunner(model, names, job["device"], job["threads"], external_folder=folder,
                                            encoder=encoder)
        _RUNNER_CACHE["key"] = key
    return _RUNNER_CACHE["runner"]


def _tokenizer_folder(tokenizer_json: bytes | None) -> Path | None:
    """The driver's tokenizer.json, written once per node into a temporary folder."""
    if tokenizer_json is None:
        return None
    digest = hashlib.sha256(tokenizer_json).hexdigest()[:16]
    folder = Path(tempfile.gettempdir()) / f"sui-onnx-tokenizer-{digest}"
    path = folder / "tokenizer.json"
    if not path.is_file():
        from .safeio import atomic_write

        atomic_write(path, lambda fh: fh.write(tokenizer_json))
    return folder


def _node_id() -> str:
    try:
        import ray

        return ray.get_runtime_context().get_node_id()
    except Exception:  # called outside Ray (unit use)
        return socket.gethostname()
