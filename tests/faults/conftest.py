"""Fault tests share helper modules here and Locust's client in loadtests/; put both on the path.

The suite imports test files in importlib mode, which adds no folder to sys.path.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "loadtests"))
