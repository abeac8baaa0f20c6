from __future__ import annotations

from typing import Any

import pytest
from streamml.onnx_models import ContractError, FeatureContract, MissingPolicy, triage_contract


def test_json_round_trip() -> None:
    c = triage_contract()
    assert FeatureContract.from_json(c.to_json()) == c
    assert c.feature_names[0] == "signal_errors_24h"


def test_reject_shorthand_and_default_policy() -> None:
    c = FeatureContract.from_json(
        {
            "features": [
                {"name": "a", "ttl_ms": 10, "on_missing": "reject"},
                {"name": "b", "ttl_ms": 20, "on_missing": {"policy": "default", "value": 1.5}},
            ]
        }
    )
    assert c.features[0].on_missing == MissingPolicy.reject()
    assert c.features[1].on_missing == MissingPolicy.default(1.5)
    assert c.allow_nan is False


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ([], "expected a JSON object"),
        ({"features": []}, "at least one feature"),
        ({"features": [{"name": "a", "ttl_ms": 0, "on_missing": "reject"}]}, "positive integer"),
        ({"features": [{"name": "a", "ttl_ms": 5}]}, "on_missing is required"),
        ({"features": [{"name": "a", "ttl_ms": 5, "on_missing": "zero"}]}, 'expected "reject"'),
        (
            {"features": [{"name": "a", "ttl_ms": 5, "on_missing": {"policy": "default"}}]},
            'expected "reject"',
        ),
        (
            {
                "features": [
                    {"name": "a", "ttl_ms": 5, "on_missing": "reject"},
                    {"name": "a", "ttl_ms": 5, "on_missing": "reject"},
                ]
            },
            "unique",
        ),
        ({"features": [{"name": "a", "ttl_ms": 5, "on_missing": "reject", "x": 1}]}, "unknown"),
        (
            {"features": [{"name": "a", "ttl_ms": 5, "on_missing": "reject"}], "allow_nan": 1},
            "true",
        ),
    ],
)
def test_malformed_contracts_are_refused(raw: Any, match: str) -> None:
    with pytest.raises(ContractError, match=match):
        FeatureContract.from_json(raw)
