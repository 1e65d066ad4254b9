"""The names of auth's key files in a data folder's secrets/, apart from the code that uses them:
the CLI's host bundle copies them to another host without loading auth's service code."""

from __future__ import annotations

# The Ed25519 key that signs audit records (parley_auth.audit_key).
AUDIT_KEY_FILE = "auth-audit-key.pem"
# The access-token signing key in use (parley_auth.signing_key_job).
SIGNING_KEY_FILE = "auth-signing-key.pem"
