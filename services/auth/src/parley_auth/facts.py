"""The past-tense facts auth's decisions (domain.py) produce, frozen; codec.py writes each as its
AUTH event. Free of protobuf, gRPC, NATS and I/O."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Registered:
    user_id: str
    username: str
    role: str
    password_hash: str


@dataclass(frozen=True)
class RoleAssigned:
    user_id: str
    role: str
    previous_role: str


@dataclass(frozen=True)
class Disabled:
    user_id: str
    reason: str


@dataclass(frozen=True)
class Enabled:
    user_id: str


@dataclass(frozen=True)
class PasswordChanged:
    user_id: str
    password_hash: str


@dataclass(frozen=True)
class TotpEnrolmentStarted:
    user_id: str
    sealed_secret: bytes


@dataclass(frozen=True)
class TotpReset:
    user_id: str
    reason: str


@dataclass(frozen=True)
class SessionRevoked:
    session_id: str
    user_id: str
    reason: str


@dataclass(frozen=True)
class ErasureRequested:
    user_id: str
    requested_by: str
    reason: str


Event = (
    Registered | RoleAssigned | Disabled | Enabled | PasswordChanged | TotpEnrolmentStarted | TotpReset
    | SessionRevoked | ErasureRequested
)  # fmt: skip
