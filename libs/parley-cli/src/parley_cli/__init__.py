"""The `parley` command."""

import os

# gRPC's C core logs TLS handshake details to stderr; the CLI reports failures itself.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
