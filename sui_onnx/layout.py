"""File names of a model folder (optimum's export layout), spelled once. Only the standard library:
the renderers and the CLI's parser use these without loading onnx or numpy."""

from __future__ import annotations

from pathlib import Path

MODEL_FILE = "model.onnx"  # a model folder's graph
DATA_FILE = "model.onnx_data"  # its external data, when optimum or sui-onnx writes it past 2 GB
ENCODER_FILE = "encoder_model.onnx"  # optimum's seq2seq layout: the encoder ...
DECODER_FILE = "decoder_model.onnx"  # ... and the decoder, side by side
EMBEDDINGS_FILE = "embed_tokens.onnx"  # transformers.js vision-language layout: ids -> the decoder's inputs_embeds
_DECODER_STEMS = ("decoder_model_merged", "decoder_model", "model")  # + a variant suffix: _fp16, _q4, ...
TRANSFORMERS_JS_FOLDER = "onnx"  # transformers.js / Hub ONNX repos: onnx/model*.onnx, tokenizer and config above
# the small files that describe a model (tokenizer, configs), beside it or, in the transformers.js
# layout, in the repo folder above onnx/
DESCRIPTION_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json",
    "merges.txt", "vocab.txt", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "config.json",
    "generation_config.json", "genai_config.json", "preprocessor_config.json",
)


def companion_files(model: Path | None) -> list[Path | None]:
    """Both companions a model may be run with (`companion_encoder`): its encoder and its
    embed_tokens model, None where there is none; the inputs an output must never overwrite."""
    return [companion_encoder(model), companion_encoder(model, embeddings=True)]


def companion_encoder(model: Path | None, embeddings: bool = False) -> Path | None:
    """The encoder optimum writes beside a seq2seq decoder (``model`` a file or its folder), if any;
    ``embeddings``: the embed_tokens model beside a decoder that takes inputs_embeds (the
    transformers.js layout of vision-language models), the one of the decoder's variant first
    (decoder_model_merged_q4.onnx: embed_tokens_q4.onnx), else embed_tokens.onnx."""
    if model is None:
        return None
    model = Path(model)
    folder = model if model.is_dir() else model.parent
    names = [ENCODER_FILE]
    if embeddings:
        stem = "" if model.is_dir() else model.stem
        prefix = next((p for p in _DECODER_STEMS if stem.startswith(p)), None)
        suffix = stem[len(prefix):] if prefix is not None else ""
        names = [f"embed_tokens{suffix}.onnx"] if suffix else []
        names.append(EMBEDDINGS_FILE)
    return next((folder / n for n in names if (folder / n).is_file()), None)
