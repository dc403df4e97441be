"""The automatic statistics cap (no --max-memory): free memory read from /proc and cgroups, the
cap's arithmetic, passes planned from it with unchanged numbers, a resumed run keeping its plan,
and a one-line error when one layer cannot fit."""

from pathlib import Path

import numpy as np
import pytest

import sui_onnx.memory as memory
from sui_onnx.analyze import AnalysisOptions, Interrupted, accumulator_bytes, analyze
from sui_onnx.calib import CalibrationSpec
from sui_onnx.cli import main
from sui_onnx.graph import load_model

from .onnx_builders import tiny_lm

FIXTURES = Path(__file__).parent / "fixtures"
MODEL = FIXTURES / "llama_w128"  # two taps of D = 128
GiB = 2**30


def _fake_system(tmp_path: Path, meminfo_kib: int | None, cgroup: dict[str, str]) -> tuple[Path, Path]:
    proc, cg = tmp_path / "proc", tmp_path / "cgroup"
    proc.mkdir()
    cg.mkdir()
    if meminfo_kib is not None:
        (proc / "meminfo").write_text(f"MemTotal:       99999999 kB\nMemFree:  1 kB\nMemAvailable:   {meminfo_kib} kB\n")
    for name, text in cgroup.items():
        (cg / name).parent.mkdir(parents=True, exist_ok=True)
        (cg / name).write_text(text + "\n")
    return proc, cg


@pytest.mark.parametrize("cgroup, expected", [
    ({}, 8 * GiB),                                                         # bare metal
    ({"memory.max": "max", "memory.current": "1000"}, 8 * GiB),           # v2, no limit
    ({"memory.max": str(3 * GiB), "memory.current": str(GiB)}, 2 * GiB),  # v2 container below the host
    ({"memory.max": str(64 * GiB), "memory.current": str(GiB)}, 8 * GiB),  # limit above what is free
    ({"memory/memory.limit_in_bytes": str(2 * GiB), "memory/memory.usage_in_bytes": str(GiB // 2)}, 3 * GiB // 2),  # v1
    ({"memory/memory.limit_in_bytes": str(2**63 - 4096), "memory/memory.usage_in_bytes": "5"}, 8 * GiB),  # v1 "no limit"
])
def test_available_host_memory_reads_meminfo_and_the_cgroup_limit(tmp_path, cgroup, expected):
    proc, cg = _fake_system(tmp_path, 8 * GiB // 1024, cgroup)
    assert memory.available_host_memory(proc, cg) == expected


def test_available_host_memory_without_meminfo_falls_back_or_gives_up(tmp_path, monkeypatch):
    proc, cg = _fake_system(tmp_path, None, {})
    pages = {"SC_AVPHYS_PAGES": 1000, "SC_PAGE_SIZE": 4096}
    monkeypatch.setattr(memory.os, "sysconf", lambda key: pages[key])
    assert memory.available_host_memory(proc, cg) == 4096 * 1000

    def unsupported(key):
        raise ValueError(key)

    monkeypatch.setattr(memory.os, "sysconf", unsupported)
    assert memory.available_host_memory(proc, cg) is None


def _independent_host_memory() -> int:
    """MemAvailable from /proc/meminfo, lowered to a cgroup's remaining limit, read here by hand."""
    kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
               if line.startswith("MemAvailable:"))
    avail = kib * 1024
    for limit, usage in (("memory.max", "memory.current"), ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        try:
            lim = Path("/sys/fs/cgroup", limit).read_text().strip()
            use = int(Path("/sys/fs/cgroup", usage).read_text().strip())
        except (OSError, ValueError):
            continue
        if lim.isdigit() and int(lim) < 2**60:  # "max" (v2) or a huge number (v1): no limit
            return min(avail, max(0, int(lim) - use))
    return avail


@pytest.mark.skipif(not Path("/proc/meminfo").is_file(), reason="Linux /proc only")
def test_the_real_machine_reports_what_proc_and_the_cgroup_say():
    """Free memory moves between two reads (other processes allocate): the library's answer lies within
    64 MiB of the independent reads taken just before and just after it."""
    before = _independent_host_memory()
    avail = memory.available_host_memory()
    after = _independent_host_memory()
    assert isinstance(avail, int)
    assert min(before, after) - 64 * 2**20 <= avail <= max(before, after) + 64 * 2**20


def test_weight_bytes_counts_embedded_and_external_initializers():
    lm = tiny_lm(vocab=64, d_model=16, d_ff=48, n_layers=2)
    expected = sum(np.asarray(a).nbytes for a in [lm.emb, lm.emb.T] + [x for layer in lm.layers for x in layer])
    assert memory.weight_bytes(lm.model) == pytest.approx(expected, abs=64)  # + three scalar constants
    ext = load_model(FIXTURES / "llama_extdata")
    data = (FIXTURES / "llama_extdata" / "model.onnx_data").stat().st_size
    # the external file, plus the small Constant-node tensors embedded in the graph itself
    assert data <= memory.weight_bytes(ext.model) <= data + ext.model.ByteSize()


def test_default_cap_is_half_of_what_the_model_leaves():
    lm = tiny_lm()
    w = memory.weight_bytes(lm.model)
    widths, tokens = [48, 48], 100
    batch = 4 * tokens * sum(widths)
    host = memory.default_max_memory(lm.model, widths, tokens, cuda=False, available=10**9)
    assert host == int((10**9 - 2 * w - batch) * 0.5)
    gpu = memory.default_max_memory(lm.model, widths, tokens, cuda=True, available=10**9)
    assert gpu == int((10**9 - w - batch) * 0.5)  # the graph bytes stay on the host
    assert memory.default_max_memory(lm.model, widths, tokens, cuda=False, available=10) == 0


def _ids(tmp_path: Path, n_seq=12, seq=16) -> Path:
    path = tmp_path / "ids.npy"
    np.save(path, np.random.default_rng(3).integers(0, 512, (n_seq, seq)))
    return path


def _limit_free_memory(monkeypatch, taps_that_fit: float, spec: CalibrationSpec | None = None) -> None:
    """Pretend the machine has just enough free memory for ``taps_that_fit`` taps of D = 128."""
    model = load_model(MODEL).model
    weights = memory.weight_bytes(model)
    spec = spec or CalibrationSpec()
    batch = 4 * spec.batch_size * spec.seq_len * 2 * 128  # one batch of both taps' float32 outputs

    def fake() -> int:
        return int(2 * weights + batch + 2 * taps_that_fit * accumulator_bytes([128]))

    monkeypatch.setattr(memory, "available_host_memory", fake)


def test_without_max_memory_the_passes_follow_free_memory_and_numbers_do_not_change(tmp_path, monkeypatch):
    spec = CalibrationSpec([_ids(tmp_path)])
    one = analyze(MODEL, spec, AnalysisOptions(device="cpu"))
    assert one.runtime["passes"] == 1 and one.runtime["max_memory_source"] == "auto"
    _limit_free_memory(monkeypatch, 1.5)
    two = analyze(MODEL, spec, AnalysisOptions(device="cpu"))
    assert two.runtime["passes"] == 2 and two.runtime["max_memory_source"] == "auto"
    assert accumulator_bytes([128]) <= two.runtime["max_memory"] < 2 * accumulator_bytes([128])
    for a, b in zip(one.eigenvalues, two.eigenvalues):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15 * b[0])


def test_a_resumed_run_keeps_its_passes_when_free_memory_changed(tmp_path, monkeypatch):
    spec = CalibrationSpec([_ids(tmp_path, n_seq=20)], batch_size=2)
    whole = analyze(MODEL, spec, AnalysisOptions(device="cpu"))
    ckpt = tmp_path / "ck.npz"

    def stop_in_second_pass(done, total, desc):
        if desc.startswith("pass 2") and done >= 64:
            raise KeyboardInterrupt

    _limit_free_memory(monkeypatch, 1.5, spec)
    with pytest.raises(Interrupted):
        analyze(MODEL, spec, AnalysisOptions(device="cpu", checkpoint=ckpt, progress=stop_in_second_pass))
    monkeypatch.undo()  # plenty of memory now: a fresh plan would be one pass
    resumed = analyze(MODEL, spec, AnalysisOptions(device="cpu", resume=ckpt))
    assert resumed.runtime["passes"] == 2
    for a, b in zip(resumed.eigenvalues, whole.eigenvalues):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15 * b[0])


def test_a_layer_that_cannot_fit_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    _limit_free_memory(monkeypatch, 0.5)
    out = tmp_path / "r.json"
    assert main(["report", str(MODEL), "--calib", str(_ids(tmp_path)), "--json", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not enough memory" in err and "--max-memory" in err
    assert not out.exists()
    # an explicit cap overrides the guess
    assert main(["report", str(MODEL), "--calib", str(_ids(tmp_path)), "--json", str(out), "-q",
                 "--max-memory", "1G"]) == 0
