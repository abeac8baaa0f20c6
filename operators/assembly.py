"""Selection, feature assembly and scoring of prediction requests: the library under the flow.

The prediction flow's operator (`streamml.operators.predict`) and the REST service call these
functions; nothing here knows about Bytewax.

1. `plan_request(request, metadata)` selects the versions to score (the answer and its shadows,
   from the model's routing) and lists what the request needs: the online features and the
   on-demand services of every selected version, each once.
2. The caller gathers the values: online reads (`Gathered.online`), and per service the stored
   answer or a fetched one (`Gathered.docs`). `services_to_fetch` says which stored answers are
   too old (or absent) for some feature of the plan and must be fetched.
3. `resolve(plan, gathered, ...)` turns them into one input row per version, with each feature's
   value, `updated_at`, version and status (`fresh`, `stale`, `missing`, `fetched`,
   `defaulted`), applying each feature's missing policy; a version whose `reject` features are
   missing is not scored, and the features are named.
4. `score_resolved(scorer, items)` scores every version of several requests in one ONNX Runtime
   call per model version and returns the prediction records (answers and shadows) and the
   timeout records of requests whose answer could not be scored.

Freshness is judged at the request's own time `ts`: a value is fresh when
``ts - updated_at <= ttl``. Online values are read as of `ts` (a windowed value decays to it),
so a stale online value is still the exact value of its window and is used, marked `stale`. A
stale on-demand answer is fetched again; when the fetch fails or the deadline comes first, the
stale answer is used (marked `stale`) rather than a default.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from streamml.onnx_models import FeatureSpec, Selection
from streamml.operators.metadata import ModelMetadata, VersionInfo
from streamml.operators.records import PredictionRequest
from streamml.operators.scoring import PredictionBatch, ScoreBatch, ScoreError, Scorer
from streamml.state.online import FeatureRead
from streamml.state.predictions import FeatureRecord, Latency, PredictionRecord, TimeoutRecord

__all__ = [
    "REQUEST_FEATURE_VERSION",
    "Doc",
    "Gathered",
    "Plan",
    "Resolved",
    "Variant",
    "VariantRow",
    "extract_values",
    "plan_request",
    "resolve",
    "score_resolved",
    "services_to_fetch",
]

REQUEST_FEATURE_VERSION = "request"
"""Version recorded for features taken from the request's context."""


@dataclass(frozen=True, slots=True)
class Variant:
    """One version to score for a request, as which variant and in which role."""

    info: VersionInfo
    variant: str
    role: str


@dataclass(frozen=True, slots=True)
class Plan:
    """What one request needs: its versions, and the online features and services they read."""

    request: PredictionRequest
    revision: int
    variants: tuple[Variant, ...]
    online: tuple[str, ...]
    service_ttl_ms: Mapping[str, int]
    """Per on-demand service, the smallest TTL of the features it answers (what must be fresh)."""

    @property
    def answer(self) -> Variant:
        """The variant whose prediction is the answer (always the first)."""
        return self.variants[0]


def plan_request(
    request: PredictionRequest,
    metadata: ModelMetadata,
    cache: dict[Any, tuple[Any, ...]] | None = None,
) -> Plan | tuple[str, str]:
    """Select the versions for `request`; return a `Plan`, or ``(reason, detail)`` to dead-letter.

    Reasons: `unknown_model` (the registry has no such model) and `model_unavailable` (the
    model has no live version or split, or its answering version cannot be loaded). Shadows
    whose version cannot be loaded are left out. `cache` (a dict the caller keeps) remembers
    what a (metadata revision, model, selection) needs, so requests alike are planned once.
    """
    selection = metadata.select(request.model, request.account)
    key = (metadata.revision, request.model, selection)
    found = cache.get(key) if cache is not None else None
    if found is None:
        found = _needs(request.model, metadata, selection)
        if cache is not None:
            if len(cache) >= 1024:
                cache.clear()
            cache[key] = found
    if len(found) == 2:
        return found  # type: ignore[return-value]
    variants, online, ttl = found
    return Plan(request, metadata.revision, variants, online, ttl)


def _needs(model: str, metadata: ModelMetadata, selection: Selection | None) -> tuple[Any, ...]:
    entry = metadata.model(model)
    if entry is None:
        known = ", ".join(metadata.names()) or "none"
        return "unknown_model", f"no model {model!r} in the registry (models: {known})"
    if selection is None or selection.answer is None:
        return "model_unavailable", f"model {model!r} has no live version and no split"
    answer_version, answer_variant = selection.answer
    info = entry.version(answer_version)
    if info is None:
        problems = "; ".join(entry.problems) or "not in the registry"
        return "model_unavailable", f"{model}@{answer_version}: {problems}"
    variants = [Variant(info, answer_variant, "answer")]
    for version, variant, role in selection.variants()[1:]:
        shadow = entry.version(version)
        if shadow is not None and shadow.version != info.version:
            variants.append(Variant(shadow, variant, role))
    online: dict[str, None] = {}
    ttl: dict[str, int] = {}
    for v in variants:
        for spec in v.info.contract.features:
            src = spec.source
            if src.kind == "online":
                online[src.feature or spec.name] = None
            elif src.kind == "on_demand":
                service = src.service or ""
                ttl[service] = min(ttl.get(service, spec.ttl_ms), spec.ttl_ms)
    return tuple(variants), tuple(online), ttl


@dataclass(slots=True, eq=False)
class Doc:
    """An on-demand service's answer for the request's account.

    `document` is the parsed answer; a stored answer may come as `raw` bytes instead, parsed
    only when an expression is not among its `values` (the values extracted when it was
    fetched, by expression). Both None: there is no answer. `fetched` says it was fetched for
    this request (not read from the store); `fetch_ms` is how long that fetch took.
    """

    document: object | None
    fetched_at: int | None
    fetched: bool = False
    fetch_ms: float = 0.0
    values: dict[str, float | None] = field(default_factory=dict, repr=False)
    raw: bytes | None = field(default=None, repr=False)

    @property
    def present(self) -> bool:
        """Whether there is an answer."""
        return self.document is not None or self.raw is not None

    def extract(self, spec: FeatureSpec) -> float | None:
        """Return the value of `spec` in the answer (each expression evaluated once)."""
        key = spec.source.expression or ""
        values = self.values
        if key in values:
            return values[key]
        if self.document is None and self.raw is not None:
            self.document = orjson.loads(self.raw)
        value = values[key] = spec.source.extract(self.document)
        return value


def extract_values(document: object, specs: Sequence[FeatureSpec]) -> dict[str, float | None]:
    """Return the value of each on-demand spec in `document`, by expression."""
    return {s.source.expression or "": s.source.extract(document) for s in specs}


@dataclass(slots=True)
class Gathered:
    """The raw materials of a request's features, filled in as they arrive."""

    online: dict[str, FeatureRead | None] = field(default_factory=dict)
    docs: dict[str, Doc] = field(default_factory=dict)
    read_ms: float = 0.0


def services_to_fetch(plan: Plan, stored: Mapping[str, Doc]) -> list[str]:
    """Return the plan's services whose stored answer is absent or older than their TTL."""
    as_of = plan.request.ts
    return [
        service
        for service, ttl in plan.service_ttl_ms.items()
        if (doc := stored.get(service)) is None
        or not doc.present
        or doc.fetched_at is None
        or as_of - doc.fetched_at > ttl
    ]


@dataclass(frozen=True, slots=True)
class VariantRow:
    """One version's input row for a request, or the `reject` features that are missing."""

    variant: Variant
    row: np.ndarray | None
    features: tuple[FeatureRecord, ...]
    missing: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Resolved:
    """A request with every version's row, ready to score."""

    plan: Plan
    rows: tuple[VariantRow, ...]
    gathered: Gathered
    arrived_ns: int


def _feature(
    spec: FeatureSpec,
    request: PredictionRequest,
    gathered: Gathered,
) -> FeatureRecord:
    src = spec.source
    as_of = request.ts
    value: float | None = None
    updated_at: int | None = None
    status = "missing"
    if src.kind == "request":
        version = REQUEST_FEATURE_VERSION
        value = src.extract(request.context)
        if value is not None:
            updated_at, status = request.ts, "fresh"
    elif src.kind == "online":
        fv = gathered.online.get(src.feature or spec.name)
        version = "" if fv is None else fv.version
        if fv is not None and fv.value is not None and fv.updated_at is not None:
            value, updated_at = float(fv.value), fv.updated_at
            status = "fresh" if as_of - updated_at <= spec.ttl_ms else "stale"
    else:
        version = src.service or ""
        doc = gathered.docs.get(version)
        if doc is not None and doc.present:
            value = doc.extract(spec)
            if value is not None:
                updated_at = doc.fetched_at
                if doc.fetched:
                    status = "fetched"
                elif updated_at is not None and as_of - updated_at <= spec.ttl_ms:
                    status = "fresh"
                else:
                    status = "stale"
    if value is None and spec.on_missing.policy == "default":
        return FeatureRecord(spec.name, spec.on_missing.value, None, version, "defaulted")
    return FeatureRecord(spec.name, value, updated_at, version, status)


def resolve(plan: Plan, gathered: Gathered, *, arrived_ns: int) -> Resolved:
    """Build every version's row from what was gathered (see the module docstring)."""
    rows = []
    cache: dict[int, FeatureRecord] = {}
    for variant in plan.variants:
        records = []
        for spec in variant.info.contract.features:
            rec = cache.get(id(spec))
            if rec is None:
                rec = cache[id(spec)] = _feature(spec, plan.request, gathered)
            records.append(rec)
        missing = tuple(r.name for r in records if r.value is None)
        row = None
        if not missing:
            row = np.fromiter((r.value for r in records), dtype=np.float32, count=len(records))
        rows.append(VariantRow(variant, row, tuple(records), missing))
    return Resolved(plan, tuple(rows), gathered, arrived_ns)


def _latency(item: Resolved, score_ms: float, now_ns: int) -> Latency:
    total = (now_ns - item.arrived_ns) / 1e6
    fetch = max((d.fetch_ms for d in item.gathered.docs.values() if d.fetched), default=0.0)
    read = item.gathered.read_ms
    wait = max(0.0, total - read - fetch - score_ms)
    return Latency(read, fetch, wait, score_ms, total)


def score_resolved(
    scorer: Scorer, items: Sequence[Resolved], *, clock_ns=time.time_ns
) -> tuple[list[PredictionRecord], list[TimeoutRecord]]:
    """Score every version of `items`, one ONNX Runtime call per model version.

    Returns the prediction records (answers first per request, then shadows) and a timeout
    record for each request whose answer could not be scored: `missing_features` when `reject`
    features are missing (named in `missing`), `score_failed` when the model refused the row.
    Shadows that cannot be scored are left out.
    """
    groups: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for i, item in enumerate(items):
        for j, vr in enumerate(item.rows):
            if vr.row is not None:
                info = vr.variant.info
                groups.setdefault((info.name, info.version), []).append((i, j))
    results: dict[tuple[int, int], tuple[str, tuple[float, ...], tuple[str, ...]] | str] = {}
    started = time.perf_counter()
    batches = []
    for (model, version), idx in groups.items():
        matrix = np.stack([items[i].rows[j].row for i, j in idx])  # type: ignore[misc]
        ids = [f"{i}:{j}" for i, j in idx]
        batches.append(ScoreBatch(model, version, ids, matrix))
    for out in scorer.score_batch(batches) if batches else []:
        if isinstance(out, PredictionBatch):
            labels = out.labels.tolist()
            probs = out.probabilities.tolist()
            for rid, label, p in zip(out.request_ids, labels, probs, strict=True):
                i, j = map(int, rid.split(":"))
                results[(i, j)] = (str(label), tuple(p), out.classes)
        elif isinstance(out, ScoreError) and out.request_id is not None:
            i, j = map(int, out.request_id.split(":"))
            results[(i, j)] = f"{out.reason}: {out.detail}"
    score_ms = (time.perf_counter() - started) * 1000.0
    now_ns = clock_ns()
    scored_at = now_ns // 1_000_000
    predictions: list[PredictionRecord] = []
    timeouts: list[TimeoutRecord] = []
    for i, item in enumerate(items):
        request = item.plan.request
        latency = _latency(item, score_ms, now_ns)
        for j, vr in enumerate(item.rows):
            got = results.get((i, j))
            info = vr.variant.info
            if isinstance(got, tuple):
                label, probs, classes = got
                predictions.append(
                    PredictionRecord(
                        request.request_id,
                        info.name,
                        info.version,
                        vr.variant.variant,
                        vr.variant.role,
                        request.account,
                        request.ts,
                        label,
                        probs,
                        classes,
                        vr.features,
                        info.sha256,
                        item.plan.revision,
                        scored_at,
                        latency,
                    )
                )
            elif vr.variant.role == "answer":
                reason = "missing_features" if vr.row is None else "score_failed"
                timeouts.append(
                    TimeoutRecord(
                        request.request_id,
                        request.model,
                        request.account,
                        request.ts,
                        vr.missing if vr.row is None else (),
                        reason if got is None else f"{reason}: {got}",
                        item.plan.revision,
                        scored_at,
                    )
                )
    return predictions, timeouts
