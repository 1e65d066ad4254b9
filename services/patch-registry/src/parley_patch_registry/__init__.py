"""Parley's patch registry (this release: the live fleet view)."""
