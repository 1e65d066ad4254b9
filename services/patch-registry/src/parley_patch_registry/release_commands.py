"""The registry's release commands: publisher keys, root rotation, releases signed by their
publisher and the base release a service ran before any. Each changes the TUF repository on disk
and records what it did on the PATCH stream (an audit of who published what)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict

from parley.patch.v1 import events_pb2

from parley_core.actor import Actor
from parley_core.errors import InvalidArgument
from parley_core.event_log import ANYWHERE, Position
from parley_core.tokens import Caller
from parley_core.topology import release_subject, trust_root_subject
from parley_patch_registry.key_store import parse_public_key
from parley_patch_registry.patch_roles import require_patch_role
from parley_patch_registry.registry_base import RegistryBase, actor_of
from parley_patch_registry.releases import ReleaseInfo
from parley_patch_registry.tuf_store import delegated_role

log = logging.getLogger(__name__)
# Who published a base release: the platform, not a person (so any operator may approve its roll-out).
BASE_PUBLISHER = "platform (base version)"


class ReleaseCommands(RegistryBase):
    async def set_publisher_key(
        self, caller: Caller, *, service: str, public_key_pem: str
    ) -> events_pb2.PublisherKeySet:
        """Delegates `<service>/*` to the publisher's key; returns its record (the key id). Audited on the
        PATCH stream."""
        require_patch_role(caller.role, "setting a publisher key")
        self._known_service(service)
        key = parse_public_key(public_key_pem)
        async with self._lock:
            await asyncio.to_thread(self.repo.delegate_publisher_key, service, key, self.keys.load("targets"))
            # A repository made before publishers held their keys kept this one here: not any more.
            self.keys.remove(delegated_role(service))
            event = events_pb2.PublisherKeySet(service=service, keyid=key.keyid, set_by=caller.user_id)
            await self._append(release_subject(service), "release", service, event, actor_of(caller), at=ANYWHERE)
        return event

    def prepare_root_rotation(self, caller: Caller, *, public_keys_pem: list[str], threshold: int) -> bytes:
        """Root v(n+1) with these keys, unsigned: the operator signs it with the offline root keys."""
        require_patch_role(caller.role, "rotating the root keys")
        keys = [parse_public_key(pem) for pem in public_keys_pem]
        return self.repo.prepare_root(keys, threshold).to_bytes()

    async def rotate_root(self, caller: Caller, signed_root: bytes) -> events_pb2.RootRotated:
        """Publishes the offline-signed root; returns its record (version, root key ids, threshold)."""
        require_patch_role(caller.role, "rotating the root keys")
        async with self._lock:
            root = await asyncio.to_thread(self.repo.apply_root, signed_root)
            role = root.roles["root"]
            event = events_pb2.RootRotated(
                version=root.version, keyids=list(role.keyids), threshold=role.threshold, rotated_by=caller.user_id
            )
            at = Position(root.version - 2, None)  # the root's versions are the trust aggregate's
            await self._append(trust_root_subject(), "trust", "root", event, actor_of(caller), at=at)
        return event

    def prepare_release(
        self,
        caller: Caller,
        *,
        service: str,
        version: str,
        wheel_name: str,
        sha256: str,
        length: int,
        fixes: list[str],
        min_event_schema: int,
    ) -> tuple[bytes, str, list[str]]:
        """The unsigned metadata the publisher signs, its role and the keys that may sign it."""
        require_patch_role(caller.role, "publishing a release")
        self._known_service(service)
        prepared = self.repo.prepare(
            service=service,
            version=version,
            wheel_name=wheel_name,
            sha256=sha256,
            length=length,
            fixes=fixes,
            min_event_schema=min_event_schema or 1,
        )
        return prepared.to_bytes(), delegated_role(service), self.repo.publisher_keyids(service)

    async def publish_release(
        self,
        caller: Caller,
        *,
        service: str,
        version: str,
        wheel_name: str,
        wheel: bytes,
        signed_metadata: bytes,
    ) -> events_pb2.ReleasePublished:
        require_patch_role(caller.role, "publishing a release")
        self._known_service(service)
        if not signed_metadata:
            raise InvalidArgument(
                "a release needs its metadata signed by the service's publisher key (PrepareRelease, sign, "
                "then PublishRelease with signed_metadata); `parley patch publish` does all three"
            )
        async with self._lock:
            info = self.repo.publish_signed(service=service, signed=signed_metadata, wheel=wheel)
            if (info.version, info.target_path) != (version, f"{service}/{wheel_name}"):
                raise InvalidArgument(f"the signed metadata publishes {info.target_path} {info.version}, not {version}")
            return await self._record_release(info, caller.user_id, actor_of(caller))

    async def publish_base_release(
        self, *, service: str, version: str, wheel_name: str, wheel: bytes
    ) -> events_pb2.ReleasePublished:
        """The version a service ran before any release (its platform publishes it at first start)."""
        self._known_service(service)
        for info in self.repo.releases(service):
            if info.version == version:
                return self.release_record(info)  # published already (by its platform earlier, or by a publisher)
        async with self._lock:
            info = await asyncio.to_thread(
                self.repo.publish_base,
                service=service,
                version=version,
                wheel_name=wheel_name,
                wheel=wheel,
                targets_signer=self.keys.load("targets"),
            )
            record = await self._record_release(info, BASE_PUBLISHER, Actor.PLATFORM)
        log.info("base release %s %s published (%s)", service, version, info.target_path)
        return record

    def release_record(self, info: ReleaseInfo) -> events_pb2.ReleasePublished:
        """A published release as its ReleasePublished event recorded it (who published it)."""
        return release_published(info, self.state.release_publishers.get(info.target_path, ""))

    async def _record_release(self, info: ReleaseInfo, published_by: str, actor: Actor) -> events_pb2.ReleasePublished:
        event = release_published(info, published_by)
        await self._append(release_subject(info.service), "release", info.service, event, actor, at=ANYWHERE)
        return event


def release_published(info: ReleaseInfo, published_by: str) -> events_pb2.ReleasePublished:
    """The record of a release: its event, and what PatchService answers about it."""
    return events_pb2.ReleasePublished(**asdict(info), published_by=published_by)  # the event names its fields alike
