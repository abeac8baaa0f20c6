"""Every package and module declares `__all__`, and every name in it exists and is documented."""

import ast
import importlib
import importlib.util
import inspect
import json
import pkgutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

SUBPACKAGES = ["dataflows", "operators", "state", "onnx_models", "benchmarks"]
PACKAGES = ["streamml", *(f"streamml.{name}" for name in SUBPACKAGES)]
ROOT = Path(__file__).resolve().parents[1]


def modules():
    for name in PACKAGES:
        pkg = importlib.import_module(name)
        yield name
        for info in pkgutil.iter_modules(pkg.__path__):
            if not info.name.startswith("_"):
                yield f"{name}.{info.name}"


@pytest.mark.parametrize("module_name", list(modules()))
def test_module_declares_a_documented_public_surface(module_name):
    module = importlib.import_module(module_name)
    assert module.__doc__, f"{module_name} has no docstring"
    assert hasattr(module, "__all__"), f"{module_name} has no __all__"
    for name in module.__all__:
        obj = getattr(module, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert inspect.getdoc(obj), f"{module_name}.{name} has no docstring"


def imported_names(path: Path) -> list[str]:
    """Every absolute module name `path` imports (``from a.b import c`` gives a.b and a.b.c)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names += [f"{node.module}.{a.name}" for a in node.names]
    return names


def our_package(name: str) -> str | None:
    """The package of ours a module name belongs to: a subpackage name, 'shell', or None."""
    parts = name.split(".")
    if parts[0] != "streamml":
        return None
    if len(parts) > 1 and parts[1] in SUBPACKAGES:
        return parts[1]
    return "shell" if len(parts) > 1 else None


def test_dependencies_point_one_way():
    allowed = {
        "state": set(),
        "operators": {"state", "onnx_models"},
        "dataflows": {"operators", "state", "onnx_models"},
        "onnx_models": set(),
    }
    for package, ok in allowed.items():
        for path in (ROOT / package).rglob("*.py"):
            for name in imported_names(path):
                target = our_package(name)
                if target is not None and target != package:
                    assert target in ok, f"{path} imports {name}"


def test_benchmarks_and_the_rest_service_call_no_cli_module():
    for path in [
        *(ROOT / "benchmarks").rglob("*.py"),
        *(ROOT / "streamml" / "server").rglob("*.py"),
    ]:
        for name in imported_names(path):
            module = name.split(".")[1] if name.startswith("streamml.") else ""
            assert not module.endswith("_cli") and module != "cli", f"{path} imports {name}"


def test_nothing_of_ours_is_importable_under_a_generic_top_level_name(tmp_path):
    probe = (
        "import importlib.util, json, sys\n"
        f"names = {SUBPACKAGES!r}\n"
        "specs = {n: importlib.util.find_spec(n) for n in names}\n"
        "print(json.dumps({n: s.origin if s else None for n, s in specs.items()}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-P", "-c", probe],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    found = json.loads(out.stdout)
    assert all(origin is None or str(ROOT) not in origin for origin in found.values()), found
    for path in ROOT.rglob("*.py"):
        if {".venv", ".venv-flink", "build"} & set(path.parts):
            continue
        for name in imported_names(path):
            assert name.split(".")[0] not in SUBPACKAGES, f"{path} imports {name}"


def test_only_state_imports_rocksdict():
    for package in ["streamml", *SUBPACKAGES]:
        if package == "state":
            continue
        for path in (ROOT / package).rglob("*.py"):
            assert "rocksdict" not in path.read_text(), path


def test_only_state_imports_the_postgresql_driver():
    for package in ["streamml", *SUBPACKAGES]:
        if package == "state":
            continue
        for path in (ROOT / package).rglob("*.py"):
            names = imported_names(path)
            assert not any(n.split(".")[0] in {"psycopg", "pgserver"} for n in names), path


@pytest.mark.parametrize(
    "package",
    ["streamml.onnx_models", "streamml.state", "streamml.operators", "streamml.server"],
)
def test_lazy_exports_are_never_shadowed_by_their_submodules(package):
    """A name exported lazily must not be a submodule's name: importing the submodule would
    bind the module under that name, and `from package import name` would return it."""
    pkg = importlib.import_module(package)
    homes = getattr(pkg, "_HOMES", {})
    for module, names in homes.items():
        importlib.import_module(f"{package}.{module}")
        for name in names:
            assert not isinstance(getattr(pkg, name), types.ModuleType), f"{package}.{name}"
