"""Options that would do nothing in a run are refused instead of silently ignored: calibration
options beside --stats, held-out options without --eval; a checkpoint resumed into itself is the
normal way to go on; merged statistics given to --resume are pointed to --stats."""

import json
from pathlib import Path

import numpy as np
import pytest

from sui_onnx.analyze import AnalysisOptions, Interrupted, analyze
from sui_onnx.calib import CalibrationSpec
from sui_onnx.cli import main
from sui_onnx.spectrum import load_accumulators

pytest.importorskip("onnxruntime")
MODEL = Path(__file__).parent / "fixtures" / "gpt2_w128"


def ids(path: Path, rows=40, seq=16, seed=0) -> Path:
    np.save(path, np.random.default_rng(seed).integers(0, 512, (rows, seq)))
    return path


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


@pytest.fixture
def stats(tmp_path) -> Path:
    ck = tmp_path / "ck.npz"
    assert main(["report", str(MODEL), "--calib", str(ids(tmp_path / "a.npy")), "--checkpoint", str(ck), "-q"]) == 0
    return ck


@pytest.mark.parametrize("extra, named", [
    (["--calib", "{calib}"], "--calib"),
    (["--tokens", "5000", "--mix", "even"], "--tokens, --mix"),
    (["--resume", "{stats}"], "--resume"),
    (["--checkpoint", "{tmp}/other.npz"], "--checkpoint"),
    (["--precision", "fp64"], "--precision"),
])
@pytest.mark.parametrize("command", ["report", "slim", "check"])
def test_calibration_options_beside_stats_are_refused(tmp_path, capsys, stats, extra, named, command):
    calib = ids(tmp_path / "b.npy", seed=1)
    extra = [e.format(calib=calib, stats=stats, tmp=tmp_path) for e in extra]
    capsys.readouterr()
    args = {"report": ["report", str(MODEL)], "slim": ["slim", str(MODEL), str(tmp_path / "out"), "--ratio", "0.5"],
            "check": ["check", str(MODEL), "--min-sui", "0", "--no-config"]}[command]
    assert main([*args, "--stats", str(stats), *extra, "-q"]) == 2
    err = one_line_error(capsys)
    assert f"--stats reads finished statistics and runs no calibration: {named} would be ignored" in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "other.npz").exists()
    assert main([*args, "--stats", str(stats), "-q"]) == 0  # the same run without them


@pytest.mark.parametrize("command", ["report", "slim"])
@pytest.mark.parametrize("extra", [["--eval-tokens", "512"], ["--eval-seq-len", "64"], ["--max-loss-increase", "0.05"]])
def test_held_out_options_without_eval_are_refused(tmp_path, capsys, command, extra):
    args = {"report": ["report", str(MODEL)], "slim": ["slim", str(MODEL), str(tmp_path / "out"), "--ratio", "0.5"]}[command]
    if command == "slim" and extra[0] == "--max-loss-increase":
        args = args[:-2]  # slim's own width request
    assert main([*args, *extra, "--tokens", "600", "-q"]) == 2
    err = one_line_error(capsys)
    assert extra[0] in err and "--eval HELDOUT" in err
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_can_be_resumed_into_itself(tmp_path):
    calib = ids(tmp_path / "a.npy")
    spec = CalibrationSpec([calib], batch_size=2)
    ck = tmp_path / "ck.npz"

    def stop_after_four(done, total, desc):
        if done >= 4 * 32:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted):
        analyze(MODEL, spec, AnalysisOptions(device="cpu", checkpoint=ck, checkpoint_every=3, progress=stop_after_four))
    assert not load_accumulators(ck)[1]["complete"]
    out = tmp_path / "r.json"
    common = ["--calib", str(calib), "--batch-size", "2", "--device", "cpu", "-q"]
    assert main(["report", str(MODEL), *common, "--resume", str(ck), "--checkpoint", str(ck), "--json", str(out)]) == 0
    assert load_accumulators(ck)[1]["complete"]  # the run went on saving where it had left off
    assert main(["report", str(MODEL), *common, "--json", str(tmp_path / "w.json")]) == 0
    resumed, whole = (json.loads(p.read_text())["layers"] for p in (out, tmp_path / "w.json"))
    assert [x["tokens"] for x in resumed] == [x["tokens"] for x in whole] == [40 * 16] * 2
    for a, b in zip(resumed, whole):
        assert a["soft_rank"] == pytest.approx(b["soft_rank"], rel=1e-9)


def test_merged_statistics_given_to_resume_point_to_stats(tmp_path, capsys):
    for part, seed in (("a", 0), ("b", 1)):
        calib = ids(tmp_path / f"{part}.npy", seed=seed)
        assert main(["report", str(MODEL), "--calib", str(calib), "--checkpoint", str(tmp_path / f"{part}.npz"), "-q"]) == 0
    merged = tmp_path / "m.npz"
    assert main(["merge", str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "-o", str(merged)]) == 0
    capsys.readouterr()
    assert main(["report", str(MODEL), "--calib", str(tmp_path / "a.npy"), "--resume", str(merged), "-q"]) == 2
    err = one_line_error(capsys)
    assert "merged statistics" in err and f"--stats {merged}" in err and "seq len" not in err


@pytest.mark.parametrize("args", [
    ["eval", str(MODEL), "--data", ""], ["eval", str(MODEL), "--data", "x.txt", "--json", ""],
    ["report", str(MODEL), "--eval", ""], ["report", str(MODEL), "--json", ""],
    ["slim", str(MODEL), "", "--ratio", "0.5"], ["check", str(MODEL), "--junit", ""],
    ["merge", "", "b.npz", "-o", "m.npz"], ["scaling", "a", "b", "c", "--html", ""],
])
def test_an_empty_path_is_a_usage_error(capsys, args):
    """An empty path would silently mean the current folder (Path("") is "."): every path option refuses it."""
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2 and "expected a path, got an empty string" in capsys.readouterr().err


def test_files_of_other_kinds_given_as_model_or_report_are_named(tmp_path, capsys, stats):
    """A statistics file where the model goes points to --stats/--resume; another sui-onnx JSON
    where a report goes says what it is."""
    for command in (["report", str(stats)], ["check", str(stats), "--min-sui", "0", "--no-config"]):
        capsys.readouterr()
        assert main(command) == 2
        err = one_line_error(capsys)
        assert "is a statistics file, not an ONNX model" in err and f"--stats {stats}" in err
    slim_json = tmp_path / "slim.json"
    slim_json.write_text(json.dumps({"schema": "sui-onnx/slim", "schema_version": 1}))
    capsys.readouterr()
    assert main(["check", str(slim_json), "--min-sui", "0", "--no-config"]) == 2
    assert "this is slim.json (`sui-onnx slim`'s record)" in one_line_error(capsys)


@pytest.mark.parametrize("command", [
    ["report", str(MODEL), "--tokens", "600", "--json", "{out}"],
    ["eval", str(MODEL), "--data", "{heldout}", "--tokens", "300", "--json", "{out}"],
    ["slim", str(MODEL), "{outdir}", "--ratio", "0.5", "--tokens", "600"],
    ["slim", str(MODEL), "{tmp}/s", "--ratio", "0.5", "--tokens", "600", "--json", "{heldout}"],
])
def test_outputs_into_the_package_data_are_refused(tmp_path, capsys, command):
    """The bundled demo model and texts are never an output, whether or not the run reads them (slim
    --json onto the bundled held-out text replaced it). The paths asked for do not exist, so a
    failing check leaves only a stray file, which is removed."""
    from sui_onnx.cli.options import package_data_folder

    data = package_data_folder()
    out, outdir = data / "_sui_test_never_written.json", data / "_sui_test_never_written"
    heldout = data / "heldout.txt"
    before = heldout.read_bytes()
    args = [a.format(out=out, outdir=outdir, heldout=heldout, tmp=tmp_path) for a in command]
    try:
        assert main([*args, "-q"]) == 2
        assert "sui-onnx's own bundled data" in one_line_error(capsys)
    finally:
        out.unlink(missing_ok=True)
        if outdir.exists():
            import shutil

            shutil.rmtree(outdir)
        if heldout.read_bytes() != before:
            heldout.write_bytes(before)
            pytest.fail("the bundled held-out text was overwritten")
    assert not out.exists() and not outdir.exists()
