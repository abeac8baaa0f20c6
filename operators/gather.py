"""Reading what a prediction needs from the stores: online values and stored on-demand answers.

`StoredReader.read(pending)` fills each planned request's `Gathered` with its online feature
values (read as of the request's time, one multi-get per shard) and, per on-demand service, the
stored answer for its account (one multi-get per shard, answers and their extracted values
together), keeping recently parsed answers so alike requests do not parse them again. The
prediction operator and the REST service both call it; nothing here knows about Bytewax.
`fetched_doc` turns a completed fetch into the `Doc` a request uses.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol

import orjson
from streamml.operators.assembly import Doc, Gathered, Plan
from streamml.operators.fetch import FetchResult
from streamml.state.online import OnlineStore

__all__ = ["AnswerReader", "StoredReader", "fetched_doc"]

_DOC_CACHE = 2048
"""Parsed stored answers kept (least recently used dropped first)."""
_NO_DOC = Doc(None, None)

_Entry = tuple[int, bytes]


class AnswerReader(Protocol):
    """What `StoredReader` needs of an on-demand store (`OnDemandStore` or `OnDemandReader`)."""

    def shard_of(self, account: bytes) -> int:
        """Return the shard holding `account`."""
        ...

    def get_with_values(
        self, shard: int, service: str, accounts: Sequence[bytes]
    ) -> list[tuple[_Entry | None, _Entry | None]]:
        """Return each account's stored answer and its stored values."""
        ...


class StoredReader:
    """Read the online values and stored answers of planned requests (see the module docstring).

    The online store serves one feature (`OnlineStore.feature`); other online features of a
    contract read as missing.
    """

    def __init__(self, online: OnlineStore, answers: AnswerReader) -> None:
        self.online = online
        self.answers = answers
        self.online_feature = online.feature
        self.docs: dict[tuple[str, bytes], Doc] = {}

    def read(self, items: Sequence[tuple[Plan, Gathered]]) -> None:
        """Fill each `Gathered` with what is stored for its plan; sets `read_ms` per request."""
        if not items:
            return
        started = time.perf_counter()
        online_names = {name for plan, _ in items for name in plan.online}
        if online_names:
            values = self.online.get_batch(
                [plan.request.account for plan, _ in items], [plan.request.ts for plan, _ in items]
            )
            for name in online_names:
                served = name == self.online_feature
                for (plan, gathered), fv in zip(items, values, strict=True):
                    if name in plan.online:
                        gathered.online[name] = fv if served else None
        services = {s for plan, _ in items for s in plan.service_ttl_ms}
        for service in services:
            users = [(p, g) for p, g in items if service in p.service_ttl_ms]
            accounts = list(dict.fromkeys(p.request.account.encode() for p, _ in users))
            docs = self._stored(service, accounts)
            for plan, gathered in users:
                gathered.docs[service] = docs[plan.request.account.encode()]
        spent = (time.perf_counter() - started) * 1000.0 / len(items)
        for _, gathered in items:
            gathered.read_ms = spent

    def _stored(self, service: str, accounts: list[bytes]) -> dict[bytes, Doc]:
        by_shard: dict[int, list[bytes]] = {}
        for a in accounts:
            by_shard.setdefault(self.answers.shard_of(a), []).append(a)
        out: dict[bytes, Doc] = {}
        for shard, group in by_shard.items():
            stored = self.answers.get_with_values(shard, service, group)
            for a, (entry, values) in zip(group, stored, strict=True):
                out[a] = self._doc(service, a, entry, values)
        return out

    def _doc(
        self, service: str, account: bytes, entry: _Entry | None, values: _Entry | None
    ) -> Doc:
        """Return the stored answer as a `Doc`, kept while it stays the same answer."""
        if entry is None:
            return _NO_DOC
        key = (service, account)
        cached = self.docs.pop(key, None)
        if cached is None or cached.fetched_at != entry[0]:
            known = orjson.loads(values[1]) if values is not None and values[0] == entry[0] else {}
            cached = Doc(None, entry[0], values=known, raw=entry[1])
        self.docs[key] = cached
        if len(self.docs) > _DOC_CACHE:
            del self.docs[next(iter(self.docs))]
        return cached


def fetched_doc(result: FetchResult) -> Doc | None:
    """Return the `Doc` of a successful fetch (marked fetched), or None for a failed one."""
    if not result.ok:
        return None
    return Doc(result.document, result.fetched_at_ms, True, result.latency_ms)
