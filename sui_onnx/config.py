"""What an analysis is asked to do: small frozen configs, each validated when it is made.

:class:`AnalysisOptions` groups them: ``taps`` (which tensors), ``runtime`` (where and how the
batches run), ``metrics`` (metric and advice settings), ``run`` (checkpoints, resume, saved
statistics, Ray) and ``hooks`` (progress, statistics and activation callbacks, the stop policy).
It can be built from the groups or, as a shorthand, from their fields by name::

    AnalysisOptions(device="cpu", precision="fp64", checkpoint=Path("ck.npz"))
    AnalysisOptions(runtime=RuntimeConfig(device="cpu"), site="pre")  # groups, fields on top

Errors name the option with backticks (errors.option): the CLI shows its flag instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .errors import ConfigError, option
from .metrics import DEFAULT_ENERGY_LEVELS, DEFAULT_TOP_FRACTION
from .stopping import StopRequest

SITES = ("post", "pre")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "fp64")  # fp32: float32 GEMM per batch into float64 sums; fp64: float64 GEMM

ProgressFn = Callable[[int, int, str], None]  # (tokens done, tokens total, description)


def _whole(value: Any, name: str, least: int = 1, none: bool = False) -> None:
    if value is None and none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ConfigError(f"{option(name)} must be an integer >= {least}, got {value!r}")


def _share(value: Any, name: str, low_open: bool = True) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not ((0 < value) if low_open else (0 <= value)) or value > 1:
        raise ConfigError(f"{option(name)} must be in {'(0' if low_open else '[0'}, 1], got {value!r}")


def _path(value: Any, name: str) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, (str, Path)) or not str(value):
        raise ConfigError(f"{option(name)} must be a path, got {value!r}")
    return Path(value)


@dataclass(frozen=True)
class TapConfig:
    """Which tensors are analyzed: the FFN blocks found (``site``, filtered by the regexes) or the
    ``explicit`` tensor names."""

    site: str = "post"
    include: str | None = None
    exclude: str | None = None
    explicit: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.site not in SITES:
            raise ConfigError(f"{option('site')} must be post or pre, got {self.site!r}")
        for name in ("include", "exclude"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise ConfigError(f"{option(name)} must be a regular expression, got {getattr(self, name)!r}")
        if isinstance(self.explicit, str) or not all(isinstance(t, str) for t in self.explicit):
            raise ConfigError(f"{option('explicit')} must be a sequence of tensor names, got {self.explicit!r}")
        object.__setattr__(self, "explicit", tuple(self.explicit))


@dataclass(frozen=True)
class RuntimeConfig:
    """Where and how the batches run: device, GEMM precision, onnxruntime threads, the cap on the
    statistics held at once (None: derived from free memory), a seq2seq decoder's encoder."""

    device: str = "auto"
    precision: str = "fp32"
    threads: int | None = None
    max_memory: int | None = None  # bytes for accumulators; None = from the free memory
    encoder: Path | None = None  # a seq2seq decoder's encoder (default: encoder_model.onnx beside it)

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ConfigError(f"{option('device')} must be auto, cpu or cuda, got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"{option('precision')} must be fp32 or fp64, got {self.precision!r}")
        _whole(self.threads, "threads", none=True)
        _whole(self.max_memory, "max_memory", none=True)
        object.__setattr__(self, "encoder", _path(self.encoder, "encoder"))

    @property
    def exact(self) -> bool:
        return self.precision == "fp64"


@dataclass(frozen=True)
class MetricConfig:
    """Metric settings (docs/metrics.md) and the width advice's."""

    top_fraction: float = DEFAULT_TOP_FRACTION
    energy_levels: tuple[float, ...] = DEFAULT_ENERGY_LEVELS
    advice_q: float = 0.95
    advice_quantile: float = 1.0
    align: int = 64

    def __post_init__(self) -> None:
        _share(self.top_fraction, "top_fraction")
        if isinstance(self.energy_levels, (str, bytes)) or not isinstance(self.energy_levels, Sequence) \
                or not self.energy_levels:
            raise ConfigError(f"{option('energy_levels')} must be a non-empty sequence of levels in (0, 1], "
                              f"got {self.energy_levels!r}")
        for q in self.energy_levels:
            _share(q, "energy_levels")
        object.__setattr__(self, "energy_levels", tuple(self.energy_levels))
        _share(self.advice_q, "advice_q")
        _share(self.advice_quantile, "advice_quantile", low_open=False)
        _whole(self.align, "align")


@dataclass(frozen=True)
class RunControl:
    """Long runs: periodic checkpoints, resuming one, a report from saved statistics, Ray."""

    checkpoint: Path | None = None
    checkpoint_every: int = 50  # batches
    resume: Path | None = None
    stats: Path | None = None  # build the report from saved statistics, no calibration run
    ray: str | None = None  # None: run here; "": ray.init() default (RAY_ADDRESS or a local cluster); else an address
    ray_shards: int | None = None  # calibration shards (default: 2 per worker CPU)

    def __post_init__(self) -> None:
        for name in ("checkpoint", "resume", "stats"):
            object.__setattr__(self, name, _path(getattr(self, name), name))
        _whole(self.checkpoint_every, "checkpoint_every")
        if self.ray is not None and not isinstance(self.ray, str):
            raise ConfigError(f"{option('ray')} must be an address ('' for the default), got {self.ray!r}")
        _whole(self.ray_shards, "ray_shards", none=True)


@dataclass(frozen=True)
class Hooks:
    """What the caller hands in to watch or steer a run (none is validated)."""

    progress: ProgressFn | None = None
    # called as statistics(tap index, accumulator) once a tap's statistics are complete, before its
    # eigenvalues are computed (slim reads the covariance and mean there; the accumulator is freed after)
    statistics: Callable[[int, Any], None] | None = field(default=None, repr=False)
    # called as activations(tap index, [..., D] array) for every batch before it is accumulated (the
    # array is a reused buffer, valid only during the call); not called for stats, resume or Ray
    activations: Callable[[int, Any], None] | None = field(default=None, repr=False)
    # where the run may stop (stopping.py); the CLI passes StopOnSignal (SIGINT/SIGTERM)
    stop: StopRequest | None = field(default=None, repr=False)


_GROUPS: dict[str, type] = {"taps": TapConfig, "runtime": RuntimeConfig, "metrics": MetricConfig,
                            "run": RunControl, "hooks": Hooks}
_FIELD_GROUP = {f.name: group for group, cls in _GROUPS.items() for f in fields(cls)}


@dataclass(frozen=True, init=False)
class AnalysisOptions:
    """Everything :func:`sui_onnx.analyze.analyze` is asked to do besides the model and the
    calibration data (see the module doc for the two ways to build it)."""

    taps: TapConfig
    runtime: RuntimeConfig
    metrics: MetricConfig
    run: RunControl
    hooks: Hooks
    extra_provenance: Mapping[str, Any]

    def __init__(self, taps: TapConfig | None = None, runtime: RuntimeConfig | None = None,
                 metrics: MetricConfig | None = None, run: RunControl | None = None, hooks: Hooks | None = None,
                 extra_provenance: Mapping[str, Any] | None = None, **flat: Any) -> None:
        given = {"taps": taps, "runtime": runtime, "metrics": metrics, "run": run, "hooks": hooks}
        changes: dict[str, dict[str, Any]] = {group: {} for group in _GROUPS}
        for key, value in flat.items():
            if key not in _FIELD_GROUP:
                raise TypeError(f"AnalysisOptions() got an unexpected keyword argument {key!r}")
            changes[_FIELD_GROUP[key]][key] = value
        for group, cls in _GROUPS.items():
            value = given[group] if given[group] is not None else cls()
            if not isinstance(value, cls):
                raise TypeError(f"AnalysisOptions({group}=...) takes a {cls.__name__}, got {type(value).__name__}")
            if changes[group]:
                value = replace(value, **changes[group])
            object.__setattr__(self, group, value)
        object.__setattr__(self, "extra_provenance", dict(extra_provenance or {}))

    def with_(self, **changes: Any) -> "AnalysisOptions":
        """A copy with some groups or fields changed (as the constructor takes them)."""
        return replace(self, **changes)
