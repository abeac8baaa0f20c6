"""`python -m onnx_models` rebuilds the bundled demo model deterministically."""

import sys

from streamml.onnx_models.bundle import main

__all__: list[str] = []

sys.exit(main())
