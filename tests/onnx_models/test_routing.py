from __future__ import annotations

import math
import os
import subprocess
import sys

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from streamml.onnx_models import Routing, RoutingError, parse_split, select_variants
from streamml.onnx_models.routing import assignment_point

ACCOUNTS = [f"acct-{i}" for i in range(100_000)]


def shares(routing: Routing) -> dict[str, float]:
    counts: dict[str, int] = {}
    for account in ACCOUNTS:
        answer = select_variants(routing, account).answer
        assert answer is not None
        counts[answer[0]] = counts.get(answer[0], 0) + 1
    return {v: c / len(ACCOUNTS) for v, c in counts.items()}


@pytest.mark.parametrize(
    "split",
    [
        {"1": 0.9, "2": 0.1},
        {"1": 0.5, "2": 0.5},
        {"a": 0.2, "b": 0.3, "c": 0.5},
        {"1": 1.0, "2": 1.0, "3": 1.0},
    ],
)
def test_split_matches_weights_within_one_percent(split: dict[str, float]) -> None:
    routing = Routing("m", live="1", experiment="exp", split=tuple(split.items()))
    total = sum(split.values())
    got = shares(routing)
    assert set(got) == set(split)
    for version, weight in split.items():
        assert abs(got[version] - weight / total) <= 0.01, (version, got)


def test_no_split_answers_live_and_no_live_answers_nothing() -> None:
    live = Routing("m", live="3", shadow=("4",))
    sel = select_variants(live, "a")
    assert sel.answer == ("3", "live") and sel.shadows == ("4",)
    assert sel.variants() == (("3", "live", "answer"), ("4", "shadow:4", "shadow"))
    none = select_variants(Routing("m", shadow=("4",)), "a")
    assert none.answer is None and none.variants() == (("4", "shadow:4", "shadow"),)


def test_assignment_is_sticky_and_survives_a_json_round_trip() -> None:
    routing = Routing("m", live="1", experiment="e", split=(("1", 0.7), ("2", 0.3)))
    again = Routing.from_json("m", orjson.loads(orjson.dumps(routing.to_json())))
    assert again == routing
    for account in ACCOUNTS[:2000]:
        first = select_variants(routing, account).answer
        assert first is not None and first[1] == f"ab:{first[0]}"
        assert select_variants(routing, account) == select_variants(routing, account)
        assert select_variants(again, account).answer == first


def test_ramping_weight_only_moves_accounts_toward_the_growing_version() -> None:
    before = Routing("m", experiment="ramp", split=(("1", 0.9), ("2", 0.1)))
    after = Routing("m", experiment="ramp", split=(("1", 0.8), ("2", 0.2)))
    moved = 0
    for account in ACCOUNTS[:20_000]:
        a = select_variants(before, account).answer
        b = select_variants(after, account).answer
        assert a is not None and b is not None
        if a != b:
            moved += 1
            assert (a[0], b[0]) == ("1", "2")
    assert 0.09 < moved / 20_000 < 0.11


def test_the_experiment_name_reassigns_accounts() -> None:
    e1 = Routing("m", experiment="e1", split=(("1", 0.5), ("2", 0.5)))
    e2 = Routing("m", experiment="e2", split=(("1", 0.5), ("2", 0.5)))
    differ = sum(
        select_variants(e1, a).answer != select_variants(e2, a).answer for a in ACCOUNTS[:4000]
    )
    assert 0.4 < differ / 4000 < 0.6


def test_assignment_does_not_depend_on_the_process_hash_seed() -> None:
    probe = (
        "from streamml.onnx_models.routing import assignment_point\n"
        "print([assignment_point('exp', f'acct-{i}') for i in range(200)])\n"
    )
    outs = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        run = subprocess.run(
            [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
        )
        outs.add(run.stdout)
    assert len(outs) == 1
    assert outs.pop().strip() == str([assignment_point("exp", f"acct-{i}") for i in range(200)])


versions = st.sampled_from([str(i) for i in range(1, 9)])


@st.composite
def routings(draw: st.DrawFn) -> tuple[Routing, tuple[str, ...]]:
    arms = draw(st.lists(versions, min_size=0, max_size=4, unique=True))
    if len(arms) == 1:
        arms = []
    weights = [draw(st.floats(0.01, 100)) for _ in arms]
    rest = [v for v in map(str, range(1, 9)) if v not in arms]
    live = draw(st.one_of(st.none(), st.sampled_from(rest)))
    pool = [v for v in rest if v != live]
    shadow = tuple(draw(st.lists(st.sampled_from(pool), unique=True))) if pool else ()
    other = tuple(draw(st.lists(st.sampled_from(pool), unique=True))) if pool else ()
    routing = Routing(
        "m",
        live=live,
        experiment=draw(st.one_of(st.none(), st.text(min_size=1, max_size=8))) if arms else None,
        split=tuple(zip(arms, weights, strict=True)),
        shadow=shadow,
    )
    return routing, other


@given(routings(), st.text(max_size=20))
def test_changing_only_the_shadows_never_changes_the_answer(
    case: tuple[Routing, tuple[str, ...]], account: str
) -> None:
    routing, other_shadows = case
    changed = Routing(
        routing.name,
        live=routing.live,
        experiment=routing.experiment,
        split=routing.split,
        shadow=other_shadows,
    )
    a, b = select_variants(routing, account), select_variants(changed, account)
    assert a.answer == b.answer
    assert b.shadows == other_shadows
    assert math.isclose(sum(w for _, w in routing.split) or 1.0, 1.0)


@given(st.text(min_size=1, max_size=10), st.text(max_size=30))
def test_assignment_point_is_in_the_unit_interval(experiment: str, account: str) -> None:
    assert 0.0 <= assignment_point(experiment, account) < 1.0


def test_parse_split_normalises_and_sorts() -> None:
    assert parse_split("4=1, 3=9") == (("3", 0.9), ("4", 0.1))
    assert parse_split("a=0.25,b=0.75") == (("a", 0.25), ("b", 0.75))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"split": (("1", 0.5), ("2", 0.0))}, "must be a finite number > 0"),
        ({"split": (("1", 0.5), ("2", -1.0))}, "must be a finite number > 0"),
        ({"split": (("1", 0.5), ("2", math.nan))}, "must be a finite number > 0"),
        ({"split": (("1", 0.5), ("1", 0.5))}, "appears twice"),
        ({"split": (("1", 1.0),)}, "at least two versions"),
        ({"split": (("1", 0.5), ("2", 0.5)), "shadow": ("2",)}, r"both in the split and shadows"),
        ({"live": "1", "shadow": ("1",)}, "cannot be a shadow"),
        ({"shadow": ("1", "1")}, "repeat"),
        ({"experiment": "e"}, "no split"),
    ],
)
def test_invalid_routings_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(RoutingError, match=message):
        Routing("m", **kwargs)


@pytest.mark.parametrize("text", ["1=0.5", "1=a,2=b", "=1,2=1", "1,2", "1=0.5,2=0"])
def test_bad_split_text_is_refused(text: str) -> None:
    with pytest.raises(RoutingError):
        parse_split(text)


def test_validate_names_unknown_versions() -> None:
    routing = Routing("m", live="1", split=(("1", 0.5), ("9", 0.5)), shadow=("8",))
    with pytest.raises(RoutingError, match=r"unknown versions \['9', '8'\]"):
        routing.validate({"1", "2"})
    routing.validate({"1", "8", "9"})
    assert routing.experiment == "m" and routing.referenced() == ("1", "9", "8")
