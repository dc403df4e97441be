"""analyze(model, calibration) -> Report: the one entry point that composes the stages.

graph (taps, tapped copy) -> calib (batches) -> runner (tap tensors) -> spectrum (accumulators)
-> metrics -> advice. The CLI, the gate, scaling-on-models and the Ray driver all call this.
Memory: one batch of tap tensors plus D x D float64 statistics per tap, independent of the number
of calibration tokens; when the statistics of all taps exceed `max_memory`, the taps are split
into groups analyzed in successive passes over the same calibration data.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import signal
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from . import __version__
from .advice import status_message, summarize, token_flags, width_advice, worst_status
from .calib import CalibrationSpec, CalibrationStream
from .errors import NumericalError, SuiError
from .metrics import DEFAULT_ENERGY_LEVELS, DEFAULT_TOP_FRACTION, spectral_metrics
from .report import METRIC_KEYS, LayerResult, Report
from .spectrum import CovarianceAccumulator, load_accumulators, save_accumulators

ProgressFn = Callable[[int, int, str], None]  # (tokens done, tokens total, description)


class Interrupted(SuiError):
    """The run was interrupted (SIGINT/SIGTERM); a checkpoint was saved."""


@dataclass
class AnalysisOptions:
    site: str = "post"
    include: str | None = None
    exclude: str | None = None
    explicit: Sequence[str] = ()
    device: str = "auto"
    precision: str = "fp32"  # fp32: float32 GEMM per batch into float64 sums; fp64: float64 GEMM
    threads: int | None = None
    top_fraction: float = DEFAULT_TOP_FRACTION
    energy_levels: Sequence[float] = DEFAULT_ENERGY_LEVELS
    advice_q: float = 0.95
    advice_quantile: float = 1.0
    align: int = 64
    max_memory: int | None = None  # bytes for accumulators; None = no limit
    checkpoint: Path | None = None
    checkpoint_every: int = 50  # batches
    resume: Path | None = None
    stats: Path | None = None  # build the report from saved statistics, no calibration run
    progress: ProgressFn | None = None
    ray: str | None = None  # None: run here; "" : ray.init() default (RAY_ADDRESS or a local cluster); else an address
    ray_shards: int | None = None  # calibration shards (default: 2 per worker CPU)
    encoder: Path | None = None  # a seq2seq decoder's encoder (default: encoder_model.onnx beside it)
    extra_provenance: dict[str, Any] = field(default_factory=dict)
    # called as statistics(tap index, accumulator) once a tap's statistics are complete, before its
    # eigenvalues are computed (slim reads the covariance and mean there; the accumulator is freed after)
    statistics: Callable[[int, CovarianceAccumulator], None] | None = field(default=None, repr=False)
    # called as activations(tap index, [..., D] array) for every batch before it is accumulated (the
    # array is a reused buffer, valid only during the call); not called for --stats, --resume or Ray
    activations: Callable[[int, Any], None] | None = field(default=None, repr=False)


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
                "or pass --max-memory to try anyway"
            )
        if need > max_memory:
            from .safeio import size_text

            raise SuiError(f"--max-memory {size_text(max_memory)} is below one tap's statistics "
                           f"({size_text(need)} for D={w})")
        if groups[-1] and used + need > max_memory:
            groups.append([])
            used = 0
        groups[-1].append(i)
        used += need
    return groups


def resolve_encoder(src, requested: Path | None) -> Path | None:
    """The encoder a seq2seq decoder needs (``requested``, else optimum's ``encoder_model.onnx``
    beside it); None for every other model. Errors say what to pass."""
    from .graph.source import resolve_model_path
    from .runner import ENCODER_FILE, companion_encoder, is_encoder_states_input

    inits = {i.name for i in src.model.graph.initializer}
    needs = next((i.name for i in src.model.graph.input if i.name not in inits and is_encoder_states_input(i.name)), None)
    if needs is None:
        if requested is not None:
            raise SuiError(f"--encoder {requested}: the model has no encoder_hidden_states input (not a seq2seq decoder)")
        return None
    if requested is not None:
        try:
            path = resolve_model_path(requested)
        except SuiError as exc:
            raise SuiError(f"--encoder: {exc}") from None
    else:
        path = companion_encoder(src.path)
        if path is None:
            raise SuiError(f"model input {needs!r} takes a seq2seq encoder's output and there is no {ENCODER_FILE} "
                           "beside the model: pass --encoder ENCODER.onnx")
    if path.resolve() == Path(src.path).resolve():
        raise SuiError(f"--encoder {path}: that is the model itself; pass its encoder")
    return path


def analyze(model: str | Path, calib: CalibrationSpec | None = None, options: AnalysisOptions | None = None) -> Report:
    """Analyze one ONNX model on calibration data and return the report (with eigenvalues)."""
    from .graph import find_taps, load_model

    calib = calib or CalibrationSpec()
    opts = options or AnalysisOptions()
    started = time.perf_counter()
    # lean: the weights stay in the file (read once, by onnxruntime); a Ray run ships the tapped
    # model to workers that may not see this file, so it keeps the weights in the proto
    src = load_model(model, lean=opts.ray is None and opts.stats is None)
    taps = find_taps(src.model, site=opts.site, include=opts.include, exclude=opts.exclude, explicit=opts.explicit)
    widths = [t.width for t in taps]
    names = [t.tensor for t in taps]
    encoder = resolve_encoder(src, opts.encoder) if opts.stats is None else None
    if encoder is not None:
        from .graph.source import file_sha256

        opts = replace(opts, encoder=encoder, extra_provenance={
            **opts.extra_provenance, "encoder": {"path": str(encoder), "sha256": file_sha256(encoder)}})

    if opts.stats is not None:
        accs, meta = _load_stats(opts.stats, src.sha256, names, widths)
        runtime = {"device": "none", "providers": [], "source": str(opts.stats)}
        calibration = {**meta.get("calibration", {}), "tokens": accs[0].n if accs else 0, "from_stats": str(opts.stats)}
        for i, acc in enumerate(accs):
            if opts.statistics is not None:
                opts.statistics(i, acc)
        spectra_parts = [_finalize(acc) for acc in accs]
    elif opts.ray is not None:
        from .distributed import run_on_ray

        spectra_parts, runtime, calibration = run_on_ray(src, taps, calib, opts)
    else:
        stream = CalibrationStream(calib, src.folder, widths)
        spectra_parts, runtime, calibration = _run(src, taps, stream, calib, opts)

    elapsed = time.perf_counter() - started
    layers, eigenvalues = [], []
    for tap, (n, ev, flags, message) in zip(taps, spectra_parts):
        layers.append(_layer_result(tap, n, ev, flags, message, opts))
        eigenvalues.append(ev)
    runtime["elapsed_s"] = round(elapsed, 3)
    if calibration.get("tokens") and runtime.get("device") != "none":
        runtime["tokens_per_s"] = round(calibration["tokens"] / max(elapsed, 1e-9), 1)
    report = Report(
        tool={"name": "sui-onnx", "version": __version__},
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        model=_model_provenance(src, taps, opts),
        calibration=calibration,
        runtime=runtime,
        settings={
            "site": opts.site,
            "top_fraction": opts.top_fraction,
            "energy_levels": list(opts.energy_levels),
            "advice": {"q": opts.advice_q, "quantile": opts.advice_quantile, "align": opts.align},
        },
        layers=layers,
    )
    report.summary = summarize(layers)
    report.advice = width_advice(layers, eigenvalues, opts.advice_q, opts.advice_quantile, opts.align)
    report.eigenvalues = eigenvalues
    return report


# -- the calibration run -------------------------------------------------------------------
def _run(src, taps, stream: CalibrationStream, calib: CalibrationSpec, opts: AnalysisOptions):
    from .graph import tapped_model
    from .runner import TapRunner, check_calibration

    widths = [t.width for t in taps]
    check_calibration(src.model, stream, calib.seq_len)  # ids and window length against the model's tables
    budget, auto = opts.max_memory, opts.max_memory is None
    if auto:
        budget = _memory_budget(src, widths, calib, opts.device)
    results: list[Any] = [None] * len(taps)
    # on --resume without --max-memory the checkpoint's plan is kept (free memory may have changed)
    state = _RunState.start(opts, src.sha256, taps, calib, stream, groups=plan_groups(widths, budget, auto))
    groups = state.identity["groups"]
    if opts.precision not in ("fp32", "fp64"):
        raise SuiError(f"--precision must be fp32 or fp64, got {opts.precision!r}")
    runtime: dict[str, Any] = {"device": None, "providers": [], "passes": len(groups), "precision": opts.precision,
                               "max_memory": budget, "max_memory_source": "auto" if auto else "option"}
    with _StopOnSignal() as stop:
        for g, group in enumerate(groups):
            if g < state.group:  # finished before a resume
                for i in group:
                    results[i] = state.finished[i]
                continue
            group_taps = [taps[i] for i in group]
            tapped = tapped_model(src, group_taps).SerializeToString()  # in memory: nothing written
            runner = TapRunner(tapped, [t.tensor for t in group_taps], opts.device, opts.threads,
                               external_folder=src.data_folder, encoder=opts.encoder)
            del tapped  # onnxruntime holds its own copy of the weights now
            runtime["device"] = "cuda" if runner.device.cuda else "cpu"
            runtime["providers"] = list(runner.device.providers)
            accs = state.accumulators_for(group, taps, runner.xp, opts.precision == "fp64")
            bad: dict[int, str] = dict(state.bad)
            tokens_done = state.tokens_done if g == state.group else 0
            batches_done = state.batches_done if g == state.group else 0
            desc = f"pass {g + 1}/{len(groups)}" if len(groups) > 1 else "calibrating"
            consistent = True  # False while a batch is half-added: an interrupt then saves nothing
            try:
                for b, batch in enumerate(state.track(stream, g)):  # hashed: checkpoints know their data
                    if b < batches_done:
                        continue  # already in the resumed statistics
                    stop.check()
                    consistent = False
                    outs = runner.run(batch.input_ids, [t.width for t in group_taps])
                    for j, (i, out) in enumerate(zip(group, outs)):
                        if i in bad:
                            continue
                        try:
                            if opts.activations is not None:
                                opts.activations(i, out)
                            accs[j].update(out, overwrite=True)
                        except NumericalError as exc:
                            bad[i] = state.rejected(exc, b)
                    tokens_done += batch.tokens
                    batches_done = b + 1
                    consistent = True
                    stop.check()
                    if opts.progress:
                        opts.progress(tokens_done, stream.budget, desc)
                    if opts.checkpoint and batches_done % opts.checkpoint_every == 0:
                        state.save(opts.checkpoint, g, accs, batches_done, tokens_done, bad, results)
                state.bad.update(bad)
                for j, i in enumerate(group):  # a stop here saves the pass's statistics (all its batches)
                    stop.check()
                    if opts.progress:  # eigvalsh of a wide layer takes seconds to minutes: say so
                        opts.progress(tokens_done, stream.budget, f"{desc}: eigenvalues {j + 1}/{len(group)}")
                    if opts.statistics is not None and i not in bad:
                        opts.statistics(i, accs[j])
                    results[i] = ((accs[j].n, None, ["non_finite"], bad[i]) if i in bad
                                  else stop.call(_finalize, accs[j], threaded=runner.xp is np))
                stop.check()
            except KeyboardInterrupt:
                state.interrupted(opts, src, g, accs, batches_done, tokens_done, bad, results, consistent)
            if opts.checkpoint:
                state.save(opts.checkpoint, g + 1, [], 0, 0, state.bad, results, complete=g + 1 == len(groups),
                           final_accs=(group, accs))
            del accs, runner
    calibration = {
        "sources": stream.describe(),
        "tokens": stream.tokens_fed,
        "token_budget": stream.budget,
        "seq_len": calib.seq_len,
        "batch_size": calib.batch_size,
        "order": "sequential",
        "mix": calib.mix,
        "tokenizer": "tokenizer.json" if stream.tokenizer is not None else None,
        "prefix": stream.prefix,  # the special tokens each text window starts with (BOS)
    }
    return results, runtime, calibration


def _memory_budget(src, widths: Sequence[int], calib: CalibrationSpec, device: str) -> int | None:
    """The statistics cap when --max-memory is not given (sui_onnx/memory.py): half of the memory
    left once the model is loaded, on the GPU for CUDA runs."""
    from .memory import default_max_memory
    from .runner import import_onnxruntime

    cuda = device != "cpu" and "CUDAExecutionProvider" in import_onnxruntime().get_available_providers()
    batch_tokens = calib.batch_size * calib.seq_len
    if calib.tokens is not None:  # no batch holds more than the budget
        batch_tokens = min(batch_tokens, calib.tokens)
    cap = default_max_memory(src.model, widths, batch_tokens, cuda)
    if cap == 0:  # say what took the memory when one batch's activations alone do not fit
        from .memory import available_device_memory, available_host_memory

        free = (available_device_memory() if cuda else None) or available_host_memory()
        need = 4 * batch_tokens * sum(widths)
        if free is not None and need >= free // 2:
            raise SuiError(
                f"one batch of {calib.batch_size} x {calib.seq_len} tokens needs {need / 2**30:.1f} GiB for its FFN "
                f"activations, more than the {free / 2**30:.1f} GiB available: lower --seq-len or --batch-size")
    return cap


def _finalize(acc: CovarianceAccumulator) -> tuple[int, np.ndarray | None, list[str], str]:
    """(n, eigenvalues or None, flags, message) for one accumulator."""
    if acc.n < 2:
        return (acc.n, None, ["degenerate"], f"only {acc.n} token(s): no covariance")
    if not (bool(acc.xp.isfinite(acc.gram).all()) and bool(acc.xp.isfinite(acc.sum).all())):
        return (acc.n, None, ["non_finite"], "statistics overflowed (activations too large)")
    try:
        spec = acc.finalize()
    except np.linalg.LinAlgError:
        return (acc.n, None, ["degenerate"], "the eigenvalue solver did not converge on this covariance")
    ev = spec.eigenvalues
    flags = token_flags(spec.n, spec.width)
    if not np.isfinite(ev).all():
        return (spec.n, None, ["non_finite"] + flags, "")
    if ev.sum() <= 0 or ev[0] <= 1e-300:
        return (spec.n, None, ["degenerate"] + flags, "")
    return (spec.n, ev, flags, "")


def _layer_result(tap, n, ev, flags, message, opts: AnalysisOptions) -> LayerResult:
    layer = LayerResult(
        layer=tap.layer, tensor=tap.tensor, width=tap.width, site=tap.site,
        activation=tap.activation, op=tap.op, tokens=int(n),
    )
    if ev is not None:
        m = spectral_metrics(ev, opts.top_fraction, opts.energy_levels)
        for key in METRIC_KEYS:
            setattr(layer, key, getattr(m, key))
        layer.energy_widths = dict(m.energy_widths)
    layer.flags = list(dict.fromkeys(flags))
    layer.status = worst_status(layer.flags)
    layer.message = message or status_message(layer.flags, int(n), tap.width)
    return layer


def _model_provenance(src, taps, opts: AnalysisOptions) -> dict[str, Any]:
    meta = {p.key: p.value for p in src.model.metadata_props}
    prov = {
        "path": str(src.path),
        "sha256": src.sha256,
        "opset": src.opset,
        "producer": f"{src.model.producer_name} {src.model.producer_version}".strip(),
        "external_data": src.has_external_data,
        "n_taps": len(taps),
        "site": opts.site,
    }
    for key in ("sui_onnx.dequantized_from", "sui_onnx.source", "sui_onnx.architecture"):
        if key in meta:
            prov[key.split(".", 1)[1]] = meta[key]
    prov.update(opts.extra_provenance)
    return prov


# -- checkpoints ---------------------------------------------------------------------------
class _RunState:
    """What a checkpoint holds: finished groups' spectra, the current group's statistics, how far
    through the (deterministic) batch sequence it got, and the SHA-256 of the token ids consumed
    so far (``stream``; ``stream_full`` once a whole pass is done), which a resume checks before it
    adds anything: a checkpoint continues only the data it was made on."""

    def __init__(self) -> None:
        self.group = 0
        self.batches_done = 0
        self.tokens_done = 0
        self.bad: dict[int, str] = {}
        self.finished: dict[int, Any] = {}
        self.accs: dict[int, CovarianceAccumulator] = {}
        self.identity: dict[str, Any] = {}
        self.path: Path | None = None  # the checkpoint resumed from
        self.stream_prefix: tuple[int, str] | None = None  # (batches, sha256) the resumed pass consumed
        self.stream_full: tuple[int, str] | None = None  # (batches, sha256) of one whole pass
        self._hashed = 0
        self._digests: dict[int, str] = {}  # batches hashed -> digest (the last two)

    @classmethod
    def start(cls, opts: AnalysisOptions, sha: str, taps, calib: CalibrationSpec, stream,
              groups: list[list[int]] | None = None) -> "_RunState":
        st = cls()
        st.identity = {
            "model_sha256": sha,
            "taps": [t.tensor for t in taps],
            "widths": [t.width for t in taps],
            "seq_len": calib.seq_len,
            "batch_size": calib.batch_size,
            "sources": [str(s) for s in stream.sources],
            "token_budget": stream.budget,
            "max_memory": opts.max_memory,
            "groups": groups,
        }
        if calib.mix != "sequential":  # absent for the default, so earlier checkpoints stay valid
            st.identity["mix"] = calib.mix
        if opts.encoder is not None:  # absent for other models, so their checkpoints stay as they were
            st.identity["encoder_sha256"] = opts.extra_provenance.get("encoder", {}).get("sha256")
        if opts.resume is not None:
            st._load(opts.resume)
            if st.group >= len(st.identity["groups"] or [0]) and st.stream_full is not None:
                for _ in st.track(stream, st.group):  # nothing left to run: check the data all the same
                    pass
        return st

    def _load(self, path: Path) -> None:
        from .safeio import printable

        accs, meta = load_accumulators(path)
        label = f"--resume {printable(path)}"
        ident = meta.get("identity", {})
        if not isinstance(ident, dict):
            raise SuiError(f"{label}: not a checkpoint (no run identity)")
        planned = ident.get("groups")
        if self.identity["max_memory"] is None and ident.get("max_memory") is None and _is_plan(planned, self.identity):
            self.identity["groups"] = planned  # automatic cap: keep the interrupted run's passes
        for key, value in self.identity.items():
            if key == "groups" and planned is None:
                continue  # a checkpoint from before plans were recorded: max_memory decides
            if ident.get(key) != value:
                raise SuiError(
                    f"{label}: checkpoint was made with a different {key.replace('_', ' ')} "
                    f"({printable(repr(ident.get(key)))[:120]} vs {printable(repr(value))[:120]})"
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
                           "start afresh without --resume")
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
                if i not in self.bad and acc.n != self.tokens_done:
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
        raise SuiError(f"--resume {where}: the calibration data is not the data of the interrupted run ({why}; "
                       f"checked: {what}); resume with the same --calib sources and options, or start afresh")

    def digest(self, batches: int) -> dict[str, Any] | None:
        """The ``stream`` entry of a checkpoint made after ``batches`` batches of this pass."""
        sha = self._digests.get(batches)
        return None if sha is None else {"batches": batches, "sha256": sha}

    @staticmethod
    def rejected(exc: Exception, batch: int) -> str:
        """A tap's message once a batch gave NaN/Inf: its statistics are dropped for the whole run
        (a layer measured on part of the data would be a different measurement)."""
        return (f"{exc} in batch {batch + 1}; this layer's statistics were discarded, no metrics for it "
                "(the other layers go on)")

    def accumulators_for(self, group, taps, xp, exact: bool) -> list[CovarianceAccumulator]:
        out = []
        for i in group:
            acc = CovarianceAccumulator(taps[i].width, f"{i}:{taps[i].tensor}", xp, exact)
            if i in self.accs:
                acc.merge(self.accs.pop(i))
            out.append(acc)
        return out

    def save(self, path, group, accs, batches_done, tokens_done, bad, results, complete=False, final_accs=None):
        finished = {}
        for i, res in enumerate(results):
            if res is not None:
                n, ev, flags, message = res
                finished[str(i)] = {"n": int(n), "eigenvalues": None if ev is None else ev.tolist(),
                                    "flags": list(flags), "message": message}
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
        to_save = list(accs)
        if final_accs is not None and complete and len(final_accs[0]) == len(self.identity["taps"]):
            to_save = list(final_accs[1])  # one-pass run: keep the full statistics for merging
            meta["mergeable"] = True
            if self.stream_full is not None:  # merge refuses two shards of the same data
                meta["shards"] = [self.stream_full[1]]
        save_accumulators(path, to_save, meta)

    def interrupted(self, opts: AnalysisOptions, src, group, accs, batches_done, tokens_done, bad, results,
                    consistent: bool) -> None:
        """Save the checkpoint of an interrupted run (``--checkpoint``, else the default path) and
        raise Interrupted saying where it is; a failed save is said too (exit 130 either way)."""
        from .safeio import printable

        path = opts.checkpoint or default_checkpoint_path(src.path, avoid=opts.resume)
        shown = printable(path)
        if not consistent:  # a second signal in the middle of a batch: no whole-batch state to save
            raise Interrupted(
                "aborted in the middle of a batch; no new checkpoint written"
                + (f" (the last one, if any, is {shown})" if opts.checkpoint else "")
            )
        try:
            self.save(path, group, accs, batches_done, tokens_done, bad, results)
        except (SuiError, OSError) as exc:
            raise Interrupted(
                f"interrupted after {tokens_done} tokens; no checkpoint saved ({printable(str(exc))}); "
                "pass --checkpoint FILE in a writable folder to keep the statistics of an interrupted run"
            ) from None
        raise Interrupted(
            f"interrupted after {tokens_done} tokens; checkpoint saved to {shown} (continue with --resume {shown})"
        )


_EMPTY_SHA = hashlib.sha256().hexdigest()
CHECKPOINT_SUFFIX = ".sui-checkpoint.npz"


def default_checkpoint_path(model: str | Path, avoid: Path | None = None) -> Path:
    """Where an interrupted run without --checkpoint saves its statistics: MODEL.sui-checkpoint.npz
    (the model file's name without .onnx) in the current folder, shown in --help and in the
    message; a checkpoint being resumed from (``avoid``) is never overwritten: -2, -3, ... then."""
    stem = Path(model).name.removesuffix(".onnx") or "model"
    path = Path(f"{stem}{CHECKPOINT_SUFFIX}")
    k = 2
    while avoid is not None and os.path.lexists(path) and os.path.lexists(avoid) and os.path.samefile(path, avoid):
        path = Path(f"{stem}-{k}{CHECKPOINT_SUFFIX}")
        k += 1
    return path


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


def _finished_entry(item: dict, width: int, label: str) -> tuple[int, Any, list[str], str]:
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
    return n, ev, flags, message


def _is_plan(groups: Any, identity: dict) -> bool:
    """True when ``groups`` splits this run's taps, in order, into non-empty passes."""
    try:
        flat = [int(i) for g in groups for i in g]
        return all(len(g) for g in groups) and flat == list(range(len(identity["taps"])))
    except TypeError:
        return False


def _load_stats(path: Path, sha: str, names, widths):
    accs, meta = load_accumulators(path)
    ident = meta.get("identity", {})
    if not isinstance(ident, dict):
        raise SuiError(f"--stats {path}: not a statistics file of a run (no run identity)")
    if not accs and meta.get("complete") and meta.get("finished"):
        raise SuiError(f"--stats {path}: a run made in several passes keeps the eigenvalues, not the statistics, so it "
                       f"cannot be reported with --stats; rebuild its report with --resume {path} (same calibration "
                       "options: no batch is run again), or rerun in one pass with a larger --max-memory")
    if ident.get("model_sha256") not in (None, sha):
        raise SuiError(f"--stats {path}: statistics belong to another model (sha256 differs)")
    if [a.width for a in accs] != list(widths) or ident.get("taps", names) != list(names):
        raise SuiError(f"--stats {path}: statistics are for other taps than this model's {len(names)} FFN blocks")
    if not meta.get("complete", False) and not meta.get("merged", False):
        raise SuiError(f"--stats {path}: the run that wrote it did not finish; continue it with --resume")
    return accs, meta


class _StopOnSignal:
    """SIGINT and SIGTERM request a stop at the next batch boundary, so the statistics saved in
    the checkpoint are always whole batches; a second signal aborts at once. ``call`` runs a long
    computation (eigvalsh of a wide layer: minutes) in a worker thread while this thread keeps
    handling signals, so a stop is honoured during it too."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt

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

    def __enter__(self) -> "_StopOnSignal":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals stay as they are
                pass
        return self

    def __exit__(self, *exc) -> bool:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False
