"""How a model's prediction traffic is routed among its versions: live, an A/B split, shadows.

A `Routing` names, for one model, the `live` version, an optional A/B `split` of answering
traffic among versions (weights normalised to sum to 1) under an `experiment` name, and the
`shadow` versions that are scored on the same features and logged but never answered.

`select_variants(routing, account)` is the deterministic assignment: without a split the live
version answers; with one, the account's point in [0, 1) — the first 8 bytes of
blake2b(experiment, account) as an integer over 2**64 — is placed against the cumulative weights
of the split (versions in sorted order). An account therefore keeps its variant while the
experiment and weights are unchanged, in every process and on every machine (Python's `hash()`
is salted per process and never used). Moving weight from one version to another moves only the
accounts whose point lies in the part of [0, 1) that changed hands. Shadows never influence the
answer.

JSON form (the registry's `<name>/routing.json`):

```json
{"revision": 12, "live": "3", "experiment": "ramp-4", "split": {"3": 0.9, "4": 0.1},
 "shadow": ["5"], "updated_at": "2025-01-01T00:00:00+00:00", "updated_by": "ops"}
```
"""

from __future__ import annotations

import hashlib
import math
from bisect import bisect_right
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from streamml.onnx_models.errors import RegistryError

__all__ = [
    "LIVE_VARIANT",
    "ROUTING_FILE",
    "Routing",
    "RoutingError",
    "Selection",
    "ab_variant",
    "assignment_point",
    "normalise_split",
    "parse_split",
    "select_variants",
    "shadow_variant",
]

ROUTING_FILE = "routing.json"
"""File name of a model's routing, beside its `stages.json`."""
LIVE_VARIANT = "live"
"""Variant name of the live version when no split is active."""

_SCALE = float(1 << 64)
_SUM_TOLERANCE = 1e-9


class RoutingError(RegistryError, ValueError):
    """A routing is malformed or names versions it cannot use."""


def ab_variant(version: str) -> str:
    """Return the variant name of `version` as an arm of an A/B split: `ab:<version>`."""
    return f"ab:{version}"


def shadow_variant(version: str) -> str:
    """Return the variant name of `version` scored as a shadow: `shadow:<version>`."""
    return f"shadow:{version}"


def assignment_point(experiment: str, account: str) -> float:
    """Return the account's stable point in [0, 1) for `experiment` (blake2b, not `hash()`)."""
    digest = hashlib.blake2b(
        experiment.encode() + b"\x00" + account.encode(), digest_size=8
    ).digest()
    return int.from_bytes(digest, "big") / _SCALE


def normalise_split(
    weights: Mapping[str, float] | Iterable[tuple[str, float]],
) -> tuple[tuple[str, float], ...]:
    """Validate weights (finite, > 0, unique versions, at least two) and scale them to sum to 1.

    Returns `(version, weight)` pairs sorted by version. Weights that already sum to 1 (within
    1e-9) are kept as given, so normalising twice changes nothing.
    """
    pairs = list(weights.items()) if isinstance(weights, Mapping) else list(weights)
    if not pairs:
        return ()
    seen: set[str] = set()
    for version, weight in pairs:
        if not isinstance(version, str) or not version:
            raise RoutingError(f"split versions must be non-empty strings, got {version!r}")
        if version in seen:
            raise RoutingError(f"version {version!r} appears twice in the split")
        seen.add(version)
        if (
            not isinstance(weight, int | float)
            or isinstance(weight, bool)
            or not math.isfinite(weight)
            or weight <= 0
        ):
            raise RoutingError(
                f"split weight of version {version!r} must be a finite number > 0, got {weight!r}"
            )
    if len(pairs) < 2:
        raise RoutingError(
            f"a split needs at least two versions, got {[v for v, _ in pairs]}; to send all "
            f"traffic to one version make it live"
        )
    total = math.fsum(float(w) for _, w in pairs)
    scale = 1.0 if abs(total - 1.0) <= _SUM_TOLERANCE else total
    return tuple(sorted((v, float(w) / scale) for v, w in pairs))


def parse_split(text: str) -> tuple[tuple[str, float], ...]:
    """Parse `V=0.9,W=0.1` (any positive weights; they are normalised) into split pairs."""
    pairs = []
    for part in text.split(","):
        version, sep, raw = part.strip().partition("=")
        if not sep or not version.strip():
            raise RoutingError(f"expected VERSION=WEIGHT pairs like '3=0.9,4=0.1', got {text!r}")
        try:
            weight = float(raw)
        except ValueError:
            raise RoutingError(
                f"weight of version {version.strip()!r} is not a number: {raw!r}"
            ) from None
        pairs.append((version.strip(), weight))
    return normalise_split(pairs)


@dataclass(frozen=True)
class Routing:
    """The routing of one model's traffic; see the module docstring.

    Construction validates the shape (weights, duplicates, a version both in the split and a
    shadow, the live version as a shadow) and normalises the split; a split without an
    experiment name takes the model name as experiment. `validate(known)` checks the versions
    exist. `revision` is the registry revision that wrote this routing (0: never written).
    """

    name: str
    live: str | None = None
    experiment: str | None = None
    split: tuple[tuple[str, float], ...] = ()
    shadow: tuple[str, ...] = ()
    revision: int = 0
    updated_at: str | None = None
    updated_by: str | None = None
    _cumulative: tuple[float, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        split = normalise_split(self.split)
        object.__setattr__(self, "split", split)
        object.__setattr__(self, "shadow", tuple(self.shadow))
        if split and self.experiment is None:
            object.__setattr__(self, "experiment", self.name)
        if not split and self.experiment is not None:
            raise RoutingError(
                f"{self.name}: experiment {self.experiment!r} names an A/B split, but there is "
                f"no split; give the split weights too"
            )
        if len(set(self.shadow)) != len(self.shadow):
            raise RoutingError(f"{self.name}: shadow versions repeat: {list(self.shadow)}")
        both = sorted({v for v, _ in split} & set(self.shadow))
        if both:
            raise RoutingError(
                f"{self.name}: versions {both} are both in the split and shadows; a version "
                f"either answers (split) or is only logged (shadow)"
            )
        if self.live is not None and self.live in self.shadow:
            raise RoutingError(f"{self.name}: the live version {self.live!r} cannot be a shadow")
        cumulative, acc = [], 0.0
        for _, weight in split:
            acc += weight
            cumulative.append(acc)
        object.__setattr__(self, "_cumulative", tuple(cumulative))

    @property
    def weights(self) -> dict[str, float]:
        """The split as `{version: weight}` (empty without a split)."""
        return dict(self.split)

    def referenced(self) -> tuple[str, ...]:
        """Every version this routing may score: live, split arms, shadows (no repeats)."""
        out: list[str] = []
        for v in (self.live, *(v for v, _ in self.split), *self.shadow):
            if v is not None and v not in out:
                out.append(v)
        return tuple(out)

    def validate(self, known: Collection[str]) -> None:
        """Raise `RoutingError` naming every referenced version that is not in `known`."""
        unknown = [v for v in self.referenced() if v not in known]
        if unknown:
            raise RoutingError(
                f"{self.name}: unknown versions {unknown}; registered versions are "
                f"{sorted(known)} (see `streamml models list {self.name}`)"
            )

    def same_routes(self, other: Routing) -> bool:
        """Return whether `other` routes traffic the same way (revision and authorship ignored)."""
        return (self.live, self.experiment, self.split, self.shadow) == (
            other.live,
            other.experiment,
            other.split,
            other.shadow,
        )

    def to_json(self) -> dict[str, Any]:
        """Return the JSON form."""
        return {
            "revision": self.revision,
            "live": self.live,
            "experiment": self.experiment,
            "split": dict(self.split),
            "shadow": list(self.shadow),
            "updated_at": self.updated_at,
            "updated_by": self.updated_by,
        }

    @classmethod
    def from_json(cls, name: str, raw: Any) -> Routing:
        """Parse the JSON form; raises `RoutingError` saying what is wrong."""
        if not isinstance(raw, Mapping):
            raise RoutingError(f"{name}: routing must be a JSON object, got {type(raw).__name__}")
        split, shadow, revision = (
            raw.get("split") or {},
            raw.get("shadow") or [],
            raw.get("revision", 0),
        )
        live, experiment = raw.get("live"), raw.get("experiment")
        if not isinstance(split, Mapping):
            raise RoutingError(
                f"{name}: split must be an object {{version: weight}}, got {split!r}"
            )
        if not isinstance(shadow, list) or not all(isinstance(s, str) for s in shadow):
            raise RoutingError(f"{name}: shadow must be a list of versions, got {shadow!r}")
        if not isinstance(revision, int) or isinstance(revision, bool) or revision < 0:
            raise RoutingError(f"{name}: revision must be an integer >= 0, got {revision!r}")
        for key, value in (("live", live), ("experiment", experiment)):
            if value is not None and (not isinstance(value, str) or not value):
                raise RoutingError(
                    f"{name}: {key} must be a non-empty string or null, got {value!r}"
                )
        return cls(
            name=name,
            live=live,
            experiment=experiment,
            split=tuple(split.items()),
            shadow=tuple(shadow),
            revision=revision,
            updated_at=raw.get("updated_at"),
            updated_by=raw.get("updated_by"),
        )


@dataclass(frozen=True, slots=True)
class Selection:
    """The versions to score for one request.

    `answer` is `(version, variant)` of the version whose prediction is answered, or None when
    the model has neither a live version nor a split. `shadows` are scored and logged only.
    """

    answer: tuple[str, str] | None
    shadows: tuple[str, ...]

    def variants(self) -> tuple[tuple[str, str, str], ...]:
        """Every version to score as `(version, variant, role)`, the answer first."""
        out = [] if self.answer is None else [(*self.answer, "answer")]
        out += [(v, shadow_variant(v), "shadow") for v in self.shadows]
        return tuple(out)


def select_variants(routing: Routing, account: str) -> Selection:
    """Pick the answering version and the shadows for `account` (see the module docstring)."""
    if routing.split:
        assert routing.experiment is not None
        point = assignment_point(routing.experiment, account)
        i = min(bisect_right(routing._cumulative, point), len(routing.split) - 1)
        version = routing.split[i][0]
        return Selection((version, ab_variant(version)), routing.shadow)
    if routing.live is None:
        return Selection(None, routing.shadow)
    return Selection((routing.live, LIVE_VARIANT), routing.shadow)
