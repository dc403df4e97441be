"""The report data model: one object, rendered as JSON, a rich table, markdown and plots elsewhere.

The JSON form is versioned (``"schema": "sui-onnx/report"``, integer ``schema_version``) and
described by ``sui_onnx/schema/report.schema.json``. Nothing here prints or touches the terminal.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import SuiError

SCHEMA = "sui-onnx/report"
SCHEMA_VERSION = 2  # 2: advice.basis, advice.measured (report --eval); version 1 reports still read
METRIC_KEYS = ("hard_rank", "soft_rank", "hard_util", "soft_util", "concentration", "sui", "asymmetry")

# Layer status values, most severe first; `flags` may hold several, `status` is the most severe.
STATUS_ORDER = ("non_finite", "degenerate", "rank_capped", "low_tokens", "ok")


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
    energy_widths: dict[str, int] = field(default_factory=dict)  # {"k90": .., "k95": .., "k99": ..}
    status: str = "ok"
    flags: list[str] = field(default_factory=list)
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(d.pop("energy_widths"))
        for key in ("k90", "k95", "k99"):
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


@dataclass
class Report:
    """Everything one analysis produced; provenance dicts are JSON-able as they are."""

    model: dict[str, Any]
    calibration: dict[str, Any]
    runtime: dict[str, Any]
    settings: dict[str, Any]
    layers: list[LayerResult]
    summary: dict[str, Any] = field(default_factory=dict)
    advice: dict[str, Any] = field(default_factory=dict)
    tool: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    # per-layer eigenvalues (descending) when the report was computed here; not part of the JSON
    eigenvalues: list[Any] | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "tool": self.tool,
            "created": self.created,
            "model": self.model,
            "calibration": self.calibration,
            "runtime": self.runtime,
            "settings": self.settings,
            "layers": [layer.to_dict() for layer in self.layers],
            "summary": self.summary,
            "advice": self.advice,
        }

    def to_json(self) -> str:
        return json.dumps(json_safe(self.to_dict()), indent=2, sort_keys=False, allow_nan=False) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Report":
        if not isinstance(d, dict) or d.get("schema") != SCHEMA:
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
            from .advice import summarize

            report.summary = summarize(report.layers)
        return report


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
    or range; fields this version does not know are left alone."""
    for key in ("model", "calibration"):
        if not isinstance(d.get(key), dict):
            raise _bad(key, "an object", d.get(key))
    for key in ("runtime", "settings", "summary", "advice", "tool"):
        if key in d and not isinstance(d[key], dict):
            raise _bad(key, "an object", d[key])
    if "created" in d and not isinstance(d["created"], str):
        raise _bad("created", "a string", d["created"])
    layers = d.get("layers")
    if not isinstance(layers, list):
        raise _bad("layers", "a list", layers)
    seen: set[int] = set()
    present: set[str] = set()
    for n, x in enumerate(layers):
        where = f"layers[{n}]"
        if not isinstance(x, dict):
            raise _bad(where, "an object", x)
        for key, test, want in (("layer", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
                                ("width", lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
                                ("tokens", lambda v: _is_int(v) and v >= 0, "an integer >= 0")):
            if key not in x or not test(x[key]):
                raise _bad(f"{where}.{key}", want, x.get(key))
        if x["layer"] in seen:
            raise SuiError(f"malformed report: layer {x['layer']} appears twice")
        seen.add(x["layer"])
        for key in ("tensor", "site", "activation", "op", "status", "message"):
            if key in x and not isinstance(x[key], str):
                raise _bad(f"{where}.{key}", "a string", x[key])
        if "flags" in x and not (isinstance(x["flags"], list) and all(isinstance(f, str) for f in x["flags"])):
            raise _bad(f"{where}.flags", "a list of strings", x["flags"])
        for key in METRIC_KEYS:
            _check_metric(f"{where}.{key}", key, x.get(key), x["width"])
            if x.get(key) is not None:
                present.add(key)
        for key, v in x.items():
            if key.startswith("k") and key[1:].isdigit() and v is not None and not (_is_int(v) and 0 <= v <= x["width"]):
                raise _bad(f"{where}.{key}", f"an integer in [0, {x['width']}] or null", v)
    summary = d.get("summary", {})
    for key in ("n_layers", "usable_layers", "min_tokens"):
        if key in summary and not (_is_int(summary[key]) and summary[key] >= 0):
            raise _bad(f"summary.{key}", "an integer >= 0", summary[key])
    for key in METRIC_KEYS:
        spread = summary.get(key)
        if spread is None:
            if summary and key in present and key != "asymmetry":
                raise SuiError(f"malformed report: summary.{key} is missing although layers have {key}")
            continue
        if not isinstance(spread, dict):
            raise _bad(f"summary.{key}", "an object or null", spread)
        if "median" not in spread:
            raise SuiError(f"malformed report: summary.{key} has no median")
        for stat, v in spread.items():
            if stat == "worst_layer":
                if v is not None and not _is_int(v):
                    raise _bad(f"summary.{key}.worst_layer", "an integer", v)
            elif stat in ("median", "mean", "min", "max", "q25", "q75"):
                _check_metric(f"summary.{key}.{stat}", key, v)
        if spread["median"] is None:
            raise _bad(f"summary.{key}.median", "a finite number", None)
    advice = d.get("advice", {})
    for key in ("width_ratio", "ffn_param_saving", "max_variance_lost", "q"):
        if advice.get(key) is not None and not _is_number(advice[key]):
            raise _bad(f"advice.{key}", "a finite number or null", advice[key])
    for key in ("recommended_width", "current_width"):
        if advice.get(key) is not None and not (_is_int(advice[key]) and advice[key] >= 0):
            raise _bad(f"advice.{key}", "an integer or null", advice[key])


def json_safe(obj: Any) -> Any:
    """NaN/Inf are not JSON: write them as null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj
