"""Parley's storage service."""
