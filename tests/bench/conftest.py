"""The bench's own code (loadtests/parley_bench) is not installed: put its folder on the path.

The suite imports test files in importlib mode, which adds no folder to sys.path.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "loadtests"))
