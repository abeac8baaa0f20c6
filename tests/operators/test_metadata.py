from __future__ import annotations

import pickle
import shutil
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, cluster_main, run_main
from streamml.onnx_models import (
    FEATURE_NAMES,
    ModelRegistry,
    Routing,
    export,
    train_triage,
    triage_contract,
)
from streamml.operators.metadata import MetadataSource, ModelMetadata, load_metadata

NAME = "triage"


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    trained = train_triage(600, seed=3, n_estimators=5, max_depth=2)
    out = tmp_path_factory.mktemp("meta") / "m.onnx"
    export(
        trained.model,
        FEATURE_NAMES,
        NAME,
        X_holdout=trained.X_holdout,
        version="1",
        out=out,
        created_at=datetime(2025, 1, 1, tzinfo=UTC),
    )
    return out


@pytest.fixture
def registry(tmp_path: Path, onnx_path: Path) -> ModelRegistry:
    reg = ModelRegistry(tmp_path / "reg")
    for v in ("1", "2", "3", "4"):
        reg.register(onnx_path, contract=triage_contract(), name=NAME, version=v)
    reg.promote(NAME, "1", "live")
    return reg


def test_load_metadata_holds_routing_and_every_referenced_version(
    registry: ModelRegistry,
) -> None:
    registry.route(NAME, split={"1": 0.5, "2": 0.5}, shadow=["3"])
    meta = load_metadata(registry.root)
    assert meta.revision == registry.revision() and meta.names() == (NAME,)
    entry = meta.model(NAME)
    assert entry is not None and entry.problems == ()
    assert entry.routing == registry.routing(NAME)
    assert [v.version for v in entry.versions] == ["1", "2", "3"]
    info = entry.version("3")
    assert info is not None and info.stage == "shadow"
    assert info.sha256 == registry.get(NAME, "3").sha256
    assert info.feature_names == FEATURE_NAMES and info.contract == triage_contract()
    assert entry.version("4") is None and meta.model("nope") is None
    sel = meta.select(NAME, "acct-1")
    assert sel is not None and sel.answer is not None and sel.answer[0] in {"1", "2"}
    assert sel.shadows == ("3",)
    assert pickle.loads(pickle.dumps(meta)) == meta
    assert meta.to_json()["models"][NAME]["routing"]["shadow"] == ["3"]


def test_a_deleted_version_is_a_problem_not_a_crash(registry: ModelRegistry) -> None:
    registry.promote(NAME, "2", "shadow")
    shutil.rmtree(registry.root / NAME / "versions" / "2")
    entry = load_metadata(registry).model(NAME)
    assert entry is not None
    assert [v.version for v in entry.versions] == ["1"]
    assert len(entry.problems) == 1 and "no version '2'" in entry.problems[0]


def test_an_empty_or_missing_registry_gives_empty_metadata(tmp_path: Path) -> None:
    assert load_metadata(tmp_path / "none") == ModelMetadata(0, ())


STATE_A: dict[str, Any] = {"split": {"2": 0.5, "3": 0.5}, "shadow": ["4"]}
STATE_B: dict[str, Any] = {"clear_split": True, "shadow": ["2"]}


def test_snapshots_taken_during_writes_are_never_half_written(registry: ModelRegistry) -> None:
    registry.route(NAME, **STATE_A)
    stop = threading.Event()
    failed: list[BaseException] = []

    def flip() -> None:
        states = [STATE_B, STATE_A]
        i = 0
        try:
            while not stop.is_set():
                registry.route(NAME, **states[i % 2])
                i += 1
        except BaseException as exc:
            failed.append(exc)

    writer = threading.Thread(target=flip)
    writer.start()
    seen = set()
    try:
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and len(seen) < 40:
            meta = load_metadata(registry)
            entry = meta.model(NAME)
            assert entry is not None and entry.problems == (), entry.problems
            r = entry.routing
            assert (r.split, r.shadow) in {
                ((("2", 0.5), ("3", 0.5)), ("4",)),
                ((), ("2",)),
            }, r
            assert r.revision <= meta.revision
            seen.add(meta.revision)
    finally:
        stop.set()
        writer.join()
    assert not failed
    assert len(seen) > 10


def _run_flow(
    registry: ModelRegistry, workers: int
) -> tuple[list[tuple[float, int, Routing]], threading.Event, threading.Thread]:
    got: list[tuple[float, int, Routing]] = []
    stop = threading.Event()
    flow = Dataflow("meta")
    meta = op.input("meta", flow, MetadataSource(registry.root, 0.05, until=stop.is_set))

    def stamp(m: ModelMetadata) -> tuple[float, int, Routing]:
        entry = m.model(NAME)
        assert entry is not None
        return (time.monotonic(), m.revision, entry.routing)

    op.output("out", op.map("stamp", meta, stamp), TestingSink(got))
    if workers == 1:
        target: Any = lambda: run_main(flow)  # noqa: E731
    else:
        target = lambda: cluster_main(flow, [], 0, worker_count_per_proc=workers)  # noqa: E731
    thread = threading.Thread(target=target)
    thread.start()
    return got, stop, thread


def _wait(cond: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.005)
    return cond()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_route_change_reaches_a_running_flow_within_a_second(
    registry: ModelRegistry, workers: int
) -> None:
    got, stop, thread = _run_flow(registry, workers)
    try:
        first = registry.revision()
        assert _wait(lambda: len(got) >= workers, 20.0), got
        assert {rev for _, rev, _ in got} == {first}
        assert [r.live for _, _, r in got] == ["1"] * workers
        time.sleep(0.2)
        assert len(got) == workers
        t0 = time.monotonic()
        registry.route(NAME, split={"1": 0.8, "2": 0.2}, shadow=["3"])
        assert _wait(lambda: len(got) >= 2 * workers, 1.0), got
        newer = [(t, rev, r) for t, rev, r in got if rev > first]
        assert len(newer) == workers
        for t, rev, routing in newer:
            assert t - t0 < 1.0
            assert rev == registry.revision()
            assert routing.split == (("1", 0.8), ("2", 0.2)) and routing.shadow == ("3",)
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()


def test_poll_interval_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="poll_interval_s"):
        MetadataSource(tmp_path, 0)
