"""What ``sui-onnx export`` is asked to do (:class:`ExportOptions`), what it wrote
(:class:`ExportResult`), and the names both share."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import SITES as TAP_SITES
from ..layout import DECODER_FILE, ENCODER_FILE, MODEL_FILE

__all__ = [
    "INSTALL_HINT", "SITES", "DTYPES", "DEFAULT_TASK", "TORCH_OPSET", "SEQ2SEQ_TASK", "MODEL_FILE",
    "ENCODER_FILE", "DECODER_FILE", "TOKENIZER_FILES", "META_SOURCE", "META_DEQUANTIZED", "META_ARCHITECTURE",
    "ExportOptions", "ExportResult", "log_path",
]

INSTALL_HINT = "pip install 'sui-onnx[export]'"
SITES = (*TAP_SITES, "both")  # the tap sites, or both
DTYPES = ("fp32", "fp16")
DEFAULT_TASK = "text-generation"
TORCH_OPSET = 18
SEQ2SEQ_TASK = "text2text-generation"

# tokenizer files copied from the source folder (when present) into OUT_DIR
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "merges.txt", "vocab.txt", "tokenizer.model", "spiece.model",
    "sentencepiece.bpe.model", "chat_template.jinja", "chat_template.json",
)
META_SOURCE = "sui_onnx.source"
META_DEQUANTIZED = "sui_onnx.dequantized_from"
META_ARCHITECTURE = "sui_onnx.architecture"


@dataclass
class ExportOptions:
    """What to export and how (the CLI fills this from its flags)."""

    out_dir: Path
    model_dir: Path | None = None
    task: str | None = None             # optimum task; default from config.json (default_task)
    with_past: bool = False             # the KV-cache variant (<task>-with-past)
    site: str = "post"                  # post | pre | both
    opset: int | None = None            # None: optimum's default / 18 for torch modules
    dtype: str = "fp32"                 # fp32 | fp16
    trust_remote_code: bool = False
    force: bool = False                 # replace a non-empty OUT_DIR
    gguf: Path | None = None            # a GGUF checkpoint instead of a HF folder
    torch_module: str | None = None     # package.module:factory
    factory_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExportResult:
    """What was written (paths are the final ones, inside ``out_dir``)."""

    out_dir: Path
    model: Path
    tapped: Path | None
    taps: list = field(default_factory=list)
    site: str = "post"
    external_data: bool = False
    tokenizer: bool = False
    metadata: dict[str, str] = field(default_factory=dict)
    log: Path | None = None
    exporter: str = ""
    task: str | None = None
    tap_error: str | None = None        # the export landed but no tap could be written
    encoder: "ExportResult | None" = None  # seq2seq: the encoder's model, tapped copy and taps

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir), "model": str(self.model),
            "tapped": str(self.tapped) if self.tapped else None, "site": self.site,
            "taps": [t.to_dict() for t in self.taps], "external_data": self.external_data,
            "tokenizer": self.tokenizer, "metadata": self.metadata,
            "log": str(self.log) if self.log else None, "exporter": self.exporter, "task": self.task,
            "tap_error": self.tap_error,
            "encoder": None if self.encoder is None else {
                "model": str(self.encoder.model), "tapped": str(self.encoder.tapped) if self.encoder.tapped else None,
                "taps": [t.to_dict() for t in self.encoder.taps], "external_data": self.encoder.external_data},
        }

    def moved_to(self, out_dir: Path) -> None:
        """Point the paths at ``out_dir`` (they were written in the staging folder)."""
        self.out_dir = out_dir
        self.model = out_dir / self.model.name
        if self.tapped is not None:
            self.tapped = out_dir / self.tapped.name
        if self.encoder is not None:
            self.encoder.moved_to(out_dir)


LOG_HEADER = "sui-onnx export into "  # the first line of every export log


def log_path(out_dir: Path) -> Path:
    """``<OUT_DIR>.export.log``, beside OUT_DIR."""
    return out_dir.with_name(out_dir.name + ".export.log")
