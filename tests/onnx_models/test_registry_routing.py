from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from streamml.onnx_models import (
    ExportedModel,
    ModelRegistry,
    RegistryError,
    Routing,
    RoutingError,
    triage_contract,
)

NAME = "speedtest-triage"


@pytest.fixture
def four(registry: ModelRegistry, exported: ExportedModel) -> ModelRegistry:
    for v in ("1", "2", "3", "4"):
        registry.register(exported.path, contract=triage_contract(), version=v)
    return registry


def routing_file(registry: ModelRegistry) -> dict:
    return orjson.loads((registry.root / NAME / "routing.json").read_bytes())


def files(registry: ModelRegistry) -> dict[str, bytes]:
    return {
        str(p.relative_to(registry.root)): p.read_bytes()
        for p in registry.root.rglob("*.json")
        if "versions" not in p.parts
    }


def test_without_a_routing_file_routing_follows_the_stages(four: ModelRegistry) -> None:
    assert four.routing(NAME) == Routing(NAME)
    stages = four.root / NAME / "stages.json"
    data = orjson.loads(stages.read_bytes())
    data["stages"].update({"1": "live", "3": "shadow", "4": "shadow"})
    stages.write_bytes(orjson.dumps(data))
    routing = four.routing(NAME)
    assert (routing.live, routing.split, routing.shadow) == ("1", (), ("3", "4"))
    assert not (four.root / NAME / "routing.json").exists()


def test_every_change_increments_the_revision_and_no_op_does_not(
    registry: ModelRegistry, exported: ExportedModel
) -> None:
    assert registry.revision() == 0
    registry.register(exported.path, contract=triage_contract(), version="1")
    assert registry.revision() == 1
    registry.register(exported.path, contract=triage_contract(), version="1")
    assert registry.revision() == 1
    registry.register(exported.path, contract=triage_contract(), version="2")
    assert registry.revision() == 2
    registry.promote(NAME, "1", "live")
    assert registry.revision() == 3
    registry.promote(NAME, "1", "live")
    assert registry.revision() == 3
    registry.route(NAME, split={"1": 0.5, "2": 0.5})
    assert registry.revision() == 4
    registry.route(NAME, split={"1": 1, "2": 1})
    assert registry.revision() == 4
    assert registry.routing(NAME).revision == 4
    registry.promote(NAME, "2", "retired")
    assert registry.revision() == 5


def test_promote_to_live_updates_the_routing_file(four: ModelRegistry) -> None:
    four.promote(NAME, "1", "live", actor="alice")
    stored = routing_file(four)
    assert stored["live"] == "1" and stored["updated_by"] == "alice"
    assert set(stored) == {
        "revision",
        "live",
        "experiment",
        "split",
        "shadow",
        "updated_at",
        "updated_by",
    }
    four.promote(NAME, "2", "shadow")
    four.promote(NAME, "3", "live")
    stored = routing_file(four)
    assert (stored["live"], stored["shadow"]) == ("3", ["2"])
    assert four.get(NAME, "1").stage == "retired"
    assert stored["revision"] == four.revision()
    four.promote(NAME, "2", "live")
    assert (four.routing(NAME).live, four.routing(NAME).shadow) == ("2", ())
    assert routing_file(four)["shadow"] == []


def test_route_sets_live_split_and_shadows_in_one_revision(four: ModelRegistry) -> None:
    four.promote(NAME, "4", "shadow")
    rev = four.revision()
    routing = four.route(
        NAME, live="1", split={"1": 9, "2": 1}, experiment="ramp", shadow=["3"], actor="bob"
    )
    assert four.revision() == rev + 1
    assert routing.live == "1" and routing.experiment == "ramp"
    assert routing.split == (("1", 0.9), ("2", 0.1)) and routing.shadow == ("3",)
    assert four.get(NAME, "4").stage == "retired" and four.get(NAME, "3").stage == "shadow"
    assert routing_file(four) == {
        "revision": rev + 1,
        "live": "1",
        "experiment": "ramp",
        "split": {"1": 0.9, "2": 0.1},
        "shadow": ["3"],
        "updated_at": routing.updated_at,
        "updated_by": "bob",
    }
    assert four.routing(NAME) == routing


def test_changing_weights_keeps_the_experiment_and_clear_split_removes_it(
    four: ModelRegistry,
) -> None:
    four.route(NAME, split={"1": 0.9, "2": 0.1})
    assert four.routing(NAME).experiment == NAME
    four.route(NAME, split={"1": 0.5, "2": 0.5}, experiment="e2")
    four.route(NAME, split={"1": 0.2, "2": 0.8})
    assert four.routing(NAME).experiment == "e2"
    routing = four.route(NAME, clear_split=True)
    assert (routing.split, routing.experiment) == ((), None)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"split": {"1": 0.5, "9": 0.5}}, r"unknown versions \['9'\]"),
        ({"live": "9"}, "unknown version '9'"),
        ({"shadow": ["9"]}, "unknown version '9'"),
        ({"split": {"1": 0.5, "2": 0.0}}, "finite number > 0"),
        ({"split": {"1": 0.5, "3": 0.5}}, "both in the split and shadows"),
        ({"live": "2", "shadow": ["2"]}, "both live and a shadow"),
        ({"shadow": ["1"]}, "is live"),
        ({"experiment": "e"}, "give --split"),
        ({"clear_split": True, "split": {"1": 1, "2": 1}}, "clearing the split"),
    ],
)
def test_bad_routes_are_refused_and_change_nothing(
    four: ModelRegistry, kwargs: dict, message: str
) -> None:
    four.promote(NAME, "1", "live")
    four.promote(NAME, "3", "shadow")
    before, rev = files(four), four.revision()
    with pytest.raises(RoutingError, match=message):
        four.route(NAME, **kwargs)
    assert files(four) == before and four.revision() == rev


def test_a_split_arm_cannot_become_a_shadow(four: ModelRegistry) -> None:
    four.route(NAME, split={"1": 0.5, "2": 0.5})
    rev = four.revision()
    with pytest.raises(RegistryError, match="both in the split and shadows"):
        four.promote(NAME, "2", "shadow")
    assert four.get(NAME, "2").stage == "candidate" and four.revision() == rev


def test_route_on_an_unknown_model(registry: ModelRegistry) -> None:
    with pytest.raises(RegistryError, match="no model named 'nope'"):
        registry.route("nope", live="1")
    with pytest.raises(RegistryError, match="no model named 'nope'"):
        registry.routing("nope")


def test_reading_a_missing_registry_does_not_create_it(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "absent")
    with registry.reading() as rev:
        assert rev == 0
    assert not registry.root.exists()


def test_a_malformed_revision_file_is_reported(four: ModelRegistry) -> None:
    (four.root / "revision.json").write_bytes(b'{"revision": "x"}')
    with pytest.raises(RegistryError, match="revision must be an integer"):
        four.revision()
