"""Our packages live under `streamml` only: folders of the working directory never shadow them."""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import orjson
from streamml.operators.sources import GeneratorConfig

from streamml.generate import write_events

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SHADOWS = ["state", "operators", "dataflows", "benchmarks", "onnx_models"]
GEN = GeneratorConfig(events=30_000, accounts=500, seed=11)
THRESHOLD = "100"


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, timeout=300, env=env or dict(os.environ)
    )
    assert proc.returncode == 0, f"{cmd}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def shadowed_dir(path: Path) -> Path:
    """A working directory whose folders carry our old top-level package names, all broken."""
    path.mkdir(parents=True)
    for name in SHADOWS:
        (path / name).mkdir()
        (path / name / "__init__.py").write_text(f"raise ImportError('shadow {name} imported')\n")
    return path


def values(streamml: Path, cwd: Path, accounts: list[str], as_of: int) -> list[dict]:
    out = run(
        [
            str(streamml),
            "features",
            "get",
            *accounts,
            "--state-dir",
            "state",
            "--json",
            "--as-of",
            str(as_of),
        ],
        cwd,
    )
    return [orjson.loads(line) for line in out.splitlines()]


def alert_rows(path: Path) -> list[tuple]:
    """Alerts without the input path their ids carry, which differs between directories."""
    rows = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert len({r["id"] for r in rows}) == len(rows)
    return [(r["account"], r["ts"], r["value"], r["id"].rsplit(":", 1)[1]) for r in rows]


def test_quick_start_twice_in_a_directory_full_of_shadows(tmp_path):
    streamml = BIN / "streamml"
    twice = shadowed_dir(tmp_path / "twice")
    once = tmp_path / "once"
    once.mkdir()
    for cwd in (twice, once):
        write_events(cwd / "errors.csv", GEN)
    # `state` is the state dir the quick-start names: a stale package file in it changes nothing.
    (twice / "state" / "__init__.py").unlink()
    cmd = [str(streamml), "run", "error-count", "--source", "file", "--input", "errors.csv"]
    cmd += ["--state-dir", "state", "--alerts-out", "alerts.jsonl", "--threshold", THRESHOLD]
    run(cmd, twice)
    run(cmd, twice)
    run(cmd, once)
    accounts = [f"acct-{i:08d}" for i in range(0, GEN.accounts, 7)]
    as_of = GEN.start_ms + GEN.span_ms
    got = values(streamml, twice, accounts, as_of)
    assert got == values(streamml, once, accounts, as_of)
    assert any(v["features"]["signal_errors_24h"]["value"] for v in got)
    alerts = alert_rows(once / "alerts.jsonl")
    assert alerts and alert_rows(twice / "alerts.jsonl") == alerts


def test_bytewax_entry_point_ignores_the_working_directory(tmp_path):
    cwd = shadowed_dir(tmp_path / "cwd")
    write_events(cwd / "errors.csv", GEN)
    env = {
        **os.environ,
        "STREAMML_INPUT": "errors.csv",
        "STREAMML_STATE_DIR": "feature-state",
        "STREAMML_ALERTS_OUT": "alerts.jsonl",
        "STREAMML_THRESHOLD": THRESHOLD,
    }
    run([sys.executable, "-m", "bytewax.run", "streamml.dataflows.error_count:flow"], cwd, env)
    assert (cwd / "alerts.jsonl").read_bytes()


def test_wheel_installed_into_a_fresh_venv_runs_the_flow(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(
        ROOT,
        src,
        ignore=shutil.ignore_patterns(
            ".git", ".venv*", "tests", "build", "dist", "*.egg-info", "__pycache__", ".*cache*"
        ),
    )
    wheels = tmp_path / "wheels"
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(wheels),
            str(src),
        ],
        tmp_path,
    )
    (wheel,) = wheels.glob("streamml-*.whl")
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], tmp_path)
    vpy = venv / "bin" / "python"
    site = run([str(vpy), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp_path)
    # The dependencies come from the test environment (a path entry, whose .pth files, such as
    # the editable install of streamml, are not processed); streamml itself only from the wheel.
    deps = sysconfig.get_path("purelib")
    Path(site.strip(), "deps.pth").write_text(deps + "\n")
    run([str(vpy), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], tmp_path)
    cwd = shadowed_dir(tmp_path / "cwd")
    where = run([str(vpy), "-P", "-c", "import streamml.state as s; print(s.__file__)"], cwd)
    assert where.startswith(str(venv)), where
    top = run(
        [str(vpy), "-P", "-c", "import importlib.util as u; print(u.find_spec('state'))"], cwd
    )
    assert top.strip() == "None"
    write_events(cwd / "errors.csv", GEN)
    run(
        [
            str(venv / "bin" / "streamml"),
            "run",
            "error-count",
            "--input",
            "errors.csv",
            "--state-dir",
            "state-a",
            "--alerts-out",
            "a.jsonl",
            "--threshold",
            THRESHOLD,
        ],
        cwd,
    )
    env = {
        **os.environ,
        "STREAMML_INPUT": "errors.csv",
        "STREAMML_STATE_DIR": "state-b",
        "STREAMML_ALERTS_OUT": "b.jsonl",
        "STREAMML_THRESHOLD": THRESHOLD,
    }
    run([str(vpy), "-m", "bytewax.run", "streamml.dataflows.error_count:flow"], cwd, env)
    alerts = (cwd / "a.jsonl").read_bytes()
    assert alerts and (cwd / "b.jsonl").read_bytes() == alerts
