"""Values two packages must agree on, kept here once so neither copies the other's.

Each is read by a package that may not import the other (a service never imports another
service or the client SDK; the CLI's start-up imports nothing heavy), so the shared library holds it.
"""

from __future__ import annotations

# The key auth seals the secrets in its events with (in secrets/): TOTP secrets, password hashes,
# recovery-code and refresh-token digests. An event log without it lets no one log in. Its name
# is from when it sealed TOTP secrets only (existing folders and key backups hold it so).
# Named by auth, by storage's backup tool and by the CLI's host bundle.
AUTH_SEALING_KEY_FILE = "auth-mfa-key.bin"

# A channel's retention policy in days (a hundred years at most; 0 keeps its messages forever):
# messaging checks the policy it records, storage the one it applies, the CLI what it is asked.
MAX_RETENTION_DAYS = 36_500

# What a posted message carries by the same names wherever it goes: the MessagePosted event,
# messaging's PostedMessage (its domain, which imports no protobuf) and the API's ChatMessage
# (chat_messages.chat_message, which the gateway and storage build too).
POSTED_FIELDS = ("channel_id", "message_id", "sender_id", "sender_name", "channel_seq", "body", "thread_root_seq")
