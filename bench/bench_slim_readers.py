"""Selection weighted by how the rest of the model reads each residual dimension (docs/slim.md).

    python bench/bench_slim_readers.py models/work/smollm2/onnx --name smollm2_135m --tokens 65536

`id` chooses the neurons that minimise the plain output-space error ||(H - H_S B) W||^2, every
dimension of the FFN output weighted alike. But nothing reads the residual stream plainly: each
later block, and the head, reads it through a norm whose scale gamma and whose projections
(q/k/v, gate/up, the LM head) weight its dimensions unevenly (on SmolLM2 a reader's
sensitivity gamma_j^2 * ||W_j,:||^2 has a maximum 2-25x its median, 1300x for layer 0's attention
norm). The hypothesis: choose the neurons
by the error the readers see, ||(H - H_S B) W G||^2 with G = diag(g), where g_j^2 sums, over the
readers after the layer, gamma_j^2 * ||W_j,:||^2 normalized to mean 1 per reader. The refit is
unchanged (the least-squares B does not depend on any weighting of the output dimensions).

Readers are found in the graph: a norm's scale (a 1-D constant multiplied in, or the scale input
of a LayerNormalization / SimplifiedLayerNormalization / RMSNormalization node) whose output
reaches, through Add (the norm's bias), Cast or Reshape, MatMul or Gemm nodes with constant weights
of the model width. Per width, one calibration: `id` (the default), `id` reader-weighted over all
later readers, `id` weighted by the next block's readers only, and `variance`, measured against the
original on held-out Python documentation and English prose. Writes
bench/results/slim_readers_<name>.json. Nothing here is a test.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

NORMS = ("LayerNormalization", "SimplifiedLayerNormalization", "RMSNormalization", "SkipSimplifiedLayerNormalization")
PASS = ("Cast", "Reshape", "Add")


def _matrix(study, node, width: int):
    """The constant weight of a MatMul / Gemm as [width, n] (input rows first), or None."""
    import numpy as np

    ix = study.surgery.ix
    name = ix.canon(node.input[1])
    prod = ix.producer_node(name)
    transposed = node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)
    if prod is not None and prod.op_type == "Transpose" and ix.is_static(ix.canon(prod.input[0])):
        name, transposed = ix.canon(prod.input[0]), not transposed  # a tied head: Transpose(embedding)
    if not ix.is_static(name):
        return None
    try:
        w = np.asarray(study.surgery.array(name), dtype=np.float64)
    except Exception:  # noqa: BLE001 - a computed constant: not a reader weight
        return None
    if w.ndim != 2:
        return None
    w = w.T if transposed else w
    return w if w.shape[0] == width else None


def readers(study) -> list[tuple[int, str, "object"]]:
    """(node position, scale name, sensitivity per model dimension) of every norm whose output
    feeds constant projections of the model width, in graph order."""
    import numpy as np

    ix = study.surgery.ix
    nodes = list(study.src.model.graph.node)
    width = study.surgery.plans[0].out_width
    found = []
    for pos, node in enumerate(nodes):
        scale = None
        if node.op_type in NORMS and len(node.input) > 1:
            scale = node.input[1] if node.op_type != "SkipSimplifiedLayerNormalization" else node.input[2]
        elif node.op_type == "Mul":
            for x in node.input:
                if ix.is_static(ix.canon(x)):
                    v = ix.static_value(ix.canon(x))
                    if v is not None and np.size(v) == width and np.ndim(np.squeeze(v)) == 1:
                        scale = x
        if scale is None:
            continue
        gamma = np.asarray(ix.static_value(ix.canon(scale)), dtype=np.float64).reshape(-1)
        sens = np.zeros(width)
        frontier, seen, mats = [node.output[0]], set(), 0
        for _ in range(4):
            nxt = []
            for t in frontier:
                for c in ix.consumer_nodes(ix.canon(t)):
                    if c in seen:
                        continue
                    seen.add(c)
                    cn = ix.nodes[c]
                    if cn.op_type in ("MatMul", "Gemm"):
                        w = _matrix(study, cn, width)
                        if w is not None:
                            sens += np.einsum("ij,ij->i", w, w)
                            mats += 1
                    elif cn.op_type in PASS:
                        nxt.append(cn.output[0])
            frontier = nxt
        if mats:
            found.append((pos, str(scale), sens * gamma ** 2))
    return found


def reader_weights(study, next_only: bool = False) -> list:
    """Per FFN layer: g (model width) for the readers after its residual Add; all of them, or
    only those before the next FFN layer's Add (next_only: the next block's attention and FFN)."""
    import numpy as np

    from bench_slim_residual import residual_adds

    nodes = list(study.src.model.graph.node)
    where = {o: k for k, n in enumerate(nodes) for o in n.output}
    adds = [where[after] for _, after in residual_adds(study)]
    found = readers(study)
    out = []
    for i, pos in enumerate(adds):
        stop = adds[i + 1] if next_only and i + 1 < len(adds) else len(nodes)
        later = [s / s.mean() for p, _, s in found if pos < p < stop and s.mean() > 0]
        if not later:
            later = [s / s.mean() for p, _, s in found if p > pos and s.mean() > 0][-1:]  # the head
        g2 = np.sum(later, axis=0) if later else np.ones(study.surgery.plans[i].out_width)
        out.append(np.sqrt(g2 / g2.mean()))
    return out


def main() -> None:
    import numpy as np

    from _slim_common import add_study_args, evaluator, measure_row, plain_study, ratio_widths, texts

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_study_args(ap)
    args = ap.parse_args()

    calib, evals = texts(args.calib, args.eval)
    _, study, study_s = plain_study(args, calib)
    found = readers(study)
    print(f"{len(found)} readers: " + " ".join(n.rsplit('/', 1)[-1] for _, n, _ in found[:4]) + " ...", flush=True)
    weightings = {"all later readers": reader_weights(study), "next block's readers": reader_weights(study, True)}
    spread = {k: [float(np.percentile(g, 99) / np.percentile(g, 1)) for g in v] for k, v in weightings.items()}
    for k, v in spread.items():
        print(f"g p99/p1 ({k}):", " ".join(f"{x:.1f}" for x in v), flush=True)
    plain = list(study.weights)
    ev = evaluator(study, evals, args)

    def weighted_variant(widths, gs):
        study._selections.clear()
        study.weights = [w * g[None, :] for w, g in zip(plain, gs)]
        for i, k in enumerate(widths):
            study.selection(i, "id", k)  # cached: the refit below reuses these selections
        study.weights = list(plain)
        return study.variant(widths, "id")

    rows = []
    for r in args.ratios:
        widths = ratio_widths(study, r)
        study._selections.clear()
        variants = [("id", study.variant(widths, "id")), ("variance", study.variant(widths, "variance"))]
        for k, gs in weightings.items():
            variants.append((f"id, weighted by {k}", weighted_variant(widths, gs)))
        study._selections.clear()
        for name, v in variants:
            rows.append(measure_row(ev, study, r, name, v))
    path = HERE / "results" / f"slim_readers_{args.name}.json"
    path.write_text(json.dumps({"model": str(args.model), "tokens": args.tokens, "eval_tokens": args.eval_tokens,
                                "eval_seq_len": args.eval_seq_len, "ridge": study.ridge, "study_s": study_s,
                                "readers": [n for _, n, _ in found], "g_p99_over_p1": spread, "rows": rows},
                               indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
