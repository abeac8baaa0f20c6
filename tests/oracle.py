"""A brute-force reference of the rolling count, written from the specification alone."""

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
