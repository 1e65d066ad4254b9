"""The storage service's composition: archive consumers and the history servicer."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path

import grpc
from opentelemetry import metrics
from parley.storage.v1 import storage_pb2, storage_pb2_grpc
from sqlalchemy import Engine, inspect

from parley_core.audit_checkpoints import checkpoint_folder
from parley_core.bus import EventBus
from parley_core.chat_messages import chat_message
from parley_core.config import Settings
from parley_core.database import SQLITE_ARCHIVE, recorded_database_url, with_driver
from parley_core.errors import InvalidArgument, PermissionDenied, Unavailable
from parley_core.event_log import EventLog
from parley_core.files import ensure_private_dir
from parley_core.jobs import PeriodicJob, every
from parley_core.runner import RefusedToStart, RunContext
from parley_core.topology import channel_subject
from parley_storage.archive import SqlEventArchive, open_engine
from parley_storage.archive_api import StorageArchiveApi
from parley_storage.archive_consumers import DATABASE_DOWN, ArchiveConsumers
from parley_storage.audit_monitor import AuditChainMonitor
from parley_storage.backup import BackupKeys
from parley_storage.datakeys import DataKeys
from parley_storage.detection import KINDS, DetectionSettings
from parley_storage.detector import AnomalyDetector
from parley_storage.domain import Erasures
from parley_storage.erasures import follow_erasures
from parley_storage.faults import PauseInBatch
from parley_storage.kek import FileKeyring, KeyEncryptionKeys, KeyringUnreadable
from parley_storage.key_files import BACKUP_KEY_FILE, KEYRING_FILE
from parley_storage.lag import measure_lag
from parley_storage.lag_metrics import ArchiveLagGauges
from parley_storage.log_cleanup import delete_removed_texts
from parley_storage.lost_consumer import LostConsumers
from parley_storage.migrate import upgrade_to_head
from parley_storage.progress import ArchiveProgress
from parley_storage.residency import ResidencyBinding, check_configured, enforce_in_database
from parley_storage.retention import ArchiveBehind, Retention
from parley_storage.settings import StorageSettings
from parley_storage.siem import SiemFeed, SiemSettings
from parley_storage.stream_erasure import UnfinishedErasures, erase_from_streams

log = logging.getLogger(__name__)
DEFAULT_PAGE = 100
# How long a history query waits for the archive to reach the channel's newest event before
# answering from what it has.
HISTORY_FRESHNESS_S = 5.0
MAX_PAGE = 500
# How long a retention run waits for the archive to reach a channel's newest event, and its markers.
RETENTION_CATCH_UP_S = 30.0


def sqlite_archive_file(settings: Settings) -> Path:
    """Where the archive is when PARLEY_DATABASE_URL names no database."""
    return settings.data_dir / SQLITE_ARCHIVE


def configured_database_url(settings: Settings) -> str:
    """PARLEY_DATABASE_URL (or a tool's --database-url), else the URL `parley up --database-url`
    recorded in the data folder; empty when the archive is SQLite in the folder."""
    return with_driver(settings.database_url or recorded_database_url(settings.data_dir))


def database_url(settings: Settings) -> str:
    """The configured database, else SQLite in the data folder."""
    configured = configured_database_url(settings)
    if configured:
        return configured
    archive_file = sqlite_archive_file(settings)
    ensure_private_dir(archive_file.parent)
    return f"sqlite:///{archive_file}"


def keyring_file(settings: Settings, storage_settings: StorageSettings) -> Path:
    """The fleet's keyring (PARLEY_STORAGE_KEYRING_FILE), else the one in the data folder."""
    if storage_settings.keyring_file:
        return Path(storage_settings.keyring_file)
    return ensure_private_dir(settings.secrets_dir) / KEYRING_FILE


class StorageApp(storage_pb2_grpc.StorageServiceServicer):
    def __init__(self, keks: KeyEncryptionKeys | None = None) -> None:
        """``keks`` is the KMS hook; by default a keyring file in the data folder's secrets."""
        self._ctx: RunContext | None = None
        self._keks = keks
        self.archive: SqlEventArchive | None = None
        self.progress = ArchiveProgress()
        self.retention: Retention | None = None
        self._jobs: list[PeriodicJob] = []
        self._log_cleanup: PeriodicJob | None = None
        self.audit_monitor: AuditChainMonitor | None = None
        self._lost_consumers: LostConsumers | None = None
        self.detector: AnomalyDetector | None = None
        self.siem: SiemFeed | None = None

    async def start(self, ctx: RunContext) -> None:
        self._ctx = ctx
        self._lag_events = ctx.metrics.gauge(
            "parley_archive_lag_events", "Events in JetStream not yet archived, per stream", ("stream",)
        )
        self._lag_seconds = ctx.metrics.gauge(
            "parley_archive_lag_seconds",
            "Age of the oldest event not yet archived, per stream",
            ("stream",),
            heartbeat=True,  # the console's Health page
        )
        storage_settings = StorageSettings()
        url = database_url(ctx.settings)
        engine = open_engine(url)
        try:
            keks = self._keks or FileKeyring.load_or_create(keyring_file(ctx.settings, storage_settings))
        except KeyringUnreadable as exc:
            raise RefusedToStart(str(exc)) from None
        keys = DataKeys(keks)
        upgrade_to_head(engine, keys)  # with the keyring: a migration may fill a table from the events
        binding = ResidencyBinding.from_settings(storage_settings)
        with engine.begin() as conn:
            enforce_in_database(conn, binding, url)
        fault = PauseInBatch(Path(storage_settings.pause_in_batch)) if storage_settings.pause_in_batch else None
        self.archive = SqlEventArchive(engine, keys, fault=fault, on_log_deletions=self._log_deletions_queued)
        await self.archive.reconcile_data_keys()
        erasures = Erasures()
        erasures_replay = await follow_erasures(ctx.bus, self.archive.keys, erasures)
        positions = await self.archive.positions()
        await refuse_a_log_behind_the_archive(ctx.bus, positions)
        refuse_a_lost_backup_key(ctx.settings.secrets_dir, archive_is_new=not any(positions.values()))
        BackupKeys.create_missing(ctx.settings.secrets_dir)  # in the key backup from the first start on
        self.progress = ArchiveProgress(positions)
        self.retention = Retention(ctx.bus, self.archive, self.progress)
        self._lost_consumers = LostConsumers(ctx, self.archive)
        consumers = ArchiveConsumers(self.archive, self.progress)
        await consumers.follow(ctx.bus, linger_s=storage_settings.archive_linger_seconds, on_loss=self._lost_consumers)
        storage_pb2_grpc.add_StorageServiceServicer_to_server(self, ctx.server)
        ctx.add_service_name(storage_pb2.DESCRIPTOR.services_by_name["StorageService"].full_name)
        checkpoints = checkpoint_folder(ctx.settings.data_dir, storage_settings.audit_checkpoint_dir)
        self.audit_monitor = AuditChainMonitor(ctx.bus, self.archive, ctx.metrics, checkpoint_dir=checkpoints)
        storage_pb2_grpc.add_StorageArchiveServiceServicer_to_server(
            StorageArchiveApi(
                ctx,
                self.archive,
                self.retention,
                self.audit_monitor,
                self.progress,
                events=EventLog(ctx.bus, erasures_replay),
                audit_verify_interval_s=storage_settings.audit_verify_interval_seconds,
            ),
            ctx.server,
        )
        ctx.add_service_name(storage_pb2.DESCRIPTOR.services_by_name["StorageArchiveService"].full_name)
        # Periodic jobs (parley_core.jobs). Retention and the log cleanup are resumable and the audit
        # verification only reads: a stop cuts them short; the lag reading is let finish.
        gauges = ArchiveLagGauges(metrics.get_meter("parley.storage"))
        self._jobs = [
            every(storage_settings.retention_interval_seconds, self._apply_retention, name="retention", grace=0.0),
            every(
                storage_settings.log_cleanup_interval_seconds,
                self._delete_removed_texts,
                name="log-cleanup",
                grace=0.0,
            ),
            every(storage_settings.lag_interval_seconds, lambda: self._measure_lag(gauges), name="archive-lag"),
        ]
        self._log_cleanup = self._jobs[1]
        self.audit_monitor.start()  # its keys, on the replay of AUTH started below
        self._jobs.append(
            every(
                storage_settings.audit_verify_interval_seconds,
                self.audit_monitor.verify,
                name="audit-verify",
                grace=0.0,
            )
        )
        for job in self._jobs:
            job.start()
        detection = DetectionSettings()
        if detection.enabled:
            anomalies = ctx.metrics.counter(
                "parley_anomalies",
                "AnomalyDetected findings recorded, per rule and response",
                ("kind", "response"),
                # Each rule's configured response, and alert (what an old finding's response becomes).
                zeroed={(kind, response) for kind in KINDS for response in (detection.response(kind), "alert")},
            )
            self.detector = AnomalyDetector(ctx.bus, detection, counted=anomalies)
            consumers.detector = self.detector
            await self.detector.start()
        # Every projection of the streams storage follows is added: one replay per stream starts.
        await ctx.bus.start_following()
        siem = SiemSettings()
        if siem.url:
            try:
                self.siem = SiemFeed(ctx.bus, siem, version=ctx.version)
            except ValueError as exc:
                raise RefusedToStart(str(exc)) from None
            await self.siem.start()
        await erasures_replay.wait_caught_up()
        if unfinished := erasures.unfinished():
            archive = self.archive
            resumed = UnfinishedErasures(lambda user_id: erase_from_streams(ctx.bus, archive, user_id), unfinished).job
            self._jobs.append(resumed)
            resumed.start()

    def _log_deletions_queued(self) -> None:
        if self._log_cleanup is not None:
            self._log_cleanup.wake()

    async def _measure_lag(self, gauges: ArchiveLagGauges) -> None:
        """Refresh the lag gauges (a failed reading keeps the last one)."""
        assert self.archive is not None
        assert self._ctx is not None
        lags = await measure_lag(self._ctx.bus.js, self.archive)
        gauges.update(lags)
        for lag in lags:
            self._lag_events.labels(lag.stream).set(lag.events_behind)
            self._lag_seconds.labels(lag.stream).set(lag.seconds_behind)

    async def _apply_retention(self) -> None:
        """Apply every channel's policy (a failed run is retried next interval; the service keeps serving)."""
        assert self.retention is not None
        try:
            removed = await self.retention.apply(now_ns=time.time_ns(), timeout=RETENTION_CATCH_UP_S)
        except ArchiveBehind as exc:  # e.g. right after a start with a backlog: the next run catches up
            log.warning("retention run postponed: %s", exc)
            return
        if removed:
            log.info("retention expired messages", extra={"messages": removed})

    async def _delete_removed_texts(self) -> None:
        """Delete redacted and expired texts from the log: at start (what an earlier run left),
        whenever the archive queued some (it wakes the job), and every interval (a failed run is
        retried; the rows stay, the next run resumes)."""
        assert self.archive is not None
        assert self._ctx is not None
        deleted = await delete_removed_texts(self._ctx.bus, self.archive)
        if deleted:
            log.info("removed texts deleted from the event log", extra={"events": deleted})

    async def stop(self) -> None:
        # Resumable, each of them: the next start (or the next run) finishes what they were doing.
        for job in self._jobs:
            await job.stop()
        if self._lost_consumers is not None:
            await self._lost_consumers.stop()
        if self.siem is not None:
            await self.siem.stop()
        if self.detector is not None:
            await self.detector.stop()
        if self.archive is not None:
            self.archive.engine.dispose()

    async def GetChannelHistory(
        self, request: storage_pb2.GetChannelHistoryRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> storage_pb2.GetChannelHistoryResponse:
        assert self._ctx is not None
        assert self.archive is not None
        caller = self._ctx.tokens.caller(context)
        if not request.channel_id:
            raise InvalidArgument("channel_id is required")
        if request.limit > MAX_PAGE:
            raise InvalidArgument(f"limit must be at most {MAX_PAGE}")
        # Read-your-writes: a join or send the stream already holds must count here too.
        newest = await self._ctx.bus.last_subject_seq("MSG", channel_subject(request.channel_id))
        await self.progress.wait_for("MSG", newest, timeout=HISTORY_FRESHNESS_S)
        try:
            if not await self.archive.is_member(request.channel_id, caller.user_id):
                raise PermissionDenied("you are not a member of this channel")
            # A channel may hide what came before a member joined: enforced here, not only upstream.
            view = await self.archive.history_view(request.channel_id, caller.user_id)
            after_seq = view.page_after(after_seq=request.after_seq, before_seq=request.before_seq)
            if after_seq is None:
                return storage_pb2.GetChannelHistoryResponse()
            messages, has_more = await self.archive.channel_history(
                request.channel_id,
                after_seq=after_seq,
                limit=request.limit or DEFAULT_PAGE,
                before_seq=request.before_seq,
                after_ns=request.after_time.ToNanoseconds() if request.HasField("after_time") else 0,
                before_ns=request.before_time.ToNanoseconds() if request.HasField("before_time") else 0,
            )
        except DATABASE_DOWN:
            raise Unavailable("history is unavailable while the archive database is down; retry shortly") from None
        out = [
            chat_message(
                channel_id=m.channel_id,
                message_id=m.message_id,
                sender_id=m.sender_id,
                sender_name=m.sender_name,
                channel_seq=m.channel_seq,
                body=m.body,
                sent_at_ns=m.sent_at_ns,
                redacted=not m.body and not m.erased,  # the archive blanks a redacted message's text
                erased=m.erased,
                thread_root_seq=m.thread_root_seq,
                edited=m.edited,
                reactions=m.reactions,
            )
            for m in messages
        ]
        return storage_pb2.GetChannelHistoryResponse(messages=out, has_more=has_more)


def refuse_a_lost_backup_key(secrets_dir: Path, *, archive_is_new: bool) -> None:
    """Storage makes the backup key at its first start, and the key backup keeps it. Made again
    later, it would silently leave that key backup unable to open every backup taken from then on."""
    if not archive_is_new and not (secrets_dir / BACKUP_KEY_FILE).exists():
        raise RefusedToStart(
            f"{secrets_dir / BACKUP_KEY_FILE} is missing, yet this archive is not new: copy it back from your key "
            "backup (a new key would leave the key backup unable to open the backups taken from now on)"
        )


async def refuse_a_log_behind_the_archive(bus: EventBus, positions: Mapping[str, int]) -> None:
    """The archive knows each event by its stream sequence: on a log that ends before what it has
    archived (lost, or re-created empty), it would take every new event for one it holds and drop it."""
    behind = []
    for stream, archived in sorted(positions.items()):
        await bus.wait_for_stream(stream)
        last = int((await bus.js.stream_info(stream)).state.last_seq or 0)
        if last < archived:
            behind.append(f"{stream} ends at sequence {last}, the archive has it up to {archived}")
    if behind:
        raise RefusedToStart(
            f"the event log holds less than the archive ({'; '.join(behind)}): it was lost or replaced. "
            "A data folder restored from a backup gets its log back from `parley up` while "
            "storage/restored-from-backup.json is there; restore the folder again if that file was removed"
        )


def check_residency(url: str, engine: Engine) -> None:
    """Refuse, before connecting to anything, a database outside the organisation's bound location."""
    binding = ResidencyBinding.from_settings(StorageSettings())
    check_configured(binding, url)
    with engine.connect() as conn:
        try:
            if inspect(conn).has_table("residency"):
                enforce_in_database(conn, binding, url)
        finally:
            conn.rollback()  # only a check: the binding is recorded by start()
