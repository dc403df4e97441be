"""Held-out loss of a model, alone or against a reference: what narrowing an FFN costs.

A decoder (an output named ``logits`` or ``*logits``, [B, L, V]; or, unnamed, the float
[B, L, V] output whose V is the row count of the embedding table) is scored by next-token
cross-entropy in nats per prediction, with the reference also by the paired CE difference,
KL(reference || model) and top-1 agreement. An encoder (hidden states only) is compared with its
reference by per-token cosine similarity and relative error. Each eval source is measured on its
own (domains differ) and pooled. Standard errors treat windows as the independent units (ratio
estimator, docs/eval.md).

Memory: one batch of logits per model (the batch is shrunk so it stays under 256 MiB) and
chunk-sized float64 temporaries; log-softmax is computed a few rows at a time, never as a second
[B, L, V] array.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from . import __version__
from .calib import CalibrationSpec, CalibrationStream, tokenizer_path
from .errors import CalibrationError, ModelError, NumericalError, SuiError, option
from .safeio import first_repeat, repeat_phrase

SCHEMA = "sui-onnx/eval"
SCHEMA_VERSION = 1
DEFAULT_EVAL_TOKENS = 16_384  # per source, when no --tokens is given (a source smaller than that is used whole)
LOGITS_CAP_BYTES = 256 * 2**20  # one batch of logits (float32) per model stays under this
CHUNK_ROWS = 64  # rows of logits upcast to float64 at a time
_CHUNK_BYTES = 8 * 2**20  # ... fewer rows for a very large vocabulary

ProgressFn = Callable[[int, int, str], None]  # (tokens done, tokens total, description)


# -- results -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelInput:
    """A model to evaluate: a path (file or folder holding model.onnx), or serialized ModelProto bytes
    whose external-data references (if any) resolve in `external_folder`."""

    path: Path | None = None
    data: bytes | None = None
    external_folder: Path | None = None
    label: str = ""  # shown in messages/JSON ("model", "reference", "slim w=128", ...)


@dataclass
class SourceEval:
    """The numbers of one eval source (or of all pooled); every float is a Python float."""

    source: dict  # {"path", "kind", "sha256"} as CalibrationStream.describe() gives, plus "held_out"
    windows: int
    tokens: int  # predictions scored (decoder: sum over windows of len - 1; encoder: tokens)
    ce: float | None = None
    ce_se: float | None = None
    ppl: float | None = None
    ppl_se: float | None = None
    ref_ce: float | None = None
    delta_ce: float | None = None
    delta_ce_se: float | None = None
    kl: float | None = None  # decoder with reference: KL(reference || model), nats per scored token
    top1: float | None = None  # decoder with reference: share of positions whose argmax agrees
    cosine: float | None = None  # encoder with reference: mean per-token cosine of the hidden vectors
    rel_error: float | None = None  # encoder with reference: sqrt(sum |h - h_ref|^2 / sum |h_ref|^2)

    def to_dict(self) -> dict:
        """Plain JSON-ready dict (field names as keys)."""
        return asdict(self)


@dataclass
class EvalResult:
    """One model measured on every eval source (optionally against a reference)."""

    kind: str  # "decoder" (has logits) | "encoder" (hidden states only)
    model: dict  # {"label", "path" or None, "sha256" or None, "output"}
    reference: dict | None
    settings: dict  # seq_len, batch_size used, tokens budget per source, device/providers, ...
    sources: list[SourceEval]
    pooled: SourceEval | None  # over all sources (the same numbers with one source)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """The JSON document (schema sui-onnx/eval, version 1)."""
        return {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "tool": {"name": "sui-onnx", "version": __version__},
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "kind": self.kind,
            "model": self.model,
            "reference": self.reference,
            "settings": self.settings,
            "sources": [s.to_dict() for s in self.sources],
            "pooled": self.pooled.to_dict() if self.pooled is not None else None,
            "warnings": list(self.warnings),
        }

    def to_json(self) -> str:
        """Indented JSON, strict (no NaN/Infinity), newline-terminated."""
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"


# -- numerics (module level so they can be tested and reused) ----------------------------------
def chunk_rows(width: int, rows: int = CHUNK_ROWS) -> int:
    """Rows per float64 chunk: ``rows``, fewer when a row is so wide that the chunk would pass 8 MiB."""
    return max(1, min(rows, _CHUNK_BYTES // max(1, 8 * int(width))))


def batch_size_for(seq_len: int, vocab: int, batch_size: int, cap: int | None = None) -> int:
    """Windows per run so one float32 [B, L, V] batch of logits stays under ``cap`` (default
    LOGITS_CAP_BYTES): clamp(floor(cap / (L * V * 4)), 1, batch_size)."""
    cap = LOGITS_CAP_BYTES if cap is None else cap
    return int(max(1, min(batch_size, cap // max(1, 4 * int(seq_len) * int(vocab)))))


def log_softmax_f64(chunk: np.ndarray) -> np.ndarray:
    """log-softmax of a small [r, V] chunk, upcast to float64 (max-shifted, so huge logits are exact)."""
    x = np.array(chunk, dtype=np.float64)  # a copy: modified in place below
    x -= x.max(axis=1, keepdims=True)
    x -= np.log(np.exp(x).sum(axis=1, keepdims=True))
    return x


def log_softmax_chunks(x: np.ndarray, rows: int = CHUNK_ROWS) -> Iterator[tuple[int, int, np.ndarray]]:
    """(start, stop, log-softmax of rows start:stop) over a 2-D [N, V] array, a chunk at a time."""
    step = chunk_rows(x.shape[-1], rows)
    for r0 in range(0, x.shape[0], step):
        r1 = min(x.shape[0], r0 + step)
        yield r0, r1, log_softmax_f64(x[r0:r1])


def ratio_se(sums: Sequence[float], counts: Sequence[float]) -> float | None:
    """Standard error of sum(sums) / sum(counts) with windows as the units (ratio estimator):
    sqrt(sum (s_w - m n_w)^2 / (W (W - 1))) / mean(n_w); None for fewer than two windows."""
    s = np.asarray(sums, dtype=np.float64)
    n = np.asarray(counts, dtype=np.float64)
    w = s.size
    if w < 2 or n.sum() <= 0:
        return None
    m = s.sum() / n.sum()
    return float(math.sqrt(float(((s - m * n) ** 2).sum()) / (w * (w - 1))) / float(n.mean()))


def _decoder_window(logits: np.ndarray, ids: np.ndarray, ref: np.ndarray | None, rows: int) -> tuple[float, ...]:
    """Sums over one window's L-1 predictions: (-log p model, -log p ref, KL(ref||model), top-1 hits)."""
    preds = ids.shape[0] - 1
    s_model = s_ref = kl = 0.0
    hits = 0
    step = chunk_rows(logits.shape[-1], rows)
    for r0 in range(0, preds, step):
        r1 = min(preds, r0 + step)
        target = ids[r0 + 1:r1 + 1]
        pick = np.arange(r1 - r0)
        lp = log_softmax_f64(logits[r0:r1])
        s_model -= float(lp[pick, target].sum())
        if ref is None:
            continue
        lr = log_softmax_f64(ref[r0:r1])
        s_ref -= float(lr[pick, target].sum())
        p = np.exp(lr)
        lr -= lp  # log p_ref - log p_model, in place
        np.multiply(p, lr, out=lr, where=p > 0)  # 0 log 0 = 0, even against a -inf logit
        lr[p <= 0] = 0.0
        kl += float(lr.sum())
        hits += int((logits[r0:r1].argmax(axis=1) == ref[r0:r1].argmax(axis=1)).sum())
    return s_model, s_ref, kl, float(hits)


def _encoder_window(h: np.ndarray, ref: np.ndarray, rows: int) -> tuple[float, float, float]:
    """Sums over one window's tokens: (cosine, |h - h_ref|^2, |h_ref|^2). Two zero vectors agree
    (cosine 1); a zero vector against a non-zero one has cosine 0."""
    cos = err2 = ref2 = 0.0
    step = chunk_rows(h.shape[-1], rows)
    for r0 in range(0, h.shape[0], step):
        a = np.asarray(h[r0:r0 + step], dtype=np.float64)
        b = np.asarray(ref[r0:r0 + step], dtype=np.float64)
        na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
        dot = (a * b).sum(axis=1)
        denom = na * nb
        c = np.where(denom > 0, dot / np.where(denom > 0, denom, 1.0), np.where((na == 0) & (nb == 0), 1.0, 0.0))
        cos += float(c.sum())
        err2 += float(((a - b) ** 2).sum())
        ref2 += float((b * b).sum())
    return cos, err2, ref2


# -- sessions ----------------------------------------------------------------------------------
_FLOAT_TYPES = ("tensor(float)", "tensor(float16)", "tensor(double)")


def _rank(shape: Any) -> int | None:
    return len(shape) if isinstance(shape, (list, tuple)) else None


def _static(dim: Any) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None


def logits_outputs(outputs: Sequence[Any], vocab: int | None) -> list[Any]:
    """The outputs that are logits, best first (``.name``, ``.shape``, ``.type`` as onnxruntime's
    NodeArg has them): named ``logits`` or ending in it, rank 3 or unknown; failing that (torch.onnx
    .export without output_names names them after the last op) a float [batch, seq, V] output with V
    the rows of the embedding table. None: an encoder."""
    logits = [o for o in outputs if o.name.lower().endswith("logits") and _rank(o.shape) in (3, None)]
    logits.sort(key=lambda o: o.name != "logits")
    if not logits and vocab is not None:
        logits = [o for o in outputs if o.type in _FLOAT_TYPES and _rank(o.shape) == 3 and _static(o.shape[-1]) == vocab]
    return logits


def graph_has_logits(model: Any) -> bool:
    """Whether eval will score ``model`` (an onnx ModelProto) as a decoder, read from its graph
    outputs without a session (symbolic dims count as unknown, as onnxruntime reports them)."""
    from .runner import graph_args, table_limits

    return bool(logits_outputs(graph_args(model.graph.output), table_limits(model).vocab))


def _encoder_decoder_error(where: str, name: str) -> ModelError:
    from .runner import companion_role, is_embeddings_input

    split = "models whose embedding table is a model of its own" if is_embeddings_input(name) else "encoder-decoder models"
    return ModelError(f"{where}: input {name!r} takes {companion_role(name)}; eval does not run {split}")


def _cache_dims(src: Any) -> dict[str, dict[int, int]]:
    """The sizes of KV-cache axes a session leaves symbolic (onnxruntime-genai's kv_cache_dim), {} when
    the model has no such input."""
    from .graph.tapped import model_cache_dims

    shapes = [[d.dim_value if d.HasField("dim_value") else None for d in i.type.tensor_type.shape.dim]
              for i in src.model.graph.input if i.type.HasField("tensor_type")]
    if not any(len(s) >= 3 and sum(d is None or d <= 0 for d in s) > 2 for s in shapes):
        return {}
    return model_cache_dims(src)


class _Session:
    """One model's onnxruntime session, its feeds and the output eval reads (logits or hidden states)."""

    def __init__(self, model: ModelInput, default_label: str, device: str, threads: int | None,
                 like: "_Session | None" = None):
        """``like``: the reference session; a model that has the output the reference reads is read
        the same way (a narrowed copy held in memory need not be parsed again to be classified)."""
        from .runner import FeedBuilder, TableLimits, create_session, table_limits

        if (model.path is None) == (model.data is None):
            raise SuiError("ModelInput needs exactly one of path and data")
        self.label = model.label or default_label
        self.path: Path | None = None
        tables = TableLimits()
        if model.path is not None:
            from .graph import load_model

            src = load_model(model.path, lean=True)  # vets the file and its external data; weights stay on disk
            self.path, self.sha256 = src.path, src.sha256
            tables = table_limits(src.model)
            pinned = _cache_dims(src)
            del src
            where = f"{self.label} {self.path}"
            arg: Path | bytes = self.path
        else:
            self.sha256 = hashlib.sha256(model.data).hexdigest()
            where = self.label
            arg = model.data
            pinned = like.pinned if like is not None else {}  # a narrowed copy: attention untouched
            tables = like.tables if like is not None else tables  # ... and embeddings untouched
        try:
            # without the arena: each run's [B, L, V] buffers are freed, not held per session (Gemma-3-270M,
            # 262k vocabulary, two sessions: 0.90x the peak, 1.05x the time; bench/bench_eval_arena.py)
            self.session, self.device = create_session(arg, device, threads, model.external_folder, arena=False)
        except SuiError as exc:
            raise type(exc)(f"{where}: {exc}") from None
        self.where = where
        try:
            self.feed = FeedBuilder(self.session.get_inputs(), pinned)
        except SuiError as exc:
            raise type(exc)(f"{where}: {exc}") from None
        if self.feed.needs_encoder:
            raise _encoder_decoder_error(where, self.feed.needs_encoder)
        outputs = self.session.get_outputs()
        logits = logits_outputs(outputs, tables.vocab)
        same = [o for o in outputs if like is not None and o.name == like.output]
        if same:
            self.kind, out = like.kind, same[0]
        elif logits:
            self.kind, out = "decoder", logits[0]
        else:
            self.kind = "encoder"
            named = [o for o in outputs if o.name == "last_hidden_state"]
            floats = [o for o in outputs if o.type in _FLOAT_TYPES and _rank(o.shape) == 3]
            if not (named or floats):
                raise ModelError(f"{where}: no logits output and no float [batch, seq, hidden] output to compare")
            out = (named or floats)[0]
        self.output = out.name
        self.width = _static(out.shape[-1]) if _rank(out.shape) == 3 else None  # None: seen on the first run
        self.tables = tables  # the embedding and position tables' rows, when the graph says
        self.pinned = pinned  # KV-cache axes the session leaves symbolic, sized from the graph / genai_config.json

    def info(self) -> dict:
        return {"label": self.label, "path": str(self.path) if self.path is not None else None,
                "sha256": self.sha256, "output": self.output}

    def run(self, ids: np.ndarray) -> np.ndarray:
        """The output for one [B, L] batch, checked to be [B, L, width]."""
        from .runner import run_error

        try:
            out = self.session.run([self.output], self.feed(ids))[0]
        except Exception as exc:  # onnxruntime's own exception types
            raise CalibrationError(f"{self.label}: {run_error(exc, ids.shape)}") from None
        out = np.asarray(out)
        if out.ndim != 3 or out.shape[:2] != ids.shape:
            raise ModelError(f"{self.where}: output {self.output!r} has shape {tuple(out.shape)} for token ids of "
                             f"shape {tuple(ids.shape)}; expected [batch, seq, {'vocab' if self.kind == 'decoder' else 'hidden'}]")
        if not np.issubdtype(out.dtype, np.floating):
            raise ModelError(f"{self.where}: output {self.output!r} is {out.dtype}, not floating point")
        return out


# -- the evaluator -----------------------------------------------------------------------------
@dataclass
class _Windows:
    """Per-window sums of one source (the units of the standard errors)."""

    counts: list[float] = field(default_factory=list)
    model: list[float] = field(default_factory=list)  # decoder: -log p sums; encoder: cosine sums
    ref: list[float] = field(default_factory=list)  # decoder: reference -log p sums; encoder: |h-h_ref|^2
    kl: list[float] = field(default_factory=list)  # decoder: KL sums; encoder: |h_ref|^2
    top1: list[float] = field(default_factory=list)

    def extend(self, other: "_Windows") -> None:
        for name in ("counts", "model", "ref", "kl", "top1"):
            getattr(self, name).extend(getattr(other, name))


def held_out_warnings(descriptions: Sequence[dict], domains: bool = True) -> list[str]:
    """Eval sources that are the calibration data, and (``domains``: a narrowed model measured
    against its original) a measurement resting on one held-out domain or none."""
    out = [f"eval source {d['path']} is the calibration data (same sha256): this is not a held-out measurement"
           for d in descriptions if not d.get("held_out", True)]
    held = sum(1 for d in descriptions if d.get("held_out", True))
    if domains and held == 1:
        out.append(("only one eval domain measured" if len(descriptions) == 1 else
                    "only one held-out eval domain measured (the other sources are the calibration data)")
                   + f": narrowing is specific to the calibration domain; add {option('eval_data')} text from "
                   "another domain")
    return out


def calibration_digests_for(sources: Any, eval_paths: Sequence[Path]) -> list[str]:
    """The digests eval data is held out from: each calibration source that gave tokens (a source
    the budget never reached is not calibration data) and, for a folder source that is still there,
    each of its .txt files the size of an eval file (an eval file copied out of the calibration
    folder is calibration data too). ``sources``: dicts (slim.json) or the report's source sections."""
    from .calib import source_digest, text_files

    sizes = set()
    for p in eval_paths:
        try:
            if Path(p).is_file():
                sizes.add(Path(p).stat().st_size)
        except OSError:
            pass
    digests = []
    for s in sources or []:
        get = getattr(s, "get", None)
        if get is None or get("tokens", 1) == 0:
            continue
        if isinstance(get("sha256"), str):
            digests.append(get("sha256"))
        folder = Path(str(get("path"))) if get("path") else None
        if not sizes or folder is None or not folder.is_dir():
            continue
        try:
            files = text_files(folder)
        except CalibrationError:
            continue
        for f in files:
            try:
                if f.stat().st_size in sizes:
                    digests.append(source_digest(f))
            except (OSError, CalibrationError):
                continue
    return digests


class Evaluator:
    """Holds the reference session (if any) and the tokenized-data recipe; measures models one at a time.
    Memory: at most one batch of logits per model (reference + candidate), never all logits."""

    def __init__(self, sources: Sequence[Path], tokenizer_folder: Path | None, reference: ModelInput | None = None,
                 *, seq_len: int = 256, batch_size: int = 8, tokens: int | None = None, device: str = "cpu",
                 threads: int | None = None, progress: ProgressFn | None = None,
                 calibration_digests: Iterable[str] = (), kl: bool = True) -> None:
        """``kl=False`` (decoders with a reference): after the first measurement the reference's
        per-window CE and per-position argmax are kept (a few bytes per token) and the reference
        is not run again; dCE and top-1 stay exact, KL is not computed (None)."""
        self.kl = bool(kl)
        self._ref_cache: list[list[tuple[float, np.ndarray]]] | None = None
        self.source_paths = [Path(s) for s in sources]
        if not self.source_paths:
            raise CalibrationError(f"eval needs at least one data source ({option('eval_data')})")
        if tokens is not None and tokens < 2:
            raise CalibrationError(f"{option('eval_tokens')} must be at least 2 (a prediction needs two tokens), got {tokens}")
        CalibrationSpec([], seq_len, batch_size, tokens)  # checks the numbers, one line each
        self.tokenizer_folder = Path(tokenizer_folder) if tokenizer_folder is not None else None
        self.seq_len, self.batch_size = int(seq_len), int(batch_size)
        self.tokens = int(tokens) if tokens is not None else DEFAULT_EVAL_TOKENS
        self.device, self.threads, self.progress = device, threads, progress
        self.calibration_digests = {str(d).lower() for d in calibration_digests}
        self.descriptions: list[dict] = []
        for src in self.source_paths:  # every source checked (exists, readable, tokenizer) before any run
            if not src.exists():
                raise CalibrationError(f"{src}: no such eval data file or folder")
            if src.is_file() and src.suffix.lower() not in (".txt", ".jsonl", ".npy"):
                raise CalibrationError(f"{src}: unsupported eval data (use .txt, .jsonl, .npy token ids or a folder of .txt)")
            text = src.is_dir() or (src.is_file() and src.suffix.lower() in (".txt", ".jsonl"))
            if text and (self.tokenizer_folder is None or tokenizer_path(self.tokenizer_folder) is None):
                raise CalibrationError(f"{src}: text eval data needs the model's tokenizer.json (none beside the "
                                       "model or the reference); or pass token ids as .npy")
            entry = self._stream(src, self.batch_size).describe()[0]
            entry["held_out"] = entry["sha256"] not in self.calibration_digests
            self.descriptions.append(entry)
        repeat = first_repeat(list(range(len(self.descriptions))), lambda i: self.descriptions[i]["sha256"])
        if repeat is not None:  # every source is hashed for its description already
            j, i, digest = repeat
            src, other = self.source_paths[i], self.source_paths[j]
            raise CalibrationError(f"{src}: {repeat_phrase(other, src, digest)}: each eval source is measured once "
                                   "(pooled twice it would halve its standard error); give it once")
        self.reference = _Session(reference, "reference", device, threads) if reference is not None else None

    def _stream(self, src: Path, batch_size: int) -> CalibrationStream:
        spec = CalibrationSpec([src], self.seq_len, batch_size, self.tokens)
        return CalibrationStream(spec, self.tokenizer_folder, widths=[], purpose="eval data")

    def measure(self, model: ModelInput) -> EvalResult:
        """Run ``model`` (and the reference) over every source; per-source and pooled numbers."""
        started = time.perf_counter()
        m = _Session(model, "model", self.device, self.threads, like=self.reference)
        ref = self.reference
        if ref is not None and ref.kind != m.kind:
            raise ModelError(f"{m.where} is {'a' if m.kind == 'decoder' else 'an'} {m.kind} and {ref.where} "
                             f"{'a' if ref.kind == 'decoder' else 'an'} {ref.kind}: they cannot be compared")
        if m.kind == "encoder" and ref is None:
            raise ModelError(f"{m.where} has no logits output (an encoder): eval needs {option('reference')} to compare "
                             "hidden states")
        width = self._width(m, ref)
        noun = "vocabulary" if m.kind == "decoder" else "hidden width"
        streams = [self._stream(src, batch_size_for(self._window_len(src), width, self.batch_size))
                   for src in self.source_paths]
        totals = [self._expected_tokens(s) for s in streams]
        self._check_windows([s.tables for s in (m, ref) if s is not None])
        # ids must index every embedding table the graphs show, and (decoders) the logits
        limits = [width] if m.kind == "decoder" else []
        limits += [s.tables.vocab for s in (m, ref) if s is not None and s.tables.vocab is not None]
        vocab = min(limits) if limits else None
        if vocab is not None:
            for stream, desc in zip(streams, self.descriptions):
                for arr in stream.token_ids:  # .npy: whole arrays, before anything runs
                    self._check_ids(int(arr.max()), vocab, desc, m)
        done = 0
        per_source: list[_Windows] = []
        cached = ref is not None and not self.kl and m.kind == "decoder" and self._ref_cache is not None
        building = ref is not None and m.kind == "decoder" and self._ref_cache is None
        new_cache: list[list[tuple[float, np.ndarray]]] = []
        for i, (stream, desc) in enumerate(zip(streams, self.descriptions)):
            label = f"eval {m.label}: {Path(desc['path']).name}" + (f" ({i + 1}/{len(streams)})" if len(streams) > 1 else "")
            acc = _Windows()
            for batch in stream:
                ids = batch.input_ids
                if vocab is not None:
                    self._check_ids(int(ids.max()), vocab, desc, m)
                out = m.run(ids)
                ref_out = ref.run(ids) if ref is not None and not cached else None
                for o, name in ((out, m.where), (ref_out, ref.where if ref is not None else "")):
                    if o is not None and o.shape[-1] != width:
                        raise ModelError(f"{name}: output {noun} {o.shape[-1]}, expected {width} "
                                         f"(the {noun} of the model and the reference must match)")
                if cached:
                    self._score_cached(out, ids, self._ref_cache[i], acc)
                else:
                    self._score(out, ids, ref_out, m.kind, acc)
                    if building:
                        if len(new_cache) <= i:
                            new_cache.append([])
                        for b in range(ids.shape[0]):
                            if ids.shape[1] >= 2:
                                new_cache[i].append((acc.ref[len(new_cache[i])], ref_out[b, :-1].argmax(axis=1)))
                done += batch.tokens
                if self.progress:
                    self.progress(done, sum(totals), label)
                del out, ref_out
            if not acc.counts:
                raise CalibrationError(f"{desc['path']}: no window of 2 or more tokens: nothing to score")
            per_source.append(acc)
        if building:
            self._ref_cache = new_cache
        sources = [self._summary(desc, acc, m.kind, ref is not None) for desc, acc in zip(self.descriptions, per_source)]
        if cached:
            for x in sources:
                x.kl = None
        pooled_acc = _Windows()
        for acc in per_source:
            pooled_acc.extend(acc)
        pooled_desc = {"path": None, "kind": "pooled", "sha256": None,
                       "held_out": all(d["held_out"] for d in self.descriptions)}
        pooled = self._summary(pooled_desc, pooled_acc, m.kind, ref is not None)
        if cached:
            pooled.kl = None
        warnings = held_out_warnings(self.descriptions, domains=ref is not None)
        batch_sizes = [s.spec.batch_size for s in streams]
        npy_lens = {d.get("seq_len") for d in self.descriptions if d.get("kind") == "npy"}
        text = any(d.get("kind") != "npy" for d in self.descriptions)
        settings = {
            # the window length: --seq-len for text; for .npy ids alone their rows' length (None if they differ)
            "seq_len": self.seq_len if text else (npy_lens.pop() if len(npy_lens) == 1 else None),
            "batch_size": max(batch_sizes),
            "batch_sizes": batch_sizes,
            "batch_size_requested": self.batch_size,
            "tokens": self.tokens,
            "logits_cap_bytes": LOGITS_CAP_BYTES,  # per model; B = clamp(cap // (L * width * 4), 1, batch_size)
            ("vocab" if m.kind == "decoder" else "hidden_width"): width,
            "device": "cuda" if m.device.cuda else "cpu",
            "providers": list(m.device.providers),
            "threads": self.threads,
            "elapsed_s": round(time.perf_counter() - started, 3),
        }
        return EvalResult(kind=m.kind, model=m.info(), reference=ref.info() if ref is not None else None,
                          settings=settings, sources=sources, pooled=pooled, warnings=warnings)

    # -- helpers -------------------------------------------------------------------------------
    def precheck(self, model: Any) -> None:
        """Before a long calibration (report --eval, slim --eval): read every source to its token
        budget (decoding and tokenizing it) and check its windows against ``model``'s embedding and
        position tables, so bad eval data fails in seconds instead of after the calibration run.
        ``model``: a path, or the ModelSource the caller already loaded (lean). Nothing is run in
        onnxruntime and no session is held."""
        from .graph import load_model
        from .graph.source import ModelSource
        from .runner import companion_input, table_limits

        src = model if isinstance(model, ModelSource) else load_model(model, lean=True)
        encoder = companion_input(src.model)
        if encoder is not None:
            raise _encoder_decoder_error(str(src.path), encoder)
        tables = table_limits(src.model)
        del src
        self._check_windows([tables])
        for src, desc in zip(self.source_paths, self.descriptions):
            for batch in self._stream(src, self.batch_size):
                if tables.vocab is not None and int(batch.input_ids.max()) >= tables.vocab:
                    raise CalibrationError(
                        f"{desc['path']}: token id {int(batch.input_ids.max())} is outside the model's vocabulary "
                        f"({tables.vocab} rows in {tables.vocab_tensor!r}): the data was not tokenized for this model")

    def _check_windows(self, tables: Sequence[Any]) -> None:
        """Every window fits the position tables the graphs show (as calibration checks it)."""
        tables = [t for t in tables if t.positions is not None]
        if not tables:
            return
        t = min(tables, key=lambda x: x.positions)
        for src in self.source_paths:
            n = self._window_len(src)
            if n <= t.positions:
                continue
            if src.suffix.lower() == ".npy":
                raise CalibrationError(f"{src}: rows of {n} token ids are longer than the model's position table "
                                       f"({t.positions} positions in {t.positions_tensor!r})")
            raise CalibrationError(f"{option('eval_seq_len')} {self.seq_len} is longer than the model's position table "
                                   f"({t.positions} positions in {t.positions_tensor!r}): use {option('eval_seq_len')} "
                                   f"{t.positions} or less")

    def _window_len(self, src: Path) -> int:
        """The longest window a source gives: an .npy row, else --seq-len (capped by the budget)."""
        if src.suffix.lower() == ".npy":
            length = int(np.load(src, mmap_mode="r", allow_pickle=False).shape[1])
        else:
            length = self.seq_len
        return max(1, min(length, self.tokens))

    def _expected_tokens(self, stream: CalibrationStream) -> int:
        npy = sum(int(a.size) for a in stream.token_ids)
        return min(stream.budget, npy) if stream.token_ids else stream.budget

    def _width(self, m: _Session, ref: _Session | None) -> int:
        """The vocabulary (decoder) or hidden width (encoder) both models must share; when neither
        graph states it, one window of the first source is run to see it."""
        known = [s.width for s in (m, ref) if s is not None and s.width is not None]
        if len(set(known)) > 1:
            noun = "vocabulary" if m.kind == "decoder" else "hidden width"
            raise ModelError(f"{noun} differs: {m.label} has {m.width}, {ref.label} has {ref.width}; "
                             "eval compares models of the same tokenizer and output")
        if known:
            return known[0]
        first = next(iter(self._stream(self.source_paths[0], 1)))
        return int(m.run(first.input_ids[:1]).shape[-1])

    @staticmethod
    def _check_ids(max_id: int, vocab: int, desc: dict, m: _Session) -> None:
        if max_id >= vocab:
            raise CalibrationError(f"{desc['path']}: token id {max_id} is outside the vocabulary of {m.label} "
                                   f"(size {vocab}): the data was not tokenized for this model")

    @staticmethod
    def _score(out: np.ndarray, ids: np.ndarray, ref_out: np.ndarray | None, kind: str, acc: _Windows) -> None:
        for b in range(ids.shape[0]):
            if kind == "decoder":
                if ids.shape[1] < 2:
                    continue  # no next token to predict
                s_model, s_ref, kl, hits = _decoder_window(out[b], ids[b], None if ref_out is None else ref_out[b],
                                                           CHUNK_ROWS)
                acc.counts.append(float(ids.shape[1] - 1))
                acc.model.append(s_model)
                acc.ref.append(s_ref)
                acc.kl.append(kl)
                acc.top1.append(hits)
            else:
                cos, err2, ref2 = _encoder_window(out[b], ref_out[b], CHUNK_ROWS)
                acc.counts.append(float(ids.shape[1]))
                acc.model.append(cos)
                acc.ref.append(err2)
                acc.kl.append(ref2)

    @staticmethod
    def _score_cached(out: np.ndarray, ids: np.ndarray, cache: list[tuple[float, np.ndarray]], acc: _Windows) -> None:
        """Decoder windows against the kept reference sums and argmaxes (the reference is not run)."""
        for b in range(ids.shape[0]):
            if ids.shape[1] < 2:
                continue
            s_ref, ref_top = cache[len(acc.counts)]
            s_model = _decoder_window(out[b], ids[b], None, CHUNK_ROWS)[0]
            acc.counts.append(float(ids.shape[1] - 1))
            acc.model.append(s_model)
            acc.ref.append(s_ref)
            acc.kl.append(0.0)
            acc.top1.append(float((out[b, :-1].argmax(axis=1) == ref_top).sum()))

    @staticmethod
    def _summary(desc: dict, acc: _Windows, kind: str, with_ref: bool) -> SourceEval:
        n = np.asarray(acc.counts)
        total = float(n.sum())
        sums = [np.asarray(getattr(acc, k)) for k in ("model", "ref", "kl", "top1")]
        if not all(np.isfinite(s).all() for s in sums):
            raise NumericalError(f"{desc['path'] or 'eval'}: the model output holds NaN/Inf: no loss can be measured")
        out = SourceEval(source=dict(desc), windows=len(acc.counts), tokens=int(total))
        if kind == "decoder":
            s_model, s_ref, kl, top1 = sums
            out.ce = float(s_model.sum() / total)
            out.ce_se = ratio_se(s_model, n)
            out.ppl = _exp(out.ce)
            out.ppl_se = out.ppl * out.ce_se if out.ppl is not None and out.ce_se is not None else None
            if with_ref:
                out.ref_ce = float(s_ref.sum() / total)
                out.delta_ce = float((s_model - s_ref).sum() / total)
                out.delta_ce_se = ratio_se(s_model - s_ref, n)
                out.kl = float(kl.sum() / total)
                out.top1 = float(top1.sum() / total)
        else:
            cos, err2, ref2 = sums[:3]
            out.cosine = float(cos.sum() / total)
            out.rel_error = float(math.sqrt(err2.sum() / ref2.sum())) if ref2.sum() > 0 else (
                0.0 if err2.sum() == 0 else None)
        return out


def _exp(x: float) -> float | None:
    try:
        return math.exp(x)
    except OverflowError:
        return None


def evaluate(model: ModelInput | Path, sources: Sequence[Path], reference: ModelInput | Path | None = None,
             **kw: Any) -> EvalResult:
    """Convenience: Evaluator(sources, tokenizer_folder, reference, **kw).measure(model). Paths become
    ModelInputs; the tokenizer folder defaults to the model's folder, else the reference's."""
    model = model if isinstance(model, ModelInput) else ModelInput(path=Path(model), label="model")
    if reference is not None and not isinstance(reference, ModelInput):
        reference = ModelInput(path=Path(reference), label="reference")
    if "tokenizer_folder" in kw:
        tokenizer_folder = kw.pop("tokenizer_folder")
    else:
        tokenizer_folder = tokenizer_folder_for(model, reference)
    return Evaluator(sources, tokenizer_folder, reference, **kw).measure(model)


def tokenizer_folder_for(*models: ModelInput | None) -> Path | None:
    """The folder of the first model (as `resolve_model_path` finds it: a Hugging Face cache repo's
    snapshot, a transformers.js repo's onnx/) that has a tokenizer (`calib.tokenizer_path`)."""
    from .graph.source import resolve_model_path

    for m in models:
        if m is None or m.path is None:
            continue
        try:
            folder = resolve_model_path(m.path).parent
        except SuiError:
            continue  # reported when the model itself is opened
        if tokenizer_path(folder) is not None:
            return folder
    return None
