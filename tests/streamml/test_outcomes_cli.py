"""`streamml run outcomes` and `streamml generate --kind outcomes` from the command line."""

from __future__ import annotations

import argparse
from pathlib import Path

import orjson
import pytest
from streamml.onnx_models.speedtests import OutcomeConfig, RequestGeneratorConfig, generate_outcomes

from streamml.cli import build_parser, main
from streamml.outcomes_cli import config_from_args


def parse(argv: list[str]) -> argparse.Namespace:
    return build_parser(argv).parse_args(argv)


def test_flags_reach_the_flow_config(tmp_path: Path) -> None:
    (tmp_path / "store").mkdir()
    out = tmp_path / "o.jsonl"
    out.write_bytes(b"")
    args = parse(
        ["run", "outcomes", "--prediction-store", str(tmp_path / "store"), "--input", str(out),
         "--outcome-ttl", "12h", "--lateness", "5m", "--join-by", "account-ts", "--drain",
         "--shards", "4"]
    )  # fmt: skip
    config = config_from_args(args, None)
    assert (config.outcome_ttl_ms, config.lateness_ms) == (12 * 3_600_000, 300_000)
    assert (config.join_by, config.drain, config.shards) == ("account-ts", True, 4)
    assert config.recovery == (tmp_path / "store").resolve() / "join-state" / "recovery"
    with pytest.raises(SystemExit):
        parse(["run", "outcomes", "--prediction-store", "x", "--outcome-ttl", "soon"])
    with pytest.raises(ValueError, match="needs --input"):
        config_from_args(parse(["run", "outcomes", "--prediction-store", str(tmp_path)]), None)
    with pytest.raises(ValueError, match="needs --now"):
        config_from_args(
            parse(["run", "outcomes", "--prediction-store", str(tmp_path), "--outcomes-source",
                   "generate"]),
            None,
        )  # fmt: skip


def test_generate_outcomes_matches_the_library(tmp_path: Path, capsys) -> None:
    out = tmp_path / "o.jsonl"
    argv = ["generate", "--kind", "outcomes", "--events", "300", "--accounts", "50",
            "--end", "2026-01-01T00:00:00Z", "--missing-rate", "0.2",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    lines = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    gen = RequestGeneratorConfig(requests=300, accounts=50, seed=7, now_ms=1_767_225_600_000)
    assert lines == generate_outcomes(gen, OutcomeConfig(missing_rate=0.2))
    assert main([*argv[:-2], "--missing-rate", "2", "--out", str(out)]) == 2
