from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import orjson
import pytest
from onnx import TensorProto, helper, numpy_helper
from streamml.onnx_models import (
    ContractError,
    ExportedModel,
    FeatureContract,
    ModelNotFoundError,
    ModelRegistry,
    ModelVersion,
    RegistryError,
    UnsafeModelError,
    triage_contract,
)


def _set_manifest(version: ModelVersion, **changes: object) -> None:
    path = version.path.parent / "manifest.json"
    manifest = orjson.loads(path.read_bytes())
    manifest.update(changes)
    path.write_bytes(orjson.dumps(manifest))


def _replace_model(version: ModelVersion, data: bytes) -> None:
    import hashlib

    version.path.write_bytes(data)
    _set_manifest(version, sha256=hashlib.sha256(data).hexdigest())


def _matmul_model(tmp: Path, *, external: bool, location: str = "weights.bin") -> Path:
    w = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), name="W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "W"], ["out"])],
        "mm",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [None, 3])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp / "mm.onnx"
    if external:
        onnx.save_model(
            model,
            path,
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=location,
            size_threshold=0,
        )
    else:
        onnx.save_model(model, path)
    return path


AB = FeatureContract.from_names(["a", "b"], ttl_ms=1000)


# -- round trips ----------------------------------------------------------------------------------


def test_register_list_show_load_round_trip(
    registry: ModelRegistry, exported: ExportedModel
) -> None:
    v = registry.register(exported.path, contract=triage_contract(), registered_by="tester")
    assert (v.name, v.version, v.stage) == ("speedtest-triage", "7", "candidate")
    assert v.sha256 == exported.sha256
    assert v.contract == triage_contract()
    assert v.classes == ("modem", "network", "wifi")
    prov = v.provenance
    assert prov["training_data_sha256"] == exported.metadata["training_data_sha256"]
    assert prov["metrics"]["accuracy"] == pytest.approx(exported.metadata["metrics"]["accuracy"])
    assert prov["registered_by"] == "tester"
    assert prov["source_path"] == str(exported.path.resolve())
    assert prov["created_at"] == "2025-01-01T00:00:00+00:00"
    assert registry.list() == [v]
    assert registry.names() == ["speedtest-triage"]
    assert registry.show("speedtest-triage") == v
    assert registry.get("speedtest-triage", "7") == v
    loaded = registry.load("speedtest-triage", "7")
    assert loaded.model_bytes == exported.path.read_bytes()
    assert not loaded.has_external_data
    # A fresh registry object over the same directory sees the same thing.
    assert ModelRegistry(registry.root).get("speedtest-triage", "7") == v
    assert not [p for p in registry.root.rglob("*") if p.name.startswith((".tmp", ".stages"))]


def test_same_bytes_register_once_and_versions_are_immutable(
    registry: ModelRegistry, exported: ExportedModel, tmp_path: Path
) -> None:
    a = registry.register(exported.path, contract=triage_contract())
    b = registry.register(exported.path, contract=triage_contract())
    assert a == b
    assert len(registry.versions("speedtest-triage")) == 1
    other = _matmul_model(tmp_path, external=False)
    registry.register(other, contract=AB, name="mm", version="1")
    tweaked = tmp_path / "tweaked.onnx"
    m = onnx.load(other)
    m.doc_string = "different bytes"
    onnx.save_model(m, tweaked)
    with pytest.raises(RegistryError, match="immutable"):
        registry.register(tweaked, contract=AB, name="mm", version="1")
    v2 = registry.register(tweaked, contract=AB, name="mm")
    assert v2.version == "2"
    assert registry.next_version("mm") == "3"
    assert registry.next_version("new-model") == "1"


def test_one_live_version_and_stage_history(registry: ModelRegistry, tmp_path: Path) -> None:
    p1 = _matmul_model(tmp_path, external=False)
    registry.register(p1, contract=AB, name="mm", version="1")
    m = onnx.load(p1)
    m.doc_string = "v2"
    p2 = tmp_path / "v2.onnx"
    onnx.save_model(m, p2)
    registry.register(p2, contract=AB, name="mm", version="2")
    assert registry.live("mm") is None
    registry.promote("mm", "1", "live", actor="alice")
    assert registry.live("mm").version == "1"
    registry.promote("mm", "2", "live", actor="bob")
    stages = {v.version: v.stage for v in registry.versions("mm")}
    assert stages == {"1": "retired", "2": "live"}
    registry.promote("mm", "1", "shadow")
    assert registry.get("mm", "1").stage == "shadow"
    registry.demote("mm", "2")
    assert registry.get("mm", "2").stage == "retired"
    assert registry.live("mm") is None
    hist = [(h["version"], h["from"], h["to"]) for h in registry.history("mm")]
    assert hist == [
        ("1", None, "candidate"),
        ("2", None, "candidate"),
        ("1", "candidate", "live"),
        ("1", "live", "retired"),
        ("2", "candidate", "live"),
        ("1", "retired", "shadow"),
        ("2", "live", "retired"),
    ]
    with pytest.raises(RegistryError, match="unknown stage 'prod'"):
        registry.promote("mm", "1", "prod")
    with pytest.raises(ModelNotFoundError, match="no version '9'"):
        registry.promote("mm", "9", "live")
    with pytest.raises(RegistryError, match="use promote"):
        registry.demote("mm", "1", "live")


def test_contract_must_match_model(registry: ModelRegistry, exported: ExportedModel) -> None:
    wrong = FeatureContract.from_names(list(reversed(triage_contract().feature_names)), ttl_ms=1000)
    with pytest.raises(ContractError, match="same order"):
        registry.register(exported.path, contract=wrong)
    short = FeatureContract.from_names(["a"], ttl_ms=1000)
    with pytest.raises(ContractError):
        registry.register(exported.path, contract=short)
    assert registry.names() == []


def test_external_data_inside_the_version_dir_loads(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    src = _matmul_model(tmp_path, external=True)
    v = registry.register(src, contract=AB, name="mm")
    assert set(v.external_data) == {"weights.bin"}
    loaded = registry.load("mm", v.version)
    assert loaded.has_external_data
    sess = ort.InferenceSession(str(loaded.path), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {"features": np.ones((1, 2), dtype=np.float32)})
    np.testing.assert_array_equal(out, [[3.0, 5.0, 7.0]])
    with pytest.raises(RegistryError, match="external files"):
        registry.load_bytes("mm", v.version)
    (loaded.path.parent / "weights.bin").write_bytes(b"\0" * 24)
    with pytest.raises(UnsafeModelError, match=r"weights\.bin.*sha256"):
        registry.load("mm", v.version)


# -- unsafe loads ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "version"),
    [("..", "1"), ("speedtest-triage", ".."), ("speedtest-triage", "../7"), ("a/b", "1")],
)
def test_path_traversal_in_names_is_refused(
    registry: ModelRegistry, registered: ModelVersion, name: str, version: str
) -> None:
    with pytest.raises(UnsafeModelError, match=r"no '\.\.', no path separators"):
        registry.load(name, version)


def test_manifest_pointing_outside_is_refused(
    registry: ModelRegistry, registered: ModelVersion
) -> None:
    _set_manifest(registered, file="../../../escape.onnx")
    with pytest.raises(UnsafeModelError, match="plain file name"):
        registry.load(registered.name, registered.version)


def test_symlink_out_of_registry_is_refused(
    registry: ModelRegistry, registered: ModelVersion, tmp_path: Path
) -> None:
    outside = tmp_path / "outside.onnx"
    shutil.copy(registered.path, outside)
    registered.path.unlink()
    os.symlink(outside, registered.path)
    with pytest.raises(UnsafeModelError, match="outside the registry"):
        registry.load(registered.name, registered.version)


def test_symlinked_version_dir_out_of_registry_is_refused(
    registry: ModelRegistry, registered: ModelVersion, tmp_path: Path
) -> None:
    vdir = registered.path.parent
    moved = tmp_path / "elsewhere"
    shutil.move(vdir, moved)
    os.symlink(moved, vdir)
    with pytest.raises(UnsafeModelError, match="outside the registry"):
        registry.load(registered.name, registered.version)


def test_symlink_inside_registry_is_allowed(
    registry: ModelRegistry, registered: ModelVersion
) -> None:
    inside = registry.root / "blob.onnx"
    shutil.copy(registered.path, inside)
    registered.path.unlink()
    os.symlink(inside, registered.path)
    assert registry.load(registered.name, registered.version).model_bytes == inside.read_bytes()


def test_non_onnx_file_is_refused(registry: ModelRegistry, registered: ModelVersion) -> None:
    _replace_model(registered, b"this is plain text, not a model\n")
    with pytest.raises(UnsafeModelError, match=r"not (a valid ONNX|an ONNX) model"):
        registry.load(registered.name, registered.version)


def test_pickle_file_is_refused(registry: ModelRegistry, registered: ModelVersion) -> None:
    _replace_model(registered, pickle.dumps({"weights": [1, 2, 3]}))
    with pytest.raises(UnsafeModelError, match="pickle"):
        registry.load(registered.name, registered.version)


def test_pickle_and_non_onnx_are_refused_at_registration(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    pkl = tmp_path / "model.pkl"
    pkl.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(UnsafeModelError, match=r"expected an \.onnx file"):
        registry.register(pkl, contract=AB, name="x")
    disguised = tmp_path / "model.onnx"
    disguised.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(UnsafeModelError, match="pickle"):
        registry.register(disguised, contract=AB, name="x")
    assert registry.names() == []


def test_hash_mismatch_is_refused(registry: ModelRegistry, registered: ModelVersion) -> None:
    data = bytearray(registered.path.read_bytes())
    data[-1] ^= 0xFF
    registered.path.write_bytes(bytes(data))
    with pytest.raises(UnsafeModelError, match="sha256 mismatch"):
        registry.load(registered.name, registered.version)


def test_external_data_pointing_outside_is_refused(registry: ModelRegistry, tmp_path: Path) -> None:
    v = registry.register(_matmul_model(tmp_path, external=False), contract=AB, name="mm")
    (registry.root / "secret.bin").write_bytes(np.arange(6, dtype=np.float32).tobytes())
    evil_dir = tmp_path / "evil"
    evil_dir.mkdir()
    evil = onnx.load(
        _matmul_model(evil_dir, external=True, location="w.bin"), load_external_data=False
    )
    for tensor in evil.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../../../secret.bin"
    _replace_model(v, evil.SerializeToString())
    with pytest.raises(UnsafeModelError, match="leaves the model directory"):
        registry.load("mm", v.version)


def test_external_data_outside_is_refused_at_registration(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    src = _matmul_model(tmp_path, external=True)
    m = onnx.load(src, load_external_data=False)
    for tensor in m.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "/etc/passwd"
    onnx.save_model(m, src)
    with pytest.raises(UnsafeModelError, match="leaves the model directory"):
        registry.register(src, contract=AB, name="mm")


def test_unknown_names_and_versions(registry: ModelRegistry, registered: ModelVersion) -> None:
    with pytest.raises(ModelNotFoundError, match="no model named 'nope'"):
        registry.load("nope", "1")
    with pytest.raises(ModelNotFoundError, match="no version '8'"):
        registry.load(registered.name, "8")
    with pytest.raises(ModelNotFoundError):
        registry.versions("nope")
    assert ModelRegistry(registry.root / "absent").list() == []
