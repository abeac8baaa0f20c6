from __future__ import annotations

import numpy as np
import pytest
from streamml.onnx_models import CLASSES, FEATURE_NAMES, TrainedTriage, generate_speedtests


def test_same_seed_same_bytes_other_seed_differs() -> None:
    a = generate_speedtests(500, seed=3)
    b = generate_speedtests(500, seed=3)
    c = generate_speedtests(500, seed=4)
    assert a.X.tobytes() == b.X.tobytes()
    assert list(a.y) == list(b.y)
    assert a.X.tobytes() != c.X.tobytes()


def test_shape_types_and_ranges() -> None:
    d = generate_speedtests(4000, seed=1)
    assert d.X.shape == (4000, len(FEATURE_NAMES))
    assert d.X.dtype == np.float32
    assert set(d.y) == set(CLASSES)
    col = {n: d.X[:, i] for i, n in enumerate(FEATURE_NAMES)}
    assert np.all((col["node_health"] >= 0) & (col["node_health"] <= 1))
    assert np.all((col["download_ratio"] >= 0.02) & (col["download_ratio"] <= 1.1))
    assert np.all(col["signal_errors_24h"] >= 0)
    assert np.all(col["wifi_rssi_dbm"] > col["wifi_noise_dbm"] - 30)
    assert col["signal_errors_24h"].max() > 2000  # the heavy tail reaches the alert threshold
    counts = d.class_counts()
    assert min(counts.values()) / len(d) > 0.15  # no class is vanishingly rare


def test_labels_follow_the_hidden_rule_but_not_perfectly() -> None:
    d = generate_speedtests(6000, seed=2)
    col = {n: d.X[:, i].astype(np.float64) for i, n in enumerate(FEATURE_NAMES)}
    # Clearly bad nodes are mostly network trouble.
    bad_node = col["node_health"] < 0.5
    assert bad_node.sum() > 50
    assert np.mean(d.y[bad_node] == "network") > 0.7
    # Very poor wifi SNR with a healthy node is mostly wifi trouble.
    snr = col["wifi_rssi_dbm"] - col["wifi_noise_dbm"]
    bad_wifi = (snr < 12) & (col["node_health"] > 0.8) & (col["signal_errors_24h"] < 50)
    assert bad_wifi.sum() > 50
    assert np.mean(d.y[bad_wifi] == "wifi") > 0.7
    # ...but the noise means not every one.
    assert np.mean(d.y[bad_wifi] == "wifi") < 1.0


def test_model_beats_majority_class_by_a_clear_margin(trained: TrainedTriage) -> None:
    m = trained.metrics
    assert m["accuracy"] >= m["majority_baseline"] + 0.15
    assert m["accuracy"] < 0.99  # the label noise keeps it learnable, not perfect
    for cls in CLASSES:
        assert m[f"recall_{cls}"] > 0.5


def test_rows_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive integer"):
        generate_speedtests(0)
