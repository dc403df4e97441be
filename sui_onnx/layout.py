"""File names of a model folder (optimum's export layout), spelled once. Only the standard library:
the renderers and the CLI's parser use these without loading onnx or numpy."""

from __future__ import annotations

from pathlib import Path

MODEL_FILE = "model.onnx"  # a model folder's graph
DATA_FILE = "model.onnx_data"  # its external data, when optimum or sui-onnx writes it past 2 GB
ENCODER_FILE = "encoder_model.onnx"  # optimum's seq2seq layout: the encoder ...
DECODER_FILE = "decoder_model.onnx"  # ... and the decoder, side by side
TRANSFORMERS_JS_FOLDER = "onnx"  # transformers.js / Hub ONNX repos: onnx/model*.onnx, tokenizer and config above
# the small files that describe a model (tokenizer, configs), beside it or, in the transformers.js
# layout, in the repo folder above onnx/
DESCRIPTION_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json",
    "merges.txt", "vocab.txt", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "config.json",
    "generation_config.json", "genai_config.json", "preprocessor_config.json",
)


def companion_encoder(model: Path | None) -> Path | None:
    """The encoder optimum writes beside a seq2seq decoder (``model`` a file or its folder), if any."""
    if model is None:
        return None
    model = Path(model)
    candidate = (model if model.is_dir() else model.parent) / ENCODER_FILE
    return candidate if candidate.is_file() else None
