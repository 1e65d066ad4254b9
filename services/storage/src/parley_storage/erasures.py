"""Every storage instance hears of every erasure: the data-key cache of one instance must not
keep serving a key that another instance shredded.

The audited ``UserDataErased`` event on STORE names the keys being destroyed; it is appended
before the shred, so each instance revokes them as soon as the decision exists (DataKeys.revoke).
A KEK rotation needs no message: the cached data keys themselves do not change, and each
instance re-reads the keyring when it is replaced (kek.FileKeyring).
"""

from __future__ import annotations

from parley_core.bus import EventBus, ReceivedEvent, Replay
from parley_core.topology import privacy_subject
from parley_storage import codec
from parley_storage.datakeys import DataKeys
from parley_storage.domain import Erasures, UserErased
from parley_storage.sealing import user_owner

ERASURES = privacy_subject("*")


async def follow_erasures(bus: EventBus, keys: DataKeys, erasures: Erasures | None = None) -> Replay:
    """From the first erasure on (few, and a restarted instance must know them too), then live:
    each fact is folded into `erasures` (domain.Erasures.apply), and an erasure's keys are
    revoked from this instance's data-key cache."""
    erasures = erasures if erasures is not None else Erasures()

    async def on_event(event: ReceivedEvent) -> None:
        fact = codec.fact_of(event.payload)
        if fact is None:
            return
        if isinstance(fact, UserErased):
            keys.revoke(user_owner(fact.user_id), fact.destroyed_key_ids)
        erasures.apply(fact)

    return await bus.replay(stream="STORE", filter_subject=ERASURES, handler=on_event)
