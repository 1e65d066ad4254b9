"""Parley's messaging service."""
