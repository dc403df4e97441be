"""The graph stage: load an ONNX model safely, find its FFN blocks, write a tapped copy.

Public API::

    from sui_onnx.graph import Tap, ModelSource, load_model, find_taps, write_tapped

* :func:`load_model` parses the graph without external data and vets every external-data
  location (see :mod:`sui_onnx.graph.source`).
* :func:`find_taps` detects one FFN block per layer structurally (see
  :mod:`sui_onnx.graph.detect`) and returns a :class:`Tap` per block for site ``post`` (the
  down-projection input) or ``pre`` (the nonlinearity input; see :mod:`sui_onnx.graph.taps`).
* :func:`tapped_model` builds that copy in memory (what the runner feeds onnxruntime as
  bytes); :func:`write_tapped` writes a pruned copy whose outputs are the taps (see
  :mod:`sui_onnx.graph.tapped` for where it lands when data is external).

Every user-facing failure raises :class:`sui_onnx.errors.ModelError` with a one-line message.
"""

from .source import ModelSource, load_model
from .tapped import tapped_model, write_tapped
from .taps import Tap, find_taps

__all__ = ["Tap", "ModelSource", "load_model", "find_taps", "tapped_model", "write_tapped"]
