"""The report data model: one object, rendered as JSON, a rich table, markdown and plots elsewhere.

The JSON form is versioned (``"schema": "sui-onnx/report"``, integer ``schema_version``) and
described by ``sui_onnx/schema/report.schema.json``. Nothing here prints or touches the terminal.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Iterator, Mapping

from .advice import STATUS_ORDER, UNUSABLE_STATUSES, summarize
from .errors import SuiError
from .metrics import METRIC_KEYS

SCHEMA = "sui-onnx/report"
SCHEMA_VERSION = 2  # 2: advice.basis, advice.measured (report --eval); version 1 reports still read
# the energy widths every layer entry carries (null when not measured): the schema requires them
SCHEMA_ENERGY_KEYS = ("k90", "k95", "k99")



# -- the report's sections ---------------------------------------------------------------------
class Section:
    """One object of the report JSON as a dataclass: a typed field for each key this version knows,
    ``extra`` for the keys it does not (provenance a caller added, keys of a newer writer), kept
    as they are. One definition gives both directions: ``from_dict`` reads a JSON object (nested
    sections included) and remembers which keys it held and in which order, ``to_dict`` writes
    exactly those keys back in that order (then keys set since), so a report read and written
    again is byte-identical. A field that is None and was never given is left out of the JSON.

    The types and ranges are checked once, on reading a file: each field's rule (field metadata,
    ``rule(...)``) by ``validate_dict``, composed by ``validate_report_dict``. Item access
    (``section["key"]``, ``get``, ``in``) reads and writes the same fields, for callers that hold
    a key name rather than an attribute (a dotted provenance path, older code)."""

    NESTED: ClassVar[dict[str, type["Section"]]] = {}  # field -> the section type of its value
    NESTED_LISTS: ClassVar[dict[str, type["Section"]]] = {}  # field -> the section type of its items

    extra: dict[str, Any]
    _keys: list[str]

    def __post_init__(self) -> None:
        names = _field_order(type(self))
        keys = [f for f in names if f != "extra" and getattr(self, f) is not None]
        keys += [k for k in self.extra if k not in names]
        object.__setattr__(self, "_keys", keys)

    def __setattr__(self, name: str, value: Any) -> None:
        kind = self.NESTED.get(name)
        if kind is not None and isinstance(value, Mapping) and not isinstance(value, Section):
            value = kind.from_dict(value)
        kind = self.NESTED_LISTS.get(name)
        if kind is not None and isinstance(value, list):
            value = [kind.from_dict(v) if isinstance(v, Mapping) and not isinstance(v, Section) else v for v in value]
        object.__setattr__(self, name, value)
        keys = self.__dict__.get("_keys")
        if keys is not None and name in _field_names(type(self)) and name not in keys:
            keys.append(name)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Any:
        names = _field_names(cls)
        section = cls(**{k: v for k, v in d.items() if k in names and k != "extra"},
                      extra={k: v for k, v in d.items() if k not in names or k == "extra"})
        object.__setattr__(section, "_keys", list(d))
        return section

    def to_dict(self) -> dict[str, Any]:
        names = _field_names(type(self))
        out: dict[str, Any] = {}
        for key in [*self._keys, *self.extra]:
            if key in out:
                continue
            if key in names and key != "extra":
                out[key] = _encode(getattr(self, key))
            elif key in self.extra:
                out[key] = self.extra[key]
        return out

    # item access over the same data (a key name instead of an attribute)
    def __getitem__(self, key: str) -> Any:
        if key in self._keys and key in _field_names(type(self)) and key != "extra":
            return getattr(self, key)
        if key in self.extra:
            return self.extra[key]
        raise KeyError(key)

    def __setitem__(self, key: str, value: Any) -> None:
        if key in _field_names(type(self)) and key != "extra":
            setattr(self, key, value)
            return
        self.extra[key] = value
        if key not in self._keys:
            self._keys.append(key)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key: object) -> bool:
        try:
            self[key]  # type: ignore[index]
            return True
        except KeyError:
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())

    def keys(self):
        return self.to_dict().keys()

    def items(self):
        return self.to_dict().items()

    def values(self):
        return self.to_dict().values()

    @classmethod
    def validate_dict(cls, d: Mapping[str, Any], where: str) -> None:
        """SuiError (one line naming the field) for a value of ``d`` that breaks its field's rule
        (``field(metadata=rule(...))``); fields without a rule and unknown keys are left alone."""
        for f in fields(cls):
            check = f.metadata.get("check")
            if check is None or f.name not in d:
                continue
            test, want, nullable = check
            value = d[f.name]
            if not (value is None and nullable) and not test(value):
                raise _bad(f"{where}.{f.name}", want, value)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (Section, Mapping)):
            return self.to_dict() == (other.to_dict() if isinstance(other, Section) else dict(other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]


def rule(test: Any, want: str, nullable: bool = False) -> dict[str, Any]:
    """A field's validation rule, as dataclass field metadata: ``test(value)`` must hold (None
    passes when ``nullable``); ``want`` completes "must be ..." in the error."""
    return {"check": (test, want, nullable)}


COUNT = rule(lambda v: _is_int(v) and v >= 0, "an integer >= 0")
NUMBER_OR_NULL = rule(lambda v: _is_number(v), "a finite number or null", nullable=True)
COUNT_OR_NULL = rule(lambda v: _is_int(v) and v >= 0, "an integer or null", nullable=True)


def _field_order(cls: type) -> tuple[str, ...]:
    """The fields of a section type, in declaration order (``extra`` last)."""
    order = cls.__dict__.get("_FIELD_ORDER")
    if order is None:
        order = tuple(f.name for f in fields(cls))
        cls._FIELD_ORDER = order  # type: ignore[attr-defined]
        cls._FIELD_NAMES = frozenset(order)  # type: ignore[attr-defined]
    return order


def _field_names(cls: type) -> frozenset[str]:
    _field_order(cls)
    return cls.__dict__["_FIELD_NAMES"]


def _encode(value: Any) -> Any:
    if isinstance(value, Section):
        return value.to_dict()
    if isinstance(value, list):
        return [_encode(v) for v in value]
    return value


def _section(cls: type) -> type:
    """A Section subclass as a dataclass: fields keyword-only, ``extra`` last; equality by content."""
    cls.__annotations__["extra"] = "dict[str, Any]"
    cls.extra = field(default_factory=dict)  # type: ignore[attr-defined]
    return dataclass(eq=False, kw_only=True)(cls)


@_section
class EncoderRef(Section):
    """``model.encoder``: the encoder a seq2seq decoder was run with."""

    path: str | None = None
    sha256: str | None = None


@_section
class ModelInfo(Section):
    """``model``: what was analyzed. A caller's extra provenance (family, seed, train) is in ``extra``."""

    NESTED: ClassVar[dict[str, type[Section]]] = {"encoder": EncoderRef}

    path: str | None = None
    sha256: str | None = None
    opset: int | None = None
    producer: str | None = None
    external_data: bool | None = None
    n_taps: int | None = None
    site: str | None = None
    dequantized_from: str | None = None
    source: str | None = None
    architecture: str | None = None
    encoder: EncoderRef | None = None  # a seq2seq decoder's encoder


@_section
class CalibrationSource(Section):
    """``calibration.sources[]``: one --calib source."""

    path: str | None = None
    kind: str | None = None  # "text" | "npy"
    bundled: bool | None = None  # the package's own calibration text
    sha256: str | None = None
    tokens: int | None = None  # tokens taken from it
    seq_len: int | None = None  # rows of ids (.npy): their length


@_section
class CalibrationInfo(Section):
    """``calibration``: the data the statistics were computed on."""

    NESTED_LISTS: ClassVar[dict[str, type[Section]]] = {"sources": CalibrationSource}

    sources: list[CalibrationSource] | None = None  # one entry per --calib source
    tokens: int | None = None
    token_budget: int | None = None
    seq_len: int | None = None
    batch_size: int | None = None
    order: str | None = None  # "sequential"
    mix: str | None = None  # how the sources share the budget (calib.MIXES)
    tokenizer: str | None = None
    prefix: list[int] | None = None  # the special tokens each text window starts with (BOS)
    from_stats: str | None = None  # the statistics file of a report built with --stats

    def digests(self) -> list[str | None]:
        """The sha256 of each source, in order (None where it is not recorded)."""
        if not isinstance(self.sources, list):
            return []
        return [s.sha256 if isinstance(s, CalibrationSource) and isinstance(s.sha256, str) else None
                for s in self.sources]


@_section
class RuntimeInfo(Section):
    """``runtime``: where and how the run went."""

    device: str | None = None
    providers: list[str] | None = None
    passes: int | None = None
    precision: str | None = None
    max_memory: int | None = None
    max_memory_source: str | None = None
    elapsed_s: float | None = None
    tokens_per_s: float | None = None
    source: str | None = None  # the statistics file of a report built with --stats
    ray: dict[str, Any] | None = None


@_section
class AdviceSettings(Section):
    """``settings.advice``: what the width advice was asked for."""

    q: float | None = None
    quantile: float | None = None
    align: int | None = None


@_section
class Settings(Section):
    """``settings``: the measurement's parameters."""

    NESTED: ClassVar[dict[str, type[Section]]] = {"advice": AdviceSettings}

    site: str | None = None
    top_fraction: float | None = None
    energy_levels: list[float] | None = None
    advice: AdviceSettings | None = None
    taps: str | None = None  # "explicit" when the taps were named with --tap

    def levels(self) -> list[float]:
        """The energy levels measured (the defaults for a report that does not record them)."""
        from .metrics import DEFAULT_ENERGY_LEVELS

        return list(self.energy_levels) if self.energy_levels else list(DEFAULT_ENERGY_LEVELS)

    def energy_keys(self) -> list[str]:
        """The report keys of the energy levels measured: [0.9, 0.95, 0.99] -> ["k90", "k95", "k99"]."""
        from .metrics import energy_key

        return [energy_key(q) for q in self.levels()]


@_section
class Spread(Section):
    """One metric's median and spread over the usable layers (``summary.<metric>``)."""

    median: float | None = None
    mean: float | None = None
    min: float | None = None
    max: float | None = None
    q25: float | None = None
    q75: float | None = None
    worst_layer: int | None = None


@_section
class Summary(Section):
    """``summary``: counts over the layers and each metric's spread (None: no usable layer)."""

    NESTED: ClassVar[dict[str, type[Section]]] = {key: Spread for key in METRIC_KEYS}

    n_layers: int | None = field(default=None, metadata=COUNT)
    usable_layers: int | None = field(default=None, metadata=COUNT)
    statuses: dict[str, int] | None = None
    widths: list[int] | None = None
    min_tokens: int | None = field(default=None, metadata=COUNT)
    hard_rank: Spread | None = None
    soft_rank: Spread | None = None
    hard_util: Spread | None = None
    soft_util: Spread | None = None
    concentration: Spread | None = None
    sui: Spread | None = None
    asymmetry: Spread | None = None

    @classmethod
    def validate_dict(cls, d: Mapping[str, Any], where: str, present: set[str] | None = None) -> None:
        """The field rules, then each metric's spread: an object with a finite median, its values
        in the metric's range; missing only where no layer has the metric (``present``)."""
        super().validate_dict(d, where)
        for key in METRIC_KEYS:
            spread = d.get(key)
            if spread is None:
                if d and key in (present or ()) and key != "asymmetry":
                    raise SuiError(f"malformed report: {where}.{key} is missing although layers have {key}")
                continue
            if not isinstance(spread, dict):
                raise _bad(f"{where}.{key}", "an object or null", spread)
            if "median" not in spread:
                raise SuiError(f"malformed report: {where}.{key} has no median")
            for stat, v in spread.items():
                if stat == "worst_layer":
                    if v is not None and not _is_int(v):
                        raise _bad(f"{where}.{key}.worst_layer", "an integer", v)
                elif stat in ("median", "mean", "min", "max", "q25", "q75"):
                    _check_metric(f"{where}.{key}.{stat}", key, v)
            if spread["median"] is None:
                raise _bad(f"{where}.{key}.median", "a finite number", None)

    def spread(self, metric: str) -> Spread | None:
        value = getattr(self, metric, None) if metric in METRIC_KEYS else None
        return value if isinstance(value, Spread) else None

    def median(self, metric: str) -> float | None:
        """The median of ``metric`` over usable layers; None when there is none."""
        spread = self.spread(metric)
        if spread is None or isinstance(spread.median, bool) or not isinstance(spread.median, (int, float)):
            return None
        return float(spread.median)


@_section
class Withheld(Section):
    """``advice.withheld``: why there is no width advice (too few calibration tokens)."""

    reason: str | None = None
    tokens: int | None = None
    min_tokens: int | None = None  # 4 x the width
    recommended_tokens: int | None = None
    layers: list[int] | None = None  # the starved layers


@_section
class LadderRung(Section):
    """``advice.measured.ladder[]``: one width measured, as a projection and as a slim model."""

    label: str | None = None  # "D/8", ..., "k95 estimate" (several joined by " = " when they coincide)
    widths: list[int] | None = None  # per layer
    width: int | None = None
    ffn_param_saving: float | None = None
    projection: dict[str, Any] | None = None  # evaluate.eval_summary: worst_delta_ce (or worst_cosine), sources
    slim: dict[str, Any] | None = None


@_section
class MeasuredAdvice(Section):
    """``advice.measured``: the ladder ``report --eval`` measured and the width it recommends."""

    NESTED_LISTS: ClassVar[dict[str, type[Section]]] = {"ladder": LadderRung}

    method: str | None = None
    max_loss_increase: float | None = None  # nats/token
    kind: str | None = None  # "encoder": hidden states compared, no loss, no recommendation
    eval: list[dict[str, Any]] | None = None  # the held-out sources: path, sha256, held_out, tokens, ce
    ladder: list[LadderRung] | None = None
    recommended_width: int | None = None
    recommended_widths: list[int] | None = None
    recommended_label: str | None = None
    ffn_param_saving: float | None = None
    unresolved: str | None = None  # why no width is recommended although one passed: the eval was too thin
    warnings: list[str] | None = None


@_section
class Advice(Section):
    """``advice``: the width advice (advice.py), and the measured ladder of ``report --eval``."""

    NESTED: ClassVar[dict[str, type[Section]]] = {"withheld": Withheld, "measured": MeasuredAdvice}

    basis: str | None = None
    q: float | None = field(default=None, metadata=NUMBER_OR_NULL)
    quantile: float | None = None
    align: int | None = None
    current_width: int | None = field(default=None, metadata=COUNT_OR_NULL)
    needed_width: int | None = None
    recommended_width: int | None = field(default=None, metadata=COUNT_OR_NULL)
    width_ratio: float | None = field(default=None, metadata=NUMBER_OR_NULL)
    ffn_param_saving: float | None = field(default=None, metadata=NUMBER_OR_NULL)
    ffn_flop_saving: float | None = None
    max_variance_lost: float | None = field(default=None, metadata=NUMBER_OR_NULL)
    withheld: Withheld | None = None  # too few tokens to advise
    counted: dict[str, Any] | None = None
    per_layer: list[dict[str, Any]] | None = None
    assumptions: list[str] | None = None
    measured: MeasuredAdvice | None = None  # report --eval

    def estimate_key(self) -> str:
        """The energy key of the advice's variance share: q 0.95 -> "k95" (the "k95 estimate")."""
        from .metrics import energy_key

        return energy_key(self.q if isinstance(self.q, (int, float)) and not isinstance(self.q, bool) else 0.95)


SECTIONS: dict[str, type[Section]] = {"model": ModelInfo, "calibration": CalibrationInfo, "runtime": RuntimeInfo,
                                      "settings": Settings, "summary": Summary, "advice": Advice}


@dataclass
class LayerResult:
    """One FFN block's measurements. Metric fields are None when the spectrum is unusable."""

    layer: int
    tensor: str
    width: int
    site: str
    activation: str
    op: str
    tokens: int
    hard_rank: float | None = None
    soft_rank: float | None = None
    hard_util: float | None = None
    soft_util: float | None = None
    concentration: float | None = None
    sui: float | None = None
    asymmetry: float | None = None
    energy_widths: dict[str, int] = field(default_factory=dict)  # energy_key(level) -> width: {"k90": .., ..}
    status: str = "ok"
    flags: list[str] = field(default_factory=list)
    message: str = ""
    group: int | None = None  # the transformer layer it is one of several FFN blocks (experts) of, from node names

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["group"] is None:  # one FFN per transformer layer: as reports before experts were grouped
            del d["group"]
        d.update(d.pop("energy_widths"))
        for key in SCHEMA_ENERGY_KEYS:
            d.setdefault(key, None)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LayerResult":
        known = {f for f in cls.__dataclass_fields__ if f != "energy_widths"}
        kw = {k: v for k, v in d.items() if k in known}
        kw["energy_widths"] = {k: int(v) for k, v in d.items() if k.startswith("k") and k[1:2].isdigit() and v is not None}
        return cls(**kw)

    @property
    def usable(self) -> bool:
        return self.sui is not None

    @staticmethod
    def validate_dict(x: Any, where: str) -> None:
        """SuiError (one line naming the field) for a layer entry of the wrong type or range."""
        if not isinstance(x, dict):
            raise _bad(where, "an object", x)
        for key, test, want in (("layer", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
                                ("width", lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
                                ("tokens", lambda v: _is_int(v) and v >= 0, "an integer >= 0")):
            if key not in x or not test(x[key]):
                raise _bad(f"{where}.{key}", want, x.get(key))
        for key in ("tensor", "site", "activation", "op", "status", "message"):
            if key in x and not isinstance(x[key], str):
                raise _bad(f"{where}.{key}", "a string", x[key])
        if "flags" in x and not (isinstance(x["flags"], list) and all(isinstance(f, str) for f in x["flags"])):
            raise _bad(f"{where}.flags", "a list of strings", x["flags"])
        for key in METRIC_KEYS:
            _check_metric(f"{where}.{key}", key, x.get(key), x["width"])
        status = x.get("status", "ok")
        if status not in STATUS_ORDER:
            raise _bad(f"{where}.status", f"one of {', '.join(STATUS_ORDER)}", status)
        if status not in UNUSABLE_STATUSES and x.get("sui") is None:
            raise _bad(f"{where}.sui", f"a number for a layer of status {status}", None)
        for key, v in x.items():
            if key.startswith("k") and key[1:].isdigit() and v is not None and not (_is_int(v) and 0 <= v <= x["width"]):
                raise _bad(f"{where}.{key}", f"an integer in [0, {x['width']}] or null", v)


@dataclass
class Report:
    """Everything one analysis produced. The sections are typed (``Section``); a plain dict given
    for one (by the constructor or an assignment) is read into its section type."""

    model: ModelInfo
    calibration: CalibrationInfo
    runtime: RuntimeInfo
    settings: Settings
    layers: list[LayerResult]
    summary: Summary = field(default_factory=Summary)
    advice: Advice = field(default_factory=Advice)
    tool: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    # per-layer eigenvalues (descending) when the report was computed here; not part of the JSON
    eigenvalues: list[Any] | None = field(default=None, repr=False, compare=False)

    def __setattr__(self, name: str, value: Any) -> None:
        kind = SECTIONS.get(name)
        if kind is not None and not isinstance(value, kind):
            if not isinstance(value, Mapping):
                raise TypeError(f"Report.{name} must be a {kind.__name__} or a mapping, got {type(value).__name__}")
            value = kind.from_dict(value)
        object.__setattr__(self, name, value)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "tool": self.tool,
            "created": self.created,
            "model": self.model.to_dict(),
            "calibration": self.calibration.to_dict(),
            "runtime": self.runtime.to_dict(),
            "settings": self.settings.to_dict(),
            "layers": [layer.to_dict() for layer in self.layers],
            "summary": self.summary.to_dict(),
            "advice": self.advice.to_dict(),
        }

    def to_json(self) -> str:
        return json.dumps(json_safe(self.to_dict()), indent=2, sort_keys=False, allow_nan=False) + "\n"

    def __rich__(self):
        """The terminal report (render.report), so ``console.print(report)`` shows it."""
        from .render import report_renderable

        return report_renderable(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Report":
        if not isinstance(d, dict) or d.get("schema") != SCHEMA:
            other = d.get("schema") if isinstance(d, dict) else None
            what = {"sui-onnx/eval": "`sui-onnx eval` output", "sui-onnx/slim": "slim.json (`sui-onnx slim`'s record)",
                    "sui-onnx/scaling": "`sui-onnx scaling` output", "sui-onnx/check": "`sui-onnx check` output"}.get(other)
            if what is not None:
                raise SuiError(f"not a sui-onnx report: this is {what} (a report is written by sui-onnx report --json)")
            raise SuiError("not a sui-onnx report (missing \"schema\": \"sui-onnx/report\")")
        version = d.get("schema_version")
        if not isinstance(version, int) or isinstance(version, bool) or version > SCHEMA_VERSION:
            raise SuiError(f"unsupported report schema_version {version!r} (this sui-onnx reads <= {SCHEMA_VERSION})")
        validate_report_dict(d)
        try:
            report = cls(
                model=d["model"],
                calibration=d["calibration"],
                runtime=d.get("runtime", {}),
                settings=d.get("settings", {}),
                layers=[LayerResult.from_dict(x) for x in d["layers"]],
                summary=d.get("summary") or {},
                advice=d.get("advice", {}),
                tool=d.get("tool", {}),
                created=d.get("created", ""),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SuiError(f"malformed report: {exc.__class__.__name__}: {exc}") from None
        if not report.summary and report.layers:  # a report written without its summary: derive it
            report.summary = summarize(report.layers)
        elif "summary" in d:
            _check_summary(report)
        return report


def _check_summary(report: "Report") -> None:
    """A summary read from a file must be the one its layers give (the gate reads the medians from
    it): an edited or stale summary is a malformed report, never a verdict."""
    derived = Summary.from_dict(summarize(report.layers))
    for key in ("n_layers", "usable_layers"):
        have, want = getattr(report.summary, key), getattr(derived, key)
        if have is not None and have != want:
            raise SuiError(f"malformed report: summary.{key} is {have}, its layers give {want}")
    for key in METRIC_KEYS:
        have, want = report.summary.median(key), derived.median(key)
        if (have is None) != (want is None) or (have is not None and abs(have - want) > 1e-9 * max(1.0, abs(want))):
            shown = (lambda v: "none" if v is None else f"{v:.6g}")
            raise SuiError(f"malformed report: summary.{key}.median is {shown(have)}, its layers give {shown(want)}")


MAX_REPORT_BYTES = 64 << 20  # a report of thousands of layers is a few MiB


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} is out of range (not finite)")
    return value


def _no_constant(token: str) -> Any:
    raise ValueError(f"{token} is not a number JSON allows (non-finite)")


def parse_json(data: bytes, what: str = "JSON") -> Any:
    """Strict JSON (UTF-8, an optional BOM): NaN, Infinity and numbers too large for a float are
    errors, never values (ValueError with the reason; nesting too deep included)."""
    text = data.decode("utf-8")  # UnicodeDecodeError is a ValueError
    try:
        return json.loads(text.removeprefix("\ufeff"), parse_constant=_no_constant, parse_float=_finite_float)
    except RecursionError:
        raise ValueError(f"{what} nested too deeply") from None


def load_report(path: str | Path) -> Report:
    """Read a report JSON file; any problem is one SuiError line: not a regular file (a FIFO or a
    device is refused, never read), over 64 MiB, not UTF-8, not strict JSON (NaN, Infinity),
    nested too deeply, or a report whose values have the wrong type or range."""
    from .safeio import printable, read_input

    path = Path(path)
    label = printable(path)
    data = read_input(path, MAX_REPORT_BYTES, what="report")
    try:
        doc = parse_json(data)
    except UnicodeDecodeError:
        raise SuiError(f"{label} is not a JSON report (not UTF-8 text)") from None
    except ValueError as exc:
        raise SuiError(f"{label} is not a JSON report ({printable(str(exc))[:160]})") from None
    try:
        return Report.from_dict(doc)
    except SuiError as exc:
        raise SuiError(f"{label}: {exc}") from None


# -- validation of a report read from a file: types and ranges, so a report can pass the gate only
# -- on real numbers (never on Infinity, a string or a summary that is not there)
_UNIT_TOL = 1e-6


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _bad(where: str, want: str, value: Any) -> SuiError:
    from .safeio import printable

    shown = printable(repr(value))
    return SuiError(f"malformed report: {where} must be {want}, got {shown[:60]}")


def _check_metric(where: str, key: str, v: Any, width: int | None = None) -> None:
    if v is None:
        return
    if not _is_number(v):
        raise _bad(where, "a finite number or null", v)
    if key in ("hard_rank", "soft_rank"):
        if v <= 0 or (width is not None and v > width * (1 + _UNIT_TOL)):
            raise _bad(where, f"a rank in (0, {width if width is not None else 'D'}]", v)
    elif key in ("hard_util", "soft_util", "concentration", "sui") and not -_UNIT_TOL <= v <= 1 + _UNIT_TOL:
        raise _bad(where, "a number in [0, 1]", v)


def validate_report_dict(d: dict[str, Any]) -> None:
    """Raise SuiError (one line naming the field) when a report's known fields have the wrong type
    or range; fields this version does not know are left alone. The sections' own rules live with
    their fields (``Section.validate_dict``); the layers' with LayerResult."""
    for key in ("model", "calibration"):
        if not isinstance(d.get(key), dict):
            raise _bad(key, "an object", d.get(key))
    for key in ("runtime", "settings", "summary", "advice", "tool"):
        if key in d and not isinstance(d[key], dict):
            raise _bad(key, "an object", d[key])
    if "created" in d and not isinstance(d["created"], str):
        raise _bad("created", "a string", d["created"])
    layers = d.get("layers")
    if not isinstance(layers, list) or not layers:
        raise _bad("layers", "a non-empty list", layers)
    seen: set[int] = set()
    present: set[str] = set()
    for n, x in enumerate(layers):
        LayerResult.validate_dict(x, f"layers[{n}]")
        if x["layer"] in seen:
            raise SuiError(f"malformed report: layer {x['layer']} appears twice")
        seen.add(x["layer"])
        present.update(key for key in METRIC_KEYS if x.get(key) is not None)
    Summary.validate_dict(d.get("summary", {}), "summary", present)
    Advice.validate_dict(d.get("advice", {}), "advice")


def json_safe(obj: Any) -> Any:
    """NaN/Inf are not JSON: write them as null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj
