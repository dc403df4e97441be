"""PEP 562 lazy names for a package: each name loads from its submodule on first use, then stays a
plain attribute. ``sui_onnx`` uses it so that importing the package loads nothing else, and
``sui_onnx.gate`` so that the CLI's parser reads the gate's defaults without its evaluation code."""

from __future__ import annotations

from importlib import import_module
from typing import Any, Callable, Mapping


def lazy_names(package: str, names: Mapping[str, str],
               namespace: dict[str, Any]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``, whose name ``n`` lives in the submodule
    ``names[n]``; ``namespace`` is the package's ``globals()``, where a loaded name is kept."""

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(f".{module}", package), name)
        namespace[name] = value  # once loaded, a plain attribute
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(names))

    return __getattr__, __dir__
