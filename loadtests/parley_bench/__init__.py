"""`make bench`: Parley's throughput and latency measured against same-run baselines."""
