"""Generate the small synthetic report JSONs in this folder (tests of `sui-onnx scaling`).

Run from the repository root:  python tests/data/reports/make_reports.py

Each layer's eigenvalue spectrum is the mixture p_i = w * i^(-a) / Z + (1 - w) / D (a steep
power law on top of a flat floor), with (w, a) solved by Newton's method so that the spectrum's hard
and soft rank hit exact power laws  hard = A_h * D^beta_h,  soft = A_s * D^beta_s  (to ~1e-15
relative). The metrics in the reports are computed from those spectra by
sui_onnx.metrics.spectral_metrics, the summary and advice by sui_onnx.advice, exactly as `analyze`
does; nothing here runs a model.

Files:
- gpt2_w{768,1536,3072,4608,6144}.json: the family (3 FFN layers, gelu). The layers' power laws never
  cross inside the range, so the per-model median is always the middle layer's (LAYER_LAWS[1]).
- depth2_w2304.json: same family, 2 layers (mixed-depth refusal).
- llama_w2048.json: family "synthetic-llama", swiglu (mixed-family refusal).
"""

from __future__ import annotations

import hashlib
import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sui_onnx.advice import summarize, width_advice  # noqa: E402
from sui_onnx.metrics import spectral_metrics  # noqa: E402
from sui_onnx.report import LayerResult, Report  # noqa: E402

HERE = Path(__file__).resolve().parent
D0 = 768
WIDTHS = (768, 1536, 3072, 4608, 6144)
# (hard at D0, beta_hard, soft at D0, beta_soft) per layer; rank(D) = rank(D0) * (D / D0)^beta
LAYER_LAWS = (
    (15.0, 0.25, 150.0, 0.70),
    (24.0, 0.289, 200.0, 0.661),  # the median layer: the paper's GPT-2 exponents
    (35.0, 0.35, 260.0, 0.60),
)
TOKENS_FACTOR = 12  # tokens = 12 D: no low_tokens flag


def law(layer: int, width: int) -> tuple[float, float]:
    """Target (hard, soft) rank of `layer` at `width`."""
    h0, bh, s0, bs = LAYER_LAWS[layer]
    return h0 * (width / D0) ** bh, s0 * (width / D0) ** bs


def law_params(layer: int) -> dict[str, float]:
    """A and beta of the layer's laws in absolute width units: rank = A * D^beta."""
    h0, bh, s0, bs = LAYER_LAWS[layer]
    return {"A_hard": h0 * D0 ** -bh, "beta_hard": bh, "A_soft": s0 * D0 ** -bs, "beta_soft": bs}


def _spectrum(u: float, v: float, width: int) -> np.ndarray:
    w = 1.0 / (1.0 + math.exp(-u))
    a = math.exp(v)
    g = np.arange(1, width + 1, dtype=np.float64) ** (-a)
    return w * g / g.sum() + (1.0 - w) / width


def _log_ranks(p: np.ndarray) -> np.ndarray:
    return np.array([-math.log(float(np.sum(p * p))), -float(np.sum(p * np.log(p)))])


def spectrum_for(hard: float, soft: float, width: int) -> np.ndarray:
    """Eigenvalues (descending, summing to 1) with the given hard and soft rank."""
    target = np.array([math.log(hard), math.log(soft)])
    x = np.zeros(2)
    f = _log_ranks(_spectrum(*x, width)) - target
    for _ in range(200):
        if np.max(np.abs(f)) < 1e-14:
            break
        jac = np.empty((2, 2))
        for k in range(2):
            xx = x.copy()
            xx[k] += 1e-7
            jac[:, k] = (_log_ranks(_spectrum(*xx, width)) - target - f) / 1e-7
        step = np.linalg.solve(jac, -f)
        lam = 1.0
        while True:
            xn = x + lam * step
            fn = _log_ranks(_spectrum(*xn, width)) - target
            if np.max(np.abs(fn)) < np.max(np.abs(f)) or lam < 1e-6:
                break
            lam /= 2
        x, f = xn, fn
    if np.max(np.abs(f)) > 1e-12:
        raise RuntimeError(f"no spectrum with hard={hard}, soft={soft} at D={width}")
    return _spectrum(*x, width)


def make_report(width: int, n_layers: int = 3, family: str = "synthetic-gpt2",
                architecture: str = "GPT2LMHeadModel", activation: str = "gelu") -> Report:
    name = f"{family}-w{width}-l{n_layers}"
    tokens = TOKENS_FACTOR * width
    layers, eigs = [], []
    for i in range(n_layers):
        ev = spectrum_for(*law(i, width), width)
        m = spectral_metrics(ev)
        layer = LayerResult(layer=i, tensor=f"/h.{i}/mlp/act/output_0", width=width, site="post",
                            activation=activation, op="Mul", tokens=tokens)
        for key in ("hard_rank", "soft_rank", "hard_util", "soft_util", "concentration", "sui", "asymmetry"):
            setattr(layer, key, getattr(m, key))
        layer.energy_widths = dict(m.energy_widths)
        layers.append(layer)
        eigs.append(ev)
    report = Report(
        tool={"name": "sui-onnx", "version": "synthetic"},
        created="2025-01-01T00:00:00+00:00",
        model={
            "path": f"synthetic/{name}/model.onnx",
            "sha256": hashlib.sha256(name.encode()).hexdigest(),
            "opset": 17,
            "producer": "tests/data/reports/make_reports.py",
            "external_data": False,
            "n_taps": n_layers,
            "site": "post",
            "family": family,
            "architecture": architecture,
        },
        calibration={"sources": [{"path": "synthetic", "kind": "synthetic"}], "tokens": tokens},
        runtime={"device": "none", "providers": []},
        settings={"site": "post", "top_fraction": 0.1, "energy_levels": [0.9, 0.95, 0.99],
                  "advice": {"q": 0.95, "quantile": 1.0, "align": 64}},
        layers=layers,
    )
    report.summary = summarize(layers)
    report.advice = width_advice(layers, eigs)
    return report


def all_reports() -> dict[str, Report]:
    out = {f"gpt2_w{w}.json": make_report(w) for w in WIDTHS}
    out["depth2_w2304.json"] = make_report(2304, n_layers=2)
    out["llama_w2048.json"] = make_report(2048, family="synthetic-llama", architecture="LlamaForCausalLM",
                                          activation="swiglu")
    return out


def main() -> None:
    for name, report in all_reports().items():
        (HERE / name).write_text(report.to_json(), encoding="utf-8")
        print(f"wrote {HERE / name}")


if __name__ == "__main__":
    main()
