"""What the gate checks: ``Thresholds`` and the validation of each key (one definition for config
files and command-line flags)."""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from ..errors import ConfigError
from .rules import DEFAULT_DROP_METRICS, DEFAULT_MAX_DROP, DROP_METRICS, LIMIT_KEYS, SCOPES


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {value!r}")
    return value


def _unit(value: Any) -> float:
    value = _number(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"must be in [0, 1], got {value:g}")
    return value


def _nonnegative(value: Any) -> float:
    value = _number(value)
    if value < 0:
        raise ValueError(f"must be >= 0, got {value:g}")
    return value


def _path(value: Any) -> Path:
    if isinstance(value, Path):
        return value
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"must be a path (a non-empty string), got {value!r}")
    return Path(value)


def _scope(value: Any) -> str:
    if value not in SCOPES:
        raise ValueError(f"must be one of {', '.join(SCOPES)}, got {value!r}")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {value!r}")
    return value


def _metrics(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"must be a non-empty list of {', '.join(DROP_METRICS)}, got {value!r}")
    out = []
    for item in value:
        name = item.strip().replace("-", "_") if isinstance(item, str) else item
        if name not in DROP_METRICS:
            raise ValueError(f"unknown metric {item!r} (choose from {', '.join(DROP_METRICS)})")
        if name not in out:
            out.append(name)
    return tuple(out)


VALIDATORS: dict[str, Callable[[Any], Any]] = {
    "min_sui": _unit,
    "min_hard_util": _unit,
    "min_soft_util": _unit,
    "max_concentration": _unit,
    "max_width_ratio": _unit,
    "baseline": _path,
    "max_drop": _unit,
    "max_drop_rel": _nonnegative,
    "drop_metrics": _metrics,
    "scope": _scope,
    "fail_on_status": _bool,
    "allow_low_tokens": _bool,
    "allow_calibration_change": _bool,
}
CONFIG_KEYS = tuple(VALIDATORS)


def validate_value(key: str, value: Any) -> Any:
    """The normalized value of one threshold key, or ValueError with a one-line reason."""
    try:
        validator = VALIDATORS[key]
    except KeyError:
        raise ValueError(f"unknown key {key!r}{_did_you_mean(key)}") from None
    return validator(value)


def _did_you_mean(key: str) -> str:
    close = difflib.get_close_matches(str(key), CONFIG_KEYS, n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (known keys: {', '.join(CONFIG_KEYS)})"


@dataclass(frozen=True)
class Thresholds:
    """What the gate checks. None = not checked. Values already validated."""

    min_sui: float | None = None
    min_hard_util: float | None = None
    min_soft_util: float | None = None
    max_concentration: float | None = None
    max_width_ratio: float | None = None
    baseline: Path | None = None
    max_drop: float | None = None
    max_drop_rel: float | None = None
    drop_metrics: tuple[str, ...] = DEFAULT_DROP_METRICS
    scope: str = "both"
    fail_on_status: bool = False
    allow_low_tokens: bool = False  # rank_capped layers warn instead of failing
    allow_calibration_change: bool = False  # compare with a baseline calibrated on other data / token counts

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any], source: str = "config", base_dir: Path | None = None) -> "Thresholds":
        """Validate a mapping of config keys (a TOML table); any problem is a ConfigError naming
        the key and the source. A relative ``baseline`` is resolved against ``base_dir``."""
        kw: dict[str, Any] = {}
        for key, value in d.items():
            try:
                kw[key] = validate_value(key, value)
            except ValueError as exc:
                if key not in VALIDATORS:
                    raise ConfigError(f"{source}: {exc}") from None
                raise ConfigError(f"{source}: {key}: {exc}") from None
        if base_dir is not None and kw.get("baseline") is not None and not kw["baseline"].is_absolute():
            kw["baseline"] = base_dir / kw["baseline"]
        return cls(**kw)

    def override(self, **values: Any) -> "Thresholds":
        """A copy with the given (already validated) values; None means 'not given, keep'."""
        return dataclasses.replace(self, **{k: v for k, v in values.items() if v is not None})

    @property
    def has_limits(self) -> bool:
        return any(getattr(self, k) is not None for k in (*LIMIT_KEYS, "max_width_ratio"))

    def effective_max_drop(self) -> float | None:
        if self.baseline is not None and self.max_drop is None and self.max_drop_rel is None:
            return DEFAULT_MAX_DROP
        return self.max_drop

    def validate(self) -> None:
        """Combinations that make no sense: exit 2 before any work is done."""
        if self.baseline is None and (self.max_drop is not None or self.max_drop_rel is not None):
            raise ConfigError("max_drop / max_drop_rel need a baseline report (--baseline REPORT.json)")
        if not self.has_limits and self.baseline is None and not self.fail_on_status:
            raise ConfigError("nothing to check: give a threshold or --baseline "
                              "(e.g. --baseline REPORT.json or --min-sui 0.02; see sui-onnx check --help)")
        if self.max_width_ratio is not None and self.scope == "layer":
            raise ConfigError("max_width_ratio is a model-level threshold: it needs scope model or both")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["baseline"] = None if self.baseline is None else str(self.baseline)
        d["drop_metrics"] = list(self.drop_metrics)
        d["effective_max_drop"] = self.effective_max_drop()
        return d
