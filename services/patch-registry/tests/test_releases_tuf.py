"""The stock tuf.ngclient.Updater against the registry's repository served over loopback HTTP."""

from __future__ import annotations

import shutil
import socket
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, MetaFile, TargetFile, Targets, Timestamp
from tuf.api.serialization.json import JSONSerializer
from tuf.ngclient import Updater

from parley_core.errors import AlreadyExists, FailedPrecondition, InvalidArgument, PermissionDenied
from parley_patch_registry.releases import ReleaseRepository
from parley_patch_registry.settings import RegistrySettings
from parley_patch_registry.tuf_http import RepositoryHttpServer
from parley_patch_registry.tuf_store import Lifetimes, delegated_role

WHEEL_A = "parley_messaging-0.2.0-py3-none-any.whl"


@dataclass
class Setup:
    repo: ReleaseRepository
    http: RepositoryHttpServer
    root_keys: list[CryptoSigner]
    service_keys: dict[str, CryptoSigner]
    tmp: Path
    targets_key: CryptoSigner
    clients: int = 0

    def updater(self, *, fresh: bool = False) -> Updater:
        """A client that trusts root v1 (shipped with the node); the same client keeps its state."""
        if fresh:
            self.clients += 1
        client = self.tmp / f"client-{self.clients}"
        (client / "metadata").mkdir(parents=True, exist_ok=True)
        (client / "downloads").mkdir(exist_ok=True)
        trusted = client / "metadata" / "root.json"
        if not trusted.exists():
            shutil.copy(self.repo.metadata_dir / "1.root.json", trusted)
        return Updater(
            metadata_dir=str(client / "metadata"),
            metadata_base_url=self.http.metadata_url,
            target_dir=str(client / "downloads"),
            target_base_url=self.http.targets_url,
            bootstrap=None,
        )

    def publish(self, service: str, version: str, data: bytes, signer: CryptoSigner | None = None) -> str:
        wheel = f"parley_{service}-{version}-py3-none-any.whl"
        self.repo.publish(
            service=service,
            version=version,
            wheel_name=wheel,
            wheel=data,
            fixes=["PYSEC-2023-192"],
            min_event_schema=1,
            signer=signer or self.service_keys[service],
        )
        return f"{service}/{wheel}"


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    root_keys = [CryptoSigner.generate_ed25519() for _ in range(3)]
    service_keys = {s: CryptoSigner.generate_ed25519() for s in ("auth", "messaging")}
    targets_key = CryptoSigner.generate_ed25519()
    repo = ReleaseRepository.create(
        tmp_path / "repo",
        root_signers=root_keys,
        root_threshold=2,
        targets_signer=targets_key,
        snapshot_signer=CryptoSigner.generate_ed25519(),
        timestamp_signer=CryptoSigner.generate_ed25519(),
        services=["auth", "messaging"],
        publisher_keys={s: k.public_key for s, k in service_keys.items()},
    )
    with RepositoryHttpServer(repo.folder) as http:
        yield Setup(repo, http, root_keys, service_keys, tmp_path, targets_key)


def download(updater: Updater, path: str) -> bytes:
    updater.refresh()
    info = updater.get_targetinfo(path)
    assert info is not None, f"{path} not found"
    return Path(updater.download_target(info)).read_bytes()


def test_release_downloads_and_verifies_with_its_metadata(setup: Setup) -> None:
    path = setup.publish("messaging", "0.2.0", b"wheel bytes A")
    updater = setup.updater()
    assert download(updater, path) == b"wheel bytes A"
    info = updater.get_targetinfo(path)
    assert info is not None
    assert info.custom == {
        "service": "messaging",
        "version": "0.2.0",
        "fixes": ["PYSEC-2023-192"],
        "min_event_schema": 1,
    }
    # content addressed: the artifact is stored under its sha256
    stored = list((setup.repo.targets_dir / "messaging").iterdir())
    assert [p.name for p in stored] == [f"{info.hashes['sha256']}.{WHEEL_A}"]
    assert [r.version for r in setup.repo.releases("messaging")] == ["0.2.0"]


def test_base_release_is_signed_by_the_targets_key_and_verified_like_any_release(setup: Setup) -> None:
    """The version a service ran before any release: a revert's target, fetched through TUF."""
    wheel = "parley_messaging-0.1.0-py3-none-any.whl"
    base = setup.repo.publish_base(
        service="messaging", version="0.1.0", wheel_name=wheel, wheel=b"base bytes", targets_signer=setup.targets_key
    )
    again = setup.repo.publish_base(
        service="messaging", version="0.1.0", wheel_name=wheel, wheel=b"base bytes", targets_signer=setup.targets_key
    )
    assert again == base
    assert download(setup.updater(), base.target_path) == b"base bytes"
    with pytest.raises(AlreadyExists, match="already published"):
        setup.publish("messaging", "0.1.0", b"other bytes")
    # Releases by the publisher come after it and sit beside it.
    setup.publish("messaging", "0.2.0", b"wheel bytes A")
    assert [r.version for r in setup.repo.releases("messaging")] == ["0.1.0", "0.2.0"]
    assert download(setup.updater(), base.target_path) == b"base bytes"
    with pytest.raises(AlreadyExists, match=r"base release is 0\.1\.0"):
        setup.repo.publish_base(
            service="messaging",
            version="0.0.9",
            wheel_name="parley_messaging-0.0.9-py3-none-any.whl",
            wheel=b"x",
            targets_signer=setup.targets_key,
        )


def test_same_version_twice_is_refused(setup: Setup) -> None:
    setup.publish("messaging", "0.2.0", b"A")
    with pytest.raises(AlreadyExists, match="already published"):
        setup.publish("messaging", "0.2.0", b"B")


def test_version_not_newer_than_the_newest_release_is_refused(setup: Setup) -> None:
    setup.publish("messaging", "0.2.0", b"A")
    setup.publish("messaging", "0.3.0", b"B")
    with pytest.raises(FailedPrecondition, match=r"messaging 0\.2\.5 is not newer than .* 0\.3\.0"):
        setup.publish("messaging", "0.2.5", b"C")
    # Another service's releases do not count, and nothing was written for the refused one.
    setup.publish("auth", "0.1.1", b"D")
    assert [r.version for r in setup.repo.releases("messaging")] == ["0.2.0", "0.3.0"]
    setup.publish("messaging", "0.10.0", b"E")  # PEP 440 order, not string order


def test_version_that_is_not_a_version_is_refused(setup: Setup) -> None:
    with pytest.raises(InvalidArgument, match="not a version"):
        setup.publish("messaging", "latest", b"A")


def test_tampered_artifact_is_refused(setup: Setup) -> None:
    path = setup.publish("messaging", "0.2.0", b"genuine wheel")
    [blob] = (setup.repo.targets_dir / "messaging").iterdir()
    blob.write_bytes(b"evil wheel!!!")  # same length, other content
    with pytest.raises(tuf_errors.LengthOrHashMismatchError):
        download(setup.updater(), path)


def test_rolled_back_timestamp_is_refused(setup: Setup) -> None:
    old_timestamp = (setup.repo.metadata_dir / "timestamp.json").read_bytes()
    path = setup.publish("messaging", "0.2.0", b"A")
    download(setup.updater(), path)  # the client has seen the newer timestamp
    (setup.repo.metadata_dir / "timestamp.json").write_bytes(old_timestamp)  # a mirror replays it
    with pytest.raises(tuf_errors.BadVersionNumberError):
        setup.updater().refresh()


def test_rolled_back_snapshot_is_refused(setup: Setup) -> None:
    path = setup.publish("messaging", "0.2.0", b"A")
    download(setup.updater(), path)
    # even with the timestamp key, pointing a newer timestamp at an older snapshot is refused
    current = Metadata[Timestamp].from_file(str(setup.repo.metadata_dir / "timestamp.json"))
    current.signed.version += 1
    current.signed.snapshot_meta = MetaFile(version=1)
    current.signatures.clear()
    current.sign(setup.repo.online["timestamp"])
    current.to_file(str(setup.repo.metadata_dir / "timestamp.json"), JSONSerializer(compact=False))
    with pytest.raises(tuf_errors.BadVersionNumberError):
        setup.updater().refresh()


def test_expired_timestamp_is_refused(tmp_path: Path) -> None:
    long_ago = datetime.now(UTC) - timedelta(days=2)
    repo = ReleaseRepository.create(
        tmp_path / "repo",
        root_signers=[CryptoSigner.generate_ed25519()],
        root_threshold=1,
        targets_signer=CryptoSigner.generate_ed25519(),
        snapshot_signer=CryptoSigner.generate_ed25519(),
        timestamp_signer=CryptoSigner.generate_ed25519(),
        services=["auth"],
        lifetimes=Lifetimes(timestamp=timedelta(hours=1)),
        clock=lambda: long_ago,
    )
    assert repo.timestamp_expires() < datetime.now(UTC)
    with RepositoryHttpServer(repo.folder) as http:
        setup = Setup(repo, http, [], {}, tmp_path, CryptoSigner.generate_ed25519())
        with pytest.raises(tuf_errors.ExpiredMetadataError, match="timestamp"):
            setup.updater().refresh()
        # the registry refreshes its timestamp, and the same client goes on
        repo.clock = lambda: datetime.now(UTC)
        repo.refresh_timestamp()
        setup.updater().refresh()


def test_registry_refuses_a_release_signed_by_another_services_key(setup: Setup) -> None:
    with pytest.raises(PermissionDenied, match="not delegated to sign auth releases"):
        setup.publish("auth", "0.2.0", b"A", signer=setup.service_keys["messaging"])


def test_client_refuses_a_release_signed_by_a_key_not_delegated_for_that_service(setup: Setup) -> None:
    """The registry itself is bypassed: someone with the messaging key and the online snapshot and
    timestamp keys writes an auth release. The client must still refuse it."""
    repo = setup.repo
    setup.publish("messaging", "0.1.5", b"genuine")  # messaging's role signed by its own key
    role = delegated_role("auth")
    forged = Metadata[Targets].from_file(str(repo.metadata_dir / f"1.{role}.json"))
    forged.signed.version = 2
    forged.signed.targets["auth/parley_auth-9.9.9-py3-none-any.whl"] = TargetFile.from_data(
        "auth/parley_auth-9.9.9-py3-none-any.whl", b"backdoor"
    )
    forged.signatures.clear()
    forged.sign(setup.service_keys["messaging"])
    forged.to_file(str(repo.metadata_dir / f"2.{role}.json"), JSONSerializer(compact=False))
    repo._publish_snapshot()  # snapshot + timestamp now name the forged version
    updater = setup.updater()
    updater.refresh()
    with pytest.raises(tuf_errors.UnsignedMetadataError):
        updater.get_targetinfo("auth/parley_auth-9.9.9-py3-none-any.whl")
    # and a messaging path cannot be served from the auth role either: delegation is by path
    assert updater.get_targetinfo("messaging/parley_messaging-0.2.0-py3-none-any.whl") is None


def test_client_follows_a_root_rotation(setup: Setup) -> None:
    repo = setup.repo
    path_a = setup.publish("messaging", "0.2.0", b"A")
    client = setup.updater()
    download(client, path_a)
    new_root_keys = [CryptoSigner.generate_ed25519() for _ in range(2)]
    new_timestamp = CryptoSigner.generate_ed25519()
    old_timestamp = repo.online["timestamp"]
    # one old root key is not enough: the threshold is 2
    with pytest.raises(PermissionDenied, match="needs 2 of the current root keys"):
        repo.rotate_root(old_signers=setup.root_keys[:1], new_signers=new_root_keys, new_threshold=2)
    version = repo.rotate_root(
        old_signers=setup.root_keys[:2],
        new_signers=new_root_keys,
        new_threshold=2,
        replace_online={"timestamp": new_timestamp},
    )
    assert version == 2
    path_b = setup.publish("messaging", "0.3.0", b"B")
    client = setup.updater()  # same client state, still trusting root v1 on disk
    assert download(client, path_b) == b"B"
    trusted = Metadata.from_file(str(setup.tmp / "client-0" / "metadata" / "root.json"))
    assert trusted.signed.version == 2
    # a timestamp signed with the old (revoked) timestamp key is no longer accepted
    ts = Metadata[Timestamp].from_file(str(repo.metadata_dir / "timestamp.json"))
    ts.signed.version += 1
    ts.signatures.clear()
    ts.sign(old_timestamp)
    ts.to_file(str(repo.metadata_dir / "timestamp.json"), JSONSerializer(compact=False))
    with pytest.raises(tuf_errors.UnsignedMetadataError):
        setup.updater().refresh()


def test_the_repository_is_served_on_the_hosts_address_for_agents_on_other_hosts(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With an address of its own (here another loopback address), the registry's TUF server
    listens there and hands agents that URL (TufRepository), not 127.0.0.1."""
    monkeypatch.setenv("PARLEY_HOST_ADDRESS", "127.0.0.2")
    settings = RegistrySettings()
    with RepositoryHttpServer(setup.repo.folder, settings.http_host, settings.http_port) as http:
        port = int(http.base_url.rpartition(":")[2])
        assert http.metadata_url == f"http://127.0.0.2:{port}/metadata/"
        with urllib.request.urlopen(f"{http.metadata_url}1.root.json", timeout=10) as answer:
            assert Metadata.from_bytes(answer.read()).signed.version == 1
        with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=10):
            pass
