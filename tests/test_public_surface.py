"""Every package and module declares `__all__`, and every name in it exists and is documented."""

import importlib
import inspect
import pkgutil

import pytest

PACKAGES = ["streamml", "dataflows", "operators", "state", "onnx_models", "benchmarks"]


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


def test_dependencies_point_one_way():
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    allowed = {
        "state": set(),
        "operators": {"state", "onnx_models"},
        "dataflows": {"operators", "state", "onnx_models"},
        "onnx_models": set(),
    }
    ours = set(PACKAGES)
    for package, ok in allowed.items():
        for path in (root / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                for n in names:
                    top = n.split(".")[0]
                    if top in ours and top != package:
                        assert top in ok, f"{path} imports {n}"


def test_only_state_imports_rocksdict():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for package in PACKAGES:
        if package == "state":
            continue
        for path in (root / package).rglob("*.py"):
            assert "rocksdict" not in path.read_text(), path
