"""The names of storage's key files in a data folder's secrets/, apart from the code that uses
them: the CLI names them (host bundles, `parley privacy`) without loading storage's service code."""

from __future__ import annotations

# The key-encryption keys (KEK) that wrap the archive's data keys (parley_storage.kek).
KEYRING_FILE = "storage-kek.json"
# The backups' encryption key, and the key pair that signs and checks their manifests
# (parley_storage.backup): without them a storage instance would make backup keys of its own.
BACKUP_KEY_FILE = "storage-backup.key"
SIGNING_KEY_FILE = "storage-backup-signing.pem"
VERIFY_KEY_FILE = "storage-backup-signing.pub"
BACKUP_KEY_FILES = (BACKUP_KEY_FILE, SIGNING_KEY_FILE, VERIFY_KEY_FILE)
