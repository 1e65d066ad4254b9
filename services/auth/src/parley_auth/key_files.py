"""The names of auth's key files in a data folder's secrets/, apart from the code that uses them:
the CLI's host bundle copies them to another host without loading auth's service code."""

from __future__ import annotations

# The Ed25519 key that signs audit records (parley_auth.audit_key).
AUDIT_KEY_FILE = "auth-audit-key.pem"
# The access-token signing key in use (parley_auth.signing_key_job).
SIGNING_KEY_FILE = "auth-signing-key.pem"
# A rotation's successor, saved beside it before the rotation's claim (parley_auth.signing_key_job).
SUCCESSOR_KEY_FILES = "auth-signing-key.*.pem"


def successor_key_file(key_id: str) -> str:
    return SUCCESSOR_KEY_FILES.replace("*", key_id)
