"""The domain's decided facts (facts.py) as the AUTH events they are written as, with their
secrets sealed (sealing.py): the one place that knows both shapes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf.message import Message
from parley.auth.v1 import events_pb2 as pb

from parley_auth import facts
from parley_auth.sealing import PASSWORD_HASH

# (value, field, owner) -> the value sealed under auth's key, bound to what and whose it is.
Seal = Callable[[bytes, str, str], bytes]


def _registered(e: facts.Registered, seal: Seal) -> Message:
    sealed = seal(e.password_hash.encode(), PASSWORD_HASH, e.user_id)
    return pb.UserRegistered(user_id=e.user_id, username=e.username, sealed_password_hash=sealed, role=e.role)


def _password(e: facts.PasswordChanged, seal: Seal) -> Message:
    sealed = seal(e.password_hash.encode(), PASSWORD_HASH, e.user_id)
    return pb.PasswordChanged(user_id=e.user_id, sealed_password_hash=sealed)


ENCODERS: dict[type[Any], Callable[[Any, Seal], Message]] = {
    facts.Registered: _registered,
    facts.PasswordChanged: _password,
    facts.RoleAssigned: lambda e, _: pb.RoleAssigned(user_id=e.user_id, role=e.role, previous_role=e.previous_role),
    facts.Disabled: lambda e, _: pb.AccountDisabled(user_id=e.user_id, reason=e.reason),
    facts.Enabled: lambda e, _: pb.AccountEnabled(user_id=e.user_id),
    facts.TotpEnrolmentStarted: lambda e, _: pb.TotpEnrolmentStarted(user_id=e.user_id, sealed_secret=e.sealed_secret),
    facts.TotpReset: lambda e, _: pb.TotpReset(user_id=e.user_id, reason=e.reason),
    facts.SessionRevoked: lambda e, _: pb.SessionRevoked(session_id=e.session_id, user_id=e.user_id, reason=e.reason),
    facts.ErasureRequested: lambda e, _: pb.AccountErasureRequested(
        user_id=e.user_id, requested_by=e.requested_by, reason=e.reason
    ),
}


def payload(event: facts.Event, seal: Seal) -> Message:
    return ENCODERS[type(event)](event, seal)
