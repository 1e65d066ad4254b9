"""Load generation against a running Parley platform: a Locust gRPC user and its helpers."""
