"""`number_getter` reads field paths without the JMESPath interpreter, with the same results."""

from __future__ import annotations

import pickle

import jmespath
from hypothesis import given
from hypothesis import strategies as st
from streamml.onnx_models import FeatureSource
from streamml.onnx_models.expressions import compile_expression, number_at, number_getter

KEYS = st.sampled_from(["a", "b", "c"])
LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(-(10**400), 10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=3)
)
DOCS = st.recursive(
    LEAVES,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=12,
)
EXPRESSIONS = st.lists(KEYS, min_size=1, max_size=3).map(".".join) | st.sampled_from(
    ["min(a[].b)", "length(a)", "a[0].b", "max_by(a, &b).c"]
)


@given(EXPRESSIONS, DOCS)
def test_number_getter_equals_the_interpreter(expression: str, doc: object) -> None:
    compiled = compile_expression(expression)
    assert number_getter(compiled)(doc) == number_at(compiled, doc)


def test_field_paths_skip_the_interpreter() -> None:
    getter = number_getter(jmespath.compile("modem.uptime_h"))
    assert getter.__name__ == "path"
    assert getter({"modem": {"uptime_h": 3}}) == 3.0


def test_a_feature_source_survives_pickling() -> None:
    source = FeatureSource.on_demand("telemetry", "min(devices[].rssi_dbm)")
    copy = pickle.loads(pickle.dumps(source))
    assert copy == source
    assert copy.extract({"devices": [{"rssi_dbm": -70}, {"rssi_dbm": -50}]}) == -70.0
