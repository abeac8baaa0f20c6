"""The JSON answer of a prediction: from the records just made, or from the prediction store."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from streamml.state.predictions import PredictionRecord

__all__ = ["ms", "prediction_answer", "stored_answer"]


def prediction_answer(
    predictions: Sequence[PredictionRecord],
) -> dict[str, Any]:
    """Return the JSON answer of a request: its answering prediction, with its shadows named."""
    answer = next(p for p in predictions if p.role == "answer")
    body = answer.to_json()
    body["shadows"] = [
        {"version": p.version, "variant": p.variant, "label": p.label}
        for p in predictions
        if p.role != "answer"
    ]
    return body


def ms(value: datetime | int | None) -> int | None:
    """Return a stored timestamp as epoch milliseconds (None stays None)."""
    if value is None or isinstance(value, int):
        return value
    return int(value.timestamp() * 1000)


def stored_answer(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Return the JSON answer of prediction-store rows of one request (as `prediction_answer`)."""
    answer = next((r for r in rows if r["role"] == "answer"), rows[0])
    lat = answer["latency"] or {}
    return {
        "request_id": answer["request_id"],
        "model": answer["model"],
        "version": answer["version"],
        "variant": answer["variant"],
        "role": answer["role"],
        "account": answer["account"],
        "ts": ms(answer["request_ts"]),
        "label": answer["label"],
        "probabilities": dict(zip(answer["classes"], answer["probabilities"], strict=True)),
        "features": {
            f["name"]: {k: f[k] for k in ("value", "updated_at", "version", "status")}
            for f in answer["features"]
        },
        "sha256": answer["sha256"],
        "metadata_revision": answer["metadata_revision"],
        "scored_at": ms(answer["scored_at"]),
        "latency_ms": {k.removesuffix("_ms"): v for k, v in lat.items()},
        "shadows": [
            {"version": r["version"], "variant": r["variant"], "label": r["label"]}
            for r in rows
            if r["role"] != "answer"
        ],
    }
