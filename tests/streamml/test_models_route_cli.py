from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest
from streamml.onnx_models import ModelRegistry, bundled_contract_path, bundled_model_path

from streamml.cli import main

NAME = "speedtest-triage"


@pytest.fixture
def reg(tmp_path: Path) -> str:
    reg = str(tmp_path / "reg")
    assert main(["models", "seed", "--registry", reg]) == 0
    for v in ("2", "3"):
        argv = ["models", "register", str(bundled_model_path()), "--version", v]
        argv += ["--contract", str(bundled_contract_path()), "--registry", reg]
        assert main(argv) == 0
    return reg


def route(reg: str, capsys: pytest.CaptureFixture[str], *flags: str) -> dict:
    assert main(["models", "route", NAME, *flags, "--registry", reg, "--json"]) == 0
    return orjson.loads(capsys.readouterr().out)


def test_route_shows_then_changes_split_shadow_and_live(
    reg: str, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    shown = route(reg, capsys)
    assert shown["changed"] is False
    assert shown["routing"]["live"] == "1" and shown["routing"]["split"] == {}

    changed = route(reg, capsys, "--split", "1=0.9,2=0.1", "--experiment", "ramp")
    assert changed["changed"] is True
    assert changed["routing"]["split"] == {"1": 0.9, "2": 0.1}
    assert changed["routing"]["experiment"] == "ramp"

    changed = route(reg, capsys, "--shadow", "3")
    assert changed["routing"]["shadow"] == ["3"]
    assert ModelRegistry(reg).get(NAME, "3").stage == "shadow"

    changed = route(reg, capsys, "--live", "2", "--clear-split", "--shadow", "")
    r = changed["routing"]
    assert (r["live"], r["split"], r["experiment"], r["shadow"]) == ("2", {}, None, [])
    assert ModelRegistry(reg).get(NAME, "1").stage == "retired"
    assert ModelRegistry(reg).get(NAME, "3").stage == "retired"
    assert route(reg, capsys, "--live", "2")["changed"] is False


def test_route_text_output_and_show_include_the_routing(
    reg: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["models", "route", NAME, "--split", "1=3,2=1", "--shadow", "3", "--registry", reg]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"experiment {NAME}" in out
    assert "ab:1      1        answer  75.00%" in out
    assert "ab:2      2        answer  25.00%" in out
    assert "shadow:3  3        shadow  -" in out
    assert main(["models", "show", NAME, "--registry", reg]) == 0
    assert "ab:2      2        answer  25.00%" in capsys.readouterr().out
    assert main(["models", "show", NAME, "--registry", reg, "--json"]) == 0
    shown = orjson.loads(capsys.readouterr().out)
    assert shown["routing"]["split"] == {"1": 0.75, "2": 0.25}
    assert shown["routing"]["shadow"] == ["3"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--split", "1=0.9,9=0.1"], r"unknown versions \['9'\]"),
        (["--split", "1=0.9,2=0"], "finite number > 0"),
        (["--split", "1=0.9"], "at least two versions"),
        (["--split", "1=0.5,2=0.5", "--shadow", "2"], "both in the split and shadows"),
        (["--split", "1=0.5,2=0.5", "--clear-split"], "not both"),
        (["--experiment", "x"], "give --split"),
        (["--live", "7"], "unknown version '7'"),
        (["--shadow", "1"], "is live"),
    ],
)
def test_bad_routes_exit_2_with_a_message(
    reg: str, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    before = ModelRegistry(reg).revision()
    capsys.readouterr()
    assert main(["models", "route", NAME, *flags, "--registry", reg]) == 2
    err = capsys.readouterr().err
    assert "streamml models route: error:" in err
    assert re.search(message, err), err
    assert ModelRegistry(reg).revision() == before


def test_route_on_an_unknown_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "route", "nope", "--registry", str(tmp_path)]) == 2
    assert "no model named 'nope'" in capsys.readouterr().err
