"""What the slim benches (bench_slim_sequential, _residual, _drift) share: their texts, and one
measured row (a variant against the original on every eval source)."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def texts(calib: Path | None = None, evals: list[Path] | None = None) -> tuple[Path, list[Path]]:
    """(calibration text, held-out texts): the ones given, else models.domains' Python docs
    (built if missing) with held-out Python docs and the bundled English prose."""
    if calib is not None:
        return calib, list(evals or [])
    from models.domains import build

    code, code_heldout = build(ROOT / "models" / "work")
    return code, [code_heldout, ROOT / "sui_onnx" / "data" / "heldout.txt"]


def measure_row(ev, study, width: str, name: str, variant, seconds: float | None = None) -> dict:
    """dCE (with its standard error), KL and top-1 per eval source, printed as one JSON line."""
    from sui_onnx.evaluate import ModelInput

    res = ev.measure(ModelInput(data=variant.model.SerializeToString(), external_folder=study.src.data_folder))
    row = {"width": width, "variant": name, "seconds": seconds,
           "sources": {s.source["path"].rsplit("/", 1)[-1]: {"dce": s.delta_ce, "se": s.delta_ce_se, "kl": s.kl,
                                                             "top1": s.top1}
                       for s in res.sources}}
    print(json.dumps(row), flush=True)
    return row
