"""Training data, ONNX export, the versioned model registry, its routing and the demo model."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "BUNDLED_DIR",
    "CLASSES",
    "FEATURE_NAMES",
    "INPUT_NAME",
    "LABEL_OUTPUT",
    "LIVE_VARIANT",
    "OUTPUT_KINDS",
    "PROBABILITIES_OUTPUT",
    "REFERENCE_BINS",
    "REGISTRY_ENV",
    "SOURCE_KINDS",
    "STAGES",
    "TELEMETRY_SERVICE",
    "TRAINERS",
    "TRIAGE_MODEL_NAME",
    "VALUE_OUTPUT",
    "AccountProfile",
    "ContractError",
    "ExportError",
    "ExportedModel",
    "FeatureContract",
    "FeatureSource",
    "FeatureSpec",
    "GeneratedRequests",
    "LoadedModel",
    "MissingPolicy",
    "ModelNotFoundError",
    "ModelOutputs",
    "ModelRegistry",
    "ModelVersion",
    "OutputKind",
    "ParityError",
    "ParityReport",
    "RegistryError",
    "RequestGeneratorConfig",
    "RequestTruth",
    "Routing",
    "RoutingError",
    "Selection",
    "TrainedTriage",
    "TriageData",
    "UnsafeModelError",
    "ValueParityReport",
    "account_profile",
    "assignment_point",
    "build_bundled",
    "bundled_contract",
    "bundled_contract_path",
    "bundled_model_path",
    "bundled_reference",
    "check_parity",
    "check_value_parity",
    "create_session",
    "default_registry_dir",
    "ensure_demo_registry",
    "evaluate",
    "export",
    "fingerprint",
    "generate_requests",
    "generate_speedtests",
    "iter_truth",
    "output_kind_of",
    "parse_split",
    "read_metadata",
    "run_model",
    "select_variants",
    "telemetry_document",
    "train_and_export",
    "train_triage",
    "training_reference",
    "triage_contract",
]

_HOMES: dict[str, tuple[str, ...]] = {
    "bundle": (
        "BUNDLED_DIR",
        "build_bundled",
        "bundled_contract",
        "bundled_contract_path",
        "bundled_model_path",
        "bundled_reference",
        "ensure_demo_registry",
    ),
    "contract": (
        "SOURCE_KINDS",
        "ContractError",
        "FeatureContract",
        "FeatureSource",
        "FeatureSpec",
        "MissingPolicy",
    ),
    "data": ("CLASSES", "FEATURE_NAMES", "TriageData", "generate_speedtests"),
    "exporter": (
        "ExportedModel",
        "ParityError",
        "ParityReport",
        "ValueParityReport",
        "check_parity",
        "check_value_parity",
        "export",
    ),
    "model_format": (
        "INPUT_NAME",
        "LABEL_OUTPUT",
        "OUTPUT_KINDS",
        "PROBABILITIES_OUTPUT",
        "VALUE_OUTPUT",
        "ExportError",
        "OutputKind",
        "fingerprint",
        "output_kind_of",
        "read_metadata",
    ),
    "reference": ("REFERENCE_BINS", "training_reference"),
    "registry": (
        "REGISTRY_ENV",
        "STAGES",
        "LoadedModel",
        "ModelNotFoundError",
        "ModelRegistry",
        "ModelVersion",
        "RegistryError",
        "UnsafeModelError",
        "default_registry_dir",
    ),
    "routing": (
        "LIVE_VARIANT",
        "Routing",
        "RoutingError",
        "Selection",
        "assignment_point",
        "parse_split",
        "select_variants",
    ),
    "runtime": ("ModelOutputs", "create_session", "run_model"),
    "speedtests": (
        "AccountProfile",
        "GeneratedRequests",
        "RequestGeneratorConfig",
        "RequestTruth",
        "account_profile",
        "generate_requests",
        "iter_truth",
        "telemetry_document",
    ),
    "training": (
        "TELEMETRY_SERVICE",
        "TRAINERS",
        "TRIAGE_MODEL_NAME",
        "TrainedTriage",
        "evaluate",
        "train_and_export",
        "train_triage",
        "triage_contract",
    ),
}
"""Where each public name lives: imported on first use, so importing one submodule of
this package does not load the others (and their dependencies)."""

_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}


def __getattr__(name: str) -> Any:
    """Import a public name from its submodule on first use."""
    module = _HOME_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """List the public names, imported or not."""
    return sorted({*globals(), *__all__})
