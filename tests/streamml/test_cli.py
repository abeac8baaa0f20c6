"""The `streamml` command, run as a user runs it: real processes, real files."""

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.oracle import RollingOracle

ROOT = Path(__file__).resolve().parents[2]


def streamml(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    proc = subprocess.run(
        [sys.executable, "-m", "streamml.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


MALFORMED = {
    b"not json at all": "not_json",
    b'["a", "list"]': "not_object",
    b'"just a string"': "not_object",
    b'{"ts": 1000}': "missing_account",
    b'{"account": "", "ts": 1000}': "bad_account",
    b'{"account": 12, "ts": 1000}': "bad_account",
    b'{"account": "acct-x"}': "missing_ts",
    b'{"account": "acct-x", "ts": "1000"}': "bad_ts",
    b'{"account": "acct-x", "ts": 1000.5}': "bad_ts",
    b'{"account": "acct-x", "ts": -1}': "negative_ts",
    b'{"account": "acct-x", "ts": 1e999}': "not_json",
    b"\x00\xff\xfe binary \x80\x81": "not_utf8",
    b"": "blank",
    b"   \t": "blank",
    b'{"account": "' + b"k" * 10_000 + b'", "ts": 1}': "account_too_long",
}


def test_help_on_every_command():
    for args in (
        [],
        ["run"],
        ["run", "error-count"],
        ["features"],
        ["features", "get"],
        ["generate"],
        ["demo"],
        ["bench"],
        ["bench", "error-count"],
    ):
        out = streamml(*args, "--help")
        assert "usage: streamml" in out.stdout


def test_file_with_malformed_lines_of_every_kind(tmp_path):
    good = [("acct-1", 1_000 + i * 1_000) for i in range(5)] + [("acct-2", 7_200_000)]
    lines = []
    for i, (a, t) in enumerate(good):
        lines.append(orjson.dumps({"account": a, "ts": t, "code": "E1", "extra": [i]}))
        lines.extend(list(MALFORMED)[i :: len(good)])
    path = tmp_path / "errors.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    state = tmp_path / "state"
    dead = tmp_path / "dead.jsonl"
    alerts = tmp_path / "alerts.jsonl"
    out = streamml(
        "run",
        "error-count",
        "--source",
        "file",
        "--input",
        str(path),
        "--state-dir",
        str(state),
        "--dead-letters-out",
        str(dead),
        "--alerts-out",
        str(alerts),
        "--threshold",
        "3",
        "--json",
    )
    summary = orjson.loads(out.stdout)["counters"]
    assert summary["read"] == len(lines)
    assert summary["accepted"] == len(good)
    assert summary["dead"] == len(MALFORMED)
    records = [orjson.loads(x) for x in dead.read_bytes().splitlines()]
    by_raw = {}
    for r in records:
        assert set(r) >= {"reason", "raw", "partition", "position"}
        assert r["partition"] == f"file:{path}"
        by_raw[r["position"]] = r["reason"]
    offsets, pos = {}, 0
    for line in lines:
        offsets[pos] = line
        pos += len(line) + 1
    for position, reason in by_raw.items():
        assert MALFORMED[offsets[position]] == reason
    for reason in set(MALFORMED.values()):
        assert summary[f"dead.{reason}"] == list(MALFORMED.values()).count(reason)
    long_one = next(r for r in records if r["reason"] == "account_too_long")
    assert len(long_one["raw"]) <= 1024
    got_alerts = [orjson.loads(x) for x in alerts.read_bytes().splitlines()]
    oracle = RollingOracle(threshold=3)
    expected = [(a, t, v) for a, t in good for k, v, f in [oracle.apply(a, t)] if f]
    assert [(x["account"], x["ts"], x["value"]) for x in got_alerts] == expected

    got = streamml(
        "features",
        "get",
        "acct-1",
        "acct-2",
        "nobody",
        "--state-dir",
        str(state),
        "--as-of",
        "7200000",
        "--json",
    )
    rows = [orjson.loads(x) for x in got.stdout.splitlines()]
    got_values = [(r["account"], {k: v["value"] for k, v in r["features"].items()}) for r in rows]
    assert got_values == [
        ("acct-1", {"signal_errors_24h": 5}),
        ("acct-2", {"signal_errors_24h": 1}),
        ("nobody", {"signal_errors_24h": None}),
    ]
    feats = [r["features"]["signal_errors_24h"] for r in rows]
    assert [f["updated_at"] for f in feats] == [5000, 7_200_000, None]
    # TTL 5 minutes: acct-1's last error is two hours before the read, acct-2's at it.
    assert [f["status"] for f in feats] == ["stale", "fresh", "missing"]
    later = streamml(
        "features",
        "get",
        "acct-1",
        "--state-dir",
        str(state),
        "--as-of",
        str(30 * 3_600_000),
        "--json",
    )
    assert orjson.loads(later.stdout)["features"]["signal_errors_24h"]["value"] == 0


def test_csv_with_malformed_lines(tmp_path):
    path = tmp_path / "errors.csv"
    path.write_bytes(
        b"account,ts,code\n"
        b"acct-1,1000,E1\n"
        b"acct-1,abc,E1\n"
        b"acct-1,2000\n"
        b",3000,E1\n"
        b"\n"
        b"acct-2,-5,E1\n"
        b"acct-1,4000.0,E2\n"
        b"\xff\xfe,5000,E1\n"
    )
    out = streamml(
        "run", "error-count", "--input", str(path), "--state-dir", str(tmp_path / "s"), "--json"
    )
    c = orjson.loads(out.stdout)["counters"]
    assert (c["read"], c["accepted"], c["dead"]) == (8, 2, 6)
    assert (c["dead.bad_ts"], c["dead.bad_csv"], c["dead.missing_account"]) == (1, 1, 1)
    assert (c["dead.blank"], c["dead.negative_ts"], c["dead.not_utf8"]) == (1, 1, 1)


def test_bad_arguments_give_clear_errors(tmp_path):
    missing = streamml(
        "run",
        "error-count",
        "--input",
        str(tmp_path / "nope.csv"),
        "--state-dir",
        str(tmp_path / "s"),
        check=False,
    )
    assert missing.returncode == 2 and "not found" in missing.stderr
    bad_header = tmp_path / "h.csv"
    bad_header.write_text("user,time\nx,1\n")
    out = streamml(
        "run",
        "error-count",
        "--input",
        str(bad_header),
        "--state-dir",
        str(tmp_path / "s"),
        check=False,
    )
    assert out.returncode == 2 and "account" in out.stderr
    nostate = streamml("features", "get", "a", "--state-dir", str(tmp_path / "empty"), check=False)
    assert nostate.returncode == 2 and "no feature state" in nostate.stderr


def test_state_dir_settings_are_checked(tmp_path):
    path = tmp_path / "e.jsonl"
    path.write_bytes(b'{"account": "a", "ts": 1}\n')
    streamml("run", "error-count", "--input", str(path), "--state-dir", str(tmp_path / "s"))
    out = streamml(
        "run",
        "error-count",
        "--input",
        str(path),
        "--state-dir",
        str(tmp_path / "s"),
        "--window-buckets",
        "12",
        check=False,
    )
    assert out.returncode == 2 and "window_buckets" in out.stderr


@pytest.mark.parametrize("processes", [2])
def test_generated_stream_with_several_processes_equals_one(tmp_path, processes):
    args = [
        "run",
        "error-count",
        "--source",
        "generate",
        "--events",
        "60000",
        "--accounts",
        "300",
        "--threshold",
        "300",
        "--json",
    ]
    one = streamml(
        *args, "--state-dir", str(tmp_path / "one"), "--alerts-out", str(tmp_path / "a1.jsonl")
    )
    many = streamml(
        *args,
        "--state-dir",
        str(tmp_path / "many"),
        "--alerts-out",
        str(tmp_path / "a2.jsonl"),
        "--processes",
        str(processes),
    )
    c1, c2 = orjson.loads(one.stdout)["counters"], orjson.loads(many.stdout)["counters"]
    for k in ("read", "accepted", "late", "alerts"):
        assert c1[k] == c2[k], k
    a1 = sorted(orjson.loads(x)["id"] for x in (tmp_path / "a1.jsonl").read_bytes().splitlines())
    a2 = sorted(orjson.loads(x)["id"] for x in (tmp_path / "a2.jsonl").read_bytes().splitlines())
    assert a1 == a2 and a1
    accounts = [f"acct-{i:08d}" for i in range(0, 300, 7)]
    for_one = streamml(
        "features",
        "get",
        *accounts,
        "--state-dir",
        str(tmp_path / "one"),
        "--as-of",
        "1767484800000",
        "--json",
    ).stdout
    for_many = streamml(
        "features",
        "get",
        *accounts,
        "--state-dir",
        str(tmp_path / "many"),
        "--as-of",
        "1767484800000",
        "--json",
    ).stdout
    assert for_one == for_many
