"""The streaming covariance accumulator: exactness against a two-pass reference, merging,
cancellation, masks, numerical guards, persistence."""

import numpy as np
import pytest

from sui_onnx.errors import NumericalError, SuiError
import sui_onnx.spectrum as spectrum
from sui_onnx.spectrum import CovarianceAccumulator, load_accumulators, lower_gram, save_accumulators, symmetric_from_lower


@pytest.fixture(autouse=True, params=["leaf_default", "leaf_3"])
def gram_leaf(request, monkeypatch):
    """Every test runs twice: products as one block (these widths are below GRAM_LEAF) and split
    into blocks of at most 3 columns, so the blocked lower-triangle path meets every property."""
    if request.param == "leaf_3":
        monkeypatch.setattr(spectrum, "GRAM_LEAF", 3)
    return request.param


def two_pass_eigs(x):
    """Reference: centre with the exact mean, then form the covariance in one float64 product."""
    x = np.asarray(x, dtype=np.float64).reshape(-1, x.shape[-1])
    c = x - x.mean(axis=0)
    cov = c.T @ c / (x.shape[0] - 1)
    return np.clip(np.linalg.eigvalsh(cov)[::-1], 0, None)


def correlated(rng, n, d, mean=0.0, spread=1.0):
    mix = rng.standard_normal((d, d)) * (0.7 ** np.arange(d))
    return mean + spread * rng.standard_normal((n, d)) @ mix


def test_one_pass_equals_two_pass_reference():
    rng = np.random.default_rng(0)
    x = correlated(rng, 3000, 24)
    acc = CovarianceAccumulator(24, "t")
    for chunk in np.array_split(x, 7):
        acc.update(chunk)
    spec = acc.finalize()
    np.testing.assert_allclose(spec.eigenvalues, two_pass_eigs(x), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(spec.mean, x.mean(axis=0), rtol=1e-12, atol=1e-12)
    assert spec.n == 3000 and spec.trace == pytest.approx(np.trace(np.cov(x.T)), rel=1e-12)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_merged_shards_equal_one_pass(k):
    rng = np.random.default_rng(k)
    x = correlated(rng, 2000, 16, mean=3.0)
    whole = CovarianceAccumulator(16)
    whole.update(x)
    shards = []
    for part in np.array_split(x, k):
        s = CovarianceAccumulator(16)
        s.update(part + 0.0)
        shards.append(s)
    merged = shards[0]
    for s in shards[1:]:
        merged.merge(s)
    ref = two_pass_eigs(x)
    np.testing.assert_allclose(merged.finalize().eigenvalues, ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(whole.finalize().eigenvalues, ref, rtol=1e-10, atol=1e-12)


def test_merge_into_empty_and_with_empty():
    rng = np.random.default_rng(1)
    x = correlated(rng, 100, 5)
    a, b = CovarianceAccumulator(5), CovarianceAccumulator(5)
    b.update(x)
    a.merge(b).merge(CovarianceAccumulator(5))
    np.testing.assert_allclose(a.finalize().eigenvalues, two_pass_eigs(x), rtol=1e-10, atol=1e-13)


def test_large_mean_against_spread_does_not_cancel():
    rng = np.random.default_rng(2)
    # mean 1e4 times the spread; the first batch fixes the shift, later batches drift a little
    x = correlated(rng, 4000, 12, mean=1e4, spread=1.0)
    x[2000:] += 0.5
    acc = CovarianceAccumulator(12)
    for chunk in np.array_split(x, 8):
        acc.update(chunk)
    np.testing.assert_allclose(acc.finalize().eigenvalues, two_pass_eigs(x), rtol=1e-9, atol=1e-9)
    # the naive formula in float64 without a shift loses digits on the same data
    naive = (x.T @ x - np.outer(x.sum(0), x.sum(0)) / len(x)) / (len(x) - 1)
    naive_err = np.abs(np.linalg.eigvalsh(naive)[::-1] - two_pass_eigs(x)).max()
    ours_err = np.abs(acc.finalize().eigenvalues - two_pass_eigs(x)).max()
    assert ours_err < naive_err / 100


def test_float32_batches_accumulate_in_float64():
    rng = np.random.default_rng(3)
    x = correlated(rng, 5000, 32, mean=50.0).astype(np.float32)
    acc = CovarianceAccumulator(32)
    for chunk in np.array_split(x, 5):
        acc.update(chunk)
    assert acc.gram.dtype == np.float64
    ref = two_pass_eigs(x.astype(np.float64))
    np.testing.assert_allclose(acc.finalize().eigenvalues, ref, rtol=1e-5, atol=1e-6 * ref[0])


def test_mask_excludes_padding_positions():
    rng = np.random.default_rng(4)
    batch = rng.standard_normal((3, 10, 6))
    mask = rng.random((3, 10)) > 0.3
    batch[~mask] = 1e6  # padding garbage must not leak into the statistics
    acc = CovarianceAccumulator(6)
    acc.update(batch, mask=mask)
    assert acc.n == int(mask.sum())
    np.testing.assert_allclose(acc.finalize().eigenvalues, two_pass_eigs(batch[mask]), rtol=1e-10, atol=1e-12)


def test_rank_capped_when_tokens_fewer_than_width():
    acc = CovarianceAccumulator(64)
    acc.update(np.random.default_rng(5).standard_normal((20, 64)))
    spec = acc.finalize()
    assert spec.rank_capped
    assert np.count_nonzero(spec.eigenvalues > 1e-10 * spec.eigenvalues[0]) <= 19
    big = CovarianceAccumulator(4)
    big.update(np.random.default_rng(6).standard_normal((20, 4)))
    assert not big.finalize().rank_capped


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_batches_are_rejected_naming_the_tap(bad):
    acc = CovarianceAccumulator(4, "/model/layers.3/mlp/Mul_output_0")
    x = np.ones((5, 4))
    x[2, 1] = bad
    with pytest.raises(NumericalError, match="layers.3/mlp/Mul_output_0"):
        acc.update(x)
    assert acc.n == 0  # nothing of the bad batch was kept


def test_shape_errors_name_the_tap():
    acc = CovarianceAccumulator(4, "tapA")
    with pytest.raises(SuiError, match="tapA"):
        acc.update(np.ones((3, 5)))
    with pytest.raises(SuiError, match="at least 2 tokens"):
        acc.finalize()


def test_a_batch_far_from_the_first_batch_shift_matches_the_reference():
    """The shift is fixed by the first batch; a later batch centred far from it still adds up."""
    rng = np.random.default_rng(7)
    x, y = correlated(rng, 500, 8, mean=2.0), correlated(rng, 300, 8, mean=-40.0, spread=3.0)
    acc = CovarianceAccumulator(8)
    acc.update(x)
    acc.update(y)
    both = np.vstack([x, y])
    spec = acc.finalize()
    assert spec.n == 800
    np.testing.assert_allclose(spec.eigenvalues, two_pass_eigs(both), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(spec.mean, both.mean(axis=0), rtol=1e-12, atol=1e-12)


def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(8)
    accs = []
    for i, d in enumerate((4, 9)):
        a = CovarianceAccumulator(d, f"tap{i}")
        a.update(correlated(rng, 50, d, mean=1.0))
        accs.append(a)
    accs.append(CovarianceAccumulator(3, "empty"))
    path = save_accumulators(tmp_path / "ckpt.npz", accs, meta={"tokens": 100})
    loaded, meta = load_accumulators(path)
    assert meta == {"tokens": 100} and [a.name for a in loaded] == ["tap0", "tap1", "empty"]
    for a, b in zip(accs[:2], loaded[:2]):
        assert b.n == a.n
        np.testing.assert_array_equal(b.finalize().eigenvalues, a.finalize().eigenvalues)
    assert loaded[2].n == 0 and loaded[2].width == 3
    single = accs[0].save(tmp_path / "one.npz")
    assert CovarianceAccumulator.load(single).n == accs[0].n
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left no temp file


def test_loading_garbage_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(SuiError, match="not a readable accumulator"):
        load_accumulators(bad)
    other = tmp_path / "other.npz"
    np.savez(other, x=np.ones(3))
    with pytest.raises(SuiError, match="not a sui-onnx accumulator"):
        load_accumulators(other)
    with pytest.raises(SuiError, match="no such file"):
        load_accumulators(tmp_path / "missing.npz")


def test_merge_rejects_width_mismatch():
    with pytest.raises(SuiError, match="width"):
        CovarianceAccumulator(3, "a").merge(CovarianceAccumulator(4, "b"))


def test_overwrite_centres_in_place_with_the_same_result():
    rng = np.random.default_rng(9)
    x = correlated(rng, 600, 10, mean=5.0).astype(np.float32)
    a, b = CovarianceAccumulator(10), CovarianceAccumulator(10)
    for chunk in np.array_split(x, 3):
        a.update(chunk)
        b.update(chunk.copy(), overwrite=True)
    np.testing.assert_array_equal(a.finalize().eigenvalues, b.finalize().eigenvalues)


def test_finite_but_huge_rows_fall_back_to_float64_then_reject():
    acc = CovarianceAccumulator(3, "big")
    x = np.array([[1e20, 0, 1], [-1e20, 1, 0], [3e19, 2, 2]], dtype=np.float32)
    acc.update(x)  # the float32 product overflows; the float64 one does not
    assert np.isfinite(acc.gram).all() and acc.n == 3
    huge = CovarianceAccumulator(2, "huge")
    huge.update(np.array([[1.0, 2.0], [3.0, 4.0]]))
    with pytest.raises(NumericalError, match="too large"):
        huge.update(np.array([[1e200, 0.0], [-1e200, 1.0]]))
    assert huge.n == 2


def test_exact_mode_and_dtype_handling():
    rng = np.random.default_rng(10)
    x = correlated(rng, 400, 6, mean=3.0).astype(np.float32)
    exact = CovarianceAccumulator(6, exact=True)
    exact.update(x)
    assert exact.gram.dtype == np.float64
    np.testing.assert_allclose(exact.finalize().eigenvalues, two_pass_eigs(x.astype(np.float64)), rtol=1e-10, atol=1e-12)
    ints = CovarianceAccumulator(2)
    ints.update(np.array([[1, 2], [3, 5], [4, 4]], dtype=np.int32))  # integer activations become float32
    assert ints.n == 3
    empty = CovarianceAccumulator(2)
    empty.update(np.zeros((0, 2)))
    empty.update(np.ones((3, 2)), mask=np.zeros(3, dtype=bool))
    assert empty.n == 0 and empty.shift is None


def test_invalid_arguments_are_reported():
    with pytest.raises(ValueError):
        CovarianceAccumulator(0)
    acc = CovarianceAccumulator(2, "m")
    with pytest.raises(SuiError, match="mask has 2 positions"):
        acc.update(np.ones((3, 2)), mask=np.ones(2))


def test_recentre_keeps_the_statistics(tmp_path):
    rng = np.random.default_rng(11)
    x = correlated(rng, 300, 4, mean=7.0)
    acc = CovarianceAccumulator(4)
    acc.update(x)
    before = acc.finalize().eigenvalues
    acc._recentre(np.zeros(4))
    np.testing.assert_allclose(acc.finalize().eigenvalues, before, rtol=1e-9, atol=1e-12)


def test_single_loader_rejects_multi_and_newer_files(tmp_path):
    a, b = CovarianceAccumulator(2, "a"), CovarianceAccumulator(2, "b")
    path = save_accumulators(tmp_path / "two.npz", [a, b])
    with pytest.raises(SuiError, match="holds 2 accumulators"):
        CovarianceAccumulator.load(path)
    newer = dict(np.load(path, allow_pickle=False))
    newer["version"] = np.asarray(99)
    np.savez(tmp_path / "newer.npz", **newer)
    with pytest.raises(SuiError, match="newer sui-onnx"):
        load_accumulators(tmp_path / "newer.npz")


def test_failed_atomic_write_leaves_no_temp_file(tmp_path):
    from sui_onnx.safeio import atomic_write

    def boom(fh):
        fh.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "out.bin", boom)
    assert list(tmp_path.iterdir()) == []


def test_non_finite_rows_after_the_first_batch_are_rejected():
    acc = CovarianceAccumulator(3, "later")
    acc.update(np.ones((4, 3)) + np.eye(4, 3))
    bad = np.ones((2, 3))
    bad[1, 2] = np.nan
    with pytest.raises(NumericalError, match="NaN or Inf"):
        acc.update(bad)
    assert acc.n == 4


@pytest.mark.parametrize("d, leaf", [(5, 768), (9, 3), (37, 8), (800, 768), (1030, 768), (300, 64)])
def test_lower_gram_equals_the_full_product_in_the_lower_triangle(d, leaf):
    x = np.random.default_rng(d).standard_normal((50, d)).astype(np.float32)
    got = lower_gram(x, np, leaf)
    ref = x.astype(np.float64).T @ x.astype(np.float64)
    np.testing.assert_allclose(np.tril(got), np.tril(ref), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(symmetric_from_lower(got), ref, rtol=1e-5, atol=1e-4)
    if d > leaf:  # blocks split: above the diagonal blocks nothing was computed
        assert got[0, d - 1] == 0.0


def test_state_and_covariance_are_symmetric_although_only_the_lower_triangle_is_kept(monkeypatch):
    monkeypatch.setattr(spectrum, "GRAM_LEAF", 4)
    x = np.random.default_rng(0).standard_normal((200, 11))
    acc = CovarianceAccumulator(11)
    acc.update(x[:120].astype(np.float32))
    acc.update(x[120:].astype(np.float32))
    g = acc.state()["gram"]
    assert acc.gram[0, 10] == 0.0 and g[0, 10] != 0.0  # kept: lower triangle; state(): mirrored
    np.testing.assert_array_equal(g, g.T)
    np.testing.assert_allclose(acc.covariance(), np.cov(x, rowvar=False), rtol=1e-5, atol=1e-6)


def _valid_state(tmp_path):
    rng = np.random.default_rng(21)
    acc = CovarianceAccumulator(3, "tap")
    acc.update(correlated(rng, 40, 3, mean=0.5))
    path = save_accumulators(tmp_path / "good.npz", [acc], meta={"tokens": 40})
    return dict(np.load(path, allow_pickle=False))


def _nonsymmetric(g):
    g = g.copy()
    g[0, 2] += 1.0 + abs(g[0, 2])
    return g


def _negative_diagonal(g):
    g = g.copy()
    g[1, 1] = -abs(g[1, 1]) - 1.0
    return g


# each case tampers one member of a valid file; the loader must name what is wrong
_TAMPERED = {
    "format not a string": (lambda s: s.update(format=np.asarray(3)), "not a string"),
    "version not integer": (lambda s: s.update(version=np.asarray(1.5)), "'version' is not an integer"),
    "names not strings": (lambda s: s.update(names=np.asarray([[1, 2]])), "'names' is not a list of strings"),
    "duplicate names": (lambda s: s.update({"names": np.asarray(["tap", "tap"]), "1/n": s["0/n"], "1/shift": s["0/shift"],
                                             "1/sum": s["0/sum"], "1/gram": s["0/gram"]}), "same name"),
    "meta not JSON": (lambda s: s.update(meta=np.asarray("{oops")), "not valid JSON"),
    "meta NaN constant": (lambda s: s.update(meta=np.asarray('{"x": NaN}')), "not valid JSON"),
    "meta nested too deep": (lambda s: s.update(meta=np.asarray("[" * 100000 + "]" * 100000)), "nested too deeply"),
    "meta not object": (lambda s: s.update(meta=np.asarray("[1, 2]")), "not a JSON object"),
    "member missing": (lambda s: s.pop("0/sum"), "member '0/sum' is missing"),
    "n not integer": (lambda s: s.update({"0/n": np.asarray(40.0)}), "not an integer"),
    "n negative": (lambda s: s.update({"0/n": np.asarray(-1)}), "out of range"),
    "n absurd": (lambda s: s.update({"0/n": np.asarray(2**62)}), "out of range"),
    "sum 2-D": (lambda s: s.update({"0/sum": s["0/sum"][None, :]}), "'sum' is not a real vector"),
    "shift complex": (lambda s: s.update({"0/shift": s["0/shift"].astype(complex)}), "'shift' is not a real vector"),
    "shift wrong length": (lambda s: s.update({"0/shift": np.zeros(2)}), "'shift' has 2 entries"),
    "gram 1-D": (lambda s: s.update({"0/gram": s["0/gram"].ravel()[:3]}), "'gram' is not a real 3 x 3"),
    "gram complex": (lambda s: s.update({"0/gram": s["0/gram"].astype(complex)}), "'gram' is not a real 3 x 3"),
    "gram NaN": (lambda s: s.update({"0/gram": np.where(np.eye(3, dtype=bool), np.nan, s["0/gram"])}), "NaN or Inf"),
    "sum Inf": (lambda s: s.update({"0/sum": np.array([np.inf, 0.0, 0.0])}), "NaN or Inf"),
    "gram non-symmetric": (lambda s: s.update({"0/gram": _nonsymmetric(s["0/gram"])}), "not symmetric"),
    "gram negative diagonal": (lambda s: s.update({"0/gram": _negative_diagonal(s["0/gram"])}), "negative sum of squares"),
    "sums exceed Cauchy-Schwarz": (lambda s: s.update({"0/sum": s["0/sum"] + 1e6}), "do not fit the token count"),
    "n zero with sums": (lambda s: s.update({"0/n": np.asarray(0)}), "n is 0 but the sums are not"),
}


@pytest.mark.parametrize("case", sorted(_TAMPERED))
def test_invalid_accumulator_files_are_refused_naming_the_defect(tmp_path, case):
    tamper, message = _TAMPERED[case]
    state = _valid_state(tmp_path)
    tamper(state)
    np.savez(tmp_path / "bad.npz", **state)
    with pytest.raises(SuiError, match=message):
        load_accumulators(tmp_path / "bad.npz")
    # the untampered file still loads: the check is about the defect, not the file
    np.savez(tmp_path / "ok.npz", **_valid_state(tmp_path))
    assert load_accumulators(tmp_path / "ok.npz")[0][0].n == 40


def test_npy_headers_that_claim_more_than_their_bytes_are_refused(tmp_path):
    import zipfile

    state = _valid_state(tmp_path)
    np.savez(tmp_path / "good.npz", **state)
    # rewrite 0/gram's header to claim a 3000 x 3000 array over the 3 x 3 bytes
    with zipfile.ZipFile(tmp_path / "good.npz") as src, zipfile.ZipFile(tmp_path / "lying.npz", "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "0/gram.npy":
                data = data.replace(b"(3, 3)", b"(3000, 3000)", 1)
            dst.writestr(info.filename, data)
    with pytest.raises(SuiError, match="declares shape"):
        load_accumulators(tmp_path / "lying.npz")
    # an .npy of an unknown format version
    with zipfile.ZipFile(tmp_path / "good.npz") as src, zipfile.ZipFile(tmp_path / "v9.npz", "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "0/sum.npy":
                data = data[:6] + b"\x09\x00" + data[8:]
            dst.writestr(info.filename, data)
    with pytest.raises(SuiError, match="not one sui-onnx writes"):
        load_accumulators(tmp_path / "v9.npz")


def test_oversized_members_are_refused_before_unpacking(tmp_path):
    # a 3-wide accumulator whose gram member is far larger than 3 x 3 float64 can be
    state = _valid_state(tmp_path)
    state["0/gram"] = np.zeros((100, 100))
    np.savez(tmp_path / "big.npz", **state)
    with pytest.raises(SuiError, match="more than its shape allows"):
        load_accumulators(tmp_path / "big.npz")
