"""Seeded training data for the speed-test triage model (is the trouble wifi, modem or network).

Each row is one slow speed test and the account's features at that moment. The features are drawn
from a seeded `numpy.random.Generator`, then the label comes from a hidden rule plus noise, so a
model can learn it well but never perfectly.

Features (in `FEATURE_NAMES` order, all float32 in the matrix):

- `signal_errors_24h`: rolling count of signal errors on the line over the trailing 24 hours
  (mostly tens, a heavy tail into the thousands).
- `download_ratio`, `upload_ratio`: measured / provisioned speed, in [0.02, 1.1].
- `latency_ms`: round-trip latency of the speed test.
- `packet_loss_pct`: packet loss during the test, in percent.
- `wifi_rssi_dbm`, `wifi_noise_dbm`: device telemetry of the client's wifi link.
- `connected_devices`: devices attached to the home gateway.
- `modem_uptime_h`: hours since the modem last restarted.
- `node_health`: 0..1 health of the account's network node (1 = healthy).

The hidden rule. With `snr = wifi_rssi_dbm - wifi_noise_dbm` three scores are computed:

```
wifi    = 1.3 * clip((28 - snr) / 8, 0, 3) + 0.06 * max(connected_devices - 12, 0)
modem   = 1.3 * log1p(signal_errors_24h) / log1p(400) + 0.9 * [modem_uptime_h > 720]
          + 0.25 * packet_loss_pct * node_health
network = 3.2 * (1 - node_health) + max(latency_ms - 45, 0) / 30
```

The label is `argmax(score + g)` over (wifi, modem, network), where `g` is independent Gumbel
noise of scale 0.35 per class; then 5% of the labels are replaced by a class drawn uniformly at
random. The speed ratios are consequences of the trouble: both drop with the winning score, and
the upload ratio drops more for network trouble than for wifi trouble (measurement noise added).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "CLASSES",
    "FEATURE_NAMES",
    "TriageData",
    "apply_label_noise",
    "draw_home",
    "draw_label_noise",
    "draw_line",
    "draw_speed_ratios",
    "draw_test_conditions",
    "generate_speedtests",
    "hidden_scores",
]

FEATURE_NAMES: tuple[str, ...] = (
    "signal_errors_24h",
    "download_ratio",
    "upload_ratio",
    "latency_ms",
    "packet_loss_pct",
    "wifi_rssi_dbm",
    "wifi_noise_dbm",
    "connected_devices",
    "modem_uptime_h",
    "node_health",
)
"""Feature names of the triage model, in matrix column order."""

CLASSES: tuple[str, ...] = ("modem", "network", "wifi")
"""Labels of the triage model, in sorted order (as scikit-learn orders `classes_`)."""

_GUMBEL_SCALE = 0.35
_FLIP_RATE = 0.05


@dataclass(frozen=True)
class TriageData:
    """A generated data set: float32 features `X` (rows x features) and string labels `y`."""

    X: np.ndarray
    y: np.ndarray
    feature_names: tuple[str, ...]
    seed: int

    def __len__(self) -> int:
        return int(self.X.shape[0])

    def class_counts(self) -> dict[str, int]:
        """Return how many rows carry each label."""
        return {c: int(np.sum(self.y == c)) for c in CLASSES}


def hidden_scores(cols: dict[str, np.ndarray]) -> np.ndarray:
    """Return the hidden rule's scores, one row per sample, columns in `CLASSES` order.

    `cols` maps the feature names the rule reads (all but the speed ratios) to equal-length
    arrays; see the module docstring for the rule.
    """
    snr = cols["wifi_rssi_dbm"] - cols["wifi_noise_dbm"]
    wifi = 1.3 * np.clip((28.0 - snr) / 8.0, 0.0, 3.0) + 0.06 * np.maximum(
        cols["connected_devices"] - 12.0, 0.0
    )
    modem = (
        1.3 * np.log1p(cols["signal_errors_24h"]) / np.log1p(400.0)
        + 0.9 * (cols["modem_uptime_h"] > 720.0)
        + 0.25 * cols["packet_loss_pct"] * cols["node_health"]
    )
    network = 3.2 * (1.0 - cols["node_health"]) + np.maximum(cols["latency_ms"] - 45.0, 0.0) / 30.0
    # Column order follows CLASSES: modem, network, wifi.
    return np.stack([modem, network, wifi], axis=1)


def draw_line(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Draw `n` lines: `signal_errors_24h` (heavy-tailed) and `node_health` of their node."""
    heavy = rng.random(n) < 0.15
    signal_errors = np.where(
        heavy,
        np.floor(rng.lognormal(mean=6.0, sigma=1.1, size=n)),
        rng.poisson(lam=18.0, size=n).astype(np.float64),
    )
    node_health = np.clip(rng.beta(6.0, 1.6, size=n), 0.0, 1.0)
    return {"signal_errors_24h": signal_errors, "node_health": node_health}


def draw_test_conditions(
    rng: np.random.Generator, node_health: np.ndarray
) -> dict[str, np.ndarray]:
    """Draw one speed test's `latency_ms` and `packet_loss_pct` per line, given its node health."""
    n = len(node_health)
    latency = 12.0 + rng.gamma(shape=2.0, scale=9.0, size=n) + 70.0 * (1.0 - node_health) ** 2
    packet_loss = np.clip(
        rng.exponential(scale=0.4, size=n) + 4.0 * (1.0 - node_health) * rng.random(n), 0.0, 30.0
    )
    return {"latency_ms": latency, "packet_loss_pct": packet_loss}


def draw_home(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Draw `n` homes: wifi RSSI and noise, connected devices and modem uptime in hours."""
    return {
        "wifi_rssi_dbm": np.clip(rng.normal(loc=-58.0, scale=10.0, size=n), -92.0, -28.0),
        "wifi_noise_dbm": np.clip(rng.normal(loc=-92.0, scale=4.0, size=n), -105.0, -75.0),
        "connected_devices": rng.integers(1, 36, size=n).astype(np.float64),
        "modem_uptime_h": np.floor(rng.exponential(scale=400.0, size=n)),
    }


def draw_label_noise(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw the label noise of `n` samples: Gumbel noise per class, and the flipped class or -1."""
    gumbel = rng.gumbel(loc=0.0, scale=_GUMBEL_SCALE, size=(n, len(CLASSES)))
    flip = rng.random(n) < _FLIP_RATE
    flip_to = np.where(flip, rng.integers(0, len(CLASSES), size=n), -1)
    return gumbel, flip_to


def apply_label_noise(scores: np.ndarray, gumbel: np.ndarray, flip_to: np.ndarray) -> np.ndarray:
    """Return the label index per sample: `argmax(scores + gumbel)` unless flipped."""
    return np.where(flip_to >= 0, flip_to, np.argmax(scores + gumbel, axis=1))


def draw_speed_ratios(
    rng: np.random.Generator, scores: np.ndarray, label_idx: np.ndarray
) -> dict[str, np.ndarray]:
    """Draw the measured `download_ratio` and `upload_ratio`, consequences of the trouble."""
    n = len(label_idx)
    severity = np.max(scores, axis=1)
    is_network = label_idx == CLASSES.index("network")
    is_wifi = label_idx == CLASSES.index("wifi")
    download = np.clip(0.92 - 0.14 * severity + rng.normal(0.0, 0.08, size=n), 0.02, 1.1)
    upload = np.clip(
        0.95 - 0.10 * severity - 0.15 * is_network + 0.08 * is_wifi + rng.normal(0.0, 0.08, size=n),
        0.02,
        1.1,
    )
    return {"download_ratio": download, "upload_ratio": upload}


def generate_speedtests(rows: int, seed: int = 0) -> TriageData:
    """Generate `rows` slow speed tests with their features and labels, reproducibly from `seed`.

    The same `(rows, seed)` always gives the same bytes. See the module docstring for the rule.
    """
    if not isinstance(rows, int) or isinstance(rows, bool) or rows < 1:
        raise ValueError(f"rows must be a positive integer, got {rows!r}; pass e.g. rows=10000")
    rng = np.random.default_rng(seed)
    cols = draw_line(rng, rows)
    cols |= draw_test_conditions(rng, cols["node_health"])
    cols |= draw_home(rng, rows)
    scores = hidden_scores(cols)
    label_idx = apply_label_noise(scores, *draw_label_noise(rng, rows))
    cols |= draw_speed_ratios(rng, scores, label_idx)
    X = np.stack([cols[name] for name in FEATURE_NAMES], axis=1).astype(np.float32)
    y = np.asarray(CLASSES, dtype=object)[label_idx].astype(str)
    return TriageData(X=np.ascontiguousarray(X), y=y, feature_names=FEATURE_NAMES, seed=seed)
