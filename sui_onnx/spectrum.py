"""Streaming covariance of one tap: sufficient statistics (n, sum x, sum x x^T) -> eigenvalues.

The contract follows scikit-learn's IncrementalPCA: ``update`` batch by batch, ``merge`` shards,
``finalize`` to read the result. Statistics are float64; batches may be float32 (the per-batch
product then runs in float32 GEMM and is added into float64). To avoid catastrophic cancellation
when the mean is large against the spread, every row is centred on a fixed shift taken from the
first batch before it is multiplied, and the shift is undone exactly in float64 at the end.
One code path serves NumPy and CuPy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import NumericalError, SuiError
from .safeio import printable
from .xp import array_namespace, to_numpy

STATE_FORMAT = "sui-onnx/accumulator"
STATE_VERSION = 1
GRAM_LEAF = 768  # widest diagonal block multiplied whole by lower_gram (docs/performance.md)


def lower_gram(x: Any, xp: Any = np, leaf: int = GRAM_LEAF) -> Any:
    """``x^T x`` for ``x`` [N, D] with only the lower triangle guaranteed; above the diagonal
    blocks it is zero.

    BLAS's SYRK computes one triangle but runs well below GEMM speed; NumPy uses it for
    ``x.T @ x``, CuPy runs a full GEMM (twice the flops). Splitting the columns in halves until
    a block is at most ``leaf`` wide turns the work into GEMMs for the off-diagonal blocks plus
    small whole products on the diagonal: about half the flops of ``x.T @ x``, at GEMM speed.
    The products are the same float sums as ``x.T @ x`` (only their grouping into BLAS calls
    differs)."""
    d = int(x.shape[1])
    if d <= leaf:
        return x.T @ x
    out = xp.zeros((d, d), dtype=x.dtype)
    stack = [(0, d)]
    while stack:
        lo, hi = stack.pop()
        if hi - lo <= leaf:
            xp.matmul(x[:, lo:hi].T, x[:, lo:hi], out=out[lo:hi, lo:hi])
            continue
        half = (hi - lo) // 2
        mid = lo + (half // 64 * 64 if half >= 128 else half)  # halves, wide ones on a multiple of 64
        xp.matmul(x[:, mid:hi].T, x[:, lo:mid], out=out[mid:hi, lo:mid])
        stack += [(lo, mid), (mid, hi)]
    return out


def symmetric_from_lower(a: Any, xp: Any = np) -> Any:
    """The symmetric matrix whose lower triangle is that of ``a``."""
    low = xp.tril(a)
    return low + xp.tril(a, -1).T


@dataclass(frozen=True)
class Spectrum:
    """Finalized statistics of one tap. ``eigenvalues`` are descending, clamped at 0 (host)."""

    name: str
    width: int
    n: int
    eigenvalues: np.ndarray
    trace: float
    mean: np.ndarray

    @property
    def rank_capped(self) -> bool:
        """True when N - 1 < D: the covariance rank is capped by the token count, not the model."""
        return self.n - 1 < self.width


class CovarianceAccumulator:
    """Mergeable float64 sufficient statistics of the rows of [*, D] activation batches.

    ``gram`` keeps the lower triangle of sum (x - shift)(x - shift)^T (what the eigenvalue solver
    reads); its upper triangle is not maintained. ``state()`` and ``covariance()`` return
    symmetric matrices."""

    def __init__(self, width: int, name: str = "", xp: Any = np, exact: bool = False) -> None:
        """``exact=True`` multiplies every batch in float64 (slower); by default float32 batches
        are multiplied in float32 and only the sums are float64 (docs/performance.md)."""
        if width < 1:
            raise ValueError("width must be positive")
        self.width = int(width)
        self.name = name
        self.xp = xp
        self.exact = exact
        self.n = 0
        self.shift: Any = None  # (D,) float64, fixed after the first non-empty batch
        self.sum = xp.zeros(self.width, dtype=xp.float64)  # sum of (x - shift)
        self.gram = xp.zeros((self.width, self.width), dtype=xp.float64)  # sum of (x-shift)(x-shift)^T

    # -- updates ---------------------------------------------------------------------------
    def _rows(self, batch: Any, mask: Any) -> Any:
        xp = self.xp
        x = batch if array_namespace(batch) is xp else xp.asarray(to_numpy(batch))
        if x.ndim < 1 or x.shape[-1] != self.width:
            raise SuiError(f"tap {self.name!r}: expected last dimension {self.width}, got shape {tuple(x.shape)}")
        x = x.reshape(-1, self.width)
        if mask is not None:
            m = mask if array_namespace(mask) is xp else xp.asarray(to_numpy(mask))
            m = m.reshape(-1).astype(bool)
            if m.shape[0] != x.shape[0]:
                raise SuiError(f"tap {self.name!r}: mask has {m.shape[0]} positions, batch has {x.shape[0]} rows")
            x = x[m]
        if self.exact and x.dtype != xp.float64:
            x = x.astype(xp.float64)
        elif x.dtype not in (xp.float32, xp.float64):
            x = x.astype(xp.float32)
        return x

    def update(self, batch: Any, mask: Any = None, overwrite: bool = False) -> None:
        """Add the rows of ``batch`` ([..., D]); ``mask`` ([...], nonzero = real token) drops padding.

        ``overwrite=True`` lets the centring happen in place in ``batch`` (the runner's reused
        output buffers), saving one pass over memory per batch."""
        xp = self.xp
        x = self._rows(batch, mask)
        rows = int(x.shape[0])
        if rows == 0:
            return
        if self.shift is None:
            mean = x.mean(axis=0, dtype=xp.float64)
            if not bool(xp.isfinite(mean).all()):
                raise self._non_finite()
            # rounded to float32 so the shift subtracted from float32 rows is exactly the stored one
            self.shift = mean.astype(xp.float32).astype(xp.float64)
        shift = self.shift.astype(x.dtype)
        if overwrite:
            centred = x
            centred -= shift
        else:
            centred = x - shift
        # BLAS does both reductions (multi-threaded); NaN/Inf in the rows always reach them, so
        # checking the D x D result replaces a pass over the [rows, D] batch
        with np.errstate(over="ignore", invalid="ignore"):
            gram = lower_gram(centred, xp, GRAM_LEAF)
            row_sum = self._ones(rows, centred.dtype) @ centred
            if not (bool(xp.isfinite(gram).all()) and bool(xp.isfinite(row_sum).all())):
                if not bool(xp.isfinite(centred).all()):
                    raise self._non_finite()
                wide = centred.astype(xp.float64)  # finite but huge rows overflow a float32 product
                gram = wide.T @ wide
                row_sum = wide.sum(axis=0)
                if not bool(xp.isfinite(gram).all()):
                    raise NumericalError(
                        f"tap {self.name!r}: activations are too large to square (overflow, |x| ~ "
                        f"{float(xp.abs(wide).max()):.3g}); the batch was rejected"
                    )
        self.n += rows
        xp.add(self.sum, row_sum, out=self.sum)
        xp.add(self.gram, gram, out=self.gram)

    def _ones(self, rows: int, dtype: Any) -> Any:
        """A cached ones vector: the row sum as one BLAS matrix-vector product."""
        key = (rows, str(dtype))
        if getattr(self, "_ones_key", None) != key:
            self._ones_key, self._ones_vec = key, self.xp.ones(rows, dtype=dtype)
        return self._ones_vec

    def _non_finite(self) -> NumericalError:
        return NumericalError(
            f"tap {self.name!r}: activations contain NaN or Inf (fp16 overflow?); the batch was rejected"
        )

    def _recentre(self, new_shift: Any) -> None:
        """Re-express the statistics around ``new_shift`` (exact float64 algebra)."""
        xp = self.xp
        d = self.shift - new_shift  # x - new = (x - old) + d
        self.gram += xp.outer(d, self.sum) + xp.outer(self.sum, d) + self.n * xp.outer(d, d)
        self.sum = self.sum + self.n * d
        self.shift = new_shift

    def merge(self, other: "CovarianceAccumulator") -> "CovarianceAccumulator":
        """Add another accumulator's statistics into this one (shards, resumed runs, workers)."""
        if other.width != self.width:
            raise SuiError(f"cannot merge tap {other.name!r} (width {other.width}) into {self.name!r} (width {self.width})")
        if other.n == 0:
            return self
        xp = self.xp
        o_shift = xp.asarray(to_numpy(other.shift)) if array_namespace(other.shift) is not xp else other.shift
        o_sum = xp.asarray(to_numpy(other.sum)) if array_namespace(other.sum) is not xp else other.sum
        o_gram = xp.asarray(to_numpy(other.gram)) if array_namespace(other.gram) is not xp else other.gram
        if self.shift is None:
            self.shift, self.sum, self.gram, self.n = o_shift.copy(), o_sum.copy(), o_gram.copy(), other.n
            return self
        d = o_shift - self.shift  # other's rows around our shift: (x - o) + d
        self.gram += o_gram + xp.outer(d, o_sum) + xp.outer(o_sum, d) + other.n * xp.outer(d, d)
        self.sum += o_sum + other.n * d
        self.n += other.n
        return self

    # -- results ---------------------------------------------------------------------------
    def covariance(self) -> Any:
        """Unbiased covariance (G - s s^T / n) / (n - 1) around the mean (symmetric)."""
        if self.n < 2:
            raise SuiError(f"tap {self.name!r}: need at least 2 tokens for a covariance, have {self.n}")
        return symmetric_from_lower(self._covariance_lower(), self.xp)

    def _covariance_lower(self) -> Any:
        """(G - s s^T / n) / (n - 1), valid in the lower triangle, with one D x D temporary."""
        xp = self.xp
        cov = xp.outer(self.sum, self.sum)
        cov *= -1.0 / self.n
        cov += self.gram
        cov *= 1.0 / (self.n - 1)
        return cov

    def finalize(self) -> Spectrum:
        """Eigenvalues of the covariance (eigvalsh only, no eigenvectors), on the host."""
        xp = self.xp
        if self.n < 2:
            raise SuiError(f"tap {self.name!r}: need at least 2 tokens for a covariance, have {self.n}")
        cov = self._covariance_lower()
        eig = xp.linalg.eigvalsh(cov, UPLO="L")
        eig = xp.clip(eig[::-1], 0.0, None)
        mean = self.shift + self.sum / self.n
        return Spectrum(
            name=self.name,
            width=self.width,
            n=self.n,
            eigenvalues=to_numpy(eig).copy(),
            trace=float(xp.trace(cov)),
            mean=to_numpy(mean).copy(),
        )

    # -- persistence -----------------------------------------------------------------------
    def state(self) -> dict[str, np.ndarray]:
        """Host copy of the statistics, keyed for an .npz file."""
        shift = np.zeros(self.width) if self.shift is None else to_numpy(self.shift)
        return {
            "n": np.asarray(self.n, dtype=np.int64),
            "shift": np.asarray(shift, dtype=np.float64),
            "sum": np.asarray(to_numpy(self.sum), dtype=np.float64),
            "gram": np.asarray(symmetric_from_lower(to_numpy(self.gram)), dtype=np.float64),
        }

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray], name: str = "", xp: Any = np) -> "CovarianceAccumulator":
        gram = np.asarray(state["gram"], dtype=np.float64)
        acc = cls(gram.shape[0], name, xp)
        acc.n = int(state["n"])
        if acc.n:
            acc.shift = xp.asarray(state["shift"], dtype=xp.float64)
            acc.sum = xp.asarray(state["sum"], dtype=xp.float64)
            acc.gram = xp.asarray(gram)
        return acc

    def save(self, path: str | Path) -> Path:
        """Save this single accumulator to an .npz file (atomic)."""
        return save_accumulators(path, [self])

    @classmethod
    def load(cls, path: str | Path, xp: Any = np) -> "CovarianceAccumulator":
        accs, _ = load_accumulators(path, xp)
        if len(accs) != 1:
            raise SuiError(f"{path} holds {len(accs)} accumulators, expected 1")
        return accs[0]


def save_accumulators(
    path: str | Path, accumulators: list[CovarianceAccumulator], meta: dict[str, Any] | None = None
) -> Path:
    """Save several taps' statistics (checkpoints, shards) to one .npz, atomically.

    ``meta`` holds JSON-able run provenance (model hash, tokens consumed, ...)."""
    import json

    arrays: dict[str, np.ndarray] = {
        "format": np.asarray(STATE_FORMAT),
        "version": np.asarray(STATE_VERSION),
        "names": np.asarray([a.name for a in accumulators]),
        "meta": np.asarray(json.dumps(meta or {}, sort_keys=True)),
    }
    for i, acc in enumerate(accumulators):
        for key, value in acc.state().items():
            arrays[f"{i}/{key}"] = value
    from .safeio import atomic_write

    return atomic_write(path, lambda fh: np.savez(fh, **arrays))


MAX_TOKENS = 2**53  # a token count above this is no real run (and float64 no longer counts it exactly)
_MAX_SMALL_MEMBER = 1 << 28  # names, meta and the vectors: far below this in any real file


def load_accumulators(path: str | Path, xp: Any = np) -> tuple[list[CovarianceAccumulator], dict[str, Any]]:
    """Load what ``save_accumulators`` wrote; never unpickles (allow_pickle=False).

    Everything is validated before it is used (SuiError naming the file and the problem): a
    regular file (never a FIFO or a device), a zip of .npy members of the declared sizes, a JSON
    object as metadata, and per accumulator an integer token count 0 <= n <= 2^53, finite real
    vectors shift and sum of one width D and a finite, real, symmetric D x D gram whose diagonal
    (sums of squares) is non-negative and bounds the sums (Cauchy-Schwarz)."""
    import zipfile

    from .safeio import open_input

    path = Path(path)
    label = printable(path)
    with open_input(path) as fh:
        try:
            with np.load(fh, allow_pickle=False) as z:
                return _read_state(z, label, xp)
        except SuiError:
            raise
        except MemoryError:
            raise SuiError(f"{label}: statistics too large for the memory available") from None
        except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, KeyError, OSError, EOFError, TypeError,
                IndexError, NotImplementedError) as exc:
            raise SuiError(f"{label} is not a readable accumulator file ({exc.__class__.__name__})") from None


def _invalid(label: str, what: str) -> SuiError:
    return SuiError(f"{label} is not a valid accumulator file: {what}")


def _member(z: Any, key: str, label: str, max_bytes: int = _MAX_SMALL_MEMBER) -> np.ndarray:
    """One .npy member, after checking its size in the zip directory (no zip bomb is unpacked) and
    that its header's shape fits the bytes that follow (no allocation a header merely claims)."""
    name = key + ".npy"
    if key not in z.files:
        raise _invalid(label, f"member {key!r} is missing")
    info = z.zip.getinfo(name)
    if info.file_size > max_bytes:
        raise _invalid(label, f"member {key!r} is {info.file_size:,} bytes, more than its shape allows")
    from numpy.lib import format as npy

    with z.zip.open(name) as fh:
        version = npy.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = npy.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, _, dtype = npy.read_array_header_2_0(fh)
        else:
            raise _invalid(label, f"member {key!r} is a .npy of version {version}, not one sui-onnx writes")
        header = fh.tell()
    count = 1
    for dim in shape:
        count *= int(dim)
    if count * dtype.itemsize > info.file_size - header:
        raise _invalid(label, f"member {key!r} declares shape {shape}, more than its {info.file_size:,} bytes hold")
    return z[key]


def _scalar_text(z: Any, key: str, label: str) -> str:
    a = _member(z, key, label)
    if a.ndim != 0 or a.dtype.kind != "U":
        raise _invalid(label, f"{key!r} is not a string")
    return str(a)


def _read_state(z: Any, label: str, xp: Any) -> tuple[list[CovarianceAccumulator], dict[str, Any]]:
    import json

    if "format" not in z.files or _scalar_text(z, "format", label) != STATE_FORMAT:
        raise SuiError(f"{label} is not a sui-onnx accumulator file")
    version = _member(z, "version", label)
    if version.ndim != 0 or version.dtype.kind not in "iu":
        raise _invalid(label, "'version' is not an integer")
    if int(version) > STATE_VERSION:
        raise SuiError(f"{label} was written by a newer sui-onnx (state version {int(version)})")
    names_arr = _member(z, "names", label)
    if names_arr.ndim != 1 or (names_arr.size and names_arr.dtype.kind != "U"):
        raise _invalid(label, "'names' is not a list of strings")
    names = [str(n) for n in names_arr]
    if len(set(names)) != len(names):
        raise _invalid(label, "two accumulators have the same name")

    def no_constant(token: str):
        raise ValueError(f"non-finite number {token}")

    try:
        meta = json.loads(_scalar_text(z, "meta", label), parse_constant=no_constant)
    except RecursionError:
        raise _invalid(label, "its metadata is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError is a ValueError
        raise _invalid(label, f"its metadata is not valid JSON ({printable(str(exc))[:80]})") from None
    if not isinstance(meta, dict):
        raise _invalid(label, "its metadata is not a JSON object")
    accs = [_accumulator(z, i, name, label, xp) for i, name in enumerate(names)]
    return accs, meta


def _accumulator(z: Any, i: int, name: str, label: str, xp: Any) -> CovarianceAccumulator:
    where = f"accumulator {i} ({printable(name)[:80]})"
    n = _member(z, f"{i}/n", label)
    if n.ndim != 0 or n.dtype.kind not in "iu":
        raise _invalid(label, f"{where}: the token count n is not an integer")
    count = int(n)
    if not 0 <= count <= MAX_TOKENS:
        raise _invalid(label, f"{where}: token count n = {count} is out of range (0 .. 2^53)")
    vectors = {}
    for key in ("shift", "sum"):
        v = _member(z, f"{i}/{key}", label)
        if v.ndim != 1 or v.size < 1 or v.dtype.kind != "f":
            raise _invalid(label, f"{where}: {key!r} is not a real vector (shape {v.shape}, {v.dtype})")
        vectors[key] = np.asarray(v, dtype=np.float64)
    width = vectors["sum"].size
    if vectors["shift"].size != width:
        raise _invalid(label, f"{where}: 'shift' has {vectors['shift'].size} entries, 'sum' {width}")
    gram = _member(z, f"{i}/gram", label, max_bytes=8 * width * width + (1 << 16))
    if gram.shape != (width, width) or gram.dtype.kind != "f":
        raise _invalid(label, f"{where}: 'gram' is not a real {width} x {width} matrix (shape {gram.shape}, {gram.dtype})")
    gram = np.asarray(gram, dtype=np.float64)
    if not (np.isfinite(vectors["shift"]).all() and np.isfinite(vectors["sum"]).all() and _finite(gram)):
        raise _invalid(label, f"{where}: the statistics hold NaN or Inf")
    diag = np.diagonal(gram)
    scale = max(float(np.abs(diag).max(initial=0.0)), 1e-300)
    if count == 0:
        if np.any(vectors["sum"]) or np.any(diag):
            raise _invalid(label, f"{where}: n is 0 but the sums are not")
    else:
        if (diag < -1e-9 * scale).any():
            raise _invalid(label, f"{where}: 'gram' has a negative sum of squares on its diagonal")
        if not _symmetric(gram, 1e-9 * scale):
            raise _invalid(label, f"{where}: 'gram' is not symmetric")
        # Cauchy-Schwarz per coordinate: (sum x)^2 <= n sum x^2
        if (vectors["sum"] ** 2 > count * np.maximum(diag, 0) * (1 + 1e-2) + 1e-12 * scale).any():
            raise _invalid(label, f"{where}: the sums do not fit the token count and the sums of squares")
    return CovarianceAccumulator.from_state({"n": np.asarray(count), "shift": vectors["shift"], "sum": vectors["sum"],
                                             "gram": gram}, name, xp)


def _blocks(d: int, step: int = 512):
    for lo in range(0, d, step):
        yield lo, min(d, lo + step)


def _finite(a: np.ndarray) -> bool:
    return all(np.isfinite(a[lo:hi]).all() for lo, hi in _blocks(a.shape[0]))


def _symmetric(a: np.ndarray, tol: float) -> bool:
    """|a - a^T| <= tol everywhere, in row blocks (no D x D temporary)."""
    return all(np.abs(a[lo:hi] - a[:, lo:hi].T).max(initial=0.0) <= tol for lo, hi in _blocks(a.shape[0]))
