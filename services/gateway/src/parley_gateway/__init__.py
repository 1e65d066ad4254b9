"""Parley's gateway: the only client-facing gRPC surface."""
