"""analyze(model, calibration) -> Report: the one entry point that composes the stages.

graph (taps, tapped copy) -> calib (batches) -> runner (tap tensors) -> collect (accumulators,
eigenvalues) -> metrics -> advice. The CLI, the gate, scaling-on-models and slimming call this;
a Ray run is handed to distributed.py, which uses the same pieces (collect, checkpoint, stopping).
Memory: one batch of tap tensors plus D x D float64 statistics per tap, independent of the number
of calibration tokens; when the statistics of all taps exceed `max_memory`, the taps are split
into groups analyzed in successive passes over the same calibration data (memory.plan_groups).
The library installs no signal handler and writes nothing it was not told to: where a run stops is
the caller's ``hooks.stop`` (stopping.py), and an interrupted run without a ``checkpoint`` hands
its statistics to the caller in the Interrupted error.
"""

from __future__ import annotations

import datetime as _dt
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ._version import __version__
from .advice import status_message, summarize, width_advice, worst_status
from .calib import CalibrationSpec, CalibrationStream
from .checkpoint import RunState, load_stats, run_tokens
from .collect import TapResult, accumulate, calibration_record, finish_group
from .config import AnalysisOptions, Hooks, MetricConfig, ProgressFn, RunControl, RuntimeConfig, TapConfig
from .errors import SuiError, option
from .memory import accumulator_bytes, plan_groups
from .metrics import spectral_metrics
from .report import METRIC_KEYS, LayerResult, Report
from .stopping import Interrupted, StopRequest

__all__ = [
    "analyze", "resolve_encoder", "AnalysisOptions", "TapConfig", "RuntimeConfig", "MetricConfig", "RunControl",
    "Hooks", "ProgressFn", "Interrupted", "Measurement",
    "accumulator_bytes", "plan_groups",  # defined in memory.py; kept here for callers of the old place
]


@dataclass
class Measurement:
    """What a calibration run (or saved statistics) gives: one result per tap, the report's
    ``runtime`` and ``calibration`` sections."""

    results: list[TapResult]
    runtime: dict[str, Any]
    calibration: dict[str, Any]


def analyze(model: str | Path, calib: CalibrationSpec | None = None, options: AnalysisOptions | None = None) -> Report:
    """Analyze one ONNX model on calibration data and return the report (with eigenvalues)."""
    calib = calib or CalibrationSpec()
    opts = options or AnalysisOptions()
    started = time.perf_counter()
    src, taps, opts = _prepare(model, opts)
    measured = _measure(src, taps, calib, opts)
    return _report(src, taps, opts, measured, time.perf_counter() - started)


def _prepare(model: str | Path, opts: AnalysisOptions):
    """The model (lean: the weights stay in the file, read once by onnxruntime; a Ray run ships the
    tapped model to workers that may not see this file, so it keeps the weights in the proto), its
    taps, and the options with the seq2seq encoder it needs (path and digest in the provenance)."""
    from .graph import find_taps, load_model

    src = load_model(model, lean=opts.run.ray is None and opts.run.stats is None)
    t = opts.taps
    taps = find_taps(src.model, site=t.site, include=t.include, exclude=t.exclude, explicit=t.explicit)
    if opts.run.stats is None:
        encoder = resolve_encoder(src, opts.runtime.encoder)
        if encoder is not None:
            from .graph.source import file_sha256

            opts = opts.with_(encoder=encoder, extra_provenance={
                **opts.extra_provenance, "encoder": {"path": str(encoder), "sha256": file_sha256(encoder)}})
    return src, taps, opts


def _measure(src, taps, calib: CalibrationSpec, opts: AnalysisOptions) -> Measurement:
    if opts.run.stats is not None:
        return _from_stats(src, taps, opts)
    if opts.run.ray is not None:
        from .distributed import run_on_ray

        return Measurement(*run_on_ray(src, taps, calib, opts))
    return _LocalRun(src, taps, calib, opts).run()


def _from_stats(src, taps, opts: AnalysisOptions) -> Measurement:
    """The results of finished (or merged) statistics: no calibration run."""
    stats = opts.run.stats
    accs, meta = load_stats(stats, src.sha256, [t.tensor for t in taps], [t.width for t in taps])
    results: list[Any] = [None] * len(accs)
    finish_group(accs, range(len(accs)), {}, results, statistics=opts.hooks.statistics)
    runtime = {"device": "none", "providers": [], "source": str(stats)}
    calibration = {**meta.get("calibration", {}), "tokens": run_tokens(accs, meta), "from_stats": str(stats)}
    return Measurement(results, runtime, calibration)


def _report(src, taps, opts: AnalysisOptions, measured: Measurement, elapsed: float) -> Report:
    m = opts.metrics
    layers = [_layer_result(tap, res, m) for tap, res in zip(taps, measured.results)]
    eigenvalues = [res.eigenvalues for res in measured.results]
    runtime, calibration = measured.runtime, measured.calibration
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
            "site": opts.taps.site,
            "top_fraction": m.top_fraction,
            "energy_levels": list(m.energy_levels),
            "advice": {"q": m.advice_q, "quantile": m.advice_quantile, "align": m.align},
        },
        layers=layers,
    )
    report.summary = summarize(layers)
    report.advice = width_advice(layers, eigenvalues, m.advice_q, m.advice_quantile, m.align,
                                 run_tokens=calibration.get("tokens"))
    report.eigenvalues = eigenvalues
    return report


def resolve_encoder(src, requested: Path | None) -> Path | None:
    """The encoder a seq2seq decoder needs (``requested``, else optimum's ``encoder_model.onnx``
    beside it), or the embed_tokens model a decoder that takes inputs_embeds needs (the
    transformers.js layout of vision-language models); None for every other model. Errors say
    what to pass."""
    from .graph.source import resolve_model_path
    from .layout import EMBEDDINGS_FILE, ENCODER_FILE, companion_encoder
    from .runner import companion_input, companion_role, is_embeddings_input

    flag = option("encoder")
    needs = companion_input(src.model)
    if needs is None:
        if requested is not None:
            raise SuiError(f"{flag} {requested}: the model has no encoder_hidden_states or inputs_embeds input "
                           "(not a seq2seq or vision-language decoder)")
        return None
    if requested is not None:
        try:
            path = resolve_model_path(requested)
        except SuiError as exc:
            raise SuiError(f"{flag}: {exc}") from None
    else:
        embeddings = is_embeddings_input(needs)
        path = companion_encoder(src.path, embeddings=embeddings)
        if path is None:
            file, arg = (EMBEDDINGS_FILE, "EMBED_TOKENS.onnx") if embeddings else (ENCODER_FILE, "ENCODER.onnx")
            raise SuiError(f"model input {needs!r} takes {companion_role(needs)} and there is no {file} "
                           f"beside the model: pass {flag} {arg}")
    if path.resolve() == Path(src.path).resolve():
        raise SuiError(f"{flag} {path}: that is the model itself; pass its encoder")
    return path


# -- the calibration run -------------------------------------------------------------------
@dataclass
class _Cursor:
    """How far the current pass got: whole batches and their tokens, the taps dropped for NaN/Inf,
    and whether a batch is half-added (a stop then has nothing consistent to save)."""

    batches: int
    tokens: int
    bad: dict[int, str]
    consistent: bool = True


class _LocalRun:
    """The calibration run in this process: one pass over the batches per layer group, resumed
    where a checkpoint left off, checkpointed every ``checkpoint_every`` batches and at each pass's
    end, stopping where ``hooks.stop`` asks."""

    def __init__(self, src, taps, calib: CalibrationSpec, opts: AnalysisOptions):
        from .runner import check_calibration, check_feedable

        self.src, self.taps, self.calib, self.opts = src, taps, calib, opts
        self.stop = opts.hooks.stop or StopRequest()
        widths = [t.width for t in taps]
        check_feedable(src.model)  # a model sui-onnx cannot feed is named before its tokenizer is looked for
        self.stream = CalibrationStream(calib, src.folder, widths)
        check_calibration(src.model, self.stream, calib.seq_len)  # ids and window length against the model's tables
        budget, auto = opts.runtime.max_memory, opts.runtime.max_memory is None
        if auto:
            budget = _memory_budget(src, widths, calib, opts.runtime.device)
        # on a resume without max_memory the checkpoint's plan is kept (free memory may have changed)
        self.state = RunState.start(opts, src.sha256, taps, calib, self.stream, groups=plan_groups(widths, budget, auto))
        self.groups: list[list[int]] = self.state.identity["groups"]
        self.results: list[Any] = [None] * len(taps)
        self._record: dict[str, Any] | None = None
        self.runtime: dict[str, Any] = {
            "device": None, "providers": [], "passes": len(self.groups), "precision": opts.runtime.precision,
            "max_memory": budget, "max_memory_source": "auto" if auto else "option"}

    def run(self) -> Measurement:
        with self.stop:
            for g, group in enumerate(self.groups):
                if g < self.state.group:  # finished before a resume
                    for i in group:
                        self.results[i] = self.state.finished[i]
                else:
                    self._pass(g, group)
        return Measurement(self.results, self.runtime, self._calibration())

    def _calibration(self) -> dict[str, Any]:
        """The run's calibration record, once every pass is done; made once (describing the sources
        hashes them, which reads a large corpus again), for the final checkpoint and the report."""
        if self._record is None:
            self._record = calibration_record(self.stream, self.calib, self.stream.tokens_fed)
        return self._record

    def _session(self, group: Sequence[int]):
        """A session over the tapped copy of this group's taps (in memory: nothing written)."""
        from .graph import tapped_model
        from .runner import TapRunner

        rt = self.opts.runtime
        group_taps = [self.taps[i] for i in group]
        tapped = tapped_model(self.src, group_taps).SerializeToString()
        runner = TapRunner(tapped, [t.tensor for t in group_taps], rt.device, rt.threads,
                           external_folder=self.src.data_folder, encoder=rt.encoder)
        del tapped  # onnxruntime holds its own copy of the weights now
        self.runtime["device"] = "cuda" if runner.device.cuda else "cpu"
        self.runtime["providers"] = list(runner.device.providers)
        return runner

    def _pass(self, g: int, group: list[int]) -> None:
        state, checkpoint = self.state, self.opts.run.checkpoint
        runner = self._session(group)
        accs = state.accumulators_for(group, self.taps, runner.xp, self.opts.runtime.exact)
        resumed = g == state.group
        cursor = _Cursor(state.batches_done if resumed else 0, state.tokens_done if resumed else 0, dict(state.bad))
        desc = f"pass {g + 1}/{len(self.groups)}" if len(self.groups) > 1 else "calibrating"
        try:
            self._batches(g, group, runner, accs, cursor, desc)
            state.bad.update(cursor.bad)
            self._finish(group, accs, cursor, desc, threaded=runner.xp is np)
            self.stop.check()
        except KeyboardInterrupt:
            raise state.interrupted(self.opts, self.src.path, g, accs, cursor.batches, cursor.tokens, cursor.bad,
                                    self.results, cursor.consistent) from None
        if checkpoint:
            complete = g + 1 == len(self.groups)
            state.save(checkpoint, g + 1, [], 0, 0, state.bad, self.results, complete=complete, final_accs=(group, accs),
                       calibration=self._calibration() if complete else None)

    def _batches(self, g: int, group: list[int], runner, accs, cursor: _Cursor, desc: str) -> None:
        """Every batch of the pass not yet in the statistics into the group's accumulators."""
        run, hooks = self.opts.run, self.opts.hooks
        widths = [self.taps[i].width for i in group]
        for b, batch in enumerate(self.state.track(self.stream, g)):  # hashed: checkpoints know their data
            if b < cursor.batches:
                continue  # already in the resumed statistics
            self.stop.check()
            cursor.consistent = False
            accumulate(accs, group, runner.run(batch.input_ids, widths), cursor.bad, b, hooks.activations)
            cursor.tokens += batch.tokens
            cursor.batches = b + 1
            cursor.consistent = True
            self.stop.check()
            if hooks.progress:
                hooks.progress(cursor.tokens, self.stream.budget, desc)
            if run.checkpoint and cursor.batches % run.checkpoint_every == 0:
                self.state.save(run.checkpoint, g, accs, cursor.batches, cursor.tokens, cursor.bad, self.results)

    def _finish(self, group: list[int], accs, cursor: _Cursor, desc: str, threaded: bool) -> None:
        """The group's eigenvalues; a stop here saves the pass's statistics (all its batches)."""
        progress = self.opts.hooks.progress

        def before(j: int) -> None:
            self.stop.check()
            if progress:  # eigvalsh of a wide layer takes seconds to minutes: say so
                progress(cursor.tokens, self.stream.budget, f"{desc}: eigenvalues {j + 1}/{len(group)}")

        finish_group(accs, group, cursor.bad, self.results, statistics=self.opts.hooks.statistics, before=before,
                     call=self.stop.call, threaded=threaded)


def _memory_budget(src, widths: Sequence[int], calib: CalibrationSpec, device: str) -> int | None:
    """The statistics cap when ``max_memory`` is not given (sui_onnx/memory.py): half of the memory
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
                f"activations, more than the {free / 2**30:.1f} GiB available: lower {option('seq_len')} or "
                f"{option('batch_size')}")
    return cap


def _layer_result(tap, res: TapResult, m: MetricConfig) -> LayerResult:
    layer = LayerResult(
        layer=tap.layer, tensor=tap.tensor, width=tap.width, site=tap.site,
        activation=tap.activation, op=tap.op, tokens=int(res.n), group=tap.group,
    )
    if res.eigenvalues is not None:
        metrics = spectral_metrics(res.eigenvalues, m.top_fraction, m.energy_levels)
        for key in METRIC_KEYS:
            setattr(layer, key, getattr(metrics, key))
        layer.energy_widths = dict(metrics.energy_widths)
    layer.flags = list(dict.fromkeys(res.flags))
    layer.status = worst_status(layer.flags)
    layer.message = res.message or status_message(layer.flags, int(res.n), tap.width)
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
        "site": opts.taps.site,
    }
    for key in ("sui_onnx.dequantized_from", "sui_onnx.source", "sui_onnx.architecture"):
        if key in meta:
            prov[key.split(".", 1)[1]] = meta[key]
    prov.update(opts.extra_provenance)
    return prov
