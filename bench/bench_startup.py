"""How long the CLI takes to start, with the installed ml_dtypes against another one (pyproject.toml).

    pip install -q --no-deps --target /tmp/ml_dtypes_0.7.0 ml_dtypes==0.7.0
    python bench/bench_startup.py --other /tmp/ml_dtypes_0.7.0

onnx imports ml_dtypes at its own import, so every `sui-onnx` command that loads a model pays for
it. This bench times, in one run and alternating so that both sides see the same machine:
`import onnx` alone, and `sui-onnx report` on the GPT-2 fixture with 2,000 tokens (a typical short
CLI call), each with the installed ml_dtypes and with the one found first on PYTHONPATH=OTHER.
Medians of --repeat runs; the ratio other / installed. Writes bench/results/startup.json. Nothing
here is a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True, cwd=ROOT)
    return time.perf_counter() - start


def version(env: dict[str, str]) -> str:
    return subprocess.run([sys.executable, "-c", "import ml_dtypes; print(ml_dtypes.__version__)"], env=env, check=True,
                          capture_output=True, text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--other", type=Path, required=True, help="a folder holding another ml_dtypes (pip --target)")
    parser.add_argument("--repeat", type=int, default=11)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "startup.json")
    args = parser.parse_args()
    if not (args.other / "ml_dtypes").is_dir():
        parser.error(f"{args.other} holds no ml_dtypes folder")
    base = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    envs = {"installed": base, "other": dict(base, PYTHONPATH=str(args.other))}
    with tempfile.TemporaryDirectory() as tmp:
        commands = {
            "import onnx": [sys.executable, "-c", "import onnx"],
            "sui-onnx report (gpt2_w128, 2,000 tokens)": [
                sys.executable, "-m", "sui_onnx", "report", str(ROOT / "tests" / "fixtures" / "gpt2_w128"),
                "--tokens", "2000", "--seq-len", "50", "-q", "--json", str(Path(tmp) / "r.json")],
        }
        rows = []
        for label, cmd in commands.items():
            times: dict[str, list[float]] = {side: [] for side in envs}
            for env in envs.values():  # warm the file cache for both sides before timing either
                timed(cmd, env)
            for _ in range(args.repeat):
                for side, env in envs.items():
                    times[side].append(timed(cmd, env))
            med = {side: statistics.median(t) for side, t in times.items()}
            rows.append({"command": label, "installed_s": round(med["installed"], 3), "other_s": round(med["other"], 3),
                         "other_over_installed": round(med["other"] / med["installed"], 2)})
            print(f"{label:45s} installed {med['installed']:.2f} s   other {med['other']:.2f} s   "
                  f"ratio {med['other'] / med['installed']:.2f}")
    result = {"ml_dtypes": {side: version(env) for side, env in envs.items()}, "repeat": args.repeat,
              "cpus": os.cpu_count(), "python": sys.version.split()[0], "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"ml_dtypes installed {result['ml_dtypes']['installed']}, other {result['ml_dtypes']['other']}; wrote {args.out}")


if __name__ == "__main__":
    main()
