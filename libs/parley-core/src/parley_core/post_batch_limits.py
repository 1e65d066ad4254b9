"""What one PostMessages call (the gateway's waiting sends, messaging's batch) may carry: the
gateway never sends more, and messaging refuses more, so a holder of the gateway's certificate
cannot hold a channel's lock for one call of thousands of posts.
"""

POST_BATCH_MAX_ITEMS = 64  # sends per call; a fuller queue at the gateway sends more calls at once
# Bytes of sends per call, well under gRPC's 4 MB message limit (a send may be 64 KiB: GatewayLimits).
POST_BATCH_MAX_BYTES = 1024 * 1024
