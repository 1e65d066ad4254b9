"""The auth service's gRPC servicer, composed of its RPC groups (api_accounts.py, api_sessions.py,
api_mfa.py, api_devices.py over servicer_base.py), with its start: the AUTH replay into the
projection (projection.py), the audit trail (audit_trail.py), the signing-key job
(signing_key_job.py), and the reactions to storage's due facts (storage_due.py).

Permissions are checked before a handler runs (parley_core.rbac.METHOD_PERMISSIONS, in the
runner's interceptor); handlers check what depends on the target (whose session, which role).
"""

from __future__ import annotations

import contextlib
import logging

from parley.auth.v1 import auth_pb2, auth_pb2_grpc
from parley.auth.v1.events_pb2 import AuditKeyPublished, SessionStepUpRequired, SourceSlowed

from parley_auth.api_accounts import AccountsApi
from parley_auth.api_devices import DevicesApi
from parley_auth.api_mfa import MfaApi
from parley_auth.api_sessions import SessionsApi
from parley_auth.audit_key import AuditSigner
from parley_auth.audit_trail import MAX_NOT_MADE_DETAIL, AuditTrail
from parley_auth.domain import actor_of, checked_id
from parley_auth.key_files import AUDIT_KEY_FILE
from parley_auth.sealing import SecretSealer
from parley_auth.servicer_base import DUE_CATCH_UP_S, Context, session_subject, utc_text
from parley_auth.sessions import Session
from parley_auth.storage_due import StorageDue
from parley_auth.usernames import username_key
from parley_core.actor import Actor
from parley_core.contracts import AUTH_SEALING_KEY_FILE
from parley_core.envelope import NewEvent
from parley_core.errors import FailedPrecondition, NotFound, Unavailable
from parley_core.event_log import NEW, EventLog
from parley_core.runner import RefusedToStart, RunContext
from parley_core.sources import budget_key
from parley_core.topology import AUTH_FILTER, CONSUMERS, audit_key_subject, slowed_source_subject

__all__ = ["AuthApp", "session_subject"]

log = logging.getLogger(__name__)


class AuthApp(AccountsApi, SessionsApi, MfaApi, DevicesApi, auth_pb2_grpc.AuthServiceServicer):
    """The servicer: every RPC group, started (replay, audit trail, signing keys) and stopped."""

    async def start(self, ctx: RunContext) -> None:
        self._ctx = ctx
        self._sealer = SecretSealer.load_or_create(ctx.settings.secrets_dir / AUTH_SEALING_KEY_FILE)
        self.signing.load(ctx.settings.secrets_dir, self._sealer)
        self.projection.sealer = self._sealer
        self._audit_signer = AuditSigner.load_or_create(ctx.settings.secrets_dir / AUDIT_KEY_FILE)
        # login_failed and lockout among them: what the alert rules watch, at 0 before the first.
        records = ctx.metrics.counter(
            "parley_security_records",
            "Audit records written on SEC, per kind",
            ("kind",),
            zeroed=[(kind,) for kind in ("login_failed", "lockout", "change_not_made")],
            heartbeat=True,  # failed logins per minute on the console's Health page
        )
        self._audit_trail = AuditTrail(ctx.bus, self._audit_signer, self.projection.published_keys, records)
        # Auth's own projection joins the process's one replay of AUTH (after the runner's access
        # and signing keys), started here: the rest of start needs it caught up.
        self._replay = ctx.bus.follow(stream="AUTH", filter_subject=AUTH_FILTER, handler=self._apply)
        self._events = EventLog(ctx.bus, self._replay)
        await ctx.bus.start_following()
        await self._replay.wait_caught_up()
        await self.audit.load_head()  # once the published audit keys are known
        await self._refuse_unexplained_gaps()
        await self._publish_audit_key()
        # An erased name is tombstoned before a registration can take it: a restored folder's
        # erasures are handed over this way.
        [due] = [c for c in CONSUMERS if c.service == "auth"]
        self._due = await ctx.bus.consume(due, StorageDue(self).handle)
        if not await self._due.wait_drained(DUE_CATCH_UP_S):
            log.warning("storage's due erasures not all marked before serving; marking goes on")
        self.signing.connect(ctx.bus, self.events, self.audit)
        await self.signing.publish_first()
        auth_pb2_grpc.add_AuthServiceServicer_to_server(self, ctx.server)
        ctx.add_service_name(auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name)
        self.signing.start()

    async def stop(self) -> None:
        await self.signing.stop()

    async def _publish_audit_key(self) -> None:
        """The public half of the key this instance signs audit records with, once: on a new
        folder, or when the folder lacks the key the earlier records were signed with (a restore
        without it): those keep verifying with their own published key."""
        assert self._audit_signer is not None
        signer = self._audit_signer
        if signer.key_id in self.audit_keys:
            return
        published = AuditKeyPublished(key_id=signer.key_id, algorithm="Ed25519", public_key=signer.public_key)
        event = NewEvent(
            aggregate_type="audit_key", aggregate_id=signer.key_id, payload=published, actor=Actor.service("auth")
        )
        with contextlib.suppress(FailedPrecondition):  # another instance sharing the key published it
            await self.events.append(audit_key_subject(signer.key_id), [event], NEW)
        await self.events.settle()

    async def _refuse_unexplained_gaps(self) -> None:
        """Serve nothing rebuilt from a log an event was deleted from without an erasure: that
        deletion (a stolen storage credential's) would undo what the event recorded. Recorded on
        the audit chain (kind `event_log_gap`) and logged as a security event; the operator
        restores the event from the archive or a backup (`parley backup`) before auth starts."""
        gaps = self.subject_versions.unexplained()
        if not gaps:
            return
        detail = "; ".join(str(gap) for gap in gaps[:20])
        log.error(
            "security: events deleted from AUTH that no erasure explains; refusing to serve",
            extra={"security_event": "event_log_gap", "gaps": len(gaps), "detail": detail},
        )
        with contextlib.suppress(Unavailable):  # refused all the same; the log line above stands
            await self.audit.write("event_log_gap", actor=Actor.service("auth"), detail=detail)
        raise RefusedToStart(
            f"{len(gaps)} event(s) are missing from AUTH with no erasure to explain them ({detail}): rebuilding"
            " without them would undo what they recorded; restore them from the archive or a backup"
        )

    async def revoke_for_anomaly(self, session: Session, reason: str) -> None:
        """Storage's detector asked for it (storage_due.py); the reason names the anomaly."""
        await self._revoke(session, reason, Actor.service("storage"))

    async def require_step_up(self, session: Session, reason: str, anomaly_event_id: str) -> None:
        """Storage's detector asked for it (storage_due.py): every service limits the session's
        tokens as a login owing its second factor (parley_core.tokens), until the user logs in
        again. Once per session; a revoked session is left as it is."""
        if session.revoked or session.step_up_required:
            return
        detail = f"{session.session_id}: {reason}"[:MAX_NOT_MADE_DETAIL]
        required = SessionStepUpRequired(
            session_id=session.session_id, user_id=session.user_id, reason=reason, anomaly_event_id=anomaly_event_id
        )
        async with self.audit.recorded(
            "step_up_required", actor=Actor.service("storage"), user_id=session.user_id, detail=detail
        ):
            await self._session_event(session, required, Actor.service("storage"))

    async def slow_source(self, slowed: SourceSlowed, event_id: str) -> None:
        """Storage's detector asked for it (storage_due.py): logins and step-up checks from the
        address are refused until `until_unix`, recorded first on the audit trail."""
        if self.lockouts.slow_down_answered(budget_key(slowed.source), slowed.until_unix):
            return  # carried out already (a repeated fact, or a redelivery), or lifted since
        key = username_key(budget_key(slowed.source))
        event = NewEvent(
            aggregate_type="slowed", aggregate_id=key, payload=slowed, actor=Actor.service("auth"), event_id=event_id
        )
        detail = f"until {utc_text(slowed.until_unix)}: {slowed.reason}"[:MAX_NOT_MADE_DETAIL]
        async with self.audit.recorded(
            "source_slowed", actor=Actor.service("storage"), user_id="", source=slowed.source, detail=detail
        ):
            await self.events.append_after_last(slowed_source_subject(key), event)

    # -- signing keys ---------------------------------------------------------------------------

    async def RotateSigningKey(
        self, request: auth_pb2.RotateSigningKeyRequest, context: Context
    ) -> auth_pb2.SigningKeyInfo:
        caller = self._caller_or_platform(context)
        issuer = await self.signing.rotate(actor_of(caller))
        return auth_pb2.SigningKeyInfo(key_id=issuer.key_id, current=True)

    async def RetireSigningKey(
        self, request: auth_pb2.RetireSigningKeyRequest, context: Context
    ) -> auth_pb2.SigningKeyInfo:
        """Retires a key before its tokens expired (a leaked key): they are refused at once."""
        caller = self._caller_or_platform(context)
        key_id = checked_id(request.key_id, "key_id")
        if key_id not in self.signing_keys:
            raise NotFound("no such signing key")
        if key_id == self.signing_key_id:
            raise FailedPrecondition("this is the key in use; rotate to a new key first")
        await self.signing.retire(key_id, actor_of(caller))
        return auth_pb2.SigningKeyInfo(key_id=key_id, current=False, retired=True)
