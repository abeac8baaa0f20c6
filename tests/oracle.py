"""Brute-force references of the rolling count and windowed features, from the specification."""

from __future__ import annotations

from collections import defaultdict


class RollingOracle:
    """Applies events one at a time, keeping every accepted event's bucket per account."""

    def __init__(self, window: int = 24, bucket_ms: int = 3_600_000, threshold: int = 2000):
        self.window = window
        self.bucket_ms = bucket_ms
        self.threshold = threshold
        self.buckets: dict[str, list[int]] = defaultdict(list)
        self.max_bucket: dict[str, int] = {}
        self.in_alert: dict[str, bool] = defaultdict(bool)
        self.updated_at: dict[str, int] = {}

    def apply(self, account: str, ts: int):
        """Return ('late', None, False) or ('accepted', value, fired)."""
        bucket = ts // self.bucket_ms
        m = self.max_bucket.get(account)
        if m is not None and bucket < m - (self.window - 1):
            return "late", None, False
        self.buckets[account].append(bucket)
        m = bucket if m is None else max(m, bucket)
        self.max_bucket[account] = m
        self.updated_at[account] = max(self.updated_at.get(account, -1), ts)
        value = sum(1 for x in self.buckets[account] if m - (self.window - 1) <= x <= m)
        fired = False
        if value > self.threshold and not self.in_alert[account]:
            fired = True
            self.in_alert[account] = True
        elif value <= self.threshold:
            self.in_alert[account] = False
        return "accepted", value, fired

    def value_as_of(self, account: str, as_of: int) -> int:
        """Sum of accepted events in the window ending at the bucket of `as_of`.

        Exact for reads at or after the account's latest bucket.
        """
        t = as_of // self.bucket_ms
        return sum(1 for x in self.buckets.get(account, []) if t - (self.window - 1) <= x <= t)


SUM_SCALE = 1_000_000
"""Sums are exact in millionths (the specification of `sum` and `mean`)."""


def _agg(f, events):
    """Aggregate accepted events [(ts, arrival, fields)] the way a feature defines it."""
    if f.aggregation == "count":
        return float(len(events))
    if not events:
        return 0.0 if f.aggregation == "sum" else float("nan")
    xs = [e[2][f.field] for e in events]
    if f.aggregation in ("sum", "mean"):
        total = sum(round(v * SUM_SCALE) for v in xs)
        return total / SUM_SCALE if f.aggregation == "sum" else total / SUM_SCALE / len(xs)
    if f.aggregation == "min":
        return min(xs)
    if f.aggregation == "max":
        return max(xs)
    return max(events, key=lambda e: (e[0], e[1]))[2][f.field]


class FeaturesOracle:
    """Applies events one at a time to windowed features, keeping every accepted event."""

    def __init__(self, features):
        self.features = tuple(features)
        self.m = {}  # (entity, bucket_ms) -> M
        self.kept = {}  # (entity, feature) -> [(ts, arrival, fields)]
        self.alert = {}
        self.arrival = 0

    def apply(self, entity, ts, fields):
        out = {}
        self.arrival += 1
        m_before = {}
        for f in self.features:
            m_before.setdefault(f.bucket_ms, self.m.get((entity, f.bucket_ms), -1))
        for f in self.features:
            b = ts // f.bucket_ms
            mb = m_before[f.bucket_ms]
            ma = max(mb, b)
            w = f.window_buckets
            if b < mb - (w - 1):
                out[f.name] = (False, float("nan"), False)
                continue
            kept = self.kept.setdefault((entity, f.name), [])
            kept.append((ts, self.arrival, fields))
            inside = [e for e in kept if ma - (w - 1) <= e[0] // f.bucket_ms <= ma]
            value = _agg(f, inside)
            fired = False
            if f.alert_above is not None:
                was = self.alert.get((entity, f.name), False)
                fired = value > f.alert_above and not was
                self.alert[(entity, f.name)] = value > f.alert_above
            out[f.name] = (True, value, fired)
        for bms in m_before:
            self.m[(entity, bms)] = max(m_before[bms], ts // bms)
        return out

    def read(self, entity, as_of):
        """Read as of a time: the window ending then, among the buckets still retained."""
        out = {}
        for f in self.features:
            a = as_of // f.bucket_ms
            w = f.window_buckets
            retained = self.m.get((entity, f.bucket_ms), -1) - (w - 1)
            kept = self.kept.get((entity, f.name), [])
            lo = max(a - (w - 1), retained)
            inside = [e for e in kept if lo <= e[0] // f.bucket_ms <= a]
            out[f.name] = _agg(f, inside)
        return out
