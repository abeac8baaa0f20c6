import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from streamml.operators.rolling import advance
from streamml.state.rolling_store import ALERT_FLAG, empty_records

from tests.oracle import RollingOracle

ACCOUNTS = ["a", "b", "c", "d"]


@st.composite
def streams(draw):
    window = draw(st.integers(1, 6))
    threshold = draw(st.integers(0, 6))
    n_batches = draw(st.integers(1, 4))
    batches = []
    for _ in range(n_batches):
        size = draw(st.integers(0, 30))
        base = draw(st.integers(0, 40))
        events = [
            (draw(st.sampled_from(ACCOUNTS)), max(0, base + draw(st.integers(-12, 12))))
            for _ in range(size)
        ]
        batches.append(events)
    return window, threshold, batches


def check_against_oracle(window, threshold, batches):
    """Apply batches with `advance` and event by event with the oracle; compare everything."""
    oracle = RollingOracle(window=window, bucket_ms=1, threshold=threshold)
    index = {a: i for i, a in enumerate(ACCOUNTS)}
    records = empty_records(len(ACCOUNTS), window)
    for events in batches:
        if not events:
            continue
        codes = np.array([index[a] for a, _ in events])
        ts = np.array([t for _, t in events], dtype=np.int64)
        result = advance(records, codes, ts, ts, window=window, threshold=threshold)
        for i, (account, t) in enumerate(events):
            kind, value, fired = oracle.apply(account, t)
            assert bool(result.accepted[i]) == (kind == "accepted"), (i, account, t)
            if kind == "accepted":
                assert result.values[i] == value, (i, account, t)
            assert bool(result.fired[i]) == fired, (i, account, t)
        records = result.records
        for account, i in index.items():
            assert bool(records["flags"][i] & ALERT_FLAG) == oracle.in_alert[account]
            if account not in oracle.max_bucket:
                assert records["max_bucket"][i] == -1
                continue
            m = oracle.max_bucket[account]
            assert records["max_bucket"][i] == m
            assert records["updated_at"][i] == oracle.updated_at[account]
            for k in range(window):
                expected = sum(1 for x in oracle.buckets[account] if x == m - k)
                assert records["counts"][i][k] == expected


@settings(max_examples=300, deadline=None)
@given(streams())
def test_advance_matches_one_by_one_oracle(case):
    check_against_oracle(*case)


@settings(max_examples=100, deadline=None)
@given(streams(), st.sampled_from([2**40, 2**56]))
def test_advance_is_exact_for_far_apart_buckets(case, scale):
    window, threshold, batches = case
    check_against_oracle(
        window, threshold, [[(a, t * scale) for a, t in events] for events in batches]
    )
