"""The service's writer of prediction and timeout records, on its own thread.

Handlers hand records over (`put`, never blocking on disk); a thread appends them to a
`PredictionWriter` and a `TimeoutWriter` (the flow's writers, so the rows are the same) and
writes a Parquet file every `flush_interval_s` when something is buffered, and at `close`.
Each process writes its own files (writer id ``rest-PID-RANDOM``) into the prediction store.
"""

from __future__ import annotations

import os
import queue
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

_STOP = object()


class Recorder:
    """Append records to the prediction store from a background thread."""

    def __init__(self, root: Path, pipeline_version: str, flush_interval_s: float) -> None:
        writer_id = f"rest-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        kw = {"writer_id": writer_id, "rows_per_flush": 1_000_000}
        self.predictions = PredictionWriter(root, pipeline_version, **kw)
        self.timeouts = TimeoutWriter(root, pipeline_version, **kw)
        self.flush_interval_s = flush_interval_s
        self.error: BaseException | None = None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="streamml-recorder", daemon=True)
        self._thread.start()

    def put(
        self, predictions: Sequence[PredictionRecord], timeouts: Sequence[TimeoutRecord]
    ) -> None:
        """Hand records over to be written (returns at once)."""
        self._queue.put((predictions, timeouts))

    def _run(self) -> None:
        due = time.monotonic() + self.flush_interval_s
        while True:
            try:
                item = self._queue.get(timeout=max(0.0, due - time.monotonic()))
            except queue.Empty:
                item = None
            if item is _STOP:
                self._flush()
                return
            if item is not None:
                try:
                    self.predictions.extend(item[0])
                    self.timeouts.extend(item[1])
                except Exception as exc:  # a record the writer refuses: keep serving, report
                    self.error = exc
            if time.monotonic() >= due:
                self._flush()
                due = time.monotonic() + self.flush_interval_s

    def _flush(self) -> None:
        try:
            self.predictions.flush()
            self.timeouts.flush()
        except Exception as exc:
            self.error = exc

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is buffered and stop the thread."""
        self._queue.put(_STOP)
        self._thread.join(timeout_s)
