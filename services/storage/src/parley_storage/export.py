"""The machine-readable export of everything the archive holds about one user (GDPR art. 15/20, CCPA)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime

from google.protobuf.json_format import MessageToDict

from parley_core.actor import Actor
from parley_core.envelope import UnknownEventType, open_payload
from parley_core.secret_fields import clear_secrets
from parley_storage.archive import StoredEvent

EXPORT_FORMAT = "parley-user-export/1"


def _payload(event: StoredEvent) -> dict[str, object] | None:
    if event.envelope is None:
        return None
    try:
        payload = open_payload(event.envelope)
    except UnknownEventType:
        return {"undecodable": event.envelope.payload.hex()}
    # Secrets about the user (password hash, token digests) are not their personal data to hand
    # out: they help only an attacker.
    clear_secrets(payload)
    return dict(MessageToDict(payload))


def build_export(user_id: str, stored: Sequence[StoredEvent], *, now: datetime | None = None) -> bytes:
    document = {
        "format": EXPORT_FORMAT,
        "user_id": user_id,
        "exported_at": (now or datetime.now(UTC)).isoformat(),
        "events": [
            {
                "stream": e.stream,
                "stream_seq": e.stream_seq,
                "event_id": e.event_id,
                "event_type": e.event_type,
                "aggregate_type": e.aggregate_type,
                "aggregate_id": e.aggregate_id,
                "aggregate_version": e.aggregate_version,
                "occurred_at": datetime.fromtimestamp(e.occurred_at_ns / 1e9, UTC).isoformat(),
                "actor": str(Actor.parse(e.actor)),  # old forms as the canonical one
                "erased": e.envelope is None,
                "payload": _payload(e),
            }
            for e in stored
        ],
    }
    return json.dumps(document, indent=1, ensure_ascii=False).encode()
