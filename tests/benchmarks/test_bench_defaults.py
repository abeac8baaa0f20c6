"""The benchmarks run the product with its defaults: the history store is written unless
`--no-history`, as by the `streamml run` command each benchmark times."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import orjson
import pytest
from streamml.benchmarks.error_count import run_once
from streamml.operators.sources import GeneratorConfig
from streamml.state.history import read_history

from streamml.cli import build_parser, main
from streamml.generate import write_events


def _parse(argv: list[str]):
    return build_parser(argv).parse_args(argv)


RUN_ERROR_COUNT = ["run", "error-count", "--source", "file", "--input", "x.csv", "--state-dir", "s"]
RUN_KAFKA = ["run", "error-count", "--source", "kafka", "--topic", "t", "--state-dir", "s"]


@pytest.mark.parametrize(
    ("bench", "run"),
    [
        (["bench", "error-count"], RUN_ERROR_COUNT),
        (["bench", "error-count", "--source", "kafka"], RUN_KAFKA),
        (["bench", "kafka"], RUN_KAFKA),
        (["bench", "kafka-soak"], RUN_KAFKA),
        (["bench", "features"], ["run", "features", "--state-dir", "s"]),
    ],
)
def test_bench_writes_the_history_store_when_its_run_command_does(
    bench: list[str], run: list[str]
) -> None:
    assert _parse(bench).no_history is _parse(run).no_history is False
    assert _parse([*bench, "--no-history"]).no_history is True
    assert _parse([*run, "--no-history"]).no_history is True


def test_bench_error_count_run_writes_what_run_error_count_writes(tmp_path: Path) -> None:
    (path,) = write_events(tmp_path / "errors.csv", GeneratorConfig(events=5000, accounts=300))
    bench = run_once([path], 1, tmp_path / "bench", history=True)
    assert bench.events == 5000
    with contextlib.redirect_stdout(io.StringIO()):
        state = str(tmp_path / "run")
        code = main(["run", "error-count", "--input", str(path), "--state-dir", state, "--json"])
    assert code == 0
    ours = read_history(tmp_path / "bench" / "state-p1" / "history")
    theirs = read_history(tmp_path / "run" / "history")
    assert ours.num_rows == theirs.num_rows > 0
    columns = ["account", "event_time", "value"]
    assert (
        ours.select(columns)
        .sort_by([(c, "ascending") for c in columns])
        .equals(theirs.select(columns).sort_by([(c, "ascending") for c in columns]))
    )


def test_bench_error_count_reports_whether_it_wrote_the_history_store(tmp_path: Path) -> None:
    common = ["bench", "error-count", "--events", "3000", "--accounts", "200"]
    common += ["--data-dir", str(tmp_path), "--check-accounts", "5", "--json"]
    for extra, history in (([], True), (["--no-history"], False)):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main([*common, *extra]) == 0
        report = orjson.loads(out.getvalue())
        assert report["history"] is history
        assert report["runs"][0]["runs"] == 1
