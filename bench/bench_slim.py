"""What narrowing an FFN costs on held-out text: slim (id, variance) against the projection bound.

    python bench/bench_slim.py                                   # the bundled demo model
    python bench/bench_slim.py models/work/gemma/onnx --name gemma3_270m --eval-tokens 2048

For each calibration (English prose, Python documentation, and both mixed with --mix even) one
SlimStudy run gives the statistics; at widths D/8, D/4, D/2, 3D/4 the model is narrowed with the
`id` method (weighted pivoted Cholesky + least-squares refit) and the `variance` baseline, and
projected onto its top principal directions; each is measured against the original on held-out
prose and held-out Python documentation (dCE in nats/token, per eval source; for an encoder, which
has no logits, the relative error and cosine of its last hidden state against the original's). Then, side by side in
this run: `sui-onnx slim` and `sui-onnx report` through the real CLI (wall time, peak RSS), and the
slim model's onnxruntime latency and file size as ratios to the original's. Writes
bench/results/slim_<name>.json and prints markdown tables. Nothing here is a test.
Needs models/domains.py's text (python -m models.domains).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

RATIOS = ((1, 8), (1, 4), (1, 2), (3, 4))


def calibrations(prose: Path, code: Path) -> dict[str, tuple[list[Path], str]]:
    return {"prose": ([prose], "sequential"), "code": ([code], "sequential"), "mixed": ([code, prose], "even")}


def measure_study(model: Path, sources: list[Path], mix: str, tokens: int, evals: list[Path], eval_tokens: int,
                  seq_len: int, eval_seq_len: int, ridge: float, threads: int | None,
                  ratios: tuple[tuple[int, int], ...] = RATIOS) -> dict:
    from sui_onnx.analyze import AnalysisOptions
    from sui_onnx.calib import CalibrationSpec
    from sui_onnx.evaluate import Evaluator, ModelInput
    from sui_onnx.slimming import SlimStudy, aligned, eval_summary

    t0 = time.perf_counter()
    study = SlimStudy(model, CalibrationSpec(sources, seq_len=seq_len, tokens=tokens, mix=mix),
                      AnalysisOptions(device="cpu", threads=threads), ridge=ridge)
    t_study = time.perf_counter() - t0
    ev = Evaluator(evals, study.src.folder, ModelInput(path=study.src.path, label="original"), seq_len=eval_seq_len,
                   tokens=eval_tokens, device="cpu", threads=threads, kl=False)
    rows = []
    for num, den in ratios:
        widths = [aligned(d, num / den, 1) for d in study.widths]
        row = {"ratio": f"{num}/{den}", "widths": widths}
        for name, build in (("id", lambda: study.variant(widths, "id")),
                            ("variance", lambda: study.variant(widths, "variance")),
                            ("projection", lambda: study.projection_variant(widths))):
            v = build()
            r = ev.measure(ModelInput(data=v.model.SerializeToString(), external_folder=study.src.data_folder, label=v.label))
            srcs = eval_summary(r)["sources"]
            encoder = srcs[0]["delta_ce"] is None
            # decoders: dCE (nats/token) and top-1 agreement; encoders (no logits): the relative
            # error and mean per-token cosine of the last hidden state against the original's
            first, second = ("rel_error", "cosine") if encoder else ("delta_ce", "top1")
            row[name] = {s["path"].rsplit("/", 1)[-1]: s[first] for s in srcs}
            row[name + "_" + second] = {s["path"].rsplit("/", 1)[-1]: s[second] for s in srcs}
            print(f"  {row['ratio']:>4} {name:<10} " + "  ".join(
                f"{k} {v:.4f}" if encoder else f"{k} {v:+.4f}" for k, v in row[name].items()), flush=True)
        rows.append(row)
    base = {s.source["path"].rsplit("/", 1)[-1]: s.ref_ce for s in r.sources}
    return {"calibration": [str(s) for s in sources], "mix": mix, "tokens": tokens, "study_s": round(t_study, 2),
            "metric": "rel_error" if encoder else "delta_ce", "baseline_ce": base, "rows": rows}


def cli_peak(cmd: list[str]) -> tuple[float, int, int]:
    """(wall s, peak RSS bytes, exit code) of one CLI run; a fresh wrapper process per run, so the
    peak is this command's alone (RUSAGE_CHILDREN keeps the largest child ever waited for)."""
    wrapper = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, p.returncode)")
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    try:
        peak_kib, rc = (int(x) for x in p.stdout.split()[-2:])
    except ValueError:
        peak_kib, rc = 0, p.returncode or 1
    if rc != 0:
        print(p.stderr[-2000:], file=sys.stderr)
    return wall, peak_kib * 1024, rc


def latency_ratio(original: Path, narrow: Path, ids: np.ndarray, repeats: int, threads: int | None) -> float:
    """Median over ``repeats`` of (narrow / original) onnxruntime time of one whole-model run
    (logits) on ``ids``; the two sessions run alternately, so drift in the machine's speed falls
    on both sides of each ratio."""
    from sui_onnx.runner import FeedBuilder, create_session

    runs = []
    for model in (original, narrow):
        sess, _ = create_session(model, "cpu", threads)
        feed = FeedBuilder(sess.get_inputs())(ids)
        out = sess.get_outputs()[0].name
        for _ in range(3):
            sess.run([out], feed)
        runs.append((sess, out, feed))

    def once(sess, out, feed) -> float:
        t0 = time.perf_counter()
        sess.run([out], feed)
        return time.perf_counter() - t0

    return float(np.median([once(*runs[1]) / once(*runs[0]) for _ in range(repeats)]))


def model_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.suffix in (".onnx", ".onnx_data") and "tapped" not in f.name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", type=Path, default=ROOT / "sui_onnx" / "data" / "demo")
    ap.add_argument("--name", default="demo")
    ap.add_argument("--tokens", type=int, default=16384, help="calibration tokens")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--eval-tokens", type=int, default=16384, help="held-out tokens per domain")
    ap.add_argument("--eval-seq-len", type=int, default=128)
    ap.add_argument("--ridge", type=float, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--only", nargs="*", default=None, help="calibrations to run (prose, code, mixed)")
    ap.add_argument("--skip-cli", action="store_true", help="skip the CLI wall time / memory / latency part")
    ap.add_argument("--calib-chars", type=int, default=None,
                    help="characters of Python-documentation calibration text (models/domains.py; default its own)")
    ap.add_argument("--ratios", nargs="*", default=None, metavar="N/D",
                    help="widths to measure as fractions of D (default 1/8 1/4 1/2 3/4)")
    args = ap.parse_args()

    from models.domains import CALIB_CHARS, build
    from sui_onnx import __version__
    from sui_onnx.slim import DEFAULT_RIDGE

    ridge = DEFAULT_RIDGE if args.ridge is None else args.ridge
    code_calib, code_heldout = build(ROOT / "models" / "work", args.calib_chars or CALIB_CHARS)
    prose_calib, prose_heldout = ROOT / "sui_onnx" / "data" / "calib.txt", ROOT / "sui_onnx" / "data" / "heldout.txt"
    evals = [prose_heldout, code_heldout]
    ratios = RATIOS if not args.ratios else tuple(tuple(int(x) for x in r.split("/")) for r in args.ratios)
    out = {"model": str(args.model), "name": args.name, "ridge": ridge, "tokens": args.tokens,
           "eval_tokens": args.eval_tokens, "eval_seq_len": args.eval_seq_len,
           "machine": {"platform": platform.platform(), "cpus": len(__import__("os").sched_getaffinity(0))},
           "versions": {"sui-onnx": __version__, "numpy": np.__version__,
                        "onnxruntime": __import__("onnxruntime").__version__}, "calibrations": {}}
    for name, (sources, mix) in calibrations(prose_calib, code_calib).items():
        if args.only and name not in args.only:
            continue
        print(f"calibration {name}:", flush=True)
        out["calibrations"][name] = measure_study(args.model, sources, mix, args.tokens, evals, args.eval_tokens,
                                                  args.seq_len, args.eval_seq_len, ridge, args.threads, ratios)
    if not args.skip_cli:
        with tempfile.TemporaryDirectory() as tmp:
            slim_dir = Path(tmp) / "slim"
            common = ["--calib", str(code_calib), "--tokens", str(args.tokens), "--seq-len", str(args.seq_len), "--device", "cpu", "-q"]
            w_slim, m_slim, rc1 = cli_peak([sys.executable, "-m", "sui_onnx", "slim", str(args.model), str(slim_dir),
                                            "--ratio", "0.75", *common])
            w_rep, m_rep, rc2 = cli_peak([sys.executable, "-m", "sui_onnx", "report", str(args.model), *common])
            ids = np.random.default_rng(0).integers(0, 256, size=(1, args.eval_seq_len))
            from sui_onnx.graph.source import resolve_model_path

            src_path = resolve_model_path(args.model)
            lat = latency_ratio(src_path, slim_dir / "model.onnx", ids, 41, args.threads) if rc1 == 0 else None
            out["cli"] = {
                "slim_ratio": 0.75, "slim_s": round(w_slim, 2), "slim_peak_rss": m_slim, "report_s": round(w_rep, 2),
                "report_peak_rss": m_rep, "peak_rss_ratio": m_slim / m_rep if m_rep else None,
                "latency_ratio": lat,
                "file_size_ratio": model_bytes(slim_dir) / model_bytes(src_path.parent) if rc1 == 0 else None,
                "exit_codes": [rc1, rc2],
            }
            print(json.dumps(out["cli"], indent=1))
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    path = results / f"slim_{args.name}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(markdown(out))
    print(f"wrote {path}")


def markdown(out: dict) -> str:
    lines = []
    for cal, res in out["calibrations"].items():
        srcs = list(res["baseline_ce"])
        encoder = res.get("metric") == "rel_error"
        what = ("relative error of the last hidden state" if encoder else "baseline CE "
                + ", ".join(f"{k} {v:.3f}" for k, v in res["baseline_ce"].items()))
        lines += [f"\n{out['name']}, calibration {cal} ({res['tokens']:,} tokens; {what})", "",
                  "| width | " + " | ".join(f"{m} {s}" for s in srcs for m in ("id", "variance", "projection")) + " |",
                  "|:--|" + "---:|" * (3 * len(srcs))]
        for row in res["rows"]:
            fmt = "{:.4f}" if encoder else "{:+.4f}"
            lines.append(f"| {row['ratio']} D | " + " | ".join(fmt.format(row[m][s]) for s in srcs for m in ("id", "variance", "projection")) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
