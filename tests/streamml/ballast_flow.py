"""A dataflow whose every worker process holds `BALLAST_MIB` MiB resident, for RSS tests."""

from __future__ import annotations

import os

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource

BALLAST_MIB = int(os.environ.get("STREAMML_TEST_BALLAST_MIB", "120"))

# bytes (not a zeroed bytearray) so that every page is written, hence resident
_BALLAST = b"\x01" * (BALLAST_MIB * 2**20)

flow = Dataflow("ballast")
op.output("out", op.input("in", flow, TestingSource([len(_BALLAST)])), TestingSink([]))
