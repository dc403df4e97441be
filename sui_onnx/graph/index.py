"""A read-only index over one ONNX graph, shaped for structural pattern matching.

The FFN detector never trusts node or tensor names, so it needs cheap answers to structural
questions instead: who produces a tensor, who consumes it, is it a constant (a weight), what
shape does a weight have, which dtype does a tensor carry, how deep in the graph is a node.

Two normalisations make detection invariant to harmless rewrites of the graph:

* ``Identity`` (and inference-mode ``Dropout``) nodes are collapsed: every tensor is mapped to
  its *canonical* name, the tensor at the start of its Identity chain, and consumers are
  recorded under the canonical name.  Inserting Identity nodes therefore changes nothing.
* Node order is never used for meaning: a topological sort (Kahn) gives the longest-path depth
  of every node, which orders FFN blocks even when the node list is shuffled.

Nothing here reads external data: weight shapes come from initializer ``dims`` (or the
attributes of quantised ops), small constant values only from embedded tensors.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import ModelError

# Nodes that pass their first input through unchanged (at inference time).
ALIAS_OPS = frozenset({"Identity", "Dropout"})
# Nodes whose output depends only on input shapes, never on input values.
SHAPE_ONLY_OPS = frozenset({"Shape", "Size"})
# Nodes with no inputs that are nevertheless not constant.
RANDOM_OPS = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"})
_SMALL_VALUE_LIMIT = 1 << 16  # elements: bigger constants are never materialised


def default_domain(domain: str) -> bool:
    """True for the standard ONNX operator domain."""
    return domain in ("", "ai.onnx")


def attr(node: onnx.NodeProto, name: str, default=None):
    """Value of attribute ``name`` of ``node`` (decoded with onnx.helper), else ``default``."""
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def uses_external_data(tensor: onnx.TensorProto) -> bool:
    """True when the tensor's bytes live in a separate file."""
    return tensor.HasField("data_location") and tensor.data_location == onnx.TensorProto.EXTERNAL


def subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    """The graphs held by ``node``'s attributes (If branches, Loop/Scan bodies)."""
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            yield a.g
        elif a.type == onnx.AttributeProto.GRAPHS:
            yield from a.graphs


def outer_references(graph: onnx.GraphProto) -> set[str]:
    """Names a subgraph uses but does not define: it reads them from the enclosing scope."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    defined |= {t.values.name for t in graph.sparse_initializer}
    used: set[str] = set()
    for node in graph.node:
        defined.update(o for o in node.output if o)
        used.update(i for i in node.input if i)
        for sub in subgraphs(node):
            used |= outer_references(sub)
    used.update(o.name for o in graph.output)
    return used - defined


def node_inputs(node: onnx.NodeProto) -> list[str]:
    """Explicit inputs plus the outer-scope names its subgraphs read (non-empty names only)."""
    names = [i for i in node.input if i]
    for sub in subgraphs(node):
        names.extend(sorted(outer_references(sub)))
    return names


def broadcast_shapes(a: list[int] | None, b: list[int] | None) -> list[int] | None:
    """Numpy broadcasting of two static shapes (None when either is unknown or they clash)."""
    if a is None or b is None:
        return None
    out = []
    for x, y in zip(reversed([1] * (len(b) - len(a)) + a), reversed([1] * (len(a) - len(b)) + b)):
        if x == y or y == 1:
            out.append(x)
        elif x == 1:
            out.append(y)
        else:
            return None
    return list(reversed(out))


@dataclass
class GraphIndex:
    """Producers, consumers, constants, shapes and depths of one graph (see module doc).

    ``graph`` is indexed as given; ``types`` (optional) maps tensor names to the TypeProtos
    found by shape inference and is used as a fallback for shapes and dtypes.
    """

    graph: onnx.GraphProto
    types: dict[str, onnx.TypeProto] = field(default_factory=dict)
    outer_initializers: dict[str, onnx.TensorProto] = field(default_factory=dict)

    def __post_init__(self) -> None:
        g = self.graph
        self.nodes: list[onnx.NodeProto] = list(g.node)
        self.inputs_of: list[list[str]] = [node_inputs(n) for n in self.nodes]
        self.initializers: dict[str, onnx.TensorProto] = dict(self.outer_initializers)
        self.initializers.update({t.name: t for t in g.initializer})
        for st in g.sparse_initializer:
            self.initializers[st.values.name] = st.values
        self.graph_inputs: set[str] = {i.name for i in g.input} - set(self.initializers)
        self.declared_types: dict[str, onnx.TypeProto] = {}
        for vi in list(g.input) + list(g.output) + list(g.value_info):
            if vi.type.HasField("tensor_type"):
                self.declared_types[vi.name] = vi.type
        self.order = self._topological_order()
        self._alias: dict[str, str] = {}
        self.producer: dict[str, tuple[int, int]] = {}
        self.consumers: dict[str, list[int]] = {}
        for n in self.order:
            node = self.nodes[n]
            if node.op_type in ALIAS_OPS and default_domain(node.domain) and node.input and node.input[0]:
                self._alias[node.output[0]] = self.canon(node.input[0])
                for k, out in enumerate(node.output[1:], start=1):  # Dropout mask: a real output
                    if out:
                        self.producer[out] = (n, k)
                continue
            for k, out in enumerate(node.output):
                if out:
                    self.producer[out] = (n, k)
            seen = set()
            for name in self.inputs_of[n]:
                c = self.canon(name)
                if c not in seen:
                    seen.add(c)
                    self.consumers.setdefault(c, []).append(n)
        self.depth = self._depths()
        self._static = self._static_tensors()
        self._shape_memo: dict[str, list[int] | None] = {}
        self._dtype_memo: dict[str, int | None] = {}
        self._rank_memo: dict[str, int | None] = {}

    # ----------------------------------------------------------------- structure
    def _topological_order(self) -> list[int]:
        """Kahn's order of node indices; nodes caught in a cycle are appended in list order."""
        made_by: dict[str, int] = {}
        for n, node in enumerate(self.nodes):
            for out in node.output:
                if out:
                    made_by[out] = n
        indeg = [0] * len(self.nodes)
        users: dict[int, list[int]] = {}
        for n in range(len(self.nodes)):
            for p in {made_by[i] for i in self.inputs_of[n] if i in made_by and made_by[i] != n}:
                indeg[n] += 1
                users.setdefault(p, []).append(n)
        queue = deque(n for n in range(len(self.nodes)) if indeg[n] == 0)
        order: list[int] = []
        while queue:
            n = queue.popleft()
            order.append(n)
            for u in users.get(n, ()):
                indeg[u] -= 1
                if indeg[u] == 0:
                    queue.append(u)
        if len(order) < len(self.nodes):
            placed = set(order)
            order.extend(n for n in range(len(self.nodes)) if n not in placed)
        return order

    def _depths(self) -> dict[int, int]:
        """Longest path (in nodes) from the graph inputs to each node."""
        depth: dict[int, int] = {}
        for n in self.order:
            d = 0
            for name in self.inputs_of[n]:
                p = self.producer.get(self.canon(name))
                if p is not None and p[0] in depth:
                    d = max(d, depth[p[0]] + 1)
            depth[n] = d
        return depth

    def _static_tensors(self) -> set[str]:
        """Canonical names of tensors computable without any graph input (weights, shapes)."""
        static = set(self.initializers)
        for n in self.order:
            node = self.nodes[n]
            if node.op_type in ALIAS_OPS and default_domain(node.domain):
                continue
            ins = [self.canon(i) for i in self.inputs_of[n]]
            if node.op_type in SHAPE_ONLY_OPS:
                ok = True
            elif node.op_type in RANDOM_OPS:
                ok = False
            else:
                ok = all(i in static for i in ins)
            if ok:
                static.update(o for o in node.output if o)
        return static

    def canon(self, name: str) -> str:
        """The canonical name of ``name``: the tensor at the start of its Identity chain."""
        seen = []
        while name in self._alias:
            seen.append(name)
            name = self._alias[name]
            if len(seen) > len(self._alias):
                raise ModelError(f"Identity nodes form a cycle through {seen[0]!r}: the graph is malformed")
        for s in seen[:-1]:
            self._alias[s] = name
        return name

    def producer_node(self, name: str) -> onnx.NodeProto | None:
        p = self.producer.get(self.canon(name))
        return None if p is None else self.nodes[p[0]]

    def producer_index(self, name: str) -> int | None:
        p = self.producer.get(self.canon(name))
        return None if p is None else p[0]

    def consumer_nodes(self, name: str, ignore_shape_only: bool = True) -> list[int]:
        """Nodes reading ``name`` (through Identity chains), optionally without Shape/Size."""
        found = self.consumers.get(self.canon(name), [])
        if ignore_shape_only:
            found = [n for n in found if self.nodes[n].op_type not in SHAPE_ONLY_OPS]
        return found

    def is_static(self, name: str) -> bool:
        """True for weights and other tensors that do not depend on any graph input."""
        return self.canon(name) in self._static

    def exists(self, name: str) -> bool:
        c = self.canon(name)
        return c in self.producer or c in self.initializers or c in self.graph_inputs or name in self._alias

    def all_tensor_names(self) -> Iterable[str]:
        yield from self.graph_inputs
        yield from self.initializers
        for node in self.nodes:
            yield from (o for o in node.output if o)

    # ----------------------------------------------------------------- constants
    def static_value(self, name: str) -> np.ndarray | None:
        """The value of a small embedded constant (shape vectors, scalars), else None."""
        return self._static_value(self.canon(name), 0)

    def _static_value(self, name: str, depth: int) -> np.ndarray | None:
        if depth > 32:
            return None
        t = self.initializers.get(name)
        if t is not None:
            if uses_external_data(t) or int(np.prod(t.dims, dtype=np.int64)) > _SMALL_VALUE_LIMIT:
                return None
            try:
                return numpy_helper.to_array(t)
            except Exception:
                return None
        p = self.producer.get(name)
        if p is None:
            return None
        node = self.nodes[p[0]]
        op = node.op_type
        try:
            if op == "Constant":
                for a in node.attribute:
                    if a.name == "value":
                        if int(np.prod(a.t.dims, dtype=np.int64)) > _SMALL_VALUE_LIMIT or uses_external_data(a.t):
                            return None
                        return numpy_helper.to_array(a.t)
                    if a.name in ("value_float", "value_int"):
                        return np.array(onnx.helper.get_attribute_value(a))
                    if a.name in ("value_floats", "value_ints"):
                        return np.array(list(onnx.helper.get_attribute_value(a)))
                return None
            ins = [self._static_value(self.canon(i), depth + 1) if i else None for i in node.input]
            if op == "Cast" and ins[0] is not None:
                return ins[0].astype(onnx.helper.tensor_dtype_to_np_dtype(attr(node, "to")))
            if op == "Concat" and all(v is not None for v in ins):
                return np.concatenate([np.atleast_1d(v) for v in ins], axis=attr(node, "axis", 0))
            if op == "Unsqueeze" and ins[0] is not None:
                axes = attr(node, "axes") if len(node.input) < 2 else ins[1]
                if axes is None:
                    return None
                out = ins[0]
                for ax in sorted(int(a) % (out.ndim + len(axes)) for a in axes):
                    out = np.expand_dims(out, ax)
                return out
            if op == "Squeeze" and ins[0] is not None:
                axes = attr(node, "axes") if len(node.input) < 2 else ins[1]
                return np.squeeze(ins[0], axis=None if axes is None else tuple(int(a) for a in axes))
            if op in ("Sqrt", "Neg", "Reciprocal") and ins[0] is not None:
                return {"Sqrt": np.sqrt, "Neg": np.negative, "Reciprocal": np.reciprocal}[op](ins[0])
            if op in ("Mul", "Div", "Add", "Sub") and len(ins) == 2 and all(v is not None for v in ins):
                return {"Mul": np.multiply, "Div": np.divide, "Add": np.add, "Sub": np.subtract}[op](*ins)
        except Exception:
            return None
        return None

    def static_scalar(self, name: str) -> float | None:
        """The value of a constant holding exactly one number, else None."""
        if not self.is_static(name):
            return None
        v = self.static_value(name)
        if v is None or v.size != 1:
            return None
        try:
            return float(v.reshape(()))
        except (TypeError, ValueError):
            return None

    # ----------------------------------------------------------------- shapes
    def inferred_type(self, name: str) -> onnx.TypeProto | None:
        """TypeProto from shape inference or declarations (any alias of ``name``)."""
        for n in (name, self.canon(name)):
            for table in (self.types, self.declared_types):
                t = table.get(n)
                if t is not None and t.HasField("tensor_type"):
                    return t
        return None

    def inferred_dims(self, name: str) -> list[int | str | None] | None:
        """Dims from inference: ints, symbolic names, or None for unknown; None if rank unknown."""
        t = self.inferred_type(name)
        if t is None or not t.tensor_type.HasField("shape"):
            return None
        dims: list[int | str | None] = []
        for d in t.tensor_type.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            elif d.HasField("dim_param") and d.dim_param:
                dims.append(d.dim_param)
            else:
                dims.append(None)
        return dims

    def last_dim(self, name: str) -> int | None:
        """The last dimension of a tensor when shape inference knows it as a number."""
        dims = self.inferred_dims(name)
        if dims and isinstance(dims[-1], int):
            return dims[-1]
        return None

    def static_shape(self, name: str) -> list[int] | None:
        """Shape of a constant tensor (a weight), followed through Transpose/Cast/Q/DQ/Reshape."""
        c = self.canon(name)
        if c not in self._shape_memo:
            self._shape_memo[c] = None  # cycle guard
            self._shape_memo[c] = self._static_shape(c)
        return self._shape_memo[c]

    def _static_shape(self, name: str) -> list[int] | None:
        t = self.initializers.get(name)
        if t is not None:
            return [int(d) for d in t.dims]
        p = self.producer.get(name)
        shape: list[int] | None = None
        if p is not None:
            node = self.nodes[p[0]]
            op = node.op_type
            first = self.static_shape(node.input[0]) if node.input and node.input[0] else None
            if op == "Constant":
                v = self.static_value(name)
                for a in node.attribute:
                    if a.name == "value":
                        shape = [int(d) for d in a.t.dims]
                if shape is None and v is not None:
                    shape = list(v.shape)
            elif op == "Transpose" and first is not None:
                perm = attr(node, "perm") or list(reversed(range(len(first))))
                shape = [first[i] for i in perm]
            elif op in ("Cast", "DequantizeLinear", "QuantizeLinear", "Neg", "Sqrt", "Abs", "Reciprocal") and p[1] == 0:
                shape = first
            elif op in ("Mul", "Div", "Add", "Sub") and len(node.input) == 2:
                shape = broadcast_shapes(first, self.static_shape(node.input[1]))
            elif op == "Reshape" and first is not None:
                target = self.static_value(node.input[1])
                if target is not None:
                    shape = _reshape(first, [int(x) for x in np.atleast_1d(target)], bool(attr(node, "allowzero", 0)))
            elif op in ("Squeeze", "Unsqueeze") and first is not None:
                axes = attr(node, "axes")
                if axes is None and len(node.input) > 1:
                    v = self.static_value(node.input[1])
                    axes = None if v is None else [int(a) for a in np.atleast_1d(v)]
                if op == "Squeeze":
                    if axes is None:
                        shape = [d for d in first if d != 1]
                    else:
                        drop = {a % len(first) for a in axes}
                        shape = [d for i, d in enumerate(first) if i not in drop]
                elif axes is not None:
                    rank = len(first) + len(axes)
                    ins = {a % rank for a in axes}
                    it = iter(first)
                    shape = [1 if i in ins else next(it) for i in range(rank)]
        if shape is None:
            dims = self.inferred_dims(name)
            if dims is not None and all(isinstance(d, int) for d in dims):
                shape = [int(d) for d in dims]  # type: ignore[arg-type]
        return shape

    def rank(self, name: str) -> int | None:
        """Rank of a tensor: shape inference, else a structural walk over producers.

        ONNX shape inference stops at contrib ops (FastGelu, SkipLayerNormalization,
        MatMulNBits, ...); the structural walk knows how common ops change rank and treats
        everything else as rank-preserving on its first input.
        """
        start = self.canon(name)
        memo = self._rank_memo
        stack = [start]
        visiting: set[str] = set()
        while stack:
            t = stack[-1]
            if t in memo:
                stack.pop()
                continue
            dims = self.inferred_dims(t)
            if dims is not None:
                memo[t] = len(dims)
                stack.pop()
                continue
            if self.is_static(t) and self.static_shape(t) is not None:
                memo[t] = len(self.static_shape(t))  # type: ignore[arg-type]
                stack.pop()
                continue
            p = self.producer.get(t)
            if p is None:
                memo[t] = None
                stack.pop()
                continue
            node = self.nodes[p[0]]
            deps = [self.canon(i) for i in _rank_deps(node)]
            pending = [d for d in deps if d not in memo]
            if pending and t not in visiting:
                visiting.add(t)
                stack.extend(pending)
                continue
            memo[t] = self._rank_rule(node, p[1], [memo.get(d) for d in deps])
            stack.pop()
        return memo.get(start)

    def _rank_rule(self, node: onnx.NodeProto, k: int, ranks: list[int | None]) -> int | None:
        op = node.op_type
        known = [r for r in ranks if r is not None]
        if op == "Gemm":
            return 2
        if op in ("MatMul", "FusedMatMul", "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul"):
            return max(known) if len(known) == len(ranks) and known else None
        if op in ("Shape", "Size"):
            return 1 if op == "Shape" else 0
        if op == "DynamicQuantizeLinear" and k > 0:
            return 0
        if op == "Reshape":
            shape = self.static_shape(node.input[1]) or self.inferred_dims(node.input[1])
            return int(shape[0]) if shape and isinstance(shape[0], int) else None
        if op == "Gather" and len(ranks) == 2 and len(known) == 2:
            return ranks[0] + ranks[1] - 1  # type: ignore[operator]
        if op in ("Unsqueeze", "Squeeze") and ranks and ranks[0] is not None:
            axes = attr(node, "axes")
            if axes is None and len(node.input) > 1:
                v = self.static_value(node.input[1])
                axes = None if v is None else list(np.atleast_1d(v))
            if axes is None:
                return None
            return ranks[0] + (len(axes) if op == "Unsqueeze" else -len(axes))
        if op in _BROADCAST_OPS:
            return max(known) if len(known) == len(ranks) and known else None
        return ranks[0] if ranks else None

    # ----------------------------------------------------------------- dtypes
    def dtype(self, name: str) -> int | None:
        """ONNX element type of a tensor: inference, then a walk over producers (None if lost)."""
        c = self.canon(name)
        if c in self._dtype_memo:
            return self._dtype_memo[c]
        # Iterative walk towards a tensor whose type is known; elementwise chains keep dtype.
        path: list[str] = []
        cur: str | None = c
        found: int | None = None
        while cur is not None and len(path) < 512:
            if cur in self._dtype_memo:
                found = self._dtype_memo[cur]
                break
            path.append(cur)
            found, nxt = self._dtype_step(cur)
            if found is not None or nxt is None:
                break
            cur = self.canon(nxt)
        for p in path:
            self._dtype_memo[p] = found
        return found

    def _dtype_step(self, name: str) -> tuple[int | None, str | None]:
        """Either the dtype of ``name`` or the tensor whose dtype it shares."""
        t = self.inferred_type(name)
        if t is not None and t.tensor_type.elem_type:
            return t.tensor_type.elem_type, None
        init = self.initializers.get(name)
        if init is not None:
            return init.data_type, None
        p = self.producer.get(name)
        if p is None:
            return None, None
        node, k = self.nodes[p[0]], p[1]
        op = node.op_type
        if op == "Cast":
            return int(attr(node, "to")), None
        if op in SHAPE_ONLY_OPS:
            return onnx.TensorProto.INT64, None
        if op == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    return a.t.data_type, None
                if a.name.startswith("value_float"):
                    return onnx.TensorProto.FLOAT, None
                if a.name.startswith("value_int"):
                    return onnx.TensorProto.INT64, None
        if op == "DynamicQuantizeLinear":
            return (onnx.TensorProto.FLOAT if k == 1 else onnx.TensorProto.UINT8), None
        if op == "QuantizeLinear":
            if len(node.input) > 2 and node.input[2]:
                return None, node.input[2]
            return onnx.TensorProto.UINT8, None
        if op in ("DequantizeLinear",):
            return None, node.input[1]
        if op in ("MatMulInteger", "ConvInteger"):
            return onnx.TensorProto.INT32, None
        if op == "MatMulNBits" and len(node.input) > 2:
            return None, node.input[2]
        if op in ("Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Not", "And", "Or", "IsNaN", "IsInf"):
            return onnx.TensorProto.BOOL, None
        if op in ("ArgMax", "ArgMin", "NonZero", "TopK") and (op != "TopK" or k == 1):
            return onnx.TensorProto.INT64, None
        if op == "Gather" or op == "GatherElements":
            return None, node.input[0]
        if op == "Where":
            return None, node.input[1]
        return schema_dtype_source(node, k)


# ---------------------------------------------------------------------------- operator schemas
def schema_dtype_source(node: onnx.NodeProto, k: int) -> tuple[int | None, str | None]:
    """Output ``k``'s element type as the operator's schema defines it: a fixed type, or the
    input that carries the same type parameter (then the caller follows that input).

    Schemas come from onnx (standard domains) and from onnxruntime's registry (its contrib ops:
    com.microsoft, and the ops it adds to the ONNX domain such as SimplifiedLayerNormalization).
    An op no schema describes, or whose output type is chosen by an attribute, gives
    (None, None): unknown, never guessed (the tapped copy then leaves the type to onnxruntime).
    """
    schema = _schema(node.domain or "", node.op_type)
    if schema is None:
        return None, None
    outputs = schema[1]
    if not outputs:
        return None, None
    if k >= len(outputs):
        if not outputs[-1][1]:  # past the last formal output, which is not variadic
            return None, None
        k = len(outputs) - 1
    type_str = outputs[k][0]
    fixed = _tensor_type(type_str)
    if fixed is not None:
        return fixed, None
    allowed = schema[2].get(type_str, ())
    if len(allowed) == 1 and _tensor_type(allowed[0]) is not None:
        return _tensor_type(allowed[0]), None
    inputs = schema[0]
    for pos, name in enumerate(node.input):
        if not name:
            continue
        if pos < len(inputs):
            formal = inputs[pos]
        elif inputs and inputs[-1][1]:  # variadic last input
            formal = inputs[-1]
        else:
            break
        if formal[0] == type_str:
            return None, name
    return None, None


_TYPE_NAMES = {"float": onnx.TensorProto.FLOAT, "double": onnx.TensorProto.DOUBLE,
               "float16": onnx.TensorProto.FLOAT16, "bfloat16": onnx.TensorProto.BFLOAT16,
               "bool": onnx.TensorProto.BOOL, "string": onnx.TensorProto.STRING}


def _tensor_type(type_str: str) -> int | None:
    """The TensorProto type of a schema type string such as ``tensor(int32)`` (None otherwise)."""
    if not type_str.startswith("tensor(") or not type_str.endswith(")"):
        return None
    name = type_str[len("tensor("):-1]
    if name in _TYPE_NAMES:
        return _TYPE_NAMES[name]
    try:
        return int(onnx.TensorProto.DataType.Value(name.upper()))
    except ValueError:
        return None


# (input type strs with variadic flags, output ditto, type constraints) per (domain, op)
_Schema = tuple[list[tuple[str, bool]], list[tuple[str, bool]], dict[str, tuple[str, ...]]]
_SCHEMAS: dict[tuple[str, str], _Schema | None] = {}
_RUNTIME_SCHEMAS: dict[tuple[str, str], _Schema] | None = None


def _schema(domain: str, op: str) -> _Schema | None:
    """The newest schema of ``op`` in ``domain``: onnx's, else onnxruntime's (None if neither)."""
    key = ("" if domain == "ai.onnx" else domain, op)
    if key not in _SCHEMAS:
        found: _Schema | None = None
        try:
            s = onnx.defs.get_schema(op, key[0])
            found = (
                [(f.type_str, f.option == onnx.defs.OpSchema.FormalParameterOption.Variadic) for f in s.inputs],
                [(f.type_str, f.option == onnx.defs.OpSchema.FormalParameterOption.Variadic) for f in s.outputs],
                {c.type_param_str: tuple(c.allowed_type_strs) for c in s.type_constraints},
            )
        except Exception:  # not an onnx op (SchemaError), or an onnx build without that domain
            found = _runtime_schemas().get(key)
        _SCHEMAS[key] = found
    return _SCHEMAS[key]


def _runtime_schemas() -> dict[tuple[str, str], _Schema]:
    """onnxruntime's operator registry (newest version of each op); empty without onnxruntime."""
    global _RUNTIME_SCHEMAS
    if _RUNTIME_SCHEMAS is None:
        table: dict[tuple[str, str], tuple[int, _Schema]] = {}
        try:
            from onnxruntime.capi.onnxruntime_pybind11_state import get_all_operator_schema

            for s in get_all_operator_schema():
                key = ("" if s.domain in ("", "ai.onnx") else s.domain, s.name)
                if key in table and table[key][0] >= s.since_version:
                    continue
                variadic = s.FormalParameterOption.Variadic
                table[key] = (s.since_version, (
                    [(f.typeStr, f.option == variadic) for f in s.inputs],
                    [(f.typeStr, f.option == variadic) for f in s.outputs],
                    {c.type_param_str: tuple(c.allowed_type_strs) for c in s.type_constraints},
                ))
        except Exception:  # no onnxruntime, or a build without schemas
            table = {}
        _RUNTIME_SCHEMAS = {key: v[1] for key, v in table.items()}
    return _RUNTIME_SCHEMAS


_BROADCAST_OPS = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Where", "Max", "Min", "Mean", "Sum", "Equal", "Less", "Greater",
    "And", "Or", "Xor", "BitShift", "PRelu", "Mod", "BiasGelu", "FastGelu", "BiasAdd",
})


def _rank_deps(node: onnx.NodeProto) -> list[str]:
    """The inputs whose rank decides the rank of ``node``'s output."""
    op = node.op_type
    ins = [i for i in node.input]
    if op in ("Shape", "Size", "Gemm", "Reshape"):
        return []
    if op in _BROADCAST_OPS or op in ("MatMul", "FusedMatMul", "MatMulInteger", "MatMulIntegerToFloat",
                                      "DynamicQuantizeMatMul", "Gather"):
        if op in ("MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul"):
            ins = ins[:2]
        if op == "FastGelu":
            ins = ins[:1]
        return [i for i in ins if i]
    return [ins[0]] if ins and ins[0] else []


def _reshape(shape: list[int], target: list[int], allowzero: bool) -> list[int] | None:
    """Static result of ONNX Reshape (handles 0 = copy and -1 = infer)."""
    out = []
    for i, t in enumerate(target):
        if t == 0 and not allowzero:
            if i >= len(shape):
                return None
            out.append(shape[i])
        else:
            out.append(t)
    if out.count(-1) > 1:
        return None
    total = int(np.prod(shape, dtype=np.int64))
    if -1 in out:
        known = int(np.prod([d for d in out if d != -1], dtype=np.int64))
        if known == 0 or total % known:
            return None
        out[out.index(-1)] = total // known
    return out if int(np.prod(out, dtype=np.int64)) == total else None
