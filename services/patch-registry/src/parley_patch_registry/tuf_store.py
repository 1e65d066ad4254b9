"""The registry's TUF repository on disk, built with python-tuf's Metadata API: its top-level
roles, snapshot and timestamp, and the rotation of its root keys. What is released into it (the
delegated targets roles, one per service) is releases.py.

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
"""

from __future__ import annotations

import fcntl
import functools
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ParamSpec, Self, TypeVar

from securesystemslib.signer import Key, Signer
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import DelegatedRole, Delegations, Metadata, MetaFile, Root, Snapshot, Targets, Timestamp
from tuf.api.serialization.json import JSONSerializer

from parley_core.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied

TOP_ROLES = ("root", "targets", "snapshot", "timestamp")
WRITE_LOCK_FILE = ".write.lock"
_P = ParamSpec("_P")
_R = TypeVar("_R")


def exclusive_change(change: Callable[_P, _R]) -> Callable[_P, _R]:
    """A change of the repository, made while no other process changes it (TufStore.exclusive)."""

    @functools.wraps(change)
    def locked(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        repo = args[0]
        assert isinstance(repo, TufStore)
        with repo.exclusive():
            return change(*args, **kwargs)

    return locked


def delegated_role(service: str) -> str:
    return f"service-{service}"


_Signed = TypeVar("_Signed", Root, Targets)


def signed_offline(signed: bytes, kind: type[_Signed], *, field: str) -> Metadata[_Signed]:
    """The TUF metadata a request's `field` carries, signed offline, refused unless it is of `kind`."""
    try:
        incoming: Metadata[Any] = Metadata.from_bytes(signed)
    except Exception as error:  # tuf raises several deserialisation errors
        raise InvalidArgument(f"{field} is not TUF metadata: {error}") from None
    if not isinstance(incoming.signed, kind):
        raise InvalidArgument(f"{field} is {incoming.signed.type} metadata, not {kind.type}")
    return incoming


@dataclass(frozen=True)
class Lifetimes:
    root: timedelta = timedelta(days=365)
    targets: timedelta = timedelta(days=90)
    snapshot: timedelta = timedelta(days=7)
    timestamp: timedelta = timedelta(hours=1)


class TufStore:
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
    ) -> Self:
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

    @exclusive_change
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

    @exclusive_change
    def apply_root(self, signed: bytes) -> Root:
        """Publishes root v(n+1) signed offline, after checking what a client will check, and more.

        A threshold of the current root keys and of its own root keys must have signed it (else
        clients holding root vn could not follow), and only the root keys may differ: the online
        roles' keys are the registry's and stay as they are.
        """
        incoming = signed_offline(signed, Root, field="signed_root")
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

    @exclusive_change
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
