"""The outcome join against a brute-force oracle, whatever the batching and interleaving."""

from __future__ import annotations

import random
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from streamml.onnx_models.data import CLASSES
from streamml.operators.outcomes import (
    JoinConfig,
    JoinShard,
    Outcome,
    ScoredVariant,
    parse_outcome,
)
from streamml.operators.records import DeadLetter
from streamml.state.errors import RefusedError

HOUR = 3_600_000
TTL = 3 * HOUR
LATENESS = HOUR


def variant(rid: str, ts: int, name: str = "v1", label: str = "wifi") -> ScoredVariant:
    return ScoredVariant(
        rid, "m", name, name, "answer" if name == "v1" else "shadow", f"a-{rid}", ts, label,
        (0.5, 0.3, 0.2), CLASSES, 1,
    )  # fmt: skip


def outcome(rid: str, observed_at: int, what: str = "wifi", pos: int = 0) -> Outcome:
    return Outcome(rid, what, observed_at, rid, None, None, "test", pos)


def in_order_within(items: list, time_of, rng: random.Random, lateness: int) -> list:
    """Items sorted by time, then each displaced by less than `lateness` of time."""
    return sorted(items, key=lambda x: time_of(x) + rng.uniform(0, lateness * 0.99))


def oracle(variants: list[ScoredVariant], outcomes: list[Outcome], ttl: int):
    """Brute force: every variant with the outcome of its request inside its window."""
    by_key = {o.key: o for o in outcomes}
    matched, unresolved = set(), set()
    for v in variants:
        o = by_key.get(v.request_id)
        if o is not None and v.request_ts <= o.observed_at <= v.request_ts + ttl:
            matched.add((v.request_id, v.variant, o.outcome))
        else:
            unresolved.add((v.request_id, v.variant))
    hit = {rid for rid, _, _ in matched}
    orphans = {o.key for o in outcomes if o.key not in hit}
    return matched, unresolved, orphans


def run_join(
    state: Path,
    arrivals: list,
    batch_sizes: list[int],
    *,
    drain: bool = True,
    recovery: bool = False,
):
    logic = JoinShard(JoinConfig(state, TTL, LATENESS, recovery=recovery, drain=drain), None)
    outs = []
    i = 0
    k = 0
    while i < len(arrivals):
        n = batch_sizes[k % len(batch_sizes)]
        k += 1
        batch = [("shard-000", x) for x in arrivals[i : i + n]]
        i += n
        outs += logic.on_batch(batch)[0]
    outs += logic.on_eof()[0]
    logic.close()
    return outs


def summarise(outs):
    matched = {(m.request_id, m.variant, m.outcome) for o in outs for m in o.matched}
    n_matched = sum(len(o.matched) for o in outs)
    reports = [r for o in outs for r in o.reports]
    unresolved = {(r["request_id"], r["variant"]) for r in reports if r["kind"] == "unresolved"}
    orphans = {r["request_id"] for r in reports if r["kind"] == "orphan"}
    assert n_matched == len(matched), "a variant was matched twice"
    n_reports = sum(1 for r in reports if r["kind"] == "unresolved")
    assert n_reports == len(unresolved), "a variant was reported twice"
    return matched, unresolved, orphans


@st.composite
def scenario(draw):
    n = draw(st.integers(1, 40))
    rng = random.Random(draw(st.integers(0, 2**32)))
    variants, outcomes = [], []
    for i in range(n):
        rid = f"r{i}"
        ts = rng.randrange(0, 12 * HOUR)
        names = ["v1"] + (["shadow:2"] if rng.random() < 0.4 else [])
        variants += [variant(rid, ts, name) for name in names]
        kind = rng.random()
        if kind < 0.6:  # in its window, often on its edges
            delay = rng.choice([0, TTL, rng.randrange(0, TTL + 1)])
            outcomes.append(outcome(rid, ts + delay, rng.choice(CLASSES), i))
        elif kind < 0.7:  # too late
            outcomes.append(outcome(rid, ts + TTL + rng.choice([1, rng.randrange(1, HOUR)]), pos=i))
        elif kind < 0.75:  # before the request
            outcomes.append(outcome(rid, max(ts - rng.randrange(1, HOUR), 0), pos=i))
    for j in range(rng.randrange(0, 4)):  # outcomes of requests never predicted
        outcomes.append(outcome(f"x{j}", rng.randrange(0, 12 * HOUR), pos=1000 + j))
    p_order = in_order_within(variants, lambda v: v.request_ts, rng, LATENESS)
    o_order = in_order_within(outcomes, lambda o: o.observed_at, rng, LATENESS)
    # Interleave the two streams at random, keeping each one's order.
    arrivals, a, b = [], 0, 0
    while a < len(p_order) or b < len(o_order):
        if b >= len(o_order) or (a < len(p_order) and rng.random() < 0.5):
            k = rng.randrange(1, 4)
            arrivals.append(p_order[a : a + k])
            a += k
        else:
            arrivals.append(o_order[b])
            b += 1
    sizes = draw(st.lists(st.integers(1, 7), min_size=1, max_size=5))
    return variants, outcomes, arrivals, sizes


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(scenario())
def test_join_matches_the_oracle_whatever_the_batching(tmp_path_factory, case) -> None:
    variants, outcomes, arrivals, sizes = case
    state = tmp_path_factory.mktemp("join")
    got = summarise(run_join(state, arrivals, sizes))
    assert got == oracle(variants, outcomes, TTL)


def test_clock_expires_what_cannot_match_any_more(tmp_path: Path) -> None:
    """Without draining, a prediction is reported once both streams are past its window."""
    arrivals = [
        [variant("a", 0)],
        [variant("b", 10 * HOUR)],
        outcome("b", 11 * HOUR),
        [variant("c", 12 * HOUR)],
        outcome("z", 12 * HOUR),
    ]
    matched, unresolved, orphans = summarise(run_join(tmp_path, arrivals, [1], drain=False))
    assert matched == {("b", "v1", "wifi")}
    assert unresolved == {("a", "v1")}  # c and z are still inside their windows
    assert orphans == set()


def test_a_second_outcome_is_a_dead_letter(tmp_path: Path) -> None:
    arrivals = [[variant("a", 0)], outcome("a", 5, "wifi", 1), outcome("a", 6, "modem", 2)]
    outs = run_join(tmp_path, arrivals, [1])
    dead = [d for o in outs for d in o.dead]
    assert [d.reason for d in dead] == ["duplicate_outcome"]
    assert {(m.request_id, m.outcome) for o in outs for m in o.matched} == {("a", "wifi")}


def test_pending_entries_survive_a_restart(tmp_path: Path) -> None:
    run_join(tmp_path, [[variant("a", 0)]], [1], drain=False)
    outs = run_join(tmp_path, [outcome("a", 10)], [1])
    assert {(m.request_id, m.outcome) for o in outs for m in o.matched} == {("a", "wifi")}


def test_recovery_rolls_back_to_the_resumed_epoch(tmp_path: Path) -> None:
    config = JoinConfig(tmp_path, TTL, LATENESS, recovery=True)
    logic = JoinShard(config, None)
    logic.on_batch([("shard-000", [variant("a", 0)])])
    resume = logic.snapshot()  # epoch 1 holds a
    logic.on_batch([("shard-000", outcome("a", 10))])  # epoch 2, never committed
    logic.close()
    again = JoinShard(config, resume)
    outs, _ = again.on_batch([("shard-000", outcome("a", 10))])
    assert [(m.request_id, m.outcome) for o in outs for m in o.matched] == [("a", "wifi")]
    again.close()


def test_recovery_refuses_a_state_too_far_ahead(tmp_path: Path) -> None:
    config = JoinConfig(tmp_path, TTL, LATENESS, recovery=True)
    logic = JoinShard(config, None)
    for i in range(20):
        logic.on_batch([("shard-000", [variant(f"r{i}", i)])])
        logic.snapshot()
    logic.close()
    with pytest.raises(RefusedError, match="epochs can be undone"):
        JoinShard(config, ("shard-000", 1))


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", "not_json"),
        (b"[1]", "not_object"),
        (b'{"request_id": "a", "observed_at": 1}', "missing_outcome"),
        (b'{"request_id": "a", "outcome": "fridge", "observed_at": 1}', "unknown_outcome"),
        (b'{"request_id": "a", "outcome": "wifi"}', "missing_observed_at"),
        (b'{"request_id": "a", "outcome": "wifi", "observed_at": -1}', "bad_observed_at"),
        (b'{"request_id": "a", "outcome": "wifi", "observed_at": 1.5}', "bad_observed_at"),
        (b'{"outcome": "wifi", "observed_at": 1}', "missing_request_id"),
        (b'{"request_id": "", "outcome": "wifi", "observed_at": 1}', "bad_request_id"),
    ],
)
def test_invalid_outcomes_are_dead_letters_with_a_reason(raw: bytes, reason: str) -> None:
    got = parse_outcome(raw, "p", 3, CLASSES)
    assert isinstance(got, DeadLetter)
    assert (got.reason, got.position) == (reason, 3)


def test_outcomes_joined_by_account_and_time() -> None:
    raw = orjson.dumps({"account": "acct-1", "ts": 5, "outcome": "modem", "observed_at": 9})
    got = parse_outcome(raw, "p", 0, CLASSES, join_by="account-ts")
    assert isinstance(got, Outcome) and got.key == "acct-1@5"
    assert variant("r", 5).key("account-ts") == "a-r@5"
    dead = parse_outcome(raw, "p", 0, CLASSES, join_by="request")
    assert isinstance(dead, DeadLetter) and dead.reason == "missing_request_id"


def test_file_list_source_resumes_each_file_where_it_stopped(tmp_path: Path) -> None:
    from streamml.operators.sources import FileListSource

    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_bytes(b"1\n2\n")

    def read_all(paths, resume):
        part = FileListSource(paths).build_part("s", "files", resume)
        out = []
        while True:
            try:
                out += [x.data for x in part.next_batch()]
            except StopIteration:
                return b"".join(out), part.snapshot()

    data, state = read_all([a], None)
    assert data == b"1\n2\n"
    with open(a, "ab") as f:
        f.write(b"3\n")
    b.write_bytes(b"x\n")
    data, state = read_all([a, b], state)
    assert data == b"3\nx\n"
    a.write_bytes(b"1\n")
    with pytest.raises(ValueError, match="replaced or truncated"):
        read_all([a], state)
