"""A small scripted mutation check (mutmut is not a dependency): AST operator flips applied one at a
time to a snapshot copy of the package, each mutant judged by the module's fast test files.

    nice python bench/mutation_check.py                       # metrics, scaling, advice; bench/results/mutation.json
    nice python bench/mutation_check.py --module sui_onnx/metrics.py --max 40 --seed 1

Mutations (one per mutant): + <-> -, * <-> /, ** -> *, // -> /, < <-> <=, > <-> >=, == <-> !=,
is <-> is not, in <-> not in, and <-> or, `not x` -> `x`, unary minus dropped, the constants 0 <-> 1
(int and float) and True <-> False. Docstrings, annotations and f-string literals are left alone.

How it runs: the working tree's sui_onnx/, tests/ and pyproject.toml are copied once into a temporary
folder (tests/fixtures is linked, read-only). Each mutant is written into the copy's module, the module's
test files run there (`python -m pytest -x`, the copy first on sys.path, a timeout of several times the
unmutated run), and the module is restored. The working tree is never modified, so other work in it is
not disturbed; a mutant is judged against the code as it was when the snapshot was taken.

A mutant is *killed* when a test fails (or the run times out or errors), *survived* when every test
passes. Tests that fail on the unmutated snapshot are deselected first (and listed in the output), so a
pre-existing failure cannot kill mutants. Survivors are listed with the line and the flip for the
record in docs/testing.md. With more mutants than --max, a seeded random sample is taken.
"""

from __future__ import annotations

import argparse
import ast
import datetime as _dt
import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# module -> its fast test files, fastest first (pytest -x stops at the first failure)
TESTS = {
    "sui_onnx/metrics.py": ["tests/test_metrics.py", "tests/test_scaling_sui_width.py"],
    "sui_onnx/scaling.py": ["tests/test_scaling.py", "tests/test_scaling_seeds.py", "tests/test_cli_scaling.py"],
    "sui_onnx/advice.py": ["tests/test_metrics.py", "tests/test_gate.py"],
}

BINOP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.Pow: ast.Mult,
         ast.FloorDiv: ast.Div}
CMPOP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
         ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In}
SYMBOL = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**", ast.FloorDiv: "//",
          ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!=",
          ast.Is: "is", ast.IsNot: "is not", ast.In: "in", ast.NotIn: "not in", ast.And: "and", ast.Or: "or"}


def _skipped_ids(tree: ast.AST) -> set[int]:
    """ids of the nodes never mutated: docstrings, annotations, f-strings (and everything inside them)."""
    skip: set[int] = set()

    def mark(node: ast.AST | None) -> None:
        if node is not None:
            skip.update(id(n) for n in ast.walk(node))

    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                mark(first)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            mark(node.returns)
            for a in [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs, node.args.vararg, node.args.kwarg]:
                if a is not None:
                    mark(a.annotation)
        if isinstance(node, ast.AnnAssign):
            mark(node.annotation)
        if isinstance(node, ast.JoinedStr):
            mark(node)
    return skip


def _candidates(node: ast.AST) -> list[str]:
    """The flips this node admits, as short labels."""
    if isinstance(node, ast.BinOp) and type(node.op) in BINOP:
        return [f"{SYMBOL[type(node.op)]} -> {SYMBOL[BINOP[type(node.op)]]}"]
    if isinstance(node, ast.AugAssign) and type(node.op) in BINOP:
        return [f"{SYMBOL[type(node.op)]}= -> {SYMBOL[BINOP[type(node.op)]]}="]
    if isinstance(node, ast.Compare):
        return [f"{SYMBOL[type(op)]} -> {SYMBOL[CMPOP[type(op)]]} (#{i})" for i, op in enumerate(node.ops) if type(op) in CMPOP]
    if isinstance(node, ast.BoolOp):
        return [f"{SYMBOL[type(node.op)]} -> {'or' if isinstance(node.op, ast.And) else 'and'}"]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return ["drop not"]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return ["drop unary -"]
    if isinstance(node, ast.Constant) and type(node.value) is bool:
        return [f"{node.value} -> {not node.value}"]
    if isinstance(node, ast.Constant) and type(node.value) in (int, float) and node.value in (0, 1):
        return [f"{node.value!r} -> {type(node.value)(1 - node.value)!r}"]
    return []


def _mutate(node: ast.AST, label: str) -> None:
    if isinstance(node, (ast.BinOp, ast.AugAssign)):
        node.op = BINOP[type(node.op)]()
    elif isinstance(node, ast.Compare):
        i = int(re.search(r"#(\d+)", label).group(1))
        node.ops[i] = CMPOP[type(node.ops[i])]()
    elif isinstance(node, ast.BoolOp):
        node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
    elif isinstance(node, ast.Constant) and type(node.value) is bool:
        node.value = not node.value
    elif isinstance(node, ast.Constant):
        node.value = type(node.value)(1 - node.value)
    else:
        raise AssertionError(label)


def mutants(source: str) -> list[dict]:
    """Every mutant of ``source``: {index, line, col, op, code}, index = position in ast.walk order."""
    tree = ast.parse(source)
    skip = _skipped_ids(tree)
    lines = source.splitlines()
    out = []
    for index, node in enumerate(ast.walk(tree)):
        if id(node) in skip:
            continue
        for label in _candidates(node):
            line = getattr(node, "lineno", 0)
            out.append({"index": index, "line": line, "col": getattr(node, "col_offset", 0), "op": label,
                        "code": lines[line - 1].strip() if line else ""})
    return out


def apply(source: str, mutant: dict) -> str:
    """``source`` with one mutant applied (re-parsed, so each mutant starts from the original)."""
    tree = ast.parse(source)
    nodes = list(ast.walk(tree))
    node = nodes[mutant["index"]]
    if mutant["op"] in ("drop not", "drop unary -"):
        parents = {id(c): p for p in nodes for c in ast.iter_child_nodes(p)}
        parent = parents[id(node)]
        for field, value in ast.iter_fields(parent):
            if value is node:
                setattr(parent, field, node.operand)
            elif isinstance(value, list):
                setattr(parent, field, [node.operand if v is node else v for v in value])
    else:
        _mutate(node, mutant["op"])
    return ast.unparse(ast.fix_missing_locations(tree)) + "\n"


def snapshot(dest: Path) -> None:
    shutil.copytree(ROOT / "sui_onnx", dest / "sui_onnx", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "tests", dest / "tests",
                    ignore=shutil.ignore_patterns("__pycache__", "fixtures", ".hypothesis"))
    (dest / "tests" / "fixtures").symlink_to(ROOT / "tests" / "fixtures")
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    for name in ("models", "docs", "README.md"):  # committed reports and the docs some tests read
        if (ROOT / name).exists():
            (dest / name).symlink_to(ROOT / name)


def run_tests(work: Path, tests: list[str], deselect: list[str], timeout: float, first_failure: bool = True) -> tuple[str, float, str]:
    """('passed' | 'failed' | 'timeout' | 'error', seconds, output tail)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "--no-header",
           *(["-x"] if first_failure else []), *tests, *[f"--deselect={d}" for d in deselect]]
    env = {**os.environ, "PYTHONPATH": str(work), "PYTHONDONTWRITEBYTECODE": "1"}
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.monotonic() - start, ""
    took = time.monotonic() - start
    status = {0: "passed", 1: "failed"}.get(proc.returncode, "error")
    return status, took, (proc.stdout + proc.stderr)[-3000:]


def check_module(work: Path, module: str, tests: list[str], max_mutants: int, seed: int, log,
                 only: list[dict] | None = None) -> dict:
    path = work / module
    original = path.read_text()
    everything = mutants(original)
    chosen = everything
    if only is not None:  # --recheck: the survivors of an earlier run, matched by flip and source line
        wanted = {(m["op"], m["code"]) for m in only}
        chosen = [m for m in everything if (m["op"], m["code"]) in wanted]
    elif len(everything) > max_mutants:
        chosen = sorted(random.Random(seed).sample(everything, max_mutants), key=lambda m: (m["line"], m["col"], m["op"]))
    # baseline: the unmutated snapshot; tests failing there are deselected
    status, took, out = run_tests(work, tests, [], timeout=600, first_failure=False)
    deselect = sorted(set(re.findall(r"^FAILED (\S+?)(?: - .*)?$", out, re.M))) if status != "passed" else []
    if deselect:
        status, took, out = run_tests(work, tests, deselect, timeout=600, first_failure=False)
    if status != "passed":
        raise SystemExit(f"{module}: the unmutated tests do not pass:\n{out}")
    timeout = max(20.0, 4 * took)
    log(f"{module}: {len(everything)} mutants, running {len(chosen)}; baseline {took:.1f}s, timeout {timeout:.0f}s"
        + (f", deselected {deselect}" if deselect else ""))
    results = []
    try:
        for i, m in enumerate(chosen, 1):
            path.write_text(apply(original, m))
            status, took, _ = run_tests(work, tests, deselect, timeout)
            verdict = "survived" if status == "passed" else "killed"
            results.append({**m, "verdict": verdict, "how": status, "seconds": round(took, 2)})
            log(f"  [{i}/{len(chosen)}] {verdict:8s} L{m['line']} {m['op']}: {m['code'][:70]}")
    finally:
        path.write_text(original)
    killed = sum(r["verdict"] == "killed" for r in results)
    return {
        "tests": tests,
        "deselected_failing_at_baseline": deselect,
        "mutants_total": len(everything),
        "mutants_run": len(chosen),
        "killed": killed,
        "survived": len(results) - killed,
        "timeouts": sum(r["how"] == "timeout" for r in results),
        "score": round(killed / len(results), 3) if results else None,
        "survivors": [{k: r[k] for k in ("line", "op", "code")} for r in results if r["verdict"] == "survived"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--module", action="append", choices=sorted(TESTS), help="module(s) to mutate (default: all three)")
    ap.add_argument("--max", type=int, default=150, help="most mutants per module (a seeded sample above that)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--list", action="store_true", help="only count and list the mutants")
    ap.add_argument("--recheck", type=Path, help="run only the survivors recorded in this earlier result JSON")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "mutation.json")
    args = ap.parse_args(argv)

    def stop(signum, frame):  # SIGTERM / SIGINT (even in a background job): the child pytest and the copy go too
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    modules = args.module or list(TESTS)
    if args.list:
        for module in modules:
            ms = mutants((ROOT / module).read_text())
            print(f"{module}: {len(ms)} mutants")
            for m in ms:
                print(f"  L{m['line']} {m['op']}: {m['code'][:80]}")
        return 0
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", *modules], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip())
    start = time.monotonic()
    summary = {"tool": "bench/mutation_check.py", "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
               "commit": commit, "modules_modified_in_working_tree": dirty, "max_per_module": args.max,
               "seed": args.seed, "modules": {}}
    with tempfile.TemporaryDirectory(prefix="sui-mutation-") as tmp:
        work = Path(tmp)
        snapshot(work)
        earlier = json.loads(args.recheck.read_text())["modules"] if args.recheck else None
        if earlier is not None:
            summary["recheck_of"] = str(args.recheck)
            modules = [m for m in modules if m in earlier]
        for module in modules:
            only = earlier[module]["survivors"] if earlier is not None else None
            summary["modules"][module] = check_module(work, module, TESTS[module], args.max, args.seed,
                                                      lambda s: print(s, flush=True), only)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    summary["wall_seconds"] = round(time.monotonic() - start, 1)
    summary["cpu_seconds_children"] = round(usage.ru_utime + usage.ru_stime, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    for module, r in summary["modules"].items():
        print(f"{module}: {r['killed']}/{r['mutants_run']} killed ({r['mutants_total']} mutants), {r['survived']} survived")
    print(f"wall {summary['wall_seconds']} s, CPU {summary['cpu_seconds_children']} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
