"""`sui-onnx export`: Hugging Face folders (GPT-2, LLaMA, BERT, KV-cache variant), GGUF
checkpoints and plain torch modules exported, tapped and checked against PyTorch hooks; the
errors that need no export stack (missing extra, bad MODEL_DIR, occupied OUT_DIR)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sui_onnx.cli import main

REPO_ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = REPO_ROOT / "tests" / "fixtures" / "gpt2_w128" / "tokenizer.json"   # BPE, 512 tokens
TOLERANCE = 1e-4
PIP = "pip install 'sui-onnx[export]'"


def _export_stack():
    pytest.importorskip("torch")
    pytest.importorskip("optimum")
    pytest.importorskip("onnxruntime")
    if str(REPO_ROOT) not in sys.path:      # `models` is a repo-root folder, not an installed package
        sys.path.insert(0, str(REPO_ROOT))


def _run(capsys, *args) -> tuple[int, str, str]:
    try:
        rc = main([str(a) for a in args])
    except SystemExit as exc:       # argparse usage errors
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


def _export_json(capsys, *args) -> dict:
    rc, out, err = _run(capsys, "export", *args, "--json")
    assert rc == 0, err
    return json.loads(out)


def _leftovers(folder: Path) -> list[str]:
    """Staging/trash folders the export must not leave behind."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith((".partial", ".old")))


def _hf_folder(tmp: Path, family: str, vocab: int = 512, tokenizer: bool = False) -> Path:
    from models.families import build_model

    folder = tmp / f"hf_{family}"
    build_model(family, d_model=64, n_layers=2, d_ff=128, vocab=vocab, seed=0).save_pretrained(folder)
    if tokenizer:
        shutil.copyfile(TOKENIZER, folder / "tokenizer.json")
    return folder


def _ids(vocab: int, shape=(2, 12), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, size=shape, dtype=np.int64)


def _tap_outputs(tapped: Path, summary: dict, input_ids: np.ndarray) -> dict[str, np.ndarray]:
    """Run model.tapped.onnx; key ``post_i`` / ``pre_i`` like models.families.capture_ffn."""
    import onnxruntime as ort
    from models.export import onnx_feeds

    sess = ort.InferenceSession(str(tapped), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    assert names == [t["tensor"] for t in summary["taps"]]
    outs = sess.run(names, onnx_feeds(tapped, input_ids))
    return {f"{t['site']}_{t['layer']}": o for t, o in zip(summary["taps"], outs)}


def _assert_match(got: dict[str, np.ndarray], ref: dict[str, np.ndarray], keys: list[str]) -> None:
    assert sorted(got) == sorted(keys)
    for k in keys:
        diff = float(np.abs(got[k].reshape(ref[k].shape) - ref[k]).max())
        assert diff < TOLERANCE, f"{k}: max abs diff {diff:.2e}"


# --------------------------------------------------------------------------- no export stack needed


def test_analysis_imports_stay_light():
    code = ("import sys; import sui_onnx.export, sui_onnx.graph; from sui_onnx.cli import build_parser; "
            "build_parser(); heavy = [m for m in ('torch', 'transformers', 'optimum', 'gguf') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_package_names_are_its_functions_not_its_submodules():
    """sui_onnx.export loads its names lazily: no submodule may shadow one (validate() once did)."""
    code = ("import importlib, pkgutil, sys, types; import sui_onnx.export as e; "
            "[importlib.import_module('sui_onnx.export.' + m.name) for m in pkgutil.iter_modules(e.__path__)]; "
            "bad = [n for n in e.__all__ if isinstance(getattr(e, n), types.ModuleType)]; "
            "print(bad); sys.exit(1 if bad or sorted(e.__all__) != sorted(e._MODULE_OF) else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("blocked, extra", [
    (("optimum", "optimum.exporters", "optimum.exporters.onnx"), []),
    (("torch",), ["--torch-module", "models.ngpt:build_ngpt"]),
])
def test_missing_extra_names_the_pip_command(tmp_path, capsys, monkeypatch, blocked, extra):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    for name in blocked:
        monkeypatch.setitem(sys.modules, name, None)     # import of NAME halted -> ImportError
    rc, _, err = _run(capsys, "export", model, tmp_path / "out", *extra)
    assert rc == 2
    assert PIP in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists() and not _leftovers(tmp_path)


@pytest.mark.parametrize("case", ["missing", "file", "no_config", "omitted"])
def test_bad_model_dir_exits_2(tmp_path, capsys, case):
    model = tmp_path / "m"
    if case == "file":
        model.write_text("x")
    elif case == "no_config":
        model.mkdir()
        (model / "model.safetensors").write_bytes(b"")
    args = ["export", tmp_path / "out"] if case == "omitted" else ["export", model, tmp_path / "out"]
    rc, _, err = _run(capsys, *args)
    assert rc == 2 and err.startswith("sui-onnx: error: ") and err.count("\n") == 1
    assert {"missing": "does not exist", "file": "not a folder", "no_config": "config.json",
            "omitted": "MODEL_DIR is required"}[case] in err
    assert not (tmp_path / "out").exists()


def test_existing_non_empty_out_dir_is_refused(tmp_path, capsys):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    rc, _, err = _run(capsys, "export", model, out)
    assert rc == 2 and "--force" in err and "not empty" in err
    assert (out / "keep.txt").read_text() == "mine"
    # --force never deletes an input: OUT_DIR equal to (or holding) MODEL_DIR is refused
    for target in (model, tmp_path):
        rc, _, err = _run(capsys, "export", model, target, "--force")
        assert rc == 2 and "input" in err
    assert (model / "config.json").exists()


def test_the_log_never_replaces_a_file_the_export_did_not_write(tmp_path, capsys):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    log = tmp_path / "out.export.log"
    log.write_text("precious notes")
    rc, _, err = _run(capsys, "export", model, tmp_path / "out")
    assert rc == 2 and err.count("\n") == 1 and "not an export log" in err and "--force" in err
    assert log.read_text() == "precious notes" and not (tmp_path / "out").exists()
    log.unlink()
    log.mkdir()
    rc, _, err = _run(capsys, "export", model, tmp_path / "out", "--force")
    assert rc == 2 and err.count("\n") == 1 and "not a file" in err and "unexpected" not in err
    rc, _, err = _run(capsys, "export", model, "")
    assert rc == 2 and "empty" in err


@pytest.mark.parametrize("args, message", [
    (["--torch-module", "no_colon"], "package.module:factory"),
    (["--torch-module", "models.ngpt:build_ngpt", "--with-past"], "--with-past"),
    (["--gguf", "missing.gguf"], "does not exist"),
    (["--gguf", "x.gguf", "--torch-module", "a:b"], "exclude each other"),
    (["--factory-kwargs", "[1]"], "JSON object"),
])
def test_flag_errors_exit_2(tmp_path, capsys, args, message):
    if args[:2] == ["--gguf", "x.gguf"]:
        (tmp_path / "x.gguf").write_bytes(b"GGUF")
        args = ["--gguf", str(tmp_path / "x.gguf")] + args[2:]
    rc, _, err = _run(capsys, "export", tmp_path / "out", *args)
    assert rc == 2 and message in err, err


@pytest.mark.parametrize("config, task", [
    ({"architectures": ["GPT2LMHeadModel"]}, "text-generation"),
    ({"architectures": ["LlamaForCausalLM"]}, "text-generation"),
    ({"architectures": ["Gemma3ForConditionalGeneration"]}, "text-generation"),
    ({"architectures": ["BertModel"]}, "feature-extraction"),
    ({"architectures": ["RobertaForMaskedLM"]}, "feature-extraction"),
    ({"model_type": "gpt2"}, "text-generation"),  # no architectures: the historical default
    ({"model_type": "t5", "is_encoder_decoder": True, "architectures": ["T5ForConditionalGeneration"]},
     "text2text-generation"),
])
def test_default_task_follows_the_config(config, task):
    from sui_onnx.export import default_task

    assert default_task(config) == task


def test_validate_returns_the_resolved_options_and_leaves_its_argument_alone(tmp_path, monkeypatch):
    import dataclasses

    from sui_onnx.export import ExportOptions, validate

    model, work = tmp_path / "m", tmp_path / "work"
    model.mkdir()
    work.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    (model / "model.gguf").write_bytes(b"GGUF" + bytes(8))
    monkeypatch.chdir(work)
    for opts, changed in [
        (ExportOptions(out_dir=Path("."), model_dir=model), {"out_dir": work, "task": "feature-extraction"}),
        (ExportOptions(out_dir=Path("."), model_dir=model, gguf=Path("model.gguf")),
         {"out_dir": work, "gguf": model / "model.gguf"}),
    ]:
        before = dataclasses.replace(opts)
        resolved = validate(opts)
        assert opts == before and resolved is not opts
        assert resolved == dataclasses.replace(before, **changed)


def test_unreadable_config_json_exits_2(tmp_path, capsys):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{not json")
    rc, _, err = _run(capsys, "export", model, tmp_path / "out")
    assert rc == 2 and "config.json" in err and err.count("\n") == 1


def test_not_a_gguf_file_exits_2(tmp_path, capsys):
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"PK\x03\x04 not gguf")
    rc, _, err = _run(capsys, "export", tmp_path / "out", "--gguf", bogus)
    assert rc == 2 and "not a GGUF file" in err


# --------------------------------------------------------------------------- Hugging Face folders


@pytest.mark.export
@pytest.mark.parametrize("family, flags, sites", [
    ("gpt2", [], ["post"]),
    ("llama", ["--site", "both"], ["post", "pre"]),
    ("bert", ["--site", "pre"], ["pre"]),  # no --task: feature-extraction, from config.json
])
def test_hf_export_taps_match_pytorch_hooks(tmp_path, capsys, family, flags, sites):
    _export_stack()
    from models.families import build_model, capture_ffn
    import torch

    model_dir = _hf_folder(tmp_path, family, tokenizer=family == "gpt2")
    out = tmp_path / "out"
    if family == "gpt2":            # --force replaces an occupied OUT_DIR
        out.mkdir()
        (out / "stale.txt").write_text("old")
        flags = flags + ["--force"]
    summary = _export_json(capsys, model_dir, out, *flags)
    assert not (out / "stale.txt").exists() and not _leftovers(tmp_path)
    assert (out / "model.onnx").is_file() and Path(summary["tapped"]) == out / "model.tapped.onnx"
    assert summary["metadata"]["sui_onnx.source"] == model_dir.name
    assert Path(summary["log"]) == tmp_path / "out.export.log" and Path(summary["log"]).is_file()
    assert {t["site"] for t in summary["taps"]} == set(sites) and all(t["width"] == 128 for t in summary["taps"])
    assert summary["task"] == ("feature-extraction" if family == "bert" else "text-generation")
    ids = _ids(512)
    ref = capture_ffn(build_model(family, 64, 2, 128, 512, seed=0), family, torch.from_numpy(ids))
    got = _tap_outputs(out / "model.tapped.onnx", summary, ids)
    _assert_match(got, ref, [f"{s}_{i}" for s in sites for i in (0, 1)])
    if family == "gpt2":            # the tokenizer came along: text calibration works on OUT_DIR
        assert summary["tokenizer"] and (out / "tokenizer.json").read_bytes() == TOKENIZER.read_bytes()
        rc, _, err = _run(capsys, "report", out, "--tokens", "1024", "--seq-len", "64", "-q",
                          "--json", tmp_path / "r.json")
        assert rc == 0, err
        report = json.loads((tmp_path / "r.json").read_text())
        assert [x["tensor"] for x in report["layers"]] == [t["tensor"] for t in summary["taps"]]
        assert report["model"]["source"] == model_dir.name


@pytest.mark.export
def test_with_past_export_keeps_past_inputs(tmp_path, capsys):
    _export_stack()
    import onnx
    import torch
    from models.families import build_model, capture_ffn

    out = tmp_path / "out"
    summary = _export_json(capsys, _hf_folder(tmp_path, "llama"), out, "--with-past")
    assert summary["task"] == "text-generation-with-past" and len(summary["taps"]) == 2
    for name in ("model.onnx", "model.tapped.onnx"):
        inputs = [i.name for i in onnx.load(str(out / name), load_external_data=False).graph.input]
        assert "past_key_values.0.key" in inputs and "past_key_values.1.value" in inputs, name
    ids = _ids(512)
    ref = capture_ffn(build_model("llama", 64, 2, 128, 512, seed=0), "llama", torch.from_numpy(ids))
    _assert_match(_tap_outputs(out / "model.tapped.onnx", summary, ids), ref, ["post_0", "post_1"])


@pytest.mark.export
def test_optimum_failure_is_one_line_with_the_log(tmp_path, capsys):
    _export_stack()
    out = tmp_path / "out"
    rc, _, err = _run(capsys, "export", _hf_folder(tmp_path, "gpt2"), out, "--task", "fill-mask")
    log = tmp_path / "out.export.log"
    assert rc == 2 and err.count("\n") == 1 and "optimum export failed" in err and str(log) in err
    assert "Traceback" in log.read_text() and "Traceback" not in err
    assert not out.exists() and not _leftovers(tmp_path)


@pytest.mark.export
def test_fp16_exports_or_says_it_cannot(tmp_path, capsys):
    _export_stack()
    out = tmp_path / "out"
    rc, _, err = _run(capsys, "export", _hf_folder(tmp_path, "gpt2"), out, "--dtype", "fp16")
    if rc == 0:                     # a machine where optimum and onnxruntime support fp16
        assert (out / "model.tapped.onnx").is_file()
    else:
        assert rc == 2 and "fp16" in err and "--dtype fp32" in err and err.count("\n") == 1
        assert not out.exists() and not _leftovers(tmp_path)


# --------------------------------------------------------------------------- GGUF


V, D, F, L, H = 64, 64, 128, 2, 2


def write_tiny_gguf(path: Path, arch: str = "llama") -> None:
    """A random LLaMA checkpoint in llama.cpp's layout: Q8_0 matrices, F32 norms, a small vocab."""
    import gguf
    from gguf import GGMLQuantizationType as Q

    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny-llama")
    w.add_context_length(128)
    w.add_embedding_length(D)
    w.add_block_count(L)
    w.add_feed_forward_length(F)
    w.add_head_count(H)
    w.add_head_count_kv(H)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(D // H)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    tokens = ["<unk>", "<s>", "</s>"] + [chr(97 + i % 26) * (1 + i // 26) for i in range(V - 3)]
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * V)
    w.add_token_types([2, 3, 3] + [1] * (V - 3))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)

    def tensor(name: str, shape: tuple[int, ...]) -> None:
        a = (rng.standard_normal(shape) * 0.1).astype(np.float32)
        if len(shape) == 1:
            w.add_tensor(name, 1.0 + a)
        else:
            w.add_tensor(name, gguf.quants.quantize(a, Q.Q8_0), raw_dtype=Q.Q8_0,
                         raw_shape=gguf.quants.quant_shape_to_byte_shape(a.shape, Q.Q8_0))

    tensor("token_embd.weight", (V, D))
    for i in range(L):
        tensor(f"blk.{i}.attn_norm.weight", (D,))
        tensor(f"blk.{i}.ffn_norm.weight", (D,))
        for n in ("attn_q", "attn_k", "attn_v", "attn_output"):
            tensor(f"blk.{i}.{n}.weight", (D, D))
        tensor(f"blk.{i}.ffn_gate.weight", (F, D))
        tensor(f"blk.{i}.ffn_up.weight", (F, D))
        tensor(f"blk.{i}.ffn_down.weight", (D, F))
    tensor("output_norm.weight", (D,))
    tensor("output.weight", (V, D))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.export
def test_gguf_export_records_the_quantization_and_analyzes(tmp_path, capsys):
    _export_stack()
    pytest.importorskip("gguf")
    import torch
    from models.families import capture_ffn
    from transformers import AutoModelForCausalLM

    src = tmp_path / "gguf"
    src.mkdir()
    write_tiny_gguf(src / "tiny.gguf")
    out = tmp_path / "out"
    summary = _export_json(capsys, out, "--gguf", src / "tiny.gguf")
    assert summary["metadata"]["sui_onnx.dequantized_from"] == "Q8_0"
    assert summary["metadata"]["sui_onnx.source"] == "tiny.gguf"
    assert summary["metadata"]["sui_onnx.architecture"] == "LlamaForCausalLM"
    assert summary["tokenizer"] and [t["width"] for t in summary["taps"]] == [F, F]
    assert not list(out.glob("*.safetensors")) and not (out / "_gguf_hf").exists()
    # the taps equal transformers' own dequantized model
    ids = _ids(V)
    hf = AutoModelForCausalLM.from_pretrained(str(src), gguf_file="tiny.gguf", dtype=torch.float32).eval()
    ref = capture_ffn(hf, "llama", torch.from_numpy(ids))
    _assert_match(_tap_outputs(out / "model.tapped.onnx", summary, ids), ref, ["post_0", "post_1"])
    # and the report says where the weights came from
    np.save(tmp_path / "ids.npy", _ids(V, shape=(40, 32), seed=1))
    rc, _, err = _run(capsys, "report", out, "--calib", tmp_path / "ids.npy", "-q", "--json", tmp_path / "r.json")
    assert rc == 0, err
    model = json.loads((tmp_path / "r.json").read_text())["model"]
    assert model["dequantized_from"] == "Q8_0" and model["source"] == "tiny.gguf"


@pytest.mark.export
def test_gguf_architecture_transformers_cannot_load_exits_2(tmp_path, capsys):
    _export_stack()
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "enc.gguf"
    w = gguf.GGUFWriter(str(path), "bert")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 32), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    rc, _, err = _run(capsys, "export", tmp_path / "out", "--gguf", path)
    assert rc == 2 and "'bert'" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- torch modules

NGPT_KWARGS = {"d_model": 64, "n_layers": 2, "d_ff": 128, "vocab": 256, "n_heads": 2}


@pytest.mark.export
@pytest.mark.parametrize("external", [False, True])
def test_torch_module_ngpt(tmp_path, capsys, monkeypatch, external):
    _export_stack()
    import onnx
    import torch
    from models.families import capture_ffn
    from models.ngpt import build_ngpt

    torch.manual_seed(0)
    model = build_ngpt(**NGPT_KWARGS).eval()
    weights = tmp_path / "weights"
    weights.mkdir()
    torch.save(model.state_dict(), weights / "ngpt.pt")      # MODEL_DIR: the weights to load
    if external:            # pretend the model is over 2 GB: its data goes to model.onnx_data
        monkeypatch.setattr("sui_onnx.graph.exported._TWO_GB", 1)
    monkeypatch.chdir(REPO_ROOT)
    out = tmp_path / "out"
    summary = _export_json(capsys, weights, out, "--torch-module", "models.ngpt:build_ngpt",
                           "--factory-kwargs", json.dumps(NGPT_KWARGS), "--site", "both")
    assert summary["metadata"]["sui_onnx.source"] == "models.ngpt:build_ngpt"
    assert summary["metadata"]["sui_onnx.architecture"] == "NGPT"
    assert summary["external_data"] is external and (out / "model.onnx_data").is_file() is external
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    assert [i.name for i in graph.input] == ["input_ids"] and [o.name for o in graph.output] == ["logits"]
    if external:            # the tapped copy references the same data file, nothing copied
        tapped = onnx.load(str(out / "model.tapped.onnx"), load_external_data=False)
        locations = {e.value for t in tapped.graph.initializer for e in t.external_data if e.key == "location"}
        assert locations == {"model.onnx_data"} and sorted(p.name for p in out.glob("*onnx*")) == [
            "model.onnx", "model.onnx_data", "model.tapped.onnx"]
    ids = _ids(256)
    ref = capture_ffn(model, "ngpt", torch.from_numpy(ids))
    _assert_match(_tap_outputs(out / "model.tapped.onnx", summary, ids), ref,
                  ["post_0", "post_1", "pre_0", "pre_1"])


@pytest.mark.export
@pytest.mark.parametrize("with_past", [False, True], ids=["plain", "with_past"])
def test_encoder_decoder_export_taps_both_graphs_and_reports(tmp_path, capsys, with_past):
    """A T5 folder: optimum's encoder_model.onnx and decoder_model.onnx, each with a tapped copy
    whose outputs equal PyTorch hooks; `report` on the decoder runs the encoder beside it."""
    _export_stack()
    import onnx

    from models import architectures as zoo

    arch = zoo.BY_NAME["t5"]
    model = zoo.build(arch)
    model.save_pretrained(tmp_path / "hf_t5")
    out = tmp_path / "out"
    summary = _export_json(capsys, tmp_path / "hf_t5", out, *(["--with-past"] if with_past else []))
    assert summary["task"] == "text2text-generation" + ("-with-past" if with_past else "")
    assert Path(summary["model"]) == out / "decoder_model.onnx" and summary["tap_error"] is None
    assert Path(summary["encoder"]["tapped"]) == out / "encoder_model.tapped.onnx"
    names = {p.name for p in out.glob("*.onnx")}
    extra = {"decoder_model_merged.onnx", "decoder_with_past_model.onnx"} if with_past else set()
    assert names == {"encoder_model.onnx", "encoder_model.tapped.onnx", "decoder_model.onnx",
                     "decoder_model.tapped.onnx"} | extra
    for name in names:
        meta = {p.key: p.value for p in onnx.load(str(out / name), load_external_data=False).metadata_props}
        assert meta["sui_onnx.task"] == summary["task"], name
    ids = zoo.input_ids()
    ref = zoo.reference(model, arch, ids)  # encoder layers, then decoder layers
    enc_w, enc = zoo.tap_activations(out / "encoder_model.onnx", ids)
    dec_w, dec = zoo.tap_activations(out / "decoder_model.onnx", ids, encoder=out / "encoder_model.onnx")
    assert enc_w == dec_w == [arch.d_ff] * zoo.LAYERS
    assert [t["tensor"] for t in summary["encoder"]["taps"]] == [o.name for o in
                                                                onnx.load(str(out / "encoder_model.tapped.onnx")).graph.output]
    assert max(float(np.abs(g - r).max()) for g, r in zip(enc + dec, ref)) < TOLERANCE
    np.save(tmp_path / "ids.npy", ids)
    rc, _, err = _run(capsys, "report", out / "decoder_model.onnx", "--calib", tmp_path / "ids.npy", "-q",
                      "--json", tmp_path / "r.json")
    assert rc == 0, err
    assert json.loads((tmp_path / "r.json").read_text())["model"]["encoder"]["path"] == str(out / "encoder_model.onnx")
