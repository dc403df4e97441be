"""The CUDA path: CuPy accumulation and onnxruntime-gpu with IOBinding. Skipped cleanly without a
usable GPU (the same array-namespace code is covered on NumPy by the CPU tests)."""

from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.gpu


def _cupy():
    cp = pytest.importorskip("cupy")
    try:
        if not cp.cuda.is_available():
            pytest.skip("no CUDA device")
        cp.zeros(1).sum()
    except Exception as exc:  # noqa: BLE001 - any CUDA runtime problem means: no GPU here
        pytest.skip(f"CUDA not usable: {exc}")
    return cp


def _ort_cuda():
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime without CUDAExecutionProvider")
    return ort


def test_cupy_accumulator_equals_numpy():
    cp = _cupy()
    from sui_onnx.metrics import spectral_metrics
    from sui_onnx.spectrum import CovarianceAccumulator

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((20_000, 256)) @ (rng.standard_normal((256, 256)) * 0.9 ** np.arange(256)) + 50).astype(np.float32)
    host, dev = CovarianceAccumulator(256), CovarianceAccumulator(256, xp=cp)
    for chunk in np.array_split(x, 5):
        host.update(chunk)
        dev.update(cp.asarray(chunk))
    a, b = host.finalize(), dev.finalize()
    assert isinstance(b.eigenvalues, np.ndarray)  # only eigenvalues come back
    np.testing.assert_allclose(b.eigenvalues, a.eigenvalues, rtol=0, atol=1e-6 * a.eigenvalues[0])
    ma, mb = spectral_metrics(a.eigenvalues).to_dict(), spectral_metrics(b.eigenvalues).to_dict()
    for key in ("hard_rank", "soft_rank", "concentration", "sui"):
        assert mb[key] == pytest.approx(ma[key], rel=1e-4)


def test_blocked_lower_gram_on_cupy_equals_numpy():
    """The blocked lower-triangle product (GEMMs into strided views of one output) on CuPy."""
    cp = _cupy()
    from sui_onnx.spectrum import lower_gram

    x = np.random.default_rng(1).standard_normal((4096, 1030)).astype(np.float32)
    host = lower_gram(x, np)
    dev = lower_gram(cp.asarray(x), cp).get()
    np.testing.assert_allclose(np.tril(dev), np.tril(host), rtol=1e-4, atol=1e-3)
    assert dev[0, -1] == 0.0  # only the lower triangle (and diagonal blocks) was computed


def test_cuda_report_matches_cpu_float64():
    _cupy()
    _ort_cuda()
    from sui_onnx.analyze import AnalysisOptions, analyze
    from sui_onnx.calib import CalibrationSpec

    model = Path(__file__).parent / "fixtures" / "llama_w256"
    cuda = analyze(model, CalibrationSpec(tokens=8192, seq_len=128), AnalysisOptions(device="cuda"))
    cpu = analyze(model, CalibrationSpec(tokens=8192, seq_len=128), AnalysisOptions(device="cpu", precision="fp64"))
    assert cuda.runtime["providers"][0] == "CUDAExecutionProvider"
    for a, b in zip(cuda.layers, cpu.layers):
        for key in ("hard_rank", "soft_rank", "concentration", "sui"):
            assert getattr(a, key) == pytest.approx(getattr(b, key), rel=1e-4)
