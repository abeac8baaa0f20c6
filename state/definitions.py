"""Feature definitions: sources, entities and windowed aggregations declared in a TOML file.

A definition file is the feature registry of a deployment. It declares where events come from
(`[sources.NAME]`), what they are about (`[entities.NAME]`) and the windowed aggregations computed
from them (`[features.NAME]`)::

    [entities.account]
    description = "a customer's broadband line"

    [sources.signal_errors]
    kind = "file"                 # file | kafka | generate
    format = "jsonl"              # jsonl | csv
    entity = "account"
    key = "account"               # the field holding the entity key
    time = "ts"                   # the event-time field
    time_format = "epoch_ms"      # epoch_ms | iso8601
    fields = { code = "string" }  # other fields the features read: "number" or "string"
    filters = { code = ["E1"] }   # optional: keep only events whose field is one of the values

    [features.signal_errors_24h]
    source = "signal_errors"
    aggregation = "count"         # count | sum | mean | min | max | last
    bucket = "1h"                 # durations: ms, s, m, h, d, w
    window = "24h"                # a multiple of bucket
    ttl = "5m"                    # how long a value counts as fresh
    online = ["rocksdb"]          # rocksdb and/or postgres
    alert = { above = 2000 }      # optional

Every aggregation but `count` names a numeric `field` of its source. Unknown keys are refused, and
every error names the file, the key path and, where it can be found, the line.

A feature's *version* is a digest of what defines its values (the source's name, key, time and
filters, the aggregation, its field, the bucket and the window): reformatting the file, or
changing a TTL, an alert or the stores, keeps it; anything that changes the values makes a new one.
"""

from __future__ import annotations

import functools
import hashlib
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

import orjson

__all__ = [
    "AGGREGATIONS",
    "STORES",
    "DefinitionError",
    "Definitions",
    "EntityDef",
    "FeatureDef",
    "SourceDef",
    "default_definitions",
    "default_definitions_path",
    "format_duration",
    "load_definitions",
    "parse_definitions",
    "parse_duration",
    "parse_instant",
]

AGGREGATIONS = ("count", "sum", "mean", "min", "max", "last")
"""Aggregations a feature can compute over its window."""
STORES = ("rocksdb", "postgres")
"""Online stores a feature can be kept in."""
SOURCE_KINDS = ("file", "kafka", "generate")
FORMATS = ("jsonl", "csv")
TIME_FORMATS = ("epoch_ms", "iso8601")
FIELD_TYPES = ("number", "string")
MAX_WINDOW_BUCKETS = 4096
"""Most buckets a window can span (each bucket is stored per entity)."""

_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}\Z")
_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,127}\Z")
_DURATION = re.compile(r"([0-9]+)(ms|s|m|h|d|w)\Z")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


class DefinitionError(ValueError):
    """A feature definition file is invalid; the message names the file, key path and line."""


def parse_duration(text: object, where: str = "duration") -> int:
    """Return the milliseconds of a duration such as ``"90s"``, ``"1h"`` or ``"7d"``."""
    if not isinstance(text, str) or not (m := _DURATION.fullmatch(text.strip())):
        raise ValueError(
            f"{where}: expected a duration such as '500ms', '30s', '5m', '1h', '7d' or '2w', "
            f"got {text!r}"
        )
    return int(m.group(1)) * _UNIT_MS[m.group(2)]


def parse_instant(text: str) -> int:
    """Return epoch milliseconds from digits (epoch ms) or ISO-8601 with a UTC offset or ``Z``."""
    s = text.strip()
    if s.isdigit():
        return int(s)
    try:
        moment = datetime.fromisoformat(s)
    except ValueError:
        raise ValueError(
            f"expected epoch milliseconds or ISO-8601 such as 2026-11-29T12:00:00Z, got {text!r}"
        ) from None
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset; add Z (UTC) or an offset such as +01:00")
    ms = round(moment.timestamp() * 1000)
    if ms < 0:
        raise ValueError(f"{text!r} is before 1970 (epoch ms must be >= 0)")
    return ms


def format_duration(ms: int) -> str:
    """Return the shortest exact duration text for `ms` milliseconds (``3600000`` -> ``"1h"``)."""
    for unit in ("d", "h", "m", "s"):
        if ms and ms % _UNIT_MS[unit] == 0:
            return f"{ms // _UNIT_MS[unit]}{unit}"
    return f"{ms}ms"


@dataclass(frozen=True, slots=True)
class EntityDef:
    """A kind of thing features describe, keyed by a string (e.g. an account)."""

    name: str
    description: str = ""


@dataclass(frozen=True, slots=True)
class SourceDef:
    """An event stream: its kind and format, its entity key and event-time fields, its filters."""

    name: str
    kind: str
    format: str
    entity: str
    key: str
    time: str
    time_format: str = "epoch_ms"
    fields: Mapping[str, str] = field(default_factory=dict)
    filters: Mapping[str, tuple[str | int | float, ...]] = field(default_factory=dict)
    description: str = ""

    def identity(self) -> dict[str, Any]:
        """Return what about the source defines the values of its features."""
        return {
            "name": self.name,
            "entity": self.entity,
            "key": self.key,
            "time": self.time,
            "time_format": self.time_format,
            "filters": {k: sorted(v, key=repr) for k, v in sorted(self.filters.items())},
        }


@dataclass(frozen=True, slots=True)
class FeatureDef:
    """A windowed aggregation over one source, per entity, and where and how long it is kept."""

    name: str
    source: SourceDef
    aggregation: str
    bucket_ms: int
    window_ms: int
    ttl_ms: int
    field: str | None = None
    online: tuple[str, ...] = ("rocksdb",)
    alert_above: float | None = None
    description: str = ""

    @property
    def window_buckets(self) -> int:
        """How many buckets the window spans."""
        return self.window_ms // self.bucket_ms

    @property
    def entity(self) -> str:
        """The entity this feature describes."""
        return self.source.entity

    def identity(self) -> dict[str, Any]:
        """Return the normalised definition of this feature's values (what `version` digests)."""
        return {
            "source": self.source.identity(),
            "aggregation": self.aggregation,
            "field": self.field,
            "bucket_ms": self.bucket_ms,
            "window_ms": self.window_ms,
        }

    @property
    def version(self) -> str:
        """A digest of `identity`: the same values, the same version."""
        body = orjson.dumps(self.identity(), option=orjson.OPT_SORT_KEYS)
        return hashlib.sha256(body).hexdigest()[:12]

    def to_json(self) -> dict[str, Any]:
        """Return the definition as the JSON `streamml features show` prints."""
        body: dict[str, Any] = {
            "name": self.name,
            "version": self.version,
            "entity": self.entity,
            "source": self.source.name,
            "aggregation": self.aggregation,
            "field": self.field,
            "bucket": format_duration(self.bucket_ms),
            "window": format_duration(self.window_ms),
            "ttl": format_duration(self.ttl_ms),
            "online": list(self.online),
        }
        if self.alert_above is not None:
            body["alert"] = {"above": self.alert_above}
        if self.description:
            body["description"] = self.description
        return body


@dataclass(frozen=True, slots=True)
class Definitions:
    """Every entity, source and feature of one definition file, in file order."""

    entities: Mapping[str, EntityDef]
    sources: Mapping[str, SourceDef]
    features: Mapping[str, FeatureDef]
    path: str = "<definitions>"

    def feature(self, name: str) -> FeatureDef:
        """Return the feature called `name`, or raise KeyError listing the known ones."""
        try:
            return self.features[name]
        except KeyError:
            known = ", ".join(self.features) or "none"
            raise KeyError(f"no feature {name!r} in {self.path} (known: {known})") from None

    def of_source(self, source: str) -> tuple[FeatureDef, ...]:
        """Return the features computed from `source`, in file order."""
        return tuple(f for f in self.features.values() if f.source.name == source)

    def select(self, names: Iterable[str] | None) -> tuple[FeatureDef, ...]:
        """Return the named features (all of them for None), checking every name."""
        if names is None:
            return tuple(self.features.values())
        return tuple(self.feature(n) for n in names)


class _Ctx:
    """The file being parsed, to name it and find lines in errors."""

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.lines = text.splitlines()

    def _line(self, keys: tuple[str, ...]) -> int | None:
        """Find the line of a key path: its `[table]` header, then the key inside it."""
        for cut in range(len(keys), 0, -1):
            header = ".".join(keys[:cut])
            for i, line in enumerate(self.lines):
                if line.strip().replace(" ", "") in (f"[{header}]", f"[[{header}]]"):
                    rest = keys[cut:]
                    if not rest:
                        return i + 1
                    for j in range(i + 1, len(self.lines)):
                        stripped = self.lines[j].strip()
                        if stripped.startswith("["):
                            break
                        if re.match(rf"{re.escape(rest[0])}\s*=", stripped):
                            return j + 1
                    return i + 1
        return None

    def error(self, keys: tuple[str, ...], message: str) -> DefinitionError:
        line = self._line(keys)
        where = f"{self.path}" + (f":{line}" if line else "")
        return DefinitionError(f"{where}: {'.'.join(keys)}: {message}")


def _table(ctx: _Ctx, raw: Any, keys: tuple[str, ...], allowed: Iterable[str], required=()):
    if not isinstance(raw, dict):
        raise ctx.error(keys, f"expected a table, got {type(raw).__name__}")
    allowed = tuple(allowed)
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise ctx.error((*keys, unknown[0]), f"unknown key (allowed: {', '.join(allowed)})")
    for key in required:
        if key not in raw:
            raise ctx.error((*keys, key), "is required")
    return raw


def _string(ctx: _Ctx, raw: Any, keys: tuple[str, ...], choices: Iterable[str] | None = None):
    if not isinstance(raw, str):
        raise ctx.error(keys, f"expected a string, got {raw!r}")
    if choices is not None and raw not in tuple(choices):
        raise ctx.error(keys, f"expected one of {', '.join(choices)}, got {raw!r}")
    return raw


def _name(ctx: _Ctx, raw: str, keys: tuple[str, ...]) -> str:
    if not _NAME.match(raw):
        raise ctx.error(
            keys, f"names are lowercase letters, digits and _ (at most 63), got {raw!r}"
        )
    return raw


def _duration(ctx: _Ctx, raw: Any, keys: tuple[str, ...]) -> int:
    try:
        ms = parse_duration(raw, "value")
    except ValueError as exc:
        raise ctx.error(keys, str(exc).removeprefix("value: ")) from None
    if ms <= 0:
        raise ctx.error(keys, f"expected a duration above 0, got {raw!r}")
    return ms


def _entity(ctx: _Ctx, name: str, raw: Any) -> EntityDef:
    keys = ("entities", name)
    _name(ctx, name, keys)
    raw = _table(ctx, raw, keys, ("description",))
    return EntityDef(name, _string(ctx, raw.get("description", ""), (*keys, "description")))


def _source(ctx: _Ctx, name: str, raw: Any, entities: Mapping[str, EntityDef]) -> SourceDef:
    keys = ("sources", name)
    _name(ctx, name, keys)
    raw = _table(
        ctx,
        raw,
        keys,
        (
            "kind",
            "format",
            "entity",
            "key",
            "time",
            "time_format",
            "fields",
            "filters",
            "description",
        ),
        ("kind", "entity", "key", "time"),
    )
    kind = _string(ctx, raw["kind"], (*keys, "kind"), SOURCE_KINDS)
    fmt = _string(ctx, raw.get("format", "jsonl"), (*keys, "format"), FORMATS)
    entity = _string(ctx, raw["entity"], (*keys, "entity"))
    if entity not in entities:
        known = ", ".join(entities) or "none declared"
        raise ctx.error((*keys, "entity"), f"unknown entity {entity!r} (known: {known})")
    key = _string(ctx, raw["key"], (*keys, "key"))
    time = _string(ctx, raw["time"], (*keys, "time"))
    time_format = _string(
        ctx, raw.get("time_format", "epoch_ms"), (*keys, "time_format"), TIME_FORMATS
    )
    fields: dict[str, str] = {}
    fraw = raw.get("fields", {})
    if not isinstance(fraw, dict):
        raise ctx.error((*keys, "fields"), 'expected a table of field = "number" | "string"')
    for fname, ftype in fraw.items():
        fkeys = (*keys, "fields", fname)
        if not _FIELD.match(fname):
            raise ctx.error(fkeys, f"not a usable field name: {fname!r}")
        if fname in (key, time):
            raise ctx.error(fkeys, f"{fname!r} is the source's key or time field already")
        fields[fname] = _string(ctx, ftype, fkeys, FIELD_TYPES)
    filters: dict[str, tuple[str | int | float, ...]] = {}
    filt = raw.get("filters", {})
    if not isinstance(filt, dict):
        raise ctx.error((*keys, "filters"), "expected a table of field = [allowed values]")
    for fname, values in filt.items():
        fkeys = (*keys, "filters", fname)
        if fname not in fields:
            raise ctx.error(
                fkeys,
                f"filters on a field the source does not declare in fields "
                f"(declared: {', '.join(fields) or 'none'})",
            )
        if not isinstance(values, list) or not values:
            raise ctx.error(fkeys, f"expected a non-empty list of allowed values, got {values!r}")
        for v in values:
            if isinstance(v, bool) or not isinstance(v, str | int | float):
                raise ctx.error(fkeys, f"allowed values are strings or numbers, got {v!r}")
        filters[fname] = tuple(values)
    return SourceDef(
        name,
        kind,
        fmt,
        entity,
        key,
        time,
        time_format,
        fields,
        filters,
        _string(ctx, raw.get("description", ""), (*keys, "description")),
    )


def _feature(ctx: _Ctx, name: str, raw: Any, sources: Mapping[str, SourceDef]) -> FeatureDef:
    keys = ("features", name)
    _name(ctx, name, keys)
    raw = _table(
        ctx,
        raw,
        keys,
        (
            "source",
            "aggregation",
            "field",
            "bucket",
            "window",
            "ttl",
            "online",
            "alert",
            "description",
        ),
        ("source", "aggregation", "bucket", "window", "ttl"),
    )
    source_name = _string(ctx, raw["source"], (*keys, "source"))
    source = sources.get(source_name)
    if source is None:
        known = ", ".join(sources) or "none declared"
        raise ctx.error((*keys, "source"), f"unknown source {source_name!r} (known: {known})")
    aggregation = _string(ctx, raw["aggregation"], (*keys, "aggregation"), AGGREGATIONS)
    fname = raw.get("field")
    if aggregation == "count":
        if fname is not None:
            raise ctx.error((*keys, "field"), "a count counts events and takes no field")
    else:
        if fname is None:
            raise ctx.error((*keys, "field"), f"a {aggregation} needs the numeric field it reads")
        fname = _string(ctx, fname, (*keys, "field"))
        declared = source.fields.get(fname)
        if declared is None:
            numeric = [f for f, t in source.fields.items() if t == "number"]
            raise ctx.error(
                (*keys, "field"),
                f"source {source.name!r} has no field {fname!r} (its number fields: "
                f"{', '.join(numeric) or 'none'}; declare it under [sources.{source.name}.fields])",
            )
        if declared != "number":
            raise ctx.error(
                (*keys, "field"),
                f"{fname!r} is a {declared} field; a {aggregation} needs a number field",
            )
    bucket = _duration(ctx, raw["bucket"], (*keys, "bucket"))
    window = _duration(ctx, raw["window"], (*keys, "window"))
    if window % bucket:
        raise ctx.error(
            (*keys, "window"),
            f"expected a multiple of the bucket ({format_duration(bucket)}), got {raw['window']!r}",
        )
    if window // bucket > MAX_WINDOW_BUCKETS:
        raise ctx.error(
            (*keys, "window"),
            f"spans {window // bucket} buckets; at most {MAX_WINDOW_BUCKETS} (use a longer bucket)",
        )
    ttl = _duration(ctx, raw["ttl"], (*keys, "ttl"))
    online = raw.get("online", ["rocksdb"])
    if not isinstance(online, list) or not online:
        raise ctx.error((*keys, "online"), f"expected a non-empty list of {', '.join(STORES)}")
    for store in online:
        _string(ctx, store, (*keys, "online"), STORES)
    if len(set(online)) != len(online):
        raise ctx.error((*keys, "online"), f"a store is listed twice: {online!r}")
    alert_above = None
    if "alert" in raw:
        alert = _table(ctx, raw["alert"], (*keys, "alert"), ("above",), ("above",))
        above = alert["above"]
        if isinstance(above, bool) or not isinstance(above, int | float):
            raise ctx.error((*keys, "alert", "above"), f"expected a number, got {above!r}")
        alert_above = above
    return FeatureDef(
        name=name,
        source=source,
        aggregation=aggregation,
        bucket_ms=bucket,
        window_ms=window,
        ttl_ms=ttl,
        field=fname,
        online=tuple(sorted(online, key=STORES.index)),
        alert_above=alert_above,
        description=_string(ctx, raw.get("description", ""), (*keys, "description")),
    )


def count_feature(
    name: str, bucket_ms: int, window_buckets: int, alert_above: float | None = None
) -> FeatureDef:
    """Return the signal-error count `name` over `window_buckets` buckets of `bucket_ms`.

    The bundled definition of that name with this bucket, window and alert (its TTL and
    description kept), or, for a name the bundled file does not hold, a count over the bundled
    signal-error source with a 5-minute TTL.
    """
    bundled = default_definitions()
    base = bundled.features.get(name) or bundled.features["signal_errors_24h"]
    if base.aggregation != "count":
        raise ValueError(f"{name!r} is a {base.aggregation}, not a count")
    return replace(
        base,
        name=name,
        bucket_ms=bucket_ms,
        window_ms=bucket_ms * window_buckets,
        alert_above=alert_above,
    )


def parse_definitions(text: str, path: str = "<definitions>") -> Definitions:
    """Parse and validate the text of a definition file; raise `DefinitionError` if invalid."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise DefinitionError(f"{path}: not valid TOML: {exc}") from None
    ctx = _Ctx(path, text)
    _table(ctx, raw, (), ("entities", "sources", "features"), ("entities", "sources", "features"))
    for section in ("entities", "sources", "features"):
        if not isinstance(raw[section], dict) or not raw[section]:
            raise ctx.error((section,), f"expected at least one [{section}.NAME] table")
    entities = {n: _entity(ctx, n, v) for n, v in raw["entities"].items()}
    sources = {n: _source(ctx, n, v, entities) for n, v in raw["sources"].items()}
    features = {n: _feature(ctx, n, v, sources) for n, v in raw["features"].items()}
    clash = set(features) & set(sources)
    if clash:
        name = sorted(clash)[0]
        raise ctx.error(("features", name), "a feature cannot share its name with a source")
    return Definitions(entities, sources, features, path)


def load_definitions(path: str | Path) -> Definitions:
    """Read and validate a definition file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise DefinitionError(f"{p}: cannot read the definition file: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise DefinitionError(f"{p}: not UTF-8 text") from None
    return parse_definitions(text, str(p))


def default_definitions_path() -> Path:
    """Return the path of the bundled definition file."""
    return Path(str(resources.files("streamml.state") / "bundled" / "features.toml"))


@functools.cache
def default_definitions() -> Definitions:
    """Return the bundled definitions: the signal-error count and the speed-test features."""
    return load_definitions(default_definitions_path())
