"""Per-account hidden truth behind the speed-test demo: profiles, telemetry and requests.

Every account has a profile drawn, reproducibly from `(seed, account)` through a BLAKE2b hash,
the way `streamml.onnx_models.data` draws a training row: its line (signal errors, node health),
its home (wifi RSSI and noise of the weakest device, connected devices, modem uptime), a reference
speed test and the latent label noise. The account's latent trouble is the label of that
reference test under the hidden rule.

`telemetry_document` renders a profile as the JSON answer of the device-telemetry service, whose
contract expressions (`min(devices[].rssi_dbm)`, ...) recover exactly the profile's values.

`generate_requests` draws slow speed-test prediction requests: accounts with a heavy-tailed
popularity, timestamps spread over `span_ms` up to `now_ms`, and per request a fresh speed test
(latency, packet loss, speed ratios) on the account's line. The label of each request is the
hidden rule on the profile's features and this test, with the account's label noise; it is
returned beside the requests (`GeneratedRequests.truth`), never inside them. Requests are drawn
in fixed blocks, so a request depends only on `(config, partition, index)`, not on how the range
was asked for.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from streamml.onnx_models.data import (
    CLASSES,
    FEATURE_NAMES,
    apply_label_noise,
    draw_home,
    draw_label_noise,
    draw_line,
    draw_speed_ratios,
    draw_test_conditions,
    hidden_scores,
)
from streamml.onnx_models.training import TRIAGE_MODEL_NAME

__all__ = [
    "BANDS",
    "CONTEXT_FIELDS",
    "FIRMWARE_EFFECT",
    "AccountProfile",
    "GeneratedRequests",
    "OutcomeConfig",
    "RequestGeneratorConfig",
    "RequestTruth",
    "account_profile",
    "firmware_updated",
    "generate_outcomes",
    "generate_requests",
    "iter_truth",
    "partition_sizes",
    "telemetry_document",
]

BANDS: tuple[str, ...] = ("2.4GHz", "5GHz", "6GHz")
"""Wifi bands a device can be connected on."""

CONTEXT_FIELDS: tuple[str, ...] = (
    "download_ratio",
    "upload_ratio",
    "latency_ms",
    "packet_loss_pct",
)
"""Features a speed-test request carries in its context."""

_MAX_ACCOUNT_BYTES = 256
_BLOCK = 1024
_PROFILE_CACHE = 1 << 16


@dataclass(frozen=True, slots=True)
class AccountProfile:
    """The hidden truth of one account, drawn from `(seed, account)`.

    `label_noise` is the account's Gumbel noise per class (in `CLASSES` order) and `flipped_to`
    the class its labels are replaced by (the 5% label flips of the training data), if any.
    `reference_latency_ms` and `reference_packet_loss_pct` are the account's reference speed
    test, whose label under the hidden rule is `trouble`.
    """

    account: str
    seed: int
    signal_errors_24h: float
    node_health: float
    wifi_rssi_dbm: float
    wifi_noise_dbm: float
    connected_devices: int
    modem_uptime_h: int
    reference_latency_ms: float
    reference_packet_loss_pct: float
    label_noise: tuple[float, float, float]
    flipped_to: str | None
    trouble: str

    def features(self) -> dict[str, float]:
        """Return the account-level features (online and telemetry), by feature name."""
        return {
            "signal_errors_24h": self.signal_errors_24h,
            "wifi_rssi_dbm": self.wifi_rssi_dbm,
            "wifi_noise_dbm": self.wifi_noise_dbm,
            "connected_devices": float(self.connected_devices),
            "modem_uptime_h": float(self.modem_uptime_h),
            "node_health": self.node_health,
        }


def _rng(seed: int, account: str, stream: int) -> np.random.Generator:
    key = f"{seed}\x00{account}".encode("utf-8", errors="surrogatepass")
    digest = hashlib.blake2b(key, digest_size=16, person=b"streamml-acct").digest()
    words = np.frombuffer(digest, dtype="<u4").tolist()
    return np.random.default_rng([*words, stream])


def _check_account(account: str) -> None:
    if not isinstance(account, str) or not account:
        raise ValueError(f"account must be a non-empty string, got {account!r}")
    size = len(account.encode("utf-8", errors="surrogatepass"))
    if size > _MAX_ACCOUNT_BYTES:
        raise ValueError(f"account must be at most {_MAX_ACCOUNT_BYTES} UTF-8 bytes, got {size}")


@functools.lru_cache(maxsize=_PROFILE_CACHE)
def _profile(seed: int, account: str) -> AccountProfile:
    rng = _rng(seed, account, 0)
    cols = draw_line(rng, 1)
    cols |= draw_test_conditions(rng, cols["node_health"])
    cols |= draw_home(rng, 1)
    gumbel, flip_to = draw_label_noise(rng, 1)
    label = int(apply_label_noise(hidden_scores(cols), gumbel, flip_to)[0])
    v = {name: float(col[0]) for name, col in cols.items()}
    return AccountProfile(
        account=account,
        seed=seed,
        signal_errors_24h=v["signal_errors_24h"],
        node_health=v["node_health"],
        wifi_rssi_dbm=v["wifi_rssi_dbm"],
        wifi_noise_dbm=v["wifi_noise_dbm"],
        connected_devices=int(v["connected_devices"]),
        modem_uptime_h=int(v["modem_uptime_h"]),
        reference_latency_ms=v["latency_ms"],
        reference_packet_loss_pct=v["packet_loss_pct"],
        label_noise=(float(gumbel[0, 0]), float(gumbel[0, 1]), float(gumbel[0, 2])),
        flipped_to=CLASSES[int(flip_to[0])] if flip_to[0] >= 0 else None,
        trouble=CLASSES[label],
    )


def account_profile(seed: int, account: str) -> AccountProfile:
    """Return the hidden profile of `account`; the same `(seed, account)` gives the same profile.

    `account` must be a non-empty string of at most 256 UTF-8 bytes (`ValueError` otherwise).
    """
    _check_account(account)
    return _profile(int(seed), account)


def telemetry_document(profile: AccountProfile) -> dict[str, Any]:
    """Return the telemetry service's JSON answer for the account of `profile`.

    `devices` has `connected_devices` entries; the weakest (lowest RSSI) carries the profile's
    RSSI and noise, every other device a RSSI at least 0.9 dB higher. The modem reports the
    profile's uptime, the node its health. Other fields (MACs, bands, retransmits, SNR, codewords,
    node id) are drawn from the same `(seed, account)` and fit the profile.
    """
    rng = _rng(profile.seed, profile.account, 1)
    n = profile.connected_devices
    weakest = int(rng.integers(n))
    macs = rng.integers(0, 256, size=(n, 4))
    bands = rng.choice(len(BANDS), size=n, p=[0.45, 0.45, 0.10])
    # Other devices hear the gateway better than the weakest one, up to -20 dBm.
    stronger = rng.uniform(profile.wifi_rssi_dbm + 1.0, -20.0, size=n)
    noises = np.clip(rng.normal(-92.0, 4.0, size=n), -105.0, -75.0)
    extra = rng.exponential(1.0, size=n)
    devices = []
    for i in range(n):
        if i == weakest:
            rssi, noise = profile.wifi_rssi_dbm, profile.wifi_noise_dbm
        else:
            rssi = round(float(stronger[i]), 1)
            noise = round(float(noises[i]), 1)
        retransmits = min(0.8 * max(30.0 - (rssi - noise), 0.0) + float(extra[i]), 100.0)
        devices.append(
            {
                "mac": "02:" + ":".join(f"{b:02x}" for b in macs[i].tolist()) + f":{i:02x}",
                "band": BANDS[int(bands[i])],
                "rssi_dbm": rssi,
                "noise_dbm": noise,
                "retransmits_pct": round(retransmits, 1),
            }
        )
    errors = profile.signal_errors_24h
    strain = float(np.log1p(errors) / np.log1p(400.0))
    return {
        "account": profile.account,
        "devices": devices,
        "modem": {
            "uptime_h": profile.modem_uptime_h,
            "snr_db": round(40.0 - 6.0 * strain + float(rng.normal(0.0, 1.0)), 1),
            "codewords": {
                "corrected": int(errors * rng.uniform(20.0, 60.0)),
                "uncorrected": int(errors * rng.uniform(0.5, 1.5)),
            },
        },
        "node": {"id": f"node-{int(rng.integers(1 << 32)):08x}", "health": profile.node_health},
    }


@dataclass(frozen=True, slots=True)
class RequestGeneratorConfig:
    """Shape of the generated speed-test requests.

    `requests` in total over `partitions`; accounts `acct-00000000`.. drawn from `accounts` ids
    with a Zipf-like popularity (`zipf`); timestamps spread evenly over the `span_ms` before
    `now_ms` (the CLI passes the wall clock), the last one at `now_ms`. `seed` drives both the
    requests and the account profiles, so a telemetry service started with the same seed answers
    the same truth. `batch_size` is how many requests a source partition emits at a time.

    `stream` draws another stream of requests from the same accounts (a later day, say): its
    request ids are ``st-SEED-sSTREAM-PARTITION-INDEX``; stream 0 is ``st-SEED-PARTITION-INDEX``.

    `drift_at_ms` changes the world at that time: a modem firmware rollout reaches a share
    `drift_share` of the accounts (drawn from the account id), and from then on a slow test on
    an updated modem is modem trouble that looks like network trouble (see `FIRMWARE_EFFECT`).
    """

    requests: int = 10_000
    accounts: int = 100_000
    seed: int = 7
    partitions: int = 1
    now_ms: int = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1000)
    span_ms: int = 3_600_000
    zipf: float = 1.1
    model: str = TRIAGE_MODEL_NAME
    batch_size: int = 1024
    drift_at_ms: int | None = None
    drift_share: float = 0.5
    stream: int = 0

    def __post_init__(self) -> None:
        problems = []
        if not 0.0 <= self.drift_share <= 1.0:
            problems.append(f"0 <= drift_share <= 1 (got {self.drift_share})")
        if self.requests < 0:
            problems.append(f"requests >= 0 (got {self.requests})")
        if self.accounts < 1:
            problems.append(f"accounts >= 1 (got {self.accounts})")
        if self.partitions < 1:
            problems.append(f"partitions >= 1 (got {self.partitions})")
        if self.seed < 0:
            problems.append(f"seed >= 0 (got {self.seed})")
        if not 0 <= self.span_ms <= self.now_ms:
            problems.append(f"0 <= span_ms <= now_ms (got {self.span_ms}, {self.now_ms})")
        if self.batch_size < 1:
            problems.append(f"batch_size >= 1 (got {self.batch_size})")
        if problems:
            raise ValueError("request generator needs " + ", ".join(problems))


@dataclass(frozen=True, slots=True)
class RequestTruth:
    """What the model should find for one request: its label and its full feature row."""

    request_id: str
    account: str
    label: str
    features: tuple[float, ...]

    def feature_dict(self) -> dict[str, float]:
        """Return the feature row by feature name."""
        return dict(zip(FEATURE_NAMES, self.features, strict=True))


@dataclass(frozen=True, slots=True)
class GeneratedRequests:
    """Requests (JSON-ready dicts) and, aside, the hidden truth of each, in the same order."""

    requests: list[dict[str, Any]]
    truth: list[RequestTruth]

    def __len__(self) -> int:
        return len(self.requests)


def partition_sizes(config: RequestGeneratorConfig) -> list[int]:
    """Return the number of requests of each partition."""
    base, extra = divmod(config.requests, config.partitions)
    return [base + (1 if i < extra else 0) for i in range(config.partitions)]


@functools.lru_cache(maxsize=8)
def _popularity(seed: int, accounts: int, zipf: float) -> tuple[np.ndarray, np.ndarray]:
    ranks = np.arange(1, accounts + 1, dtype=np.float64)
    cdf = np.cumsum(ranks**-zipf)
    cdf /= cdf[-1]
    # Account ids are a fixed permutation of popularity ranks.
    return cdf, np.random.default_rng([seed, 0xACC]).permutation(accounts)


def _block(config: RequestGeneratorConfig, partition: int, block: int) -> GeneratedRequests:
    size = partition_sizes(config)[partition]
    first = block * _BLOCK
    n = min(_BLOCK, size - first)
    key = [config.seed, partition, block, 0x5EED] + ([config.stream] if config.stream else [])
    rng = np.random.default_rng(key)
    prefix = f"st-{config.seed}-s{config.stream}" if config.stream else f"st-{config.seed}"
    cdf, perm = _popularity(config.seed, config.accounts, config.zipf)
    ids = perm[np.minimum(np.searchsorted(cdf, rng.random(n)), config.accounts - 1)]
    accounts = [f"acct-{i:08d}" for i in ids.tolist()]
    profiles = [_profile(config.seed, a) for a in accounts]
    features = [p.features() for p in profiles]
    cols = {name: np.array([f[name] for f in features]) for name in features[0]}
    cols |= draw_test_conditions(rng, cols["node_health"])
    index = np.arange(first, first + n, dtype=np.int64)
    ts = config.now_ms - config.span_ms + ((index + 1) * config.span_ms) // max(size, 1)
    updated = _updated_modems(config, accounts, ts)
    cols["latency_ms"] = cols["latency_ms"] + updated * FIRMWARE_EFFECT["latency_ms"]
    cols["packet_loss_pct"] = cols["packet_loss_pct"] + updated * FIRMWARE_EFFECT["packet_loss_pct"]
    scores = hidden_scores(cols)
    scores[:, CLASSES.index("modem")] += updated * FIRMWARE_EFFECT["modem_score"]
    gumbel = np.array([p.label_noise for p in profiles]).reshape(n, len(CLASSES))
    flip_to = np.array([CLASSES.index(p.flipped_to) if p.flipped_to else -1 for p in profiles])
    labels = apply_label_noise(scores, gumbel, flip_to)
    cols |= draw_speed_ratios(rng, scores, labels)
    rows = np.stack([cols[name] for name in FEATURE_NAMES], axis=1).tolist()
    context = np.stack([cols[name] for name in CONTEXT_FIELDS], axis=1).tolist()
    requests, truth = [], []
    for i in range(n):
        request_id = f"{prefix}-{partition}-{first + i}"
        requests.append(
            {
                "request_id": request_id,
                "model": config.model,
                "account": accounts[i],
                "ts": int(ts[i]),
                "context": dict(zip(CONTEXT_FIELDS, context[i], strict=True)),
            }
        )
        truth.append(RequestTruth(request_id, accounts[i], CLASSES[labels[i]], tuple(rows[i])))
    return GeneratedRequests(requests, truth)


FIRMWARE_EFFECT = {"latency_ms": 20.0, "packet_loss_pct": 5.0, "modem_score": 2.5}
"""What the firmware rollout does to a slow test on an updated modem: the latency and packet
loss it adds, and what it adds to the hidden modem score (enough to make it modem trouble
nearly always)."""


def firmware_updated(account: str, share: float) -> bool:
    """Whether `account`'s modem is among the `share` that the firmware rollout reaches."""
    digest = hashlib.blake2b(account.encode(), digest_size=8, person=b"firmware").digest()
    return int.from_bytes(digest, "big") / 2**64 < share


def _updated_modems(config: RequestGeneratorConfig, accounts: list[str], ts: np.ndarray):
    if config.drift_at_ms is None:
        return np.zeros(len(accounts))
    flags = np.array([firmware_updated(a, config.drift_share) for a in accounts], dtype=float)
    return flags * (ts >= config.drift_at_ms)


def generate_requests(
    config: RequestGeneratorConfig, partition: int = 0, start: int = 0, count: int | None = None
) -> GeneratedRequests:
    """Generate requests `start..start+count` of `partition` (to its end when `count` is None).

    The same arguments always give the same requests, and request `i` of a partition is the
    same whatever range it was generated in.
    """
    if not 0 <= partition < config.partitions:
        raise ValueError(f"partition must be in [0, {config.partitions}), got {partition}")
    size = partition_sizes(config)[partition]
    end = size if count is None else min(size, start + max(count, 0))
    requests: list[dict[str, Any]] = []
    truth: list[RequestTruth] = []
    for block in range(start // _BLOCK, (end + _BLOCK - 1) // _BLOCK):
        got = _block(config, partition, block)
        lo = max(start - block * _BLOCK, 0)
        hi = min(end - block * _BLOCK, len(got))
        requests += got.requests[lo:hi]
        truth += got.truth[lo:hi]
    return GeneratedRequests(requests, truth)


def iter_truth(config: RequestGeneratorConfig) -> Iterator[RequestTruth]:
    """Yield the hidden truth of every request of `config`, partition by partition."""
    for partition, size in enumerate(partition_sizes(config)):
        for start in range(0, size, _BLOCK):
            yield from generate_requests(config, partition, start, _BLOCK).truth


@dataclass(frozen=True, slots=True)
class OutcomeConfig:
    """How the outcomes of generated requests are observed.

    Each request's outcome (its hidden label) is observed after a delay drawn log-uniformly
    between `min_delay_ms` and `max_delay_ms` (minutes to days by default); a share
    `missing_rate` of requests never gets one. `seed` draws the delays, apart from the requests.
    """

    min_delay_ms: int = 5 * 60_000
    max_delay_ms: int = 3 * 86_400_000
    missing_rate: float = 0.1
    seed: int = 1

    def __post_init__(self) -> None:
        if not 0 < self.min_delay_ms <= self.max_delay_ms:
            raise ValueError(
                f"outcome delays need 0 < min <= max (got {self.min_delay_ms}, {self.max_delay_ms})"
            )
        if not 0.0 <= self.missing_rate <= 1.0:
            raise ValueError(f"missing_rate must be in [0, 1], got {self.missing_rate}")


def generate_outcomes(
    requests: RequestGeneratorConfig, config: OutcomeConfig | None = None
) -> list[dict[str, Any]]:
    """Return the outcomes of every request of `requests`, in order of `observed_at`.

    Each is ``{"request_id", "account", "ts", "outcome", "observed_at"}``: the request's
    hidden label, observed after its delay; the same configs always give the same outcomes.
    """
    config = config or OutcomeConfig()
    out = []
    lo, hi = np.log(config.min_delay_ms), np.log(config.max_delay_ms)
    for partition, size in enumerate(partition_sizes(requests)):
        for start in range(0, size, _BLOCK):
            got = generate_requests(requests, partition, start, _BLOCK)
            n = len(got)
            rng = np.random.default_rng([config.seed, requests.seed, partition, start, 0x0C])
            delays = np.exp(rng.uniform(lo, hi, n)).astype(np.int64)
            observed = rng.random(n) >= config.missing_rate
            for i in np.flatnonzero(observed).tolist():
                request, truth = got.requests[i], got.truth[i]
                out.append(
                    {
                        "request_id": request["request_id"],
                        "account": request["account"],
                        "ts": request["ts"],
                        "outcome": truth.label,
                        "observed_at": request["ts"] + int(delays[i]),
                    }
                )
    out.sort(key=lambda o: (o["observed_at"], o["request_id"]))
    return out
