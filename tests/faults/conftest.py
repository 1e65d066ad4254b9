"""Fault tests share one workload module; put this folder on the import path for it.

The suite imports test files in importlib mode, which adds no folder to sys.path.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
