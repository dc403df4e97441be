"""Configuration discovery: the ``[check]`` table of a TOML file, or ``[tool.sui-onnx.check]`` of
the nearest pyproject.toml."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from ..errors import ConfigError
from .thresholds import Thresholds


def _toml_loads(text: str) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise ConfigError("reading TOML configuration needs Python 3.11+ or `pip install tomli`") from None
    return tomllib.loads(text)


MAX_CONFIG_BYTES = 4 << 20  # a threshold table is a few hundred bytes; a pyproject.toml a few KiB


def _read_toml(path: Path) -> dict[str, Any]:
    """A TOML file as a dict; any problem (not a regular file: a FIFO or a device is refused, never
    read; over 4 MiB; not UTF-8; not TOML; nested too deeply) is one ConfigError line."""
    from ..safeio import printable, read_input

    label = printable(path)
    if not os.path.lexists(path):
        raise ConfigError(f"{label}: no such config file")
    data = read_input(path, MAX_CONFIG_BYTES, error=ConfigError, what="configuration file")
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError:
        raise ConfigError(f"{label}: not UTF-8 text") from None
    try:
        return _toml_loads(text)
    except RecursionError:
        raise ConfigError(f"{label}: not valid TOML (nested too deeply)") from None
    except ValueError as exc:  # tomllib.TOMLDecodeError is a ValueError
        raise ConfigError(f"{label}: not valid TOML ({printable(str(exc))[:160]})") from None


def find_pyproject(cwd: Path) -> Path | None:
    """The nearest pyproject.toml from ``cwd`` upward."""
    cwd = Path(cwd).resolve()
    for folder in (cwd, *cwd.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def load_config(path: Path | str | None, cwd: Path | str) -> tuple[dict[str, Any], Path | None]:
    """The raw ``[check]`` table and the file it came from.

    With ``path``: that TOML file's ``[check]`` table (or ``[tool.sui-onnx.check]`` when it is a
    pyproject.toml). Without: ``[tool.sui-onnx.check]`` of the nearest pyproject.toml from ``cwd``
    upward, or ``({}, None)`` when there is none. Values are validated by ``thresholds_from_config``.
    """
    if path is not None:
        path = Path(path)
        data = _read_toml(path)
        table = data.get("check")
        where = "[check]"
        if table is None:
            table = _dig(data, "tool", "sui-onnx", "check")
            where = "[tool.sui-onnx.check]"
        if table is None:
            raise ConfigError(f"{path}: no [check] table (or [tool.sui-onnx.check])")
    else:
        path = find_pyproject(Path(cwd))
        if path is None:
            return {}, None
        table = _dig(_read_toml(path), "tool", "sui-onnx", "check")
        where = "[tool.sui-onnx.check]"
        if table is None:
            return {}, None
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: {where} must be a table")
    return dict(table), path


def _dig(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def thresholds_from_config(table: Mapping[str, Any], path: Path | None) -> Thresholds:
    if path is None:
        return Thresholds()
    return Thresholds.from_mapping(table, source=str(path), base_dir=path.parent)
