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
        return json.dumps(_json_safe(self.to_dict()), indent=2, sort_keys=False, allow_nan=False) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Report":
        if not isinstance(d, dict) or d.get("schema") != SCHEMA:
            raise SuiError("not a sui-onnx report (missing \"schema\": \"sui-onnx/report\")")
        version = d.get("schema_version")
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise SuiError(f"unsupported report schema_version {version!r} (this sui-onnx reads <= {SCHEMA_VERSION})")
        try:
            return cls(
                model=d["model"],
                calibration=d["calibration"],
                runtime=d.get("runtime", {}),
                settings=d.get("settings", {}),
                layers=[LayerResult.from_dict(x) for x in d["layers"]],
                summary=d.get("summary", {}),
                advice=d.get("advice", {}),
                tool=d.get("tool", {}),
                created=d.get("created", ""),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SuiError(f"malformed report: {exc.__class__.__name__}: {exc}") from None


def load_report(path: str | Path) -> Report:
    """Read a report JSON file; any problem is one SuiError line."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SuiError(f"{path}: no such file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SuiError(f"{path} is not a JSON report ({exc.__class__.__name__})") from None
    except OSError as exc:
        raise SuiError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        return Report.from_dict(data)
    except SuiError as exc:
        raise SuiError(f"{path}: {exc}") from None


def _json_safe(obj: Any) -> Any:
    """NaN/Inf are not JSON: write them as null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj
