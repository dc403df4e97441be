"""The package import has no side effects (PEP 562: names load on first use), the CLI sets the
process environment where it starts, and the run loop's modules never import analyze.py (analyze
calls distributed, never the other way round)."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "sui_onnx"


def _python(code: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**clean, **env}, cwd=PACKAGE.parent)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_import_sui_onnx_changes_nothing_and_imports_no_numpy():
    out = _python("import os, sys, sui_onnx; print(os.environ.get('OPENBLAS_THREAD_TIMEOUT'), 'numpy' in sys.modules)")
    assert out == "None False"


def test_public_names_still_load_from_the_package():
    out = _python("import sui_onnx; print(sui_onnx.spectral_metrics.__module__, sui_onnx.SuiError.__name__, "
                  "sui_onnx.CovarianceAccumulator.__module__, sui_onnx.__version__ == __import__('sui_onnx._version')"
                  "._version.__version__, 'sui' in dir(sui_onnx))")
    assert out == "sui_onnx.metrics SuiError sui_onnx.spectrum True True"
    with pytest.raises(AttributeError):
        import sui_onnx

        sui_onnx.no_such_name  # noqa: B018


# the value numpy finds when it is imported (OpenBLAS reads it then), recorded by an import hook
CLI = """
import os, sys
seen = []
class Watch:
    def find_spec(self, name, path=None, target=None):
        if name == "numpy" and not seen:
            seen.append(os.environ.get("OPENBLAS_THREAD_TIMEOUT"))
        return None
sys.meta_path.insert(0, Watch())
from sui_onnx.cli import main
try:
    main(["--version"])
except SystemExit:
    pass
print(seen)
"""


def test_the_cli_sets_the_openblas_timeout_before_numpy_is_imported():
    assert _python(CLI).splitlines()[-1] == "['4']"


def test_the_cli_keeps_a_timeout_the_user_set():
    assert _python(CLI, OPENBLAS_THREAD_TIMEOUT="9").splitlines()[-1] == "['9']"


def _imports(path: Path) -> set[str]:
    """Every sui_onnx module ``path`` imports, at module level or inside functions."""
    package = ["sui_onnx", *path.relative_to(PACKAGE).parent.parts]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m.startswith("sui_onnx")}


@pytest.mark.parametrize("module", ["distributed", "checkpoint", "collect", "stopping", "config", "memory",
                                    "runner", "calib", "spectrum"])
def test_the_run_loop_modules_never_import_analyze(module):
    assert "sui_onnx.analyze" not in _imports(PACKAGE / f"{module}.py")


def test_analyze_reaches_distributed_only_one_way():
    assert "sui_onnx.distributed" in _imports(PACKAGE / "analyze.py")


# the analysis modules that building the CLI's parser must not load: `--help` and every usage error
# exit before any of them is needed (measured: 0.30 s -> 0.24 s per `check --help` once they were
# deferred; the test suite starts the CLI hundreds of times)
HEAVY = ("sui_onnx.report", "sui_onnx.runner", "sui_onnx.slimming", "sui_onnx.slim", "sui_onnx.scaling",
         "sui_onnx.gate.evaluate", "sui_onnx.analyze", "sui_onnx.evaluate", "onnx", "onnxruntime")


def test_building_the_parser_loads_no_analysis_module():
    out = _python("import sys\nfrom sui_onnx.cli import build_parser\np = build_parser()\n"
                  "for cmd in ('report', 'check', 'scaling', 'slim', 'eval', 'merge', 'taps', 'export'):\n"
                  "    try:\n        p.parse_args([cmd, '--help'])\n    except SystemExit:\n        pass\n"
                  f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    assert out.splitlines()[-1] == "[]"
