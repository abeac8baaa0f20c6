"""A model's feature contract: which features it takes, in order, how fresh, and what if missing.

JSON form (stored beside every registered version):

```json
{
  "features": [
    {"name": "signal_errors_24h", "dtype": "float32", "ttl_ms": 300000,
     "on_missing": {"policy": "default", "value": 0.0}},
    {"name": "node_health", "dtype": "float32", "ttl_ms": 60000, "on_missing": "reject"}
  ],
  "allow_nan": false
}
```

A feature value older than `ttl_ms` counts as missing; a missing feature then follows
`on_missing`: `{"policy": "default", "value": x}` scores with `x`, `"reject"` (or
`{"policy": "reject"}`) refuses the request. `allow_nan` says whether the model accepts NaN inputs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "ContractError",
    "FeatureContract",
    "FeatureSpec",
    "MissingPolicy",
]

_DTYPES = ("float32",)


class ContractError(ValueError):
    """A feature contract is malformed or does not fit its model."""


@dataclass(frozen=True)
class MissingPolicy:
    """What to do when a feature is missing or stale: score with a default, or reject."""

    policy: Literal["default", "reject"]
    value: float | None = None

    @classmethod
    def default(cls, value: float) -> MissingPolicy:
        """Score with `value` in place of the missing feature."""
        return cls("default", float(value))

    @classmethod
    def reject(cls) -> MissingPolicy:
        """Refuse to score when the feature is missing."""
        return cls("reject", None)

    @classmethod
    def from_json(cls, raw: Any, where: str = "on_missing") -> MissingPolicy:
        """Parse `"reject"`, `{"policy": "reject"}` or `{"policy": "default", "value": x}`."""
        if raw == "reject":
            return cls.reject()
        if isinstance(raw, Mapping):
            policy = raw.get("policy")
            if policy == "reject" and set(raw) <= {"policy"}:
                return cls.reject()
            if policy == "default" and set(raw) <= {"policy", "value"}:
                value = raw.get("value")
                if isinstance(value, int | float) and not isinstance(value, bool):
                    if not math.isfinite(float(value)):
                        raise ContractError(f"{where}: default value must be finite, got {value}")
                    return cls.default(float(value))
        raise ContractError(
            f'{where}: expected "reject", {{"policy": "reject"}} or '
            f'{{"policy": "default", "value": <number>}}, got {raw!r}'
        )

    def to_json(self) -> dict[str, Any]:
        """Return the JSON form."""
        if self.policy == "reject":
            return {"policy": "reject"}
        return {"policy": "default", "value": self.value}


@dataclass(frozen=True)
class FeatureSpec:
    """One model input: name, dtype, maximum staleness in ms and the missing-value policy."""

    name: str
    ttl_ms: int
    on_missing: MissingPolicy
    dtype: str = "float32"

    def to_json(self) -> dict[str, Any]:
        """Return the JSON form."""
        return {
            "name": self.name,
            "dtype": self.dtype,
            "ttl_ms": self.ttl_ms,
            "on_missing": self.on_missing.to_json(),
        }


@dataclass(frozen=True)
class FeatureContract:
    """The ordered features a model takes, each with its TTL and missing policy."""

    features: tuple[FeatureSpec, ...]
    allow_nan: bool = False

    def __post_init__(self) -> None:
        names = [f.name for f in self.features]
        if not names:
            raise ContractError("a feature contract needs at least one feature")
        if len(set(names)) != len(names):
            raise ContractError(f"feature names must be unique, got {names}")

    @property
    def feature_names(self) -> tuple[str, ...]:
        """The feature names, in model input order."""
        return tuple(f.name for f in self.features)

    def __len__(self) -> int:
        return len(self.features)

    @classmethod
    def from_names(
        cls,
        names: Iterable[str],
        *,
        ttl_ms: int,
        on_missing: MissingPolicy | None = None,
        allow_nan: bool = False,
    ) -> FeatureContract:
        """Build a contract giving every feature the same TTL and policy (default: reject)."""
        policy = on_missing or MissingPolicy.reject()
        return cls(tuple(FeatureSpec(n, ttl_ms, policy) for n in names), allow_nan=allow_nan)

    @classmethod
    def from_json(cls, raw: Any) -> FeatureContract:
        """Parse and validate the JSON form; raises `ContractError` saying what is wrong."""
        if not isinstance(raw, Mapping) or not isinstance(raw.get("features"), list):
            raise ContractError(
                'expected a JSON object {"features": [...], "allow_nan": false}, got '
                f"{type(raw).__name__}"
            )
        unknown = set(raw) - {"features", "allow_nan"}
        if unknown:
            raise ContractError(f"unknown contract keys {sorted(unknown)}")
        allow_nan = raw.get("allow_nan", False)
        if not isinstance(allow_nan, bool):
            raise ContractError(f"allow_nan must be true or false, got {allow_nan!r}")
        specs = []
        for i, f in enumerate(raw["features"]):
            where = f"features[{i}]"
            if not isinstance(f, Mapping):
                raise ContractError(f"{where}: expected an object, got {f!r}")
            unknown = set(f) - {"name", "dtype", "ttl_ms", "on_missing"}
            if unknown:
                raise ContractError(f"{where}: unknown keys {sorted(unknown)}")
            name = f.get("name")
            if not isinstance(name, str) or not name:
                raise ContractError(f"{where}: name must be a non-empty string, got {name!r}")
            dtype = f.get("dtype", "float32")
            if dtype not in _DTYPES:
                raise ContractError(
                    f"{where} ({name}): dtype must be one of {_DTYPES}, got {dtype!r}"
                )
            ttl = f.get("ttl_ms")
            if not isinstance(ttl, int) or isinstance(ttl, bool) or ttl <= 0:
                raise ContractError(
                    f"{where} ({name}): ttl_ms must be a positive integer (milliseconds), "
                    f"got {ttl!r}"
                )
            if "on_missing" not in f:
                raise ContractError(f'{where} ({name}): on_missing is required (e.g. "reject")')
            specs.append(
                FeatureSpec(
                    name=name,
                    ttl_ms=ttl,
                    on_missing=MissingPolicy.from_json(f["on_missing"], f"{where} ({name})"),
                    dtype=dtype,
                )
            )
        return cls(tuple(specs), allow_nan=allow_nan)

    def to_json(self) -> dict[str, Any]:
        """Return the JSON form."""
        return {"features": [f.to_json() for f in self.features], "allow_nan": self.allow_nan}
