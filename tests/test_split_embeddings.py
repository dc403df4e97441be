"""A decoder that takes inputs_embeds, its embedding table a model of its own (embed_tokens.onnx):
the transformers.js layout of vision-language models' language decoders. sui-onnx runs
embed_tokens on each batch and feeds the decoder its output, as it runs a seq2seq encoder; the
statistics equal those of the same network in one graph."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest

from sui_onnx.layout import companion_encoder
from tests.onnx_builders import split_embeddings, tiny_lm
from tests.robustness.clitools import TOKENIZER, cli, one_error_line


@pytest.fixture()
def work(tmp_path):
    lm = tiny_lm(d_ff=48)
    lm.save(tmp_path / "whole")
    embed, decoder = split_embeddings(lm)
    folder = tmp_path / "repo" / "onnx"
    folder.mkdir(parents=True)
    onnx.save(embed, str(folder / "embed_tokens.onnx"))
    onnx.save(decoder, str(folder / "decoder_model.onnx"))
    shutil.copy(TOKENIZER, tmp_path / "repo" / "tokenizer.json")
    np.save(tmp_path / "ids.npy", np.random.default_rng(0).integers(0, 64, (16, 24)))
    return tmp_path


def layers(work, *args):
    r = cli("report", *args, "--calib", "ids.npy", "--device", "cpu", "--json", "-", "-q", cwd=work)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["layers"]


def test_the_split_pair_measures_what_the_whole_model_measures(work):
    whole = layers(work, "whole")
    split = layers(work, "repo/onnx/decoder_model.onnx")
    assert [x["tokens"] for x in split] == [x["tokens"] for x in whole] == [16 * 24] * 2
    for a, b in zip(split, whole):
        assert a["hard_rank"] == pytest.approx(b["hard_rank"], rel=1e-9)
        assert a["soft_rank"] == pytest.approx(b["soft_rank"], rel=1e-9)
    shutil.move(work / "repo/onnx/embed_tokens.onnx", work / "table.onnx")  # named with --encoder
    again = layers(work, "repo/onnx/decoder_model.onnx", "--encoder", "table.onnx")
    assert [x["sui"] for x in again] == [x["sui"] for x in split]


def test_without_its_embed_tokens_the_decoder_is_refused_with_one_line(work):
    (work / "repo/onnx/embed_tokens.onnx").unlink()
    r = cli("report", "repo/onnx/decoder_model.onnx", "--calib", "ids.npy", cwd=work)
    line = one_error_line(r, "'inputs_embeds' takes token embeddings")
    assert "embed_tokens.onnx" in line and "--encoder" in line


def test_eval_names_what_it_does_not_run(work):
    r = cli("eval", "repo/onnx/decoder_model.onnx", "--data", "ids.npy", cwd=work)
    one_error_line(r, "eval does not run models whose embedding table is a model of its own")


def test_the_variant_of_the_decoder_finds_its_own_embed_tokens(tmp_path):
    for name in ("embed_tokens.onnx", "embed_tokens_q4.onnx", "decoder_model_merged_q4.onnx", "model_fp16.onnx"):
        (tmp_path / name).touch()
    assert companion_encoder(tmp_path / "decoder_model_merged_q4.onnx", embeddings=True) == tmp_path / "embed_tokens_q4.onnx"
    assert companion_encoder(tmp_path / "model_fp16.onnx", embeddings=True) == tmp_path / "embed_tokens.onnx"
    assert companion_encoder(tmp_path / "decoder_model_merged_q4.onnx") is None  # no encoder_model.onnx here
    (tmp_path / "embed_tokens.onnx").unlink()
    assert companion_encoder(tmp_path / "model_fp16.onnx", embeddings=True) is None


def test_slim_narrows_the_decoder_and_says_why_it_cannot_measure_it(work):
    r = cli("slim", "repo/onnx/decoder_model.onnx", "out", "--width", "24", "--calib", "ids.npy", "--device", "cpu",
            "-q", cwd=work)
    assert r.returncode == 0, r.stderr
    assert "eval does not run a model whose 'inputs_embeds' takes token embeddings" in r.stderr
    narrowed = layers(work, "out", "--encoder", "repo/onnx/embed_tokens.onnx")
    assert [x["width"] for x in narrowed] == [24, 24]
