"""Every storage instance hears of every erasure: the data-key cache of one instance must not
keep serving a key that another instance shredded.

The audited ``UserDataErased`` event on STORE names the keys being destroyed; it is appended
before the shred, so each instance revokes them as soon as the decision exists (DataKeys.revoke).
A KEK rotation needs no message: the cached data keys themselves do not change, and each
instance re-reads the keyring when it is replaced (kek.FileKeyring).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from parley.storage.v1.events_pb2 import UserDataErased, UserDataErasedFromStreams

from parley_core.bus import EventBus, ReceivedEvent, Replay
from parley_core.topology import privacy_subject
from parley_storage.datakeys import DataKeys
from parley_storage.sealing import user_owner

ERASURES = privacy_subject("*")


@dataclass
class ErasureLog:
    """Which erasures have also reached the event log (see stream_erasure.py), as replayed."""

    erased: list[str] = field(default_factory=list)
    reached_streams: set[str] = field(default_factory=set)

    def unfinished(self) -> list[str]:
        return [user_id for user_id in dict.fromkeys(self.erased) if user_id not in self.reached_streams]


async def follow_erasures(bus: EventBus, keys: DataKeys, erasures: ErasureLog | None = None) -> Replay:
    """From the first erasure on (few, and a restarted instance must know them too), then live."""

    async def on_event(event: ReceivedEvent) -> None:
        payload = event.payload
        if isinstance(payload, UserDataErased):
            keys.revoke(user_owner(payload.user_id), payload.destroyed_key_ids)
            if erasures is not None:
                erasures.erased.append(payload.user_id)
        elif isinstance(payload, UserDataErasedFromStreams) and erasures is not None:
            erasures.reached_streams.add(payload.user_id)

    return await bus.replay(stream="STORE", filter_subject=ERASURES, handler=on_event)
