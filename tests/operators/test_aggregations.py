"""Several windowed aggregations per entity in one pass, held against a one-by-one oracle."""

import dataclasses
import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from streamml.operators.aggregations import advance_features
from streamml.state.definitions import parse_definitions
from streamml.state.feature_records import RecordLayout, read_features

from tests.oracle import FeaturesOracle

DEFS = """
[entities.account]
[sources.s]
kind = "file"
entity = "account"
key = "account"
time = "ts"
fields = { x = "number", y = "number" }

[features.n]
source = "s"
aggregation = "count"
bucket = "10ms"
window = "30ms"
ttl = "1s"
alert = { above = 3 }

[features.total]
source = "s"
aggregation = "sum"
field = "x"
bucket = "10ms"
window = "50ms"
ttl = "1s"

[features.avg]
source = "s"
aggregation = "mean"
field = "y"
bucket = "20ms"
window = "60ms"
ttl = "1s"

[features.low]
source = "s"
aggregation = "min"
field = "x"
bucket = "10ms"
window = "30ms"
ttl = "1s"

[features.high]
source = "s"
aggregation = "max"
field = "y"
bucket = "20ms"
window = "40ms"
ttl = "1s"
alert = { above = 5 }

[features.latest]
source = "s"
aggregation = "last"
field = "x"
bucket = "10ms"
window = "20ms"
ttl = "1s"
"""
FEATURES = tuple(parse_definitions(DEFS).features.values())
LAYOUT = RecordLayout(FEATURES)


class Oracle(FeaturesOracle):
    def __init__(self):
        super().__init__(FEATURES)


def _same(a, b):
    return (np.isnan(a) and np.isnan(b)) or a == b


events_st = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c"]),
        st.integers(0, 200),
        st.sampled_from([0.5, 1.25, -2.0, 3.0, 7.5, 0.1, 0.2]),
        st.sampled_from([1.0, 6.0, 2.5, 0.3]),
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(
    events=events_st,
    cuts=st.lists(st.integers(0, 60), max_size=4),
    reads=st.lists(st.integers(0, 300), min_size=1, max_size=4),
)
def test_batches_match_one_by_one(events, cuts, reads):
    oracle = Oracle()
    expected = [oracle.apply(e, t, {"x": x, "y": y}) for e, t, x, y in events]
    state = {}
    bounds = sorted({0, len(events), *[c for c in cuts if c < len(events)]})
    got = []
    for lo, hi in itertools.pairwise(bounds):
        batch = events[lo:hi]
        names = list(dict.fromkeys(e[0] for e in batch))
        records = (
            np.concatenate([state.get(nm, LAYOUT.empty(1)) for nm in names])
            if names
            else LAYOUT.empty(0)
        )
        codes = np.array([names.index(e[0]) for e in batch])
        ts = np.array([e[1] for e in batch], dtype=np.int64)
        fields = {"x": np.array([e[2] for e in batch]), "y": np.array([e[3] for e in batch])}
        adv = advance_features(LAYOUT, records, codes, ts, fields)
        for k, nm in enumerate(names):
            state[nm] = adv.records[k : k + 1]
        for i in range(len(batch)):
            got.append(
                {
                    f.name: (
                        bool(adv.accepted[f.name][i]),
                        float(adv.values[f.name][i]),
                        bool(adv.fired[f.name][i]),
                    )
                    for f in FEATURES
                }
            )
    for i, (exp, res) in enumerate(zip(expected, got, strict=True)):
        for name, (acc, value, fired) in exp.items():
            racc, rvalue, rfired = res[name]
            assert racc == acc, (i, name)
            if acc:
                assert _same(rvalue, value), (i, name, rvalue, value)
                assert rfired == fired, (i, name)
    for entity, record in state.items():
        for t in reads:
            values = read_features(LAYOUT, record, np.array([t]))
            one = LAYOUT.read_plan.read_one(record.tolist()[0], t)
            exp = oracle.read(entity, t)
            for name, v in exp.items():
                assert _same(float(values[name][0]), v), (entity, t, name, values[name][0], v)
                assert _same(one[name], v), (entity, t, name, one[name], v)


def test_updated_at_is_the_latest_accepted_event_time():
    records = LAYOUT.empty(1)
    adv = advance_features(
        LAYOUT,
        records,
        np.array([0, 0, 0]),
        np.array([100, 5, 90]),
        {"x": np.zeros(3), "y": np.zeros(3)},
    )
    assert int(adv.records["updated_at"][0]) == 100
    assert not adv.accepted["n"][1] and adv.accepted["total"][1] is not None


@settings(max_examples=100, deadline=None)
@given(
    ts=st.lists(st.integers(0, 100 * 3_600_000), min_size=1, max_size=80),
    accounts=st.data(),
)
def test_the_bundled_error_count_is_the_rolling_count(ts, accounts):
    from streamml.operators.rolling import advance
    from streamml.state.definitions import default_definitions
    from streamml.state.rolling_store import empty_records, record_dtype

    feature = default_definitions().feature("signal_errors_24h")
    layout = RecordLayout((feature,))
    assert layout.dtype.itemsize == record_dtype(24).itemsize
    codes = np.array(accounts.draw(st.lists(st.integers(0, 2), min_size=len(ts), max_size=len(ts))))
    ts = np.array(ts, dtype=np.int64)
    old = advance(empty_records(3, 24), codes, ts // 3_600_000, ts, window=24, threshold=2)
    records = layout.empty(3)
    new = advance_features(
        RecordLayout((dataclasses.replace(feature, alert_above=2),)),
        records,
        codes,
        ts,
        {},
    )
    name = feature.name
    assert (new.accepted[name] == old.accepted).all()
    assert (new.values[name][old.accepted] == old.values[old.accepted]).all()
    assert (new.fired[name] == old.fired).all()
    assert new.records.tobytes() == old.records.tobytes()
