"""Signed releases as a TUF repository, built with python-tuf's Metadata API.

Why TUF and not "a signature on the wheel": it also defends against a mirror that serves an
old (vulnerable) release, freezes the view, or mixes metadata of different moments, and it
lets a compromised key be replaced without re-installing every node. Roles:

- root: a threshold of keys (default 2 of 3) that can live offline; only needed to rotate keys.
- targets: delegates `<service>/*` to one role per service (terminating), so the messaging
  key can sign messaging releases and nothing else.
- snapshot and timestamp: online keys of the registry; the timestamp expires soon (default one
  hour) so a frozen mirror is noticed.
- consistent snapshots: metadata as `<version>.<role>.json`, artifacts as `<sha256>.<file>`,
  which is also the content-addressed artifact store.

A release is one service's wheel plus metadata in the target's `custom` field: service,
version, the OSV ids it fixes and the oldest event-schema version it can read. Clients verify
with an unmodified `tuf.ngclient.Updater`.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner, Signer
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from parley_core.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied

TOP_ROLES = ("root", "targets", "snapshot", "timestamp")
WHEEL_NAME = re.compile(r"^[A-Za-z0-9_.]+-[A-Za-z0-9_.+!]+(-[A-Za-z0-9_.]+){2,3}\.whl$")


def delegated_role(service: str) -> str:
    return f"service-{service}"


@dataclass(frozen=True)
class Lifetimes:
    root: timedelta = timedelta(days=365)
    targets: timedelta = timedelta(days=90)
    snapshot: timedelta = timedelta(days=7)
    timestamp: timedelta = timedelta(hours=1)


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


class KeyStore:
    """PEM private keys in a folder (0600), one file per key: `<role>.<n>.pem`.

    The root keys are written under `offline/` so an operator can move them to removable media;
    the registry never needs them except to rotate keys.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _path(self, role: str, index: int) -> Path:
        sub = "offline/" if role == "root" else ""
        return self.folder / f"{sub}{role}.{index}.pem"

    def generate(self, role: str, index: int = 0) -> CryptoSigner:
        signer = CryptoSigner.generate_ed25519()
        path = self._path(role, index)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(signer.private_bytes)
        return signer

    def load(self, role: str, index: int = 0) -> CryptoSigner:
        path = self._path(role, index)
        if not path.exists():
            raise NotFound(f"no signing key for role {role!r} at {path}")
        key = load_pem_private_key(path.read_bytes(), password=None)
        return CryptoSigner(key)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ReleaseRepository:
    """The registry's TUF repository on disk: `metadata/` and `targets/`, served as-is over HTTP."""

    def __init__(
        self,
        folder: Path,
        *,
        online: Mapping[str, Signer],
        lifetimes: Lifetimes | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.folder = folder
        self.metadata_dir = folder / "metadata"
        self.targets_dir = folder / "targets"
        self.online = dict(online)  # snapshot and timestamp signers
        self.lifetimes = lifetimes or Lifetimes()
        self.clock = clock

    # ---- creation and loading -------------------------------------------------------------

    @classmethod
    def create(
        cls,
        folder: Path,
        *,
        root_signers: list[Signer],
        root_threshold: int,
        targets_signer: Signer,
        snapshot_signer: Signer,
        timestamp_signer: Signer,
        service_keys: Mapping[str, Signer],
        lifetimes: Lifetimes | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> ReleaseRepository:
        if (folder / "metadata" / "1.root.json").exists():
            raise AlreadyExists(f"a release repository already exists in {folder}")
        if root_threshold < 1 or root_threshold > len(root_signers):
            raise InvalidArgument(f"root threshold {root_threshold} needs 1..{len(root_signers)} keys")
        repo = cls(
            folder,
            online={"snapshot": snapshot_signer, "timestamp": timestamp_signer},
            lifetimes=lifetimes,
            clock=clock,
        )
        repo.metadata_dir.mkdir(parents=True, exist_ok=True)
        repo.targets_dir.mkdir(parents=True, exist_ok=True)
        now = clock()
        root = Root(expires=now + repo.lifetimes.root, consistent_snapshot=True)
        for signer in root_signers:
            root.add_key(signer.public_key, "root")
        root.roles["root"].threshold = root_threshold
        for role, signer in (
            ("targets", targets_signer),
            ("snapshot", snapshot_signer),
            ("timestamp", timestamp_signer),
        ):
            root.add_key(signer.public_key, role)
        root_md = Metadata(root)
        for signer in root_signers:
            root_md.sign(signer, append=True)
        repo._write(root_md, "root")

        targets = Targets(expires=now + repo.lifetimes.targets)
        targets.delegations = Delegations(keys={}, roles={})
        for service, signer in sorted(service_keys.items()):
            name = delegated_role(service)
            assert targets.delegations.roles is not None
            targets.delegations.roles[name] = DelegatedRole(
                name=name, keyids=[], threshold=1, terminating=True, paths=[f"{service}/*"]
            )
            targets.add_key(signer.public_key, name)
            repo._write_signed(Metadata(Targets(expires=now + repo.lifetimes.targets)), name, [signer])
        repo._write_signed(Metadata(targets), "targets", [targets_signer])
        repo._publish_snapshot()
        return repo

    def _write(self, md: Metadata[Any], role: str) -> None:
        """Consistent snapshot naming; timestamp is the one fixed entry point."""
        data = md.to_bytes(JSONSerializer(compact=False))
        name = "timestamp.json" if role == "timestamp" else f"{md.signed.version}.{role}.json"
        tmp = self.metadata_dir / f".{name}.tmp"
        tmp.write_bytes(data)
        tmp.replace(self.metadata_dir / name)
        if role == "root":
            (self.metadata_dir / ".root.json.tmp").write_bytes(data)
            (self.metadata_dir / ".root.json.tmp").replace(self.metadata_dir / "root.json")

    def _write_signed(self, md: Metadata[Any], role: str, signers: Iterable[Signer]) -> None:
        md.signatures.clear()
        for signer in signers:
            md.sign(signer, append=True)
        self._write(md, role)

    def _latest(self, role: str) -> Metadata[Any]:
        if role == "timestamp":
            path = self.metadata_dir / "timestamp.json"
            if not path.exists():
                raise NotFound(f"no timestamp metadata in {self.metadata_dir}")
            return Metadata.from_file(str(path))
        versions = [
            int(p.name.split(".", 1)[0])
            for p in self.metadata_dir.glob(f"*.{role}.json")
            if p.name.split(".", 1)[0].isdigit()
        ]
        if not versions:
            raise NotFound(f"no {role} metadata in {self.metadata_dir}")
        return Metadata.from_file(str(self.metadata_dir / f"{max(versions)}.{role}.json"))

    def root(self) -> Metadata[Root]:
        return self._latest("root")

    def targets(self) -> Metadata[Targets]:
        return self._latest("targets")

    # ---- snapshot and timestamp -------------------------------------------------------------

    def _delegated_roles(self) -> list[str]:
        delegations = self.targets().signed.delegations
        return sorted(delegations.roles) if delegations and delegations.roles else []

    def _publish_snapshot(self) -> None:
        now = self.clock()
        meta = {"targets.json": MetaFile(version=self.targets().signed.version)}
        for role in self._delegated_roles():
            meta[f"{role}.json"] = MetaFile(version=self._latest(role).signed.version)
        try:
            previous = self._latest("snapshot").signed.version
        except NotFound:
            previous = 0
        snapshot = Snapshot(version=previous + 1, expires=now + self.lifetimes.snapshot, meta=meta)
        self._write_signed(Metadata(snapshot), "snapshot", [self.online["snapshot"]])
        self.refresh_timestamp()

    def refresh_timestamp(self) -> int:
        """A new timestamp for the current snapshot; the registry calls this well before expiry."""
        now = self.clock()
        snapshot_version = self._latest("snapshot").signed.version
        try:
            previous = self._latest("timestamp").signed.version
        except NotFound:
            previous = 0
        timestamp = Timestamp(
            version=previous + 1,
            expires=now + self.lifetimes.timestamp,
            snapshot_meta=MetaFile(version=snapshot_version),
        )
        self._write_signed(Metadata(timestamp), "timestamp", [self.online["timestamp"]])
        return timestamp.version

    def timestamp_expires(self) -> datetime:
        expires: datetime = self._latest("timestamp").signed.expires
        return expires

    # ---- releases ---------------------------------------------------------------------------

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
        """Adds a release to the service's delegated role, signed by that service's key only."""
        role = delegated_role(service)
        targets = self.targets()
        delegations = targets.signed.delegations
        if delegations is None or delegations.roles is None or role not in delegations.roles:
            raise NotFound(f"no delegated release role for service {service!r}")
        if signer.public_key.keyid not in delegations.roles[role].keyids:
            raise PermissionDenied(
                f"this key ({signer.public_key.keyid[:12]}…) is not delegated to sign {service} releases"
            )
        if not WHEEL_NAME.match(wheel_name):
            raise InvalidArgument(f"{wheel_name!r} is not a wheel file name")
        if min_event_schema < 1:
            raise InvalidArgument("min_event_schema must be 1 or more")
        delegated: Metadata[Targets] = self._latest(role)
        path = f"{service}/{wheel_name}"
        for existing in delegated.signed.targets.values():
            if existing.custom.get("version") == version:
                raise AlreadyExists(f"{service} {version} is already published as {existing.path}")
        digest = _sha256(wheel)
        target = TargetFile(
            length=len(wheel),
            hashes={"sha256": digest},
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
        # Content-addressed store first: metadata never names an artifact that is not there.
        blob = self.targets_dir / service / f"{digest}.{wheel_name}"
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            tmp = blob.with_name(f".{blob.name}.tmp")
            tmp.write_bytes(wheel)
            tmp.replace(blob)
        delegated.signed.targets[path] = target
        delegated.signed.version += 1
        delegated.signed.expires = self.clock() + self.lifetimes.targets
        self._write_signed(delegated, role, [signer])
        self._publish_snapshot()
        return ReleaseInfo.from_target(target)

    def releases(self, service: str | None = None) -> list[ReleaseInfo]:
        found: list[ReleaseInfo] = []
        for role in self._delegated_roles():
            if service is not None and role != delegated_role(service):
                continue
            found.extend(ReleaseInfo.from_target(t) for t in self._latest(role).signed.targets.values())
        return sorted(found, key=lambda r: (r.service, r.target_path))

    # ---- key rotation -----------------------------------------------------------------------

    def rotate_root(
        self,
        *,
        old_signers: list[Signer],
        new_signers: list[Signer],
        new_threshold: int,
        replace_online: Mapping[str, Signer] | None = None,
    ) -> int:
        """Root v(n+1) signed by a threshold of the old keys and of the new ones, as TUF requires
        so that clients holding root vn can follow. Online keys may be replaced at the same time."""
        current = self.root()
        old_role = current.signed.roles["root"]
        old_ids = {s.public_key.keyid for s in old_signers} & set(old_role.keyids)
        if len(old_ids) < old_role.threshold:
            raise PermissionDenied(f"rotating root needs {old_role.threshold} of the current root keys")
        if new_threshold < 1 or new_threshold > len(new_signers):
            raise InvalidArgument(f"root threshold {new_threshold} needs 1..{len(new_signers)} keys")
        root = current.signed
        for keyid in list(old_role.keyids):
            root.revoke_key(keyid, "root")
        for signer in new_signers:
            root.add_key(signer.public_key, "root")
        root.roles["root"].threshold = new_threshold
        for role, signer in (replace_online or {}).items():
            if role not in ("snapshot", "timestamp"):
                raise InvalidArgument(f"only the online roles can be re-keyed this way, not {role!r}")
            for keyid in list(root.roles[role].keyids):
                root.revoke_key(keyid, role)
            root.add_key(signer.public_key, role)
            self.online[role] = signer
        root.version += 1
        root.expires = self.clock() + self.lifetimes.root
        self._write_signed(Metadata(root), "root", [*old_signers, *new_signers])
        if replace_online:
            self._publish_snapshot()  # re-signed by the new online keys
        return root.version

    def artifact_path(self, release: ReleaseInfo) -> Path:
        directory, _, name = release.target_path.rpartition("/")
        path = self.targets_dir / directory / f"{release.sha256}.{name}"
        if not path.exists():
            raise FailedPrecondition(f"artifact of {release.target_path} is missing from the store")
        return path
