"""A dataflow whose every worker process holds `BALLAST_MIB` MiB resident, for RSS tests.

Each worker holds it for half a second, so the runner (which samples every 0.1 s) sees it.
"""

from __future__ import annotations

import os
import time

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource

BALLAST_MIB = int(os.environ.get("STREAMML_TEST_BALLAST_MIB", "120"))

# bytes (not a zeroed bytearray) so that every page is written, hence resident
_BALLAST = b"\x01" * (BALLAST_MIB * 2**20)

flow = Dataflow("ballast")


def _hold(n: int) -> int:
    time.sleep(0.5)
    return n


op.output(
    "out",
    op.map("hold", op.input("in", flow, TestingSource([len(_BALLAST)])), _hold),
    TestingSink([]),
)
