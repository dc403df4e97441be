"""Detection depends on structure only: renaming every node and tensor, inserting Identity
nodes and shuffling the node list (topologically or not) must not change the taps."""

from __future__ import annotations

import random

import onnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sui_onnx.graph import find_taps
from tests.graph_synthetic import build_transformer

KINDS = ["gelu_erf", "gelu_tanh", "fastgelu", "swiglu", "fused_slice", "ngpt", "gemm", "matmulinteger", "relu2_mul", "qdq"]
_MODELS = {k: build_transformer(k, n_layers=2, d_model=8, d_ff=24).model for k in KINDS}


def signature(model: onnx.ModelProto, site: str) -> list[tuple]:
    return [(t.layer, t.width, t.site, t.activation, t.op, t.tensor) for t in find_taps(model, site)]


def transform(model: onnx.ModelProto, seed: int, rename: bool, identities: float, shuffle: str) -> tuple[onnx.ModelProto, dict[str, str]]:
    """A structurally equivalent copy of ``model`` and the old->new tensor-name mapping."""
    rng = random.Random(seed)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    names: list[str] = [i.name for i in g.input] + [t.name for t in g.initializer]
    names += [o for n in g.node for o in n.output if o]
    mapping = {n: n for n in names}
    if rename:
        fresh = [f"t{k}" for k in range(len(names))]
        rng.shuffle(fresh)
        mapping = dict(zip(names, fresh))

    def r(name: str) -> str:
        return mapping.get(name, name) if name else name

    for vi in list(g.input) + list(g.output) + list(g.value_info):
        vi.name = r(vi.name)
    for t in g.initializer:
        t.name = r(t.name)
    nodes = []
    for k, node in enumerate(g.node):
        node.name = f"n{rng.randrange(10**9)}_{k}" if rename else node.name
        for i, name in enumerate(node.input):
            node.input[i] = r(name)
        for i, name in enumerate(node.output):
            node.output[i] = r(name)
        for i, name in enumerate(node.input):
            if name and rng.random() < identities:  # re-route this edge through Identity chains
                src = name
                for _ in range(rng.randint(1, 2)):
                    alias = f"id{len(nodes)}_{rng.randrange(10**6)}"
                    nodes.append(onnx.helper.make_node("Identity", [src], [alias], name=f"ident_{alias}"))
                    src = alias
                node.input[i] = src
        nodes.append(node)
    if shuffle == "topological":
        nodes = random_topological(nodes, {i.name for i in g.input} | {t.name for t in g.initializer}, rng)
    elif shuffle == "any":
        rng.shuffle(nodes)
    copies = []
    for node in nodes:
        c = onnx.NodeProto()
        c.CopyFrom(node)
        copies.append(c)
    del g.node[:]
    g.node.extend(copies)
    return m, mapping


def random_topological(nodes: list[onnx.NodeProto], available: set[str], rng: random.Random) -> list[onnx.NodeProto]:
    have = set(available)
    pending = list(nodes)
    order = []
    while pending:
        ready = [n for n in pending if all(not i or i in have for i in n.input)]
        pick = rng.choice(ready)
        pending.remove(pick)
        order.append(pick)
        have.update(pick.output)
    return order


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(KINDS),
    site=st.sampled_from(["post", "pre"]),
    seed=st.integers(0, 2**31 - 1),
    rename=st.booleans(),
    identities=st.sampled_from([0.0, 0.2, 0.6]),
    shuffle=st.sampled_from(["none", "topological", "any"]),
)
def test_detection_is_structural(kind, site, seed, rename, identities, shuffle):
    model = _MODELS[kind]
    before = signature(model, site)
    changed, mapping = transform(model, seed, rename, identities, shuffle)
    after = signature(changed, site)
    assert [b[:5] for b in before] == [a[:5] for a in after]
    assert [mapping[b[5]] for b in before] == [a[5] for a in after]
    if shuffle == "topological":
        onnx.checker.check_model(changed)
