"""Class 5: resume and merge identity. A checkpoint records the SHA-256 of the token ids it consumed
and --resume refuses other data under the same file name; merge counts each shard once; files that
are not valid accumulators are refused by --stats, --resume and merge (never plausible numbers)."""

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from sui_onnx.spectrum import load_accumulators
from tests.robustness.clitools import SIGNAL_AT_BATCH, cli, cli_main, hook, ids, model_folder, one_error_line, snapshot


@pytest.fixture()
def work(tmp_path):
    model_folder(tmp_path / "m", vocab=64)
    ids(tmp_path / "ids.npy", rows=12, cols=8)
    return tmp_path


RUN = ("report", "m", "--calib", "ids.npy", "--batch-size", "1", "--device", "cpu", "-q")


def interrupted_checkpoint(work, at_batch=5):
    """A checkpoint of a run stopped by SIGINT before batch ``at_batch`` (a hook sends it)."""
    h = hook(work / "hook", SIGNAL_AT_BATCH.format(batch=at_batch, sig="SIGINT"))
    r = cli(*RUN, "--checkpoint", "ck.npz", "--checkpoint-every", "100", cwd=work, hook=h)
    assert r.returncode == 130 and "checkpoint saved to ck.npz" in r.stderr, r.stderr
    _, meta = load_accumulators(work / "ck.npz")
    assert not meta["complete"] and 0 < meta["batches_done"] < 12
    return work / "ck.npz"


def test_resume_refuses_other_token_ids_under_the_same_name(work):
    interrupted_checkpoint(work)
    ids(work / "ids.npy", rows=12, cols=8, seed=7)  # same file name and shape, other ids
    before = snapshot(work)
    r = cli(*RUN, "--resume", "ck.npz", "--json", "r.json", cwd=work)
    one_error_line(r, "not the data of the interrupted run")
    assert snapshot(work) == before


def test_resume_on_the_same_data_equals_an_uninterrupted_run(work):
    interrupted_checkpoint(work)
    r = cli(*RUN, "--resume", "ck.npz", "--json", "resumed.json", cwd=work)
    assert r.returncode == 0, r.stderr
    r = cli(*RUN, "--json", "whole.json", cwd=work)
    assert r.returncode == 0, r.stderr
    a, b = (json.loads((work / n).read_text())["layers"] for n in ("resumed.json", "whole.json"))
    for x, y in zip(a, b):
        assert x["tokens"] == y["tokens"] == 96
        assert x["sui"] == pytest.approx(y["sui"], rel=1e-9)


def test_a_finished_checkpoint_is_tied_to_its_data_too(work):
    r = cli(*RUN, "--checkpoint", "done.npz", cwd=work)
    assert r.returncode == 0, r.stderr
    ids(work / "ids.npy", rows=12, cols=8, seed=3)
    one_error_line(cli(*RUN, "--resume", "done.npz", cwd=work), "not the data of the interrupted run")


def shards(work):
    for name, seed in (("a", 1), ("b", 2)):
        ids(work / f"{name}.npy", rows=6, cols=8, seed=seed)
        r = cli("report", "m", "--calib", f"{name}.npy", "-q", "--checkpoint", f"{name}.npz", cwd=work)
        assert r.returncode == 0, r.stderr


def test_merge_counts_each_shard_once(work):
    shards(work)
    shutil.copy(work / "a.npz", work / "a_copy.npz")
    assert cli("merge", "a.npz", "b.npz", "-o", "ab.npz", cwd=work).returncode == 0
    before = snapshot(work)
    one_error_line(cli("merge", "a.npz", "a.npz", "-o", "x.npz", cwd=work), "given twice")
    one_error_line(cli("merge", "a.npz", "a_copy.npz", "-o", "x.npz", cwd=work), "same calibration data")
    one_error_line(cli("merge", "ab.npz", "b.npz", "-o", "x.npz", cwd=work), "same calibration data")
    assert snapshot(work) == before


def test_merge_refuses_shards_that_overlap_on_one_source(work):
    """Two runs over the same source, at different budgets or window lengths, share its first tokens:
    their token streams differ, but merging them would count the shared tokens twice."""
    gpt2 = Path(__file__).parent.parent / "fixtures" / "gpt2_w128"
    (work / "t.txt").write_text(" ".join(f"word{i % 97} and more text {i}" for i in range(3000)))
    (work / "u.txt").write_text(" ".join(f"other{i % 89} words here {i}" for i in range(3000)))
    for name, src, extra in (("t1", "t.txt", ["--tokens", "600"]), ("t2", "t.txt", ["--tokens", "1200"]),
                             ("t3", "t.txt", ["--seq-len", "32", "--tokens", "600"]), ("a", "u.txt", ["--tokens", "600"]),
                             ("b", "u2.txt", ["--tokens", "600"])):
        if src == "u2.txt":
            (work / src).write_text((work / "u.txt").read_text()[::-1])
        r = cli("report", gpt2, "--calib", src, *extra, "-q", "--checkpoint", f"{name}.npz", cwd=work)
        assert r.returncode == 0, r.stderr
    assert cli("merge", "a.npz", "b.npz", "-o", "ab.npz", cwd=work).returncode == 0
    before = snapshot(work)
    for pair in (("t1.npz", "t2.npz"), ("t1.npz", "t3.npz")):
        one_error_line(cli("merge", *pair, "-o", "x.npz", cwd=work), "both read calibration source t.txt")
    r = cli("merge", "ab.npz", "t1.npz", "-o", "abt.npz", cwd=work)  # disjoint sources merge, and the record keeps them
    assert r.returncode == 0, r.stderr
    one_error_line(cli("merge", "abt.npz", "t2.npz", "-o", "x.npz", cwd=work), "both read calibration source t.txt")
    one_error_line(cli("merge", "abt.npz", "a.npz", "-o", "x.npz", cwd=work), "same calibration data")
    assert cli("report", gpt2, "--stats", "abt.npz", "--json", "abt.json", "-q", cwd=work).returncode == 0
    sources = json.loads((work / "abt.json").read_text())["calibration"]["sources"]
    assert sorted(s["path"] for s in sources) == ["t.txt", "u.txt", "u2.txt"]
    assert {f: snapshot(work)[f] for f in before} == before


# -- statistics files that are not valid accumulators ----------------------------------------------
def rewrite(src, dst, **members):
    """A copy of the .npz ``src`` with some members replaced (arrays, or raw bytes)."""
    with np.load(src, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update({k: v for k, v in members.items() if not isinstance(v, bytes)})
    np.savez(dst, **arrays)
    raw = {k: v for k, v in members.items() if isinstance(v, bytes)}
    if raw:
        tmp = dst.with_suffix(".tmp.npz")
        with zipfile.ZipFile(dst) as zin, zipfile.ZipFile(tmp, "w") as zout:
            for info in zin.infolist():
                key = info.filename.removesuffix(".npy")
                zout.writestr(info, raw.get(key, zin.read(info)))
        tmp.replace(dst)
    return dst


def bad_files(work):
    """{name: (file, what the error names)} built from a real finished checkpoint."""
    shards(work)
    good = work / "a.npz"
    with np.load(good) as z:
        gram, s, n = z["0/gram"], z["0/sum"], z["0/n"]
        meta = json.loads(str(z["meta"]))
    asym = gram.copy()
    asym[0, 1] += abs(asym).max()
    nan = s.copy()
    nan[3] = np.nan
    cases = {
        "gram_1d": ({"0/gram": gram.reshape(-1)}, "gram"),
        "gram_complex": ({"0/gram": gram.astype(np.complex128) * 1j}, "gram"),
        "gram_asymmetric": ({"0/gram": asym}, "symmetric"),
        "n_negative": ({"0/n": np.asarray(-5)}, "token count"),
        "n_absurd": ({"0/n": np.asarray(2**62)}, "token count"),
        "n_float": ({"0/n": np.asarray(float(n))}, "not an integer"),
        "sum_nan": ({"0/sum": nan}, "NaN"),
        "sum_wrong_shape": ({"0/sum": np.concatenate([s, s])}, "entries"),
        "sums_too_large": ({"0/sum": s + 1e6}, "do not fit"),
        "meta_not_json": ({"meta": np.asarray("{not json")}, "metadata"),
        "meta_a_list": ({"meta": np.asarray("[1, 2]")}, "JSON object"),
        "meta_nested": ({"meta": np.asarray("[" * 100000 + "]" * 100000)}, "nested"),
        "meta_nan": ({"meta": np.asarray(json.dumps(meta).replace('"complete": true', '"complete": NaN'))}, "metadata"),
        "names_not_strings": ({"names": np.arange(2)}, "names"),
        "header_lies": ({"0/gram": b"\x93NUMPY\x01\x00v\x00{'descr': '<f8', 'fortran_order': False, 'shape': (100000, 100000), }"
                         + b" " * 50 + b"\n"}, "accumulator"),
    }
    return {name: (rewrite(good, work / f"bad_{name}.npz", **m), what) for name, (m, what) in cases.items()}


def test_invalid_statistics_are_refused_everywhere(work):
    """Every bad file through --stats, four of them through merge and --resume too; the CLI's main()
    in this process for the table, and one case of each command through the real entry point."""
    files = bad_files(work)
    before = snapshot(work)
    for name, (path, what) in files.items():
        line = one_error_line(cli_main("report", "m", "--stats", path.name, "-q", "--json", "r.json", cwd=work), what)
        assert path.name in line, (name, line)
    for name in ("gram_asymmetric", "n_negative", "sum_nan", "meta_a_list"):
        path, what = files[name]
        one_error_line(cli_main("merge", "b.npz", path.name, "-o", "x.npz", cwd=work), what)
        one_error_line(cli_main(*RUN, "--resume", path.name, cwd=work), what)
    for name, args in (("header_lies", ("report", "m", "--stats", "{}", "-q", "--json", "r.json")),
                       ("sum_nan", ("merge", "b.npz", "{}", "-o", "x.npz")), ("n_negative", (*RUN, "--resume", "{}"))):
        path, what = files[name]
        one_error_line(cli(*(a.format(path.name) for a in args), cwd=work), what)
    assert snapshot(work) == before


def test_checkpoint_fields_are_validated_on_resume(work):
    ck = interrupted_checkpoint(work)
    with np.load(ck) as z:
        meta = json.loads(str(z["meta"]))
    for key, value, what in (("batches_done", -1, "batches_done"), ("tokens_done", "many", "tokens_done"),
                             ("group", 7, "group"), ("stream", {"batches": 1, "sha256": "x"}, "digest")):
        bad = dict(meta, **{key: value})
        rewrite(ck, work / "bad.npz", meta=np.asarray(json.dumps(bad)))
        one_error_line(cli(*RUN, "--resume", "bad.npz", cwd=work), what)
