"""Neuron selection and the least-squares refit (sui_onnx/slim.py), checked against closed forms and
independent computations: exactness in the span, identity at full width, top variance on a diagonal
covariance, the greedy against brute force, the refit against a sample regression."""

import itertools

import numpy as np
import pytest

from sui_onnx.slim import allocate, projection, refit, select


def low_rank_hidden(n=4000, d=40, k=7, seed=0):
    """Activations whose D columns are linear combinations of k of them (plus a large mean)."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n, k)) * rng.uniform(0.5, 3.0, size=k)
    h = np.concatenate([base, base @ rng.standard_normal((k, d - k))], axis=1) + 5.0
    perm = rng.permutation(d)
    return h[:, perm], np.argsort(perm)[:k]


def stats(h):
    return np.cov(h, rowvar=False), h.mean(axis=0)


def test_refit_is_exact_when_the_hidden_lies_in_the_span_of_k_neurons():
    h, _ = low_rank_hidden()
    rng = np.random.default_rng(1)
    w, b = rng.standard_normal((h.shape[1], 9)), rng.standard_normal(9)
    cov, mu = stats(h)
    sel = select(cov, "id", w)
    k = 7
    r = refit(cov, mu, w, sel.keep(k), ridge=0.0)
    y = h @ w + b
    y_slim = h[:, r.keep] @ r.weight + b + r.bias_delta
    assert r.weight.shape == (k, 9)
    assert np.abs(y_slim - y).max() <= 1e-8 * np.abs(y).max()
    assert sel.residual[k] <= 1e-9 * sel.residual[0]  # the greedy knows it is done


def test_keeping_every_neuron_changes_nothing():
    rng = np.random.default_rng(2)
    h = rng.standard_normal((500, 12)) @ rng.standard_normal((12, 12)) + 3.0
    w = rng.standard_normal((12, 5))
    cov, mu = stats(h)
    r = refit(cov, mu, w, np.arange(12), ridge=0.0)
    np.testing.assert_allclose(r.weight, w, atol=1e-9)
    np.testing.assert_allclose(r.bias_delta, 0.0, atol=1e-9)
    p = projection(cov, mu, w, 12)
    np.testing.assert_allclose(p.weight, w, atol=1e-9)
    np.testing.assert_allclose(p.bias_delta, 0.0, atol=1e-8)


def test_diagonal_covariance_selects_top_variance():
    variances = np.array([0.3, 5.0, 1.0, 9.0, 0.1, 2.5, 7.0])
    cov = np.diag(variances)
    top = [3, 6, 1, 5, 2, 0, 4]
    assert select(cov, "id").order.tolist() == top                      # hidden-space criterion
    assert select(cov, "variance").order.tolist() == top
    q, _ = np.linalg.qr(np.random.default_rng(3).standard_normal((7, 7)))
    assert select(cov, "id", 2.0 * q).order.tolist() == top             # equal output norms per neuron
    w = np.diag([1.0, 0.1, 1.0, 0.1, 1.0, 1.0, 1.0])                    # the output weighting matters
    expected = np.argsort(-(variances * np.diag(w) ** 2), kind="stable").tolist()
    assert select(cov, "id", w).order.tolist() == expected


def test_weighted_greedy_matches_brute_force_and_its_residuals_are_exact():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((300, 10)) @ rng.standard_normal((10, 10))
    cov = np.cov(x, rowvar=False)
    w = rng.standard_normal((10, 3))

    def error(keep):  # tr(W^T (C - C_:S C_SS^-1 C_S:) W), written out independently
        if not keep:
            return float(np.trace(w.T @ cov @ w))
        s = list(keep)
        res = cov - cov[:, s] @ np.linalg.inv(cov[np.ix_(s, s)]) @ cov[s, :]
        return float(np.trace(w.T @ res @ w))

    chosen: list[int] = []
    for _ in range(6):
        chosen.append(min((i for i in range(10) if i not in chosen), key=lambda i: error(chosen + [i])))
    sel = select(cov, "id", w, kmax=6)
    assert sel.order.tolist() == chosen
    np.testing.assert_allclose(sel.residual, [error(chosen[:t]) for t in range(7)], rtol=1e-8, atol=1e-10)
    # and the greedy is not worse than the best pair chosen exhaustively by much
    best_pair = min(error(list(p)) for p in itertools.combinations(range(10), 2))
    assert sel.residual[2] <= 1.5 * best_pair


def test_refit_equals_an_ordinary_least_squares_regression_on_the_samples():
    rng = np.random.default_rng(5)
    h = rng.standard_normal((2000, 15)) @ rng.standard_normal((15, 15)) + rng.standard_normal(15) * 4
    w = rng.standard_normal((15, 4))
    keep = np.array([0, 3, 4, 9, 12])
    cov, mu = stats(h)
    r = refit(cov, mu, w, keep, ridge=0.0)
    design = np.concatenate([h[:, keep], np.ones((h.shape[0], 1))], axis=1)
    coef, *_ = np.linalg.lstsq(design, h @ w, rcond=None)
    np.testing.assert_allclose(r.weight, coef[:-1], rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(r.bias_delta, coef[-1], rtol=1e-7, atol=1e-8)


def test_ridge_shrinks_towards_the_mean_and_variance_baseline_folds_the_dropped_means():
    h, _ = low_rank_hidden(d=20, k=5, seed=6)
    w = np.random.default_rng(7).standard_normal((20, 3))
    cov, mu = stats(h)
    keep = np.array([1, 4, 8])
    loose, tight = refit(cov, mu, w, keep, ridge=0.0), refit(cov, mu, w, keep, ridge=1e6)
    assert np.abs(tight.weight).max() < 1e-3 * np.abs(loose.weight).max()
    np.testing.assert_allclose(tight.bias_delta, mu @ w - mu[keep] @ tight.weight)
    base = refit(cov, mu, w, keep, least_squares=False)
    drop = np.setdiff1d(np.arange(20), keep)
    np.testing.assert_array_equal(base.weight, w[keep])
    np.testing.assert_allclose(base.bias_delta, mu[drop] @ w[drop])


def test_projection_keeps_the_top_principal_directions():
    rng = np.random.default_rng(8)
    h = rng.standard_normal((3000, 6)) * np.array([5.0, 3.0, 1.0, 0.5, 0.2, 0.1]) @ np.linalg.qr(
        rng.standard_normal((6, 6)))[0] + 2.0
    w = rng.standard_normal((6, 2))
    cov, mu = stats(h)
    p = projection(cov, mu, w, 2)
    evals, evecs = np.linalg.eigh(cov)
    v = evecs[:, -2:]
    expected = ((h - mu) @ v @ v.T + mu) @ w
    np.testing.assert_allclose(h @ p.weight + p.bias_delta, expected, rtol=1e-8, atol=1e-8)


def test_allocate_spends_the_total_where_the_residual_falls_most():
    curves = [np.array([10.0, 4.0, 3.0, 2.5, 2.4]), np.array([10.0, 9.0, 8.0, 7.0, 0.0])]
    def cost(ks):
        return sum(c[k] for c, k in zip(curves, ks))

    for total in range(2, 9):  # the allocation is the best of all, found exhaustively here
        got = allocate(curves, [4, 4], total, align=1)
        best = min(cost(ks) for ks in itertools.product(range(1, 5), repeat=2) if sum(ks) <= total)
        assert sum(got) <= total and cost(got) == best
    # a myopic greedy would give [2, 3] (cost 10): the fourth neuron of layer 1 is worth 7
    assert allocate(curves, [4, 4], 5, align=1) == [1, 4]
    assert allocate(curves, [4, 4], 6, align=2) == [2, 4]
    with pytest.raises(ValueError):
        allocate(curves, [4, 4], 1, align=1)


def test_selection_rejects_bad_input():
    with pytest.raises(ValueError):
        select(np.ones((3, 4)))
    with pytest.raises(ValueError):
        select(np.eye(3), "magic")
    with pytest.raises(ValueError):
        refit(np.eye(3), np.zeros(3), np.ones((3, 2)), np.array([5]))


def test_weighted_moments_equal_the_weighted_covariance_computed_directly():
    from sui_onnx.slim import WeightedMoments

    rng = np.random.default_rng(11)
    h = (rng.standard_normal((900, 8)) @ rng.standard_normal((8, 8)) + 50.0).astype(np.float32)
    w = rng.uniform(0.1, 3.0, size=900)
    acc = WeightedMoments(8)
    for part in np.array_split(np.arange(900), 7):
        acc.update(h[part], w[part].astype(np.float32))
    x = h.astype(np.float64)
    mu = (w[:, None] * x).sum(0) / w.sum()
    cov = ((x - mu) * w[:, None]).T @ (x - mu) / w.sum()
    np.testing.assert_allclose(acc.mean(), mu, rtol=1e-6)
    np.testing.assert_allclose(acc.covariance(), cov, rtol=1e-4, atol=1e-4 * np.abs(cov).max())
    assert acc.rows == 900


def test_norm_weights_are_the_inverse_mean_square_capped_at_the_median():
    from sui_onnx.slim import norm_weights

    y = np.array([[1.0, -1.0], [2.0, 2.0], [3.0, 1.0], [1e-9, 0.0]])
    w = norm_weights(y, "rms", cap=10.0)
    np.testing.assert_allclose(w[:3], [1.0, 0.25, 0.2])
    assert w[3] == pytest.approx(10.0 * np.median(1.0 / np.maximum((y * y).mean(axis=1), 1e-12)))
    np.testing.assert_allclose(norm_weights(np.array([[3.0, 1.0]]), "layer"), [1.0])  # centred: (1, -1)
