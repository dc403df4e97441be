"""One measured row of the slim benches (bench_slim_sequential, _residual, _drift): a variant
measured against the original on every eval source."""

from __future__ import annotations

import json


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
