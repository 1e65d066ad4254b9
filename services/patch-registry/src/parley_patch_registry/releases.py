"""Signed releases as a TUF repository, built with python-tuf's Metadata API.

Why TUF and not "a signature on the wheel": it also defends against a mirror that serves an
old (vulnerable) release, freezes the view, or mixes metadata of different moments, and it
lets a compromised key be replaced without re-installing every node. Roles:

- root: a threshold of keys (default 2 of 3) that can live offline; only needed to rotate keys.
- targets: delegates `<service>/*` to one role per service (terminating), so the messaging
  key can sign messaging releases and nothing else. That key is the publisher's: the registry
  holds only its public half, prepares the role's next metadata, and verifies the publisher's
  signature on it (parley_cli.publishing is the other side).
- snapshot and timestamp: online keys of the registry; the timestamp expires soon (default one
  hour) so a frozen mirror is noticed.
- consistent snapshots: metadata as `<version>.<role>.json`, artifacts as `<sha256>.<file>`,
  which is also the content-addressed artifact store.

A release is one service's wheel plus metadata in the target's `custom` field: service,
version, the OSV ids it fixes and the oldest event-schema version it can read. Clients verify
with an unmodified `tuf.ngclient.Updater`.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key
from packaging.version import InvalidVersion, Version
from securesystemslib.signer import CryptoSigner, Key, Signer, SSlibKey
from tuf.api.exceptions import LengthOrHashMismatchError, UnsignedMetadataError
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
from parley_core.files import ensure_private_dir

TOP_ROLES = ("root", "targets", "snapshot", "timestamp")
WRITE_LOCK_FILE = ".write.lock"
_P = ParamSpec("_P")
_R = TypeVar("_R")
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


def _exclusive(change: Callable[_P, _R]) -> Callable[_P, _R]:
    """A change of the repository, made while no other process changes it (ReleaseRepository.exclusive)."""

    @functools.wraps(change)
    def locked(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        repo = args[0]
        assert isinstance(repo, ReleaseRepository)
        with repo.exclusive():
            return change(*args, **kwargs)

    return locked


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

    def make_private(self) -> None:
        """The key folder and every folder in it owner-only (0700), also when an older version
        made them readable by others."""
        ensure_private_dir(self.folder)
        for folder in [p for p in self.folder.rglob("*") if p.is_dir() and not p.is_symlink()]:
            ensure_private_dir(folder)

    def generate(self, role: str, index: int = 0) -> CryptoSigner:
        signer = CryptoSigner.generate_ed25519()
        path = self._path(role, index)
        ensure_private_dir(self.folder)
        ensure_private_dir(path.parent)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(signer.private_bytes)
        return signer

    def remove(self, role: str, index: int = 0) -> None:
        self._path(role, index).unlink(missing_ok=True)

    def load(self, role: str, index: int = 0) -> CryptoSigner:
        path = self._path(role, index)
        if not path.exists():
            raise NotFound(f"no signing key for role {role!r} at {path}")
        key = load_pem_private_key(path.read_bytes(), password=None)
        return CryptoSigner(key)


def parse_public_key(pem: str) -> Key:
    """A publisher's Ed25519 public key (SubjectPublicKeyInfo PEM) as a TUF key, id computed here."""
    try:
        public = load_pem_public_key(pem.encode())
    except ValueError as error:
        raise InvalidArgument(f"public_key_pem is not a PEM public key: {error}") from None
    if not isinstance(public, Ed25519PublicKey):
        raise InvalidArgument(f"publisher keys are Ed25519, not {type(public).__name__}")
    return SSlibKey.from_crypto(public)


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
        self._held = threading.RLock()
        self._depth = 0

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """The repository to itself while one change reads and writes its metadata: every write
        reads the newest version from disk and writes the next one, so two registry instances
        sharing the folder (a joined host's, on a shared file system) must not interleave.
        A POSIX lock on a file in the folder (held once per process: nested changes reuse it)."""
        with self._held:
            handle = None
            if self._depth == 0:
                handle = open(self.folder / WRITE_LOCK_FILE, "a")  # noqa: SIM115 - closed below
                fcntl.flock(handle, fcntl.LOCK_EX)
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if handle is not None:
                    fcntl.flock(handle, fcntl.LOCK_UN)
                    handle.close()

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
        services: Iterable[str],
        publisher_keys: Mapping[str, Key] | None = None,
        lifetimes: Lifetimes | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> ReleaseRepository:
        """A new repository; a service without a publisher key cannot be released until one is delegated."""
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
        for service in sorted(services):
            name = delegated_role(service)
            assert targets.delegations.roles is not None
            targets.delegations.roles[name] = DelegatedRole(
                name=name, keyids=[], threshold=1, terminating=True, paths=[f"{service}/*"]
            )
            if publisher_keys and service in publisher_keys:
                targets.add_key(publisher_keys[service], name)
            # Version 1 is empty and unsigned: no client reads it (snapshot names it, and the
            # first release brings version 2, signed by the publisher).
            repo._write(Metadata(Targets(expires=now + repo.lifetimes.targets)), name)
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

    @_exclusive
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

    @_exclusive
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

    @_exclusive
    def publish_signed(self, *, service: str, signed: bytes, wheel: bytes) -> ReleaseInfo:
        """Stores the release whose delegated metadata its publisher signed, then snapshot and timestamp.

        Accepted only if the service's delegated key(s) signed it, it is the very next version,
        and it adds exactly one target, under the service's path, for exactly these wheel bytes.
        """
        role, _ = self._delegation(service)
        try:
            incoming: Metadata[Targets] = Metadata.from_bytes(signed)
        except Exception as error:  # tuf raises several deserialisation errors
            raise InvalidArgument(f"signed_metadata is not TUF metadata: {error}") from None
        if not isinstance(incoming.signed, Targets):
            raise InvalidArgument(f"signed_metadata is {incoming.signed.type} metadata, not targets")
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

    @_exclusive
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

    # ---- key rotation -----------------------------------------------------------------------

    def prepare_root(self, new_keys: Sequence[Key], threshold: int) -> Metadata[Root]:
        """Root v(n+1) with `new_keys` (threshold of them) as root keys, unsigned; online keys unchanged."""
        if threshold < 1 or threshold > len(new_keys):
            raise InvalidArgument(f"root threshold {threshold} needs 1..{len(new_keys)} keys")
        if len({k.keyid for k in new_keys}) != len(new_keys):
            raise InvalidArgument("the new root keys must be different keys")
        current = self.root()
        root = current.signed
        for keyid in list(root.roles["root"].keyids):
            root.revoke_key(keyid, "root")
        for key in new_keys:
            root.add_key(key, "root")
        root.roles["root"].threshold = threshold
        root.version += 1
        root.expires = self.clock() + self.lifetimes.root
        return Metadata(root)

    @_exclusive
    def apply_root(self, signed: bytes) -> Root:
        """Publishes root v(n+1) signed offline, after checking what a client will check, and more.

        A threshold of the current root keys and of its own root keys must have signed it (else
        clients holding root vn could not follow), and only the root keys may differ: the online
        roles' keys are the registry's and stay as they are.
        """
        try:
            incoming: Metadata[Root] = Metadata.from_bytes(signed)
        except Exception as error:  # tuf raises several deserialisation errors
            raise InvalidArgument(f"signed_root is not TUF metadata: {error}") from None
        if not isinstance(incoming.signed, Root):
            raise InvalidArgument(f"signed_root is {incoming.signed.type} metadata, not root")
        current = self.root()
        new = incoming.signed
        if new.version != current.signed.version + 1:
            raise FailedPrecondition(
                f"the signed root is version {new.version}, the next is {current.signed.version + 1}: prepare again"
            )
        for role in ("targets", "snapshot", "timestamp"):
            if new.roles[role] != current.signed.roles[role] or any(
                new.keys.get(k) != current.signed.keys.get(k) for k in current.signed.roles[role].keyids
            ):
                raise InvalidArgument(f"a root rotation changes the root keys only, not the {role} role")
        if new.consistent_snapshot != current.signed.consistent_snapshot or new.expires <= self.clock():
            raise InvalidArgument("a root rotation keeps consistent snapshots and expires in the future")
        for verifier, which in ((current.signed, "current"), (new, "new")):
            try:
                verifier.verify_delegate("root", incoming.signed_bytes, incoming.signatures)
            except UnsignedMetadataError:
                needed = verifier.roles["root"].threshold
                raise PermissionDenied(
                    f"root v{new.version} needs signatures of {needed} of the {which} root keys"
                ) from None
        self._write(incoming, "root")
        return new

    @_exclusive
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
