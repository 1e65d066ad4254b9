"""Every storage instance hears of every erasure: the data-key cache of one instance must not
keep serving a key that another instance shredded.

The audited ``UserDataErased`` event on STORE names the keys being destroyed; it is appended
before the shred, so each instance revokes them as soon as the decision exists (DataKeys.revoke).
A KEK rotation needs no message: the cached data keys themselves do not change, and each
instance re-reads the keyring when it is replaced (kek.FileKeyring).
"""

from __future__ import annotations

from parley.storage.v1.events_pb2 import UserDataErased

from parley_core.bus import EventBus, ReceivedEvent, Replay
from parley_core.envelope import open_payload
from parley_core.topology import privacy_subject
from parley_storage.datakeys import DataKeys
from parley_storage.sealing import user_owner

ERASURES = privacy_subject("*")


async def follow_erasures(bus: EventBus, keys: DataKeys) -> Replay:
    """From the first erasure on (few, and a restarted instance must know them too), then live."""

    async def on_event(event: ReceivedEvent) -> None:
        payload = open_payload(event.envelope)
        if isinstance(payload, UserDataErased):
            keys.revoke(user_owner(payload.user_id), payload.destroyed_key_ids)

    return await bus.replay(stream="STORE", filter_subject=ERASURES, handler=on_event)
