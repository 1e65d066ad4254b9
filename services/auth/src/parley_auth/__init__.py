"""Parley's auth service."""
