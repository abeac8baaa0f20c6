"""`streamml` imports only what the chosen command needs: checked by module, not by timing."""

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from streamml.cli import COMMANDS, build_parser

ROOT = Path(__file__).resolve().parents[2]

HEAVY_PACKAGES = (
    "bytewax",
    "onnxruntime",
    "onnx",
    "sklearn",
    "skl2onnx",
    "kafka",
    "aiohttp",
    "duckdb",
    "granian",
    "uvicorn",
    "psycopg",
)
HEAVY_MODULES = ("pyarrow.dataset", "pyarrow.compute")
"""What costs a large part of a second to import: no `--help` and no `features get` loads it."""

PROBE = """
import sys
from streamml.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print("MODULES", " ".join(sorted(sys.modules)))
sys.exit(code or 0)
"""


def loaded_modules(*args: str) -> set[str]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("MODULES "))
    return set(line.split()[1:])


def heavy_in(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m in HEAVY_MODULES or m.split(".")[0] in HEAVY_PACKAGES)


def test_features_get_loads_no_heavy_module(tmp_path):
    state = tmp_path / "state"
    events = tmp_path / "e.csv"
    events.write_text("account,ts,code\nacct-1,1000,E1\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "streamml.cli",
            "run",
            "error-count",
            "--input",
            str(events),
            "--state-dir",
            str(state),
            "--settle-ms",
            "0",
        ],
        check=True,
        capture_output=True,
        cwd=ROOT,
        timeout=120,
    )
    modules = loaded_modules("features", "get", "acct-1", "--state-dir", str(state))
    assert "rocksdict" in modules  # it did read the store
    assert heavy_in(modules) == []


HELP = [
    [],
    ["run"],
    ["run", "error-count"],
    ["run", "predict"],
    ["features"],
    ["features", "get"],
    ["features", "backfill"],
    ["run", "features"],
    ["dataset"],
    ["dataset", "build"],
    ["serve"],
    ["postgres"],
    ["generate"],
    ["demo"],
    ["models"],
    ["predictions"],
    ["broker"],
    ["telemetry"],
    ["recovery"],
    ["bench"],
    ["bench", "kafka-soak"],
]


ALLOWED = {("models",): {"onnx"}, ("predictions",): {"onnx"}}
"""These name the registry's stages and directory; the registry reads ONNX files with `onnx`."""


@pytest.mark.parametrize("args", HELP, ids=lambda a: " ".join(a) or "streamml")
def test_help_loads_no_heavy_module(args):
    allowed = ALLOWED.get(tuple(args), set())
    heavy = heavy_in(loaded_modules(*args, "--help"))
    assert [m for m in heavy if m.split(".")[0] not in allowed] == []


def subcommand_helps(parser: argparse.ArgumentParser) -> dict[str, str | None]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: a.help for a in sub._choices_actions}


def subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def test_lazy_placeholders_say_what_the_modules_register():
    full = build_parser()  # every command registered by its module
    lazy = build_parser([])
    assert subcommand_helps(lazy) == subcommand_helps(full)
    assert list(subcommand_helps(full)) == [c.name for c in COMMANDS]
    for nested in ("run", "bench"):
        assert subcommand_helps(subparser(build_parser([nested]), nested)) == subcommand_helps(
            subparser(full, nested)
        )


def test_the_chosen_command_is_registered_fully():
    parser = build_parser(["bench", "error-count", "--events", "5"])
    bench = subparser(subparser(parser, "bench"), "error-count")
    assert any("--events" in a.option_strings for a in bench._actions)
    args = build_parser(["run", "error-count"]).parse_args(
        ["run", "error-count", "--state-dir", "x"]
    )
    assert args.func.__name__ == "_cmd_error_count"


def test_settle_default_is_the_file_source_default():
    from streamml.operators.sources import DEFAULT_SETTLE_MS

    from streamml.run_cli import DEFAULT_SETTLE_MS as CLI_DEFAULT

    assert CLI_DEFAULT == DEFAULT_SETTLE_MS


def test_tolerance_default_is_the_explainer_default():
    from streamml.operators.explain import DEFAULT_TOLERANCE

    from streamml.predictions_cli import DEFAULT_TOLERANCE as CLI_DEFAULT

    assert CLI_DEFAULT == DEFAULT_TOLERANCE
