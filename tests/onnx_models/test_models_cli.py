from __future__ import annotations

import argparse
from pathlib import Path

import orjson
import pytest
from streamml.onnx_models import ExportedModel, ModelRegistry, triage_contract

from streamml import models_cli


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="streamml")
    sub = parser.add_subparsers(dest="command", required=True)
    models_cli.register(sub)
    args = parser.parse_args(argv)
    return args.func(args)


def test_train_list_show_promote(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reg = str(tmp_path / "reg")
    argv = ["models", "train", "--rows", "1500", "--estimators", "10", "--registry", reg]
    assert run(argv) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "registered speedtest-triage@1 as candidate" in out
    assert run(["models", "list", "--registry", reg, "--json"]) == 0
    listed = orjson.loads(capsys.readouterr().out)
    assert [(v["name"], v["version"], v["stage"]) for v in listed] == [
        ("speedtest-triage", "1", "candidate")
    ]
    assert listed[0]["provenance"]["metrics"]["accuracy"] > 0.6
    assert (
        run(["models", "promote", "speedtest-triage", "1", "--stage", "live", "--registry", reg])
        == 0
    )
    assert "candidate -> live" in capsys.readouterr().out
    assert run(["models", "show", "speedtest-triage", "--registry", reg, "--json"]) == 0
    shown = orjson.loads(capsys.readouterr().out)
    assert shown["stage"] == "live" and shown["history"][-1]["to"] == "live"
    assert run(["models", "show", "speedtest-triage@1", "--registry", reg]) == 0
    assert "signal_errors_24h" in capsys.readouterr().out


def test_register_with_contract_and_env_default(
    tmp_path: Path,
    exported: ExportedModel,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reg = tmp_path / "envreg"
    monkeypatch.setenv("STREAMML_REGISTRY", str(reg))
    contract = tmp_path / "contract.json"
    contract.write_bytes(orjson.dumps(triage_contract().to_json()))
    argv = ["models", "register", str(exported.path), "--contract", str(contract), "--json"]
    assert run(argv) == 0
    data = orjson.loads(capsys.readouterr().out)
    assert data["version"] == "7" and data["sha256"] == exported.sha256
    assert ModelRegistry(reg).get("speedtest-triage", "7").stage == "candidate"


def test_seed_registers_bundled_model_live(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reg = str(tmp_path / "r")
    assert run(["models", "seed", "--registry", reg]) == 0
    assert "is live" in capsys.readouterr().out
    assert ModelRegistry(reg).live("speedtest-triage") is not None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["models", "show", "nope", "--registry", "{reg}"], "no model named 'nope'"),
        (["models", "show", "x@", "--registry", "{reg}"], "NAME@VERSION"),
        (["models", "promote", "nope", "1", "--stage", "live", "--registry", "{reg}"], "nope"),
        (
            [
                "models",
                "register",
                "{tmp}/m.onnx",
                "--contract",
                "{tmp}/c.json",
                "--registry",
                "{reg}",
            ],
            "does not exist",
        ),
        (
            [
                "models",
                "register",
                "{tmp}/bad.onnx",
                "--contract",
                "{tmp}/bad.json",
                "--registry",
                "{reg}",
            ],
            "not valid JSON",
        ),
        (
            [
                "models",
                "register",
                "{tmp}/bad.onnx",
                "--contract",
                "{tmp}/c2.json",
                "--registry",
                "{reg}",
            ],
            "not a valid ONNX model|not an ONNX model",
        ),
        (["models", "train", "--rows", "5", "--registry", "{reg}"], "at least 50"),
    ],
)
def test_bad_input_exits_2_with_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    (tmp_path / "bad.onnx").write_bytes(b"garbage")
    (tmp_path / "bad.json").write_bytes(b"{not json")
    (tmp_path / "c2.json").write_bytes(orjson.dumps(triage_contract().to_json()))
    argv = [a.format(reg=tmp_path / "reg", tmp=tmp_path) for a in argv]
    assert run(argv) == 2
    err = capsys.readouterr().err
    assert "error:" in err
    import re

    assert re.search(message, err), err


def test_unknown_stage_is_an_argparse_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        run(["models", "promote", "m", "1", "--stage", "prod", "--registry", str(tmp_path)])
    assert info.value.code == 2


def test_train_with_lightgbm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("lightgbm")
    reg = str(tmp_path / "reg")
    argv = ["models", "train", "--trainer", "lightgbm", "--rows", "1500", "--estimators", "10"]
    assert run([*argv, "--registry", reg, "--json"]) == 0
    out = orjson.loads(capsys.readouterr().out)
    assert out["parity"]["passed"] and out["metrics"]["accuracy"] > 0.6
    version = ModelRegistry(reg).get("speedtest-triage", "1")
    assert version.provenance["estimator"] == "LGBMClassifier"
    assert version.classes == ("modem", "network", "wifi")
    assert version.output_kind == "classifier"
