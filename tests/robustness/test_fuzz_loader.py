"""Random bytes never crash the loader: every failure is a ModelError (one line)."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sui_onnx.errors import ModelError
from sui_onnx.graph import find_taps, load_model
from tests.onnx_builders import tiny_lm

GOOD = tiny_lm().model.SerializeToString()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(
    st.binary(max_size=2048),
    st.integers(0, len(GOOD) - 1).map(lambda n: GOOD[:n]),  # truncations of a real model
    st.tuples(st.integers(0, len(GOOD) - 1), st.binary(min_size=1, max_size=8)).map(
        lambda t: GOOD[: t[0]] + t[1] + GOOD[t[0] + len(t[1]):]),  # byte flips
))
def test_random_bytes_raise_model_error_or_load(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fuzz") / "m.onnx"
    path.write_bytes(data)
    try:
        src = load_model(path)
        find_taps(src.model)
    except ModelError as exc:
        assert "\n" not in str(exc)
    assert path.read_bytes() == data
