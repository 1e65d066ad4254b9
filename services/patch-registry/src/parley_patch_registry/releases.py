"""Signed releases: one service's wheel plus metadata in its delegated targets role (the TUF
repository itself is tuf_store.py), prepared here, signed by the service's publisher and
verified here before it is stored.

A release's metadata is in the target's `custom` field: service, version, the OSV ids it fixes
and the oldest event-schema version it can read. Clients verify with an unmodified
`tuf.ngclient.Updater`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from packaging.version import InvalidVersion, Version
from securesystemslib.signer import Key, Signer
from tuf.api.exceptions import LengthOrHashMismatchError, UnsignedMetadataError
from tuf.api.metadata import Metadata, TargetFile, Targets

from parley_core.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from parley_patch_registry.tuf_store import TufStore, delegated_role, exclusive_change, signed_offline

WHEEL_NAME = re.compile(r"^[A-Za-z0-9_.]+-[A-Za-z0-9_.+!]+(-[A-Za-z0-9_.]+){2,3}\.whl$")


def _require_newer_version(targets: Targets, service: str, version: str) -> None:
    """A release must be newer (PEP 440) than every published one: an older version would look
    like an upgrade to a roll-out while bringing back what a newer release fixed."""
    try:
        wanted = Version(version)
    except InvalidVersion:
        raise InvalidArgument(f"{version!r} is not a version (PEP 440, e.g. 0.3.0)") from None
    published: list[tuple[Version, str]] = []
    for existing in targets.targets.values():
        if existing.custom.get("version") == version:
            raise AlreadyExists(f"{service} {version} is already published as {existing.path}")
        try:
            published.append((Version(str(existing.custom.get("version"))), existing.path))
        except InvalidVersion:
            continue  # written before versions were checked; nothing to compare with
    if published and wanted <= (newest := max(published))[0]:
        raise FailedPrecondition(
            f"{service} {version} is not newer than the newest published release {newest[0]} ({newest[1]}); "
            f"publish a version above {newest[0]}"
        )


@dataclass(frozen=True)
class ReleaseInfo:
    service: str
    version: str
    fixes: tuple[str, ...]
    min_event_schema: int
    target_path: str
    sha256: str
    length: int

    @classmethod
    def from_target(cls, target: TargetFile) -> ReleaseInfo:
        custom: Mapping[str, Any] = target.custom
        return cls(
            service=str(custom["service"]),
            version=str(custom["version"]),
            fixes=tuple(str(x) for x in custom.get("fixes", [])),
            min_event_schema=int(custom.get("min_event_schema", 1)),
            target_path=target.path,
            sha256=target.hashes["sha256"],
            length=target.length,
        )


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ReleaseRepository(TufStore):
    """The releases in the registry's TUF repository, one delegated targets role per service."""

    # ---- releases ---------------------------------------------------------------------------

    def _delegation(self, service: str) -> tuple[str, list[str]]:
        role = delegated_role(service)
        delegations = self.targets().signed.delegations
        if delegations is None or delegations.roles is None or role not in delegations.roles:
            raise NotFound(f"no delegated release role for service {service!r}")
        return role, list(delegations.roles[role].keyids)

    def _base_targets(self, service: str) -> Targets:
        """The service's base release (top-level targets), for version checks."""
        base = {p: t for p, t in self.targets().signed.targets.items() if t.custom.get("service") == service}
        return Targets(targets=base)

    @exclusive_change
    def delegate_publisher_key(self, service: str, key: Key, targets_signer: Signer) -> None:
        """`<service>/*` is signed by `key` from now on (replacing any earlier publisher key)."""
        role, keyids = self._delegation(service)
        targets = self.targets()
        for keyid in keyids:
            targets.signed.revoke_key(keyid, role)
        targets.signed.add_key(key, role)
        targets.signed.version += 1
        targets.signed.expires = self.clock() + self.lifetimes.targets
        self._write_signed(targets, "targets", [targets_signer])
        self._publish_snapshot()

    def publisher_keyids(self, service: str) -> list[str]:
        return self._delegation(service)[1]

    def prepare(
        self,
        *,
        service: str,
        version: str,
        wheel_name: str,
        sha256: str,
        length: int,
        fixes: Iterable[str],
        min_event_schema: int,
    ) -> Metadata[Targets]:
        """The service's next delegated targets metadata with the release added, unsigned.

        This is what the publisher signs; nothing is written until the signed copy comes back.
        """
        role, keyids = self._delegation(service)
        if not keyids:
            raise FailedPrecondition(
                f"no publisher key is delegated for {service} releases; "
                f"create one with `parley patch key create {service}`"
            )
        if not WHEEL_NAME.match(wheel_name):
            raise InvalidArgument(f"{wheel_name!r} is not a wheel file name")
        if min_event_schema < 1:
            raise InvalidArgument("min_event_schema must be 1 or more")
        if not re.fullmatch(r"[0-9a-f]{64}", sha256) or length < 1:
            raise InvalidArgument("sha256 must be 64 lower-case hex digits and length at least 1")
        delegated: Metadata[Targets] = self._latest(role)
        _require_newer_version(delegated.signed, service, version)
        _require_newer_version(self._base_targets(service), service, version)
        path = f"{service}/{wheel_name}"
        delegated.signed.targets[path] = TargetFile(
            length=length,
            hashes={"sha256": sha256},
            path=path,
            unrecognized_fields={
                "custom": {
                    "service": service,
                    "version": version,
                    "fixes": sorted(set(fixes)),
                    "min_event_schema": min_event_schema,
                }
            },
        )
        delegated.signed.version += 1
        delegated.signed.expires = self.clock() + self.lifetimes.targets
        delegated.signatures.clear()
        return delegated

    @exclusive_change
    def publish_signed(self, *, service: str, signed: bytes, wheel: bytes) -> ReleaseInfo:
        """Stores the release whose delegated metadata its publisher signed, then snapshot and timestamp.

        Accepted only if the service's delegated key(s) signed it, it is the very next version,
        and it adds exactly one target, under the service's path, for exactly these wheel bytes.
        """
        role, _ = self._delegation(service)
        incoming = signed_offline(signed, Targets, field="signed_metadata")
        try:
            self.targets().verify_delegate(role, incoming)
        except UnsignedMetadataError:
            keyids = ", ".join(s[:12] + "…" for s in incoming.signatures) or "no key"
            raise PermissionDenied(
                f"signed by {keyids}, which is not delegated to sign {service} releases; "
                f"sign with {service}'s publisher key (`parley patch key create {service}` made it)"
            ) from None
        current: Metadata[Targets] = self._latest(role)
        if incoming.signed.version != current.signed.version + 1:
            raise FailedPrecondition(
                f"the signed metadata is version {incoming.signed.version} but the repository expects "
                f"{current.signed.version + 1}; another release came first: publish again"
            )
        before, after = current.signed.targets, incoming.signed.targets
        added = [path for path in after if path not in before]
        changed = [path for path in before if after.get(path) != before[path]]
        if len(added) != 1 or changed or incoming.signed.delegations is not None:
            raise InvalidArgument("a release adds exactly one target and changes nothing else")
        target = after[added[0]]
        custom = target.custom
        directory, _, name = target.path.rpartition("/")
        if directory != service or not WHEEL_NAME.match(name) or custom.get("service") != service:
            raise InvalidArgument(f"{target.path} is not a {service} wheel under {service}/")
        if not isinstance(custom.get("min_event_schema"), int) or custom["min_event_schema"] < 1:
            raise InvalidArgument("min_event_schema must be 1 or more")
        _require_newer_version(current.signed, service, str(custom.get("version")))
        _require_newer_version(self._base_targets(service), service, str(custom.get("version")))
        if incoming.signed.expires <= self.clock():
            raise InvalidArgument("the signed metadata has already expired")
        try:
            target.verify_length_and_hashes(wheel)
        except LengthOrHashMismatchError:
            raise InvalidArgument(f"the uploaded wheel is not the one the signed metadata names ({name})") from None
        self._store_artifact(service, target, name, wheel)
        self._write(incoming, role)  # as the publisher signed it
        self._publish_snapshot()
        return ReleaseInfo.from_target(target)

    def publish(
        self,
        *,
        service: str,
        version: str,
        wheel_name: str,
        wheel: bytes,
        fixes: Iterable[str],
        min_event_schema: int,
        signer: Signer,
    ) -> ReleaseInfo:
        """Both sides in one process (tests and tools that hold the publisher key)."""
        prepared = self.prepare(
            service=service,
            version=version,
            wheel_name=wheel_name,
            sha256=_sha256(wheel),
            length=len(wheel),
            fixes=fixes,
            min_event_schema=min_event_schema,
        )
        prepared.sign(signer)
        return self.publish_signed(service=service, signed=prepared.to_bytes(), wheel=wheel)

    @exclusive_change
    def publish_base(
        self, *, service: str, version: str, wheel_name: str, wheel: bytes, targets_signer: Signer
    ) -> ReleaseInfo:
        """The version a service ran before any release, so that a roll-out can return to it.

        Listed in the top-level targets, signed by the targets key (the key that vouches for
        every publisher), verified by the node agents' TUF client like any release. One per
        service; publishing the same bytes again is a no-op.
        """
        if not WHEEL_NAME.match(wheel_name):
            raise InvalidArgument(f"{wheel_name!r} is not a wheel file name")
        sha256 = _sha256(wheel)
        targets = self.targets()
        for existing in targets.signed.targets.values():
            if existing.custom.get("service") != service:
                continue
            if existing.custom.get("version") == version and existing.hashes["sha256"] == sha256:
                return ReleaseInfo.from_target(existing)
            raise AlreadyExists(
                f"{service}'s base release is {existing.custom.get('version')} ({existing.path}) already"
            )
        role, _ = self._delegation(service)
        _require_newer_version(Targets(), service, version)  # a PEP 440 version
        for published in self._latest(role).signed.targets.values():
            if published.custom.get("version") == version:
                raise AlreadyExists(f"{service} {version} is already published as {published.path}")
        path = f"{service}/{wheel_name}"
        target = TargetFile(
            length=len(wheel),
            hashes={"sha256": sha256},
            path=path,
            unrecognized_fields={
                "custom": {"service": service, "version": version, "fixes": [], "min_event_schema": 1, "base": True}
            },
        )
        self._store_artifact(service, target, wheel_name, wheel)
        targets.signed.targets[path] = target
        targets.signed.version += 1
        targets.signed.expires = self.clock() + self.lifetimes.targets
        self._write_signed(targets, "targets", [targets_signer])
        self._publish_snapshot()
        return ReleaseInfo.from_target(target)

    def _store_artifact(self, service: str, target: TargetFile, name: str, wheel: bytes) -> None:
        """Content-addressed store first: metadata never names an artifact that is not there."""
        blob = self.targets_dir / service / f"{target.hashes['sha256']}.{name}"
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            tmp = blob.with_name(f".{blob.name}.tmp")
            tmp.write_bytes(wheel)
            tmp.replace(blob)

    def releases(self, service: str | None = None) -> list[ReleaseInfo]:
        found: list[ReleaseInfo] = [
            ReleaseInfo.from_target(t)
            for t in self.targets().signed.targets.values()
            if service is None or t.custom.get("service") == service
        ]
        for role in self._delegated_roles():
            if service is not None and role != delegated_role(service):
                continue
            found.extend(ReleaseInfo.from_target(t) for t in self._latest(role).signed.targets.values())
        return sorted(found, key=lambda r: (r.service, r.target_path))
