"""Settings only the storage service reads (PARLEY_STORAGE_*), beside parley_core's shared ones."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class StorageSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PARLEY_STORAGE_", extra="ignore")

    # Data residency: both or neither (see residency.py).
    organisation: str = ""
    bound_database_url: str = ""
    # How often the retention job marks messages past their channel's policy expired.
    retention_interval_seconds: float = Field(default=3600.0, gt=0)
    # How often storage retries deleting redacted and expired texts from the event log (it also
    # runs at start and whenever the archive removed some).
    log_cleanup_interval_seconds: float = Field(default=60.0, gt=0)
    # How often archive lag is measured for the OpenTelemetry gauges (lag_metrics.py).
    lag_interval_seconds: float = Field(default=15.0, gt=0)
    # How often storage verifies the archived audit chain for the Prometheus gauges (audit_monitor.py):
    # the whole chain each time, one signature check per record.
    audit_verify_interval_seconds: float = Field(default=600.0, gt=0)
    # A folder of operator checkpoints (`parley audit checkpoint`) every verification compares the
    # archive with; empty: <data>/audit-checkpoints (parley_core.audit_checkpoints). A folder outside
    # the data folder, read-only to storage, is the stronger place.
    audit_checkpoint_dir: str = ""
    # Group commit: how long an archive batch that is not full waits for more events after its
    # first. A transaction per event costs several times the CPU of one per ten (most of it is
    # per transaction); archive lag, and so a history read right after a send, grows by this.
    archive_linger_seconds: float = Field(default=0.025, ge=0, le=1)
    # The KEK keyring file, when not the data folder's secrets/storage-kek.json: a joined host's
    # storage (`parley host join --storage-keyring`) uses the fleet's one keyring, on a file system
    # the hosts share; a copy of it would diverge at the first KEK rotation or erasure.
    keyring_file: str = ""
    # Test-only fault point (faults.py): a folder, or empty to disable.
    pause_in_batch: str = ""
