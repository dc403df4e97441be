"""Which FFN neurons to keep, and the least-squares refit of the down projection (docs/slim.md).

Pure: arrays in, arrays out; no onnx, no files. For one FFN block with hidden activation h (D wide,
mean mu, covariance C over calibration tokens) and down projection y = h W + b (W: D x m):

* ``select``: the order in which neurons are kept.
  - ``id``: greedy pivoted Cholesky on C weighted by W (an interpolative decomposition): each step
    keeps the neuron whose residual, once regressed out, removes most of the output-space error
    tr(W^T C_res W); the orders are nested, so one run serves every width up to ``kmax``.
  - ``variance``: the highest-variance neurons (the baseline).
* ``refit``: W' = B W with B = (C_SS + lambda I)^-1 C_S,: and b' = b + (mu - mu_S B) W, the best
  linear prediction of y from the kept neurons (``variance`` keeps W_S and folds the dropped
  neurons' means into the bias: B is then the selection itself).
* ``projection``: W' = P W, b' = b + mu (I - P) W with P the top-k principal directions: what the
  spectrum says is possible at rank k, at full width (it saves nothing, and it is no bound on
  ``id``: keeping k neurons is a different restriction from keeping k directions).
* ``allocate``: per-layer widths at a fixed total, from each layer's output-space residual curve.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .defaults import DEFAULT_RIDGE, METHODS  # noqa: F401 (re-exported)

_PIVOT_TOL = 1e-10  # residual variance below this share of the largest is treated as zero


class WeightedMoments:
    """Weighted mean and covariance of activation rows, batch by batch: sum w, sum w (h - s) and
    sum w (h - s)(h - s)^T around a shift fixed by the first batch, in float64 (batches may be
    float32). Slim weights each token by 1 / (mean square of its FFN output) when that output is
    normalized on its own (Gemma's post-FFN RMSNorm, nGPT): the error the model sees is then the
    relative one, and tokens with a small FFN output would otherwise count for nothing."""

    def __init__(self, width: int) -> None:
        self.width = int(width)
        self.weight = 0.0
        self.rows = 0
        self.shift: np.ndarray | None = None
        self.sum = np.zeros(self.width)
        self.gram = np.zeros((self.width, self.width))

    def update(self, rows: np.ndarray, weights: np.ndarray) -> None:
        x = np.asarray(rows).reshape(-1, self.width)
        w = np.asarray(weights, dtype=x.dtype if x.dtype in (np.float32, np.float64) else np.float64).reshape(-1)
        if x.shape[0] != w.shape[0]:
            raise ValueError(f"{x.shape[0]} rows but {w.shape[0]} weights")
        if not x.shape[0]:
            return
        if self.shift is None:
            self.shift = x.mean(axis=0, dtype=np.float64)
        c = x - self.shift.astype(x.dtype)
        self.gram += (c * w[:, None]).T @ c
        self.sum += w @ c
        self.weight += float(w.sum(dtype=np.float64))
        self.rows += int(x.shape[0])

    def mean(self) -> np.ndarray:
        return self.shift + self.sum / self.weight

    def covariance(self) -> np.ndarray:
        """sum w (h - mu)(h - mu)^T / sum w (symmetric, float64)."""
        m = self.sum / self.weight
        cov = self.gram / self.weight - np.outer(m, m)
        return (cov + cov.T) / 2


def norm_weights(outputs: np.ndarray, kind: str, cap: float = 1e3) -> np.ndarray:
    """Per-token weights 1 / (mean square of the FFN output, centred for a LayerNorm), capped at
    ``cap`` times their median so that a token whose output is almost zero cannot take over."""
    y = np.asarray(outputs, dtype=np.float64)
    if kind == "layer":
        y = y - y.mean(axis=1, keepdims=True)
    ms = (y * y).mean(axis=1)
    w = 1.0 / np.maximum(ms, 1e-12)
    med = float(np.median(w)) if w.size else 1.0
    return np.minimum(w, cap * med)


@dataclass(frozen=True)
class Selection:
    """Neurons of one layer in the order they are kept, and the output-space error left after
    keeping the first k of them (``residual[k]``, k = 0..len(order); exact for ``id``)."""

    method: str
    width: int
    order: np.ndarray      # int64 neuron indices, most important first
    residual: np.ndarray   # float64, non-increasing for ``id``

    def keep(self, k: int) -> np.ndarray:
        """The first ``k`` neurons of the order, sorted (the slim model keeps the original order)."""
        if not 1 <= k <= len(self.order):
            raise ValueError(f"width {k} outside 1..{len(self.order)} for this selection")
        return np.sort(self.order[:k])


@dataclass(frozen=True)
class Refit:
    """The new down projection of one layer: rows for the kept neurons, and the bias change."""

    keep: np.ndarray        # kept neuron indices (sorted); all D for a projection
    weight: np.ndarray      # [len(keep), m] float64: replaces W (hidden -> output orientation)
    bias_delta: np.ndarray  # [m] float64: added to the down projection's bias


def _check(cov: np.ndarray, mean: np.ndarray | None = None, weight: np.ndarray | None = None) -> int:
    cov = np.asarray(cov)
    if cov.ndim != 2 or cov.shape[0] != cov.shape[1]:
        raise ValueError(f"covariance must be square, got shape {cov.shape}")
    d = cov.shape[0]
    if mean is not None and np.shape(mean) != (d,):
        raise ValueError(f"mean must have shape ({d},), got {np.shape(mean)}")
    if weight is not None and (np.ndim(weight) != 2 or np.shape(weight)[0] != d):
        raise ValueError(f"down weight must have shape ({d}, m), got {np.shape(weight)}")
    return d


def select(cov: np.ndarray, method: str = "id", weight: np.ndarray | None = None,
           kmax: int | None = None) -> Selection:
    """The keep order of one layer's neurons (see module doc). ``weight`` (W, D x m) weights the
    ``id`` criterion by the output space; without it the criterion is the hidden-space residual
    variance (plain pivoted Cholesky). ``kmax`` stops the greedy early (default: all D)."""
    d = _check(cov, weight=weight)
    kmax = d if kmax is None else int(kmax)
    if not 1 <= kmax <= d:
        raise ValueError(f"kmax must be in 1..{d}, got {kmax}")
    cov = np.asarray(cov, dtype=np.float64)
    diag = np.clip(np.diag(cov).copy(), 0.0, None)
    if method == "variance":
        order = np.argsort(-diag, kind="stable")
        w2 = np.ones(d) if weight is None else np.einsum("ij,ij->i", weight, weight)
        # the error of dropping neurons without refit, replacing them by their mean, is
        # tr(W_R^T C_RR W_R); reported here as the sum of per-neuron terms (cross terms ignored)
        contrib = (diag * w2)[order]
        residual = np.concatenate([[contrib.sum()], contrib.sum() - np.cumsum(contrib)])
        return Selection("variance", d, order[:kmax].astype(np.int64), np.clip(residual[:kmax + 1], 0, None))
    if method != "id":
        raise ValueError(f"unknown selection method {method!r} (expected one of: {', '.join(METHODS)})")
    return _pivoted_cholesky(cov, diag, None if weight is None else np.asarray(weight, dtype=np.float64), kmax)


def _pivoted_cholesky(cov: np.ndarray, diag: np.ndarray, weight: np.ndarray | None, kmax: int) -> Selection:
    """Greedy pivoted Cholesky, left-looking: one residual column per step, O(D (k + m)) work.

    With W, the score of neuron i is ||(C_res W)_i||^2 / C_res[i, i]. C_res W is never formed:
    with l_s the Cholesky columns and g_s = l_s^T W, C_res W = C W - sum_s l_s g_s^T, so each
    step needs one product with the fixed C W, and the row norms are updated by rank one."""
    d = cov.shape[0]
    resid = diag.copy()                     # residual variances (diagonal of C_res)
    factor = np.zeros((kmax, d))            # row t: l_t = C_res[:, j] / sqrt(C_res[j, j])
    chosen = np.zeros(d, dtype=bool)
    tol = _PIVOT_TOL * max(float(diag.max(initial=0.0)), 1e-300)
    if weight is not None:
        cw = cov @ weight                   # C W, fixed
        gs = np.zeros((kmax, weight.shape[1]))  # row t: g_t = l_t^T W
        norms = np.einsum("ij,ij->i", cw, cw)   # ||(C_res W)_i||^2
        energy = float(np.einsum("ij,ij->", weight, cw))
    else:
        energy = float(diag.sum())
    order = np.empty(kmax, dtype=np.int64)
    residual = np.empty(kmax + 1)
    residual[0] = max(energy, 0.0)
    for t in range(kmax):
        alive = (~chosen) & (resid > tol)
        if not alive.any():  # the rest lie in the span of the kept neurons: any order, zero gain
            rest = np.flatnonzero(~chosen)
            rest = rest[np.argsort(-diag[rest], kind="stable")][: kmax - t]
            order[t:] = rest
            residual[t + 1:] = residual[t]
            break
        if weight is None:
            score = np.where(alive, resid, -np.inf)
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                score = np.where(alive, norms / resid, -np.inf)
        j = int(np.argmax(score))
        col = cov[j] - factor[:t].T @ factor[:t, j]
        pivot = col[j]
        chosen[j] = True
        order[t] = j
        if pivot <= tol:  # round-off made the chosen residual vanish: treat it as spent
            resid[j] = 0.0
            residual[t + 1] = residual[t]
            continue
        root = np.sqrt(pivot)
        col = col / root
        if weight is None:
            gain = float(col @ col)
        else:
            g = (cw[j] - factor[:t, j] @ gs[:t]) / root          # l^T W
            mg = cw @ g - factor[:t].T @ (gs[:t] @ g)           # (C_res W) g, before this step
            norms += col * (col * float(g @ g) - 2.0 * mg)
            np.clip(norms, 0.0, None, out=norms)
            gs[t] = g
            gain = float(g @ g)
        factor[t] = col
        resid -= col * col
        resid[j] = 0.0
        residual[t + 1] = max(residual[t] - gain, 0.0)
    return Selection("id", d, order, residual)


def refit(cov: np.ndarray, mean: np.ndarray, weight: np.ndarray, keep: np.ndarray,
          ridge: float = DEFAULT_RIDGE, least_squares: bool = True) -> Refit:
    """The down projection for the neurons ``keep`` (see module doc). ``ridge`` is relative to the
    mean variance of the kept neurons; ``least_squares=False`` gives the top-variance baseline's
    W_S with the dropped neurons' means folded into the bias."""
    d = _check(cov, mean, weight)
    keep = np.sort(np.unique(np.asarray(keep, dtype=np.int64)))
    if keep.size == 0 or keep[0] < 0 or keep[-1] >= d:
        raise ValueError(f"kept neurons must be a non-empty subset of 0..{d - 1}")
    cov = np.asarray(cov, dtype=np.float64)
    mean = np.asarray(mean, dtype=np.float64)
    weight = np.asarray(weight, dtype=np.float64)
    if least_squares:
        css = cov[np.ix_(keep, keep)].copy()
        scale = float(np.trace(css)) / keep.size
        if ridge > 0 and scale > 0:
            css[np.diag_indices_from(css)] += ridge * scale
        b = solve_psd(css, cov[keep] @ weight)   # B W = (C_SS + lambda I)^-1 C_S,: W, [k, m]
    else:
        b = weight[keep]
    delta = mean @ weight - mean[keep] @ b        # intercept: E[y] - E[h_S] B W
    return Refit(keep, b, delta)


def solve_psd(a: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Solve a x = rhs for a symmetric positive semi-definite ``a``: Cholesky when ``a`` is well
    conditioned (below 1e12), else the pseudo-inverse over eigenvalues above 1e-12 of the largest
    (kept neurons that are, up to float32 noise, linear combinations of other kept ones)."""
    try:
        low = np.linalg.cholesky(a)
        diag = np.diag(low)
        if diag.min() > 1e-6 * diag.max():
            return np.linalg.solve(low.T, np.linalg.solve(low, rhs))
    except np.linalg.LinAlgError:
        pass
    vals, vecs = np.linalg.eigh(a)
    good = vals > 1e-12 * max(float(vals[-1]), 1e-300)
    v = vecs[:, good]
    return v @ ((v.T @ rhs) / vals[good, None])


def projection(cov: np.ndarray, mean: np.ndarray, weight: np.ndarray, k: int) -> Refit:
    """Full-width down projection that sees only the top-``k`` principal directions of h."""
    d = _check(cov, mean, weight)
    if not 1 <= k <= d:
        raise ValueError(f"k must be in 1..{d}, got {k}")
    _, vecs = np.linalg.eigh(np.asarray(cov, dtype=np.float64))
    top = vecs[:, ::-1][:, :k]                    # [D, k], descending eigenvalues
    weight = np.asarray(weight, dtype=np.float64)
    pw = top @ (top.T @ weight)                   # P W
    mean = np.asarray(mean, dtype=np.float64)
    return Refit(np.arange(d), pw, mean @ weight - mean @ pw)


def allocate(residuals: Sequence[np.ndarray], widths: Sequence[int], total: int, align: int = 1) -> list[int]:
    """Per-layer widths, each a multiple of ``align`` or the layer's full width (a layer narrower
    than ``align`` keeps its width), adding up to at most ``total``, that minimise the summed
    output-space residual sum_l residuals[l][k_l]. Exact (dynamic programming over the budget);
    ``residuals[l][k]`` is layer l's error with k neurons kept."""
    if len(residuals) != len(widths) or not widths:
        raise ValueError("one residual curve per layer is needed")
    if align < 1:
        raise ValueError("align must be at least 1")
    options = []
    for w in widths:
        w = int(w)
        options.append([w] if w < align else sorted(set(range(align, w + 1, align)) | {w}))  # the full width too, as aligned() allows
    budget = min(int(total), sum(max(o) for o in options))
    floor = sum(min(o) for o in options)
    if budget < floor:
        raise ValueError(f"total width {total} is below {floor} (one step of {align} per layer)")

    def value(layer: int, k: int) -> float:
        curve = residuals[layer]
        return float(curve[min(k, len(curve) - 1)])

    best = np.full(budget + 1, np.inf)
    best[0] = 0.0
    picks = []
    for layer, opts in enumerate(options):
        new = np.full(budget + 1, np.inf)
        pick = np.zeros(budget + 1, dtype=np.int64)
        for k in opts:
            if k > budget:
                continue
            cand = best[:budget + 1 - k] + value(layer, k)
            better = cand < new[k:]
            new[k:][better] = cand[better]
            pick[k:][better] = k
        best = new
        picks.append(pick)
    finite = np.flatnonzero(np.isfinite(best))
    # the least residual over every reachable total, ties to the largest total (residuals never rise)
    b = int(finite[np.lexsort((-finite, best[finite]))[0]])
    out = []
    for pick in reversed(picks):
        k = int(pick[b])
        out.append(k)
        b -= k
    return out[::-1]
