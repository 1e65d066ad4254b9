"""The priorities a finding is given, most urgent first: the registry scores findings into them
(parley_patch_registry.findings), its metrics and the CLI's compliance report list them in this order.
Apart from the scoring, so the CLI names them without loading it."""

from __future__ import annotations

PRIORITIES = ("critical", "high", "medium", "low", "unscored")
