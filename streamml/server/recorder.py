"""The service's writer of prediction and timeout records, on its own thread.

Handlers hand records over (`put` appends to a list: no lock, no wake-up, so no thread switch
on the request path); every 50 ms a thread takes them and appends them to a
`PredictionWriter` and a `TimeoutWriter` (the flow's writers, so the rows are the same) and
writes a Parquet file every `flush_interval_s` when something is buffered, and at `close`.
Each process writes its own files (writer id ``rest-PID-RANDOM``) into the prediction store.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from streamml.state.predictions import (
    PredictionRecord,
    PredictionWriter,
    TimeoutRecord,
    TimeoutWriter,
)

__all__ = ["Recorder"]

_DRAIN_S = 0.05
"""How often the thread takes the records handed over (a list swap)."""


class Recorder:
    """Append records to the prediction store from a background thread."""

    def __init__(self, root: Path, pipeline_version: str, flush_interval_s: float) -> None:
        writer_id = f"rest-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        kw = {"writer_id": writer_id, "rows_per_flush": 1_000_000}
        self.predictions = PredictionWriter(root, pipeline_version, **kw)
        self.timeouts = TimeoutWriter(root, pipeline_version, **kw)
        self.flush_interval_s = flush_interval_s
        self.error: BaseException | None = None
        self._pending: list[tuple[Sequence[PredictionRecord], Sequence[TimeoutRecord]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="streamml-recorder", daemon=True)
        self._thread.start()

    def put(
        self, predictions: Sequence[PredictionRecord], timeouts: Sequence[TimeoutRecord]
    ) -> None:
        """Hand records over to be written (an append: never waits, never wakes the thread)."""
        self._pending.append((predictions, timeouts))

    def _run(self) -> None:
        due = time.monotonic() + self.flush_interval_s
        while True:
            stopping = self._stop.wait(_DRAIN_S)
            pending, self._pending = self._pending, []
            try:
                for predictions, timeouts in pending:
                    self.predictions.extend(predictions)
                    self.timeouts.extend(timeouts)
            except Exception as exc:  # a record the writer refuses: keep serving, report
                self.error = exc
            if stopping or time.monotonic() >= due:
                self._flush()
                due = time.monotonic() + self.flush_interval_s
            if stopping:
                return

    def _flush(self) -> None:
        try:
            self.predictions.flush()
            self.timeouts.flush()
        except Exception as exc:
            self.error = exc

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is buffered and stop the thread."""
        self._stop.set()
        self._thread.join(timeout_s)
