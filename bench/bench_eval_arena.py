"""`sui-onnx eval` with and without onnxruntime's CPU memory arena, side by side.

    python bench/bench_eval_arena.py                                    # the bundled demo
    python bench/bench_eval_arena.py models/work/gemma/onnx --name gemma3_270m \\
        --data models/work/domains/pydoc_heldout.txt --tokens 4096 --seq-len 256

eval runs the model and its reference side by side; each run's output is a [B, L, V] batch of
logits. With the arena (onnxruntime's default) each session keeps the largest buffers it ever
needed; without it (what eval does) they are freed after each run. Each setting runs `eval MODEL
--reference MODEL` through the real CLI, alternately, ``--repeats`` times; the arena is switched on
for the comparison by a wrapper that wraps `create_session`. Wall time and peak RSS of each run,
and their medians' ratios, go to bench/results/eval_arena_<name>.json. Nothing here is a test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from _slim_common import save_result  # noqa: E402
from bench_slim import cli_peak  # noqa: E402

WRAPPER = """
import sys
import sui_onnx.evaluate as ev
import sui_onnx.runner as runner
arena = sys.argv.pop(1) == "on"
real = runner.create_session
def create_session(*a, **k):
    k["arena"] = arena
    return real(*a, **k)
runner.create_session = create_session
from sui_onnx.cli import main
sys.exit(main(sys.argv[1:]))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", type=Path, default=ROOT / "sui_onnx" / "data" / "demo")
    ap.add_argument("--name", default="demo")
    ap.add_argument("--data", type=Path, default=ROOT / "sui_onnx" / "data" / "heldout.txt")
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    cmd = ["eval", str(args.model), "--reference", str(args.model), "--data", str(args.data), "--tokens",
           str(args.tokens), "--seq-len", str(args.seq_len), "--device", "cpu", "-q"]
    runs: dict[str, list[tuple[float, int]]] = {"on": [], "off": []}
    for _ in range(args.repeats):
        for arena in ("on", "off"):
            wall, peak, rc = cli_peak([sys.executable, "-c", WRAPPER, arena, *cmd])
            if rc != 0:
                sys.exit(f"eval with the arena {arena} exited {rc}")
            runs[arena].append((wall, peak))
            print(f"arena {arena}: {wall:.1f} s, {peak / 2**30:.2f} GiB", flush=True)
    med = {k: (statistics.median(w for w, _ in v), statistics.median(p for _, p in v)) for k, v in runs.items()}
    out = {"name": args.name, "command": ["sui-onnx", *cmd], "runs": {k: [{"wall_s": round(w, 2), "peak_rss": p} for w, p in v]
                                                                     for k, v in runs.items()},
           "time_ratio_off_on": med["off"][0] / med["on"][0], "peak_ratio_off_on": med["off"][1] / med["on"][1],
           "peak_saved_bytes": med["on"][1] - med["off"][1]}
    save_result(f"eval_arena_{args.name}", out)


if __name__ == "__main__":
    main()
