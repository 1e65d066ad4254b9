"""Holes in auth's own log that no erasure explains: the trace of a deleted event.

Only auth's own NATS user may delete events from AUTH (on storage's due facts, each event checked:
parley_core.log_deletion), so a stolen auth credential, or the operator's, could delete a chosen
one: an AccountDisabled, a SessionRevoked, a PasswordChanged, and auth would rebuild without it
at its next start (the account enabled again, the session valid again). Every append on an
account's or a session's subject carries the next aggregate version (optimistic concurrency), so
a deleted event leaves a version gap on its subject. The only legitimate gaps are an erased
account's (AccountErased, appended before anything is deleted): auth refuses to serve on any
other (see AuthService.start).

What this cannot see: the deletion of a subject's newest event (no later version shows the gap).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The subjects whose events a deletion would undo in auth's projection.
CHECKED_PREFIXES = ("parley.auth.user.", "parley.auth.session.")


@dataclass(frozen=True)
class LogGap:
    subject: str
    user_id: str
    after_version: int
    found_version: int

    def __str__(self) -> str:
        return f"{self.subject}: version {self.found_version} after {self.after_version} (user {self.user_id})"


@dataclass
class SubjectVersions:
    """The newest version seen on each checked subject, the gaps found, and the erased accounts."""

    last: dict[str, int] = field(default_factory=dict)
    gaps: list[LogGap] = field(default_factory=list)
    erased_users: set[str] = field(default_factory=set)

    def see(self, subject: str, version: int, user_id: str) -> None:
        if not subject.startswith(CHECKED_PREFIXES):
            return
        last = self.last.get(subject, 0)
        if version > last + 1:
            self.gaps.append(LogGap(subject, user_id, last, version))
        self.last[subject] = max(last, version)

    def erased(self, user_id: str) -> None:
        self.erased_users.add(user_id)

    def unexplained(self) -> list[LogGap]:
        return [gap for gap in self.gaps if gap.user_id not in self.erased_users]
