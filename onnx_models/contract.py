"""A model's feature contract: which features it takes, in order, how fresh, and what if missing.

JSON form (stored beside every registered version):

```json
{
  "features": [
    {"name": "signal_errors_24h", "dtype": "float32", "ttl_ms": 300000,
     "on_missing": {"policy": "default", "value": 0.0},
     "source": {"kind": "online", "feature": "signal_errors_24h"}},
    {"name": "latency_ms", "dtype": "float32", "ttl_ms": 86400000, "on_missing": "reject",
     "source": {"kind": "request", "expression": "latency_ms"}},
    {"name": "wifi_rssi_dbm", "dtype": "float32", "ttl_ms": 900000, "on_missing": "reject",
     "source": {"kind": "on_demand", "service": "telemetry",
                "expression": "min(devices[].rssi_dbm)"}}
  ],
  "allow_nan": false
}
```

A feature value older than `ttl_ms` counts as missing; a missing feature then follows
`on_missing`: `{"policy": "default", "value": x}` scores with `x`, `"reject"` (or
`{"policy": "reject"}`) refuses the request. `allow_nan` says whether the model accepts NaN inputs.

`source` says where a value comes from: the request's `context` object (`request`, a JMESPath
expression on it), the online feature store (`online`, the stored feature's name, by default the
feature's own name) or an on-demand service (`on_demand`, the service's name and a JMESPath
expression on its JSON answer). A feature without `source` is read from the online store under its
own name, so contracts written before sources existed keep their meaning.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import jmespath.parser
from streamml.onnx_models.expressions import ExpressionError, compile_expression, number_getter

__all__ = [
    "SOURCE_KINDS",
    "ContractError",
    "FeatureContract",
    "FeatureSource",
    "FeatureSpec",
    "MissingPolicy",
    "SourceKind",
]

_DTYPES = ("float32",)

SourceKind = Literal["request", "online", "on_demand"]
"""Where a feature value comes from: the request context, the online store, a service."""

SOURCE_KINDS: tuple[str, ...] = ("request", "online", "on_demand")
"""Every source kind, in the order `FeatureContract.by_source` documents them."""

_SOURCE_KEYS: dict[str, frozenset[str]] = {
    "request": frozenset({"kind", "expression"}),
    "online": frozenset({"kind", "feature"}),
    "on_demand": frozenset({"kind", "service", "expression"}),
}
_SERVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


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
class FeatureSource:
    """Where one feature's value comes from.

    - `request`: `expression` (JMESPath) evaluated on the request's `context` object;
    - `online`: the online store's feature `feature` (None: the feature's own name, filled in by
      `FeatureSpec`);
    - `on_demand`: `expression` evaluated on the JSON answer of the service named `service`.

    Construction validates and compiles the expression once; `extract` reuses it.
    """

    kind: SourceKind
    expression: str | None = None
    feature: str | None = None
    service: str | None = None
    _compiled: jmespath.parser.ParsedResult | None = field(
        default=None, init=False, repr=False, compare=False
    )
    _getter: Callable[[Any], float | None] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if self.kind not in _SOURCE_KEYS:
            raise ContractError(f"kind must be one of {list(SOURCE_KINDS)}, got {self.kind!r}")
        if self.kind == "online":
            if self.expression is not None or self.service is not None:
                raise ContractError("an online source takes only a feature name")
            if self.feature is not None and (not isinstance(self.feature, str) or not self.feature):
                raise ContractError(
                    f"feature must be a non-empty string (the online store's feature name), "
                    f"got {self.feature!r}"
                )
            return
        if self.feature is not None:
            raise ContractError(f"a {self.kind} source takes no feature name")
        if self.kind == "request" and self.service is not None:
            raise ContractError("a request source takes no service")
        if self.kind == "on_demand" and (
            not isinstance(self.service, str) or not _SERVICE_NAME.fullmatch(self.service)
        ):
            raise ContractError(
                "service must be a non-empty name of letters, digits, '_', '.' or '-' "
                f'(at most 64, e.g. "telemetry"), got {self.service!r}'
            )
        try:
            compiled = compile_expression(self.expression)
        except ExpressionError as exc:
            raise ContractError(str(exc)) from None
        object.__setattr__(self, "_compiled", compiled)
        object.__setattr__(self, "_getter", number_getter(compiled))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.kind, self.expression, self.feature, self.service))

    @classmethod
    def request(cls, expression: str) -> FeatureSource:
        """Take the value from the request's context with the JMESPath `expression`."""
        return cls("request", expression=expression)

    @classmethod
    def online(cls, feature: str | None = None) -> FeatureSource:
        """Read the value from the online store (`feature` defaults to the spec's name)."""
        return cls("online", feature=feature)

    @classmethod
    def on_demand(cls, service: str, expression: str) -> FeatureSource:
        """Take the value from the JSON answer of `service` with the JMESPath `expression`."""
        return cls("on_demand", expression=expression, service=service)

    @classmethod
    def from_json(cls, raw: Any, where: str = "source") -> FeatureSource:
        """Parse `{"kind": ..., ...}`; raises `ContractError` naming `where` and the field."""
        if not isinstance(raw, Mapping):
            raise ContractError(
                f'{where}: expected an object like {{"kind": "online"}}, got {raw!r}'
            )
        kind = raw.get("kind")
        if kind not in _SOURCE_KEYS:
            raise ContractError(f"{where}.kind: expected one of {list(SOURCE_KINDS)}, got {kind!r}")
        unknown = set(raw) - _SOURCE_KEYS[kind]
        if unknown:
            allowed = sorted(_SOURCE_KEYS[kind])
            raise ContractError(
                f"{where}: unknown keys {sorted(unknown)} for a {kind} source (allowed: {allowed})"
            )
        try:
            return cls(kind, **{k: raw.get(k) for k in _SOURCE_KEYS[kind] - {"kind"}})
        except ContractError as exc:
            raise ContractError(f"{where}: {exc}") from None

    def to_json(self) -> dict[str, Any]:
        """Return the JSON form."""
        out: dict[str, Any] = {"kind": self.kind}
        if self.kind == "online":
            if self.feature is not None:
                out["feature"] = self.feature
        else:
            if self.kind == "on_demand":
                out["service"] = self.service
            out["expression"] = self.expression
        return out

    def extract(self, doc: Any) -> float | None:
        """Evaluate the expression on `doc`; return a finite float, or None.

        None when the result is missing, null, a bool, not a number or not finite, or when the
        document does not fit the expression (e.g. `min()` over strings). Online sources have no
        expression: calling this on one is a programmer error (`TypeError`).
        """
        if self._getter is None:
            raise TypeError(
                f"an online source has no expression; read {self.feature!r} from the online store"
            )
        return self._getter(doc)


_ONLINE_UNDER_OWN_NAME = FeatureSource.online()


@dataclass(frozen=True)
class FeatureSpec:
    """One model input: name, dtype, maximum staleness in ms, missing policy and source.

    `source` defaults to the online store under the feature's own name; an online source without
    a feature name is given this spec's name, so `source.feature` is always set for online specs.
    """

    name: str
    ttl_ms: int
    on_missing: MissingPolicy
    dtype: str = "float32"
    source: FeatureSource = _ONLINE_UNDER_OWN_NAME

    def __post_init__(self) -> None:
        if self.source.kind == "online" and self.source.feature is None:
            object.__setattr__(self, "source", FeatureSource.online(self.name))

    @property
    def kind(self) -> SourceKind:
        """The kind of this feature's source."""
        return self.source.kind

    def to_json(self) -> dict[str, Any]:
        """Return the JSON form."""
        return {
            "name": self.name,
            "dtype": self.dtype,
            "ttl_ms": self.ttl_ms,
            "on_missing": self.on_missing.to_json(),
            "source": self.source.to_json(),
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

    def by_source(self, kind: SourceKind) -> tuple[FeatureSpec, ...]:
        """Return the features whose source is `kind`, in model input order."""
        if kind not in _SOURCE_KEYS:
            raise ValueError(f"kind must be one of {list(SOURCE_KINDS)}, got {kind!r}")
        return tuple(f for f in self.features if f.kind == kind)

    @property
    def services(self) -> tuple[str, ...]:
        """The on-demand services the features need, each once, in first-use order."""
        names = (f.source.service for f in self.features if f.source.service)
        return tuple(dict.fromkeys(names))

    def for_service(self, service: str) -> tuple[FeatureSpec, ...]:
        """Return the on-demand features answered by `service`, in model input order."""
        return tuple(f for f in self.features if f.source.service == service)

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
            unknown = set(f) - {"name", "dtype", "ttl_ms", "on_missing", "source"}
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
            source = _ONLINE_UNDER_OWN_NAME
            if "source" in f:
                source = FeatureSource.from_json(f["source"], f"{where} ({name}) source")
            specs.append(
                FeatureSpec(
                    name=name,
                    ttl_ms=ttl,
                    on_missing=MissingPolicy.from_json(f["on_missing"], f"{where} ({name})"),
                    dtype=dtype,
                    source=source,
                )
            )
        return cls(tuple(specs), allow_nan=allow_nan)

    def to_json(self) -> dict[str, Any]:
        """Return the JSON form."""
        return {"features": [f.to_json() for f in self.features], "allow_nan": self.allow_nan}
