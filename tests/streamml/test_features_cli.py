"""`streamml features list|show|validate|get` and `generate --end`, run in process."""

import time

import numpy as np
import orjson
import pyarrow.csv as pacsv
import pytest
from streamml.state.definitions import default_definitions, default_definitions_path
from streamml.state.layout import StateLayout
from streamml.state.rolling_store import RollingStateStore, empty_records
from streamml.state.sharding import shard_of

from streamml.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_list_and_show_the_bundled_definitions(capsys):
    code, out, _ = run(capsys, "features", "list")
    assert code == 0
    for f in default_definitions().features.values():
        assert f.name in out and f.version in out
    code, out, _ = run(capsys, "features", "show", "--json", "latency_ms_max_24h")
    assert code == 0
    body = orjson.loads(out)
    assert (body["aggregation"], body["field"], body["window"]) == ("max", "latency_ms", "1d")
    code, _, err = run(capsys, "features", "show", "nope")
    assert code == 2 and "no feature 'nope'" in err


def test_validate_names_the_error(capsys, tmp_path):
    good = tmp_path / "ok.toml"
    good.write_text(default_definitions_path().read_text())
    code, out, _ = run(capsys, "features", "validate", "--definitions", str(good))
    assert code == 0 and "6 features" in out
    bad = tmp_path / "bad.toml"
    bad.write_text(good.read_text().replace('window = "24h"', 'window = "90m"', 1))
    code, _, err = run(capsys, "features", "validate", "--definitions", str(bad))
    assert code == 1
    assert f"{bad}:" in err and "features.signal_errors_24h.window" in err and "multiple" in err


def test_get_reads_status_and_iso_times(capsys, tmp_path):
    layout = StateLayout(shards=2)
    layout.ensure(tmp_path)
    store = RollingStateStore(
        StateLayout.shard_dir(tmp_path, shard_of(b"a", 2)), feature=1, window=24
    )
    rec = empty_records(1, 24)
    t = 1_764_417_600_000  # 2025-11-29T12:00:00Z
    rec["max_bucket"], rec["updated_at"], rec["counts"][0, 0] = t // 3_600_000, t, 7
    store.commit([b"a"], rec, {})
    store.close()
    args = ("features", "get", "a", "b", "--state-dir", str(tmp_path), "--json")
    code, out, _ = run(capsys, *args, "--as-of", "2025-11-29T12:04:00Z")
    a, b = (orjson.loads(x)["features"]["signal_errors_24h"] for x in out.splitlines())
    assert code == 0
    assert (a["value"], a["status"], b["value"], b["status"]) == (7, "fresh", None, "missing")
    code, out, _ = run(capsys, *args, "--as-of", "2025-11-29T13:06:00+01:00")
    assert orjson.loads(out.splitlines()[0])["features"]["signal_errors_24h"]["status"] == "stale"
    code, out, _ = run(capsys, *args, "--as-of", str(t + 25 * 3_600_000))
    assert orjson.loads(out.splitlines()[0])["features"]["signal_errors_24h"]["value"] == 0
    code, _, err = run(capsys, *args, "--as-of", "2025-11-29T12:04:00")
    assert code == 2 and "no UTC offset" in err
    code, _, err = run(capsys, *args, "--features", "signal_errors_24h,nope")
    assert code == 2 and "serves no feature 'nope'" in err


@pytest.mark.parametrize("end", [None, "2026-01-02T00:00:00Z"])
def test_generate_ends_by_end(capsys, tmp_path, end):
    out = tmp_path / "e.csv"
    before = int(time.time() * 1000)
    argv = ["generate", "--out", str(out), "--events", "20000", "--accounts", "100"]
    code, _, _ = run(capsys, *argv, *(["--end", end] if end else []))
    assert code == 0
    ts = pacsv.read_csv(out).column("ts").to_numpy()
    limit = int(time.time() * 1000) if end is None else 1_767_312_000_000
    assert ts.max() <= limit
    assert ts.max() >= (before if end is None else limit) - 3_600_000
    assert np.median(ts) < ts.max()


def test_list_the_features_a_state_dir_holds(capsys, tmp_path):
    from streamml.state.feature_manifest import register_sources

    defs = default_definitions()
    register_sources(tmp_path, {"speed_tests": defs.of_source("speed_tests")})
    code, out, _ = run(capsys, "features", "list", "--state-dir", str(tmp_path))
    assert code == 0
    assert "download_ratio_mean_7d" in out and "signal_errors_24h" not in out
    code, _, err = run(capsys, "features", "list", "--state-dir", str(tmp_path / "none"))
    assert code == 1 and "holds no feature state" in err


def test_run_features_two_processes_equal_one(capsys, tmp_path):
    from streamml.state.online import OnlineStore

    errors, tests = tmp_path / "errors.csv", tmp_path / "tests.jsonl"
    end = ["--end", "2026-01-03T00:00:00Z", "--accounts", "300"]
    assert run(capsys, "generate", "--out", str(errors), "--events", "30000", *end)[0] == 0
    assert (
        run(
            capsys,
            "generate",
            "--kind",
            "speed-tests",
            "--out",
            str(tests),
            "--events",
            "6000",
            *end,
        )[0]
        == 0
    )
    inputs = ["--input", f"signal_errors={errors}", "--input", f"speed_tests={tests}"]
    for name, procs in (("one", "1"), ("two", "2")):
        code, _, err = run(
            capsys,
            "run",
            "features",
            *inputs,
            "--state-dir",
            str(tmp_path / name),
            "--settle-ms",
            "0",
            "--processes",
            procs,
            "--json",
        )
        assert code == 0, err
    accounts = [f"acct-{i:08d}" for i in range(300)]
    as_of = 1_767_398_400_000
    one = OnlineStore(tmp_path / "one").get_features(accounts, as_of=as_of)
    two = OnlineStore(tmp_path / "two").get_features(accounts, as_of=as_of)
    assert one == two
    assert sum(r["speed_tests_24h"].value or 0 for r in one) > 0
    assert sum(r["signal_errors_24h"].value or 0 for r in one) > 0
    code, _, err = run(capsys, "run", "features", "--input", "nope=x", "--state-dir", str(tmp_path))
    assert code == 2 and "file not found" in err
