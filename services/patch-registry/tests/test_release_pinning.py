"""Red-team F2: whoever holds the shared registry folder (its TUF signing keys) can re-sign a
release's target under its existing path; TUF alone accepts that, so agents install only the
sha256 the release's ReleasePublished event recorded."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from tuf.api.metadata import TargetFile

from parley_agent.installer import NotThePublishedRelease, TufSource, fetch_release
from parley_patch_registry.key_store import KeyStore
from parley_patch_registry.registry import open_repository
from parley_patch_registry.releases import ReleaseInfo, ReleaseRepository
from parley_patch_registry.settings import RegistrySettings
from parley_patch_registry.tuf_http import RepositoryHttpServer

GOOD = b"the released wheel"
EVIL = b"a wheel re-signed under the same path"


def re_sign(folder: Path, target_path: str, data: bytes) -> None:
    """What a joined host's operator can do with the shared folder's online and targets keys."""
    keys = KeyStore(folder / "keys")
    repo = ReleaseRepository(
        folder / "tuf", online={"snapshot": keys.load("snapshot"), "timestamp": keys.load("timestamp")}
    )
    targets = repo.targets()
    old = targets.signed.targets[target_path]
    new = TargetFile(
        length=len(data),
        hashes={"sha256": hashlib.sha256(data).hexdigest()},
        path=old.path,
        unrecognized_fields=old.unrecognized_fields,
    )
    repo._store_artifact(target_path.partition("/")[0], new, old.path.rpartition("/")[2], data)
    targets.signed.targets[old.path] = new
    targets.signed.version += 1
    repo._write_signed(targets, "targets", [keys.load("targets")])
    repo._publish_snapshot()


def publish_base(folder: Path) -> tuple[ReleaseInfo, bytes]:
    repo = open_repository(folder, RegistrySettings())
    info = repo.publish_base(
        service="messaging",
        version="1.0.0",
        wheel_name="parley_messaging-1.0.0-py3-none-any.whl",
        wheel=GOOD,
        targets_signer=KeyStore(folder / "keys").load("targets"),
    )
    return info, (folder / "tuf" / "metadata" / "1.root.json").read_bytes()


def test_an_agent_refuses_a_target_re_signed_after_its_release_was_recorded(tmp_path: Path) -> None:
    folder = tmp_path / "patch-registry"
    info, trusted_root = publish_base(folder)
    with RepositoryHttpServer(folder / "tuf") as http:
        source = TufSource(http.metadata_url, http.targets_url, trusted_root)
        wheel, _ = fetch_release(source, info.target_path, tmp_path / "agent-1", sha256=info.sha256)
        assert wheel.read_bytes() == GOOD

        re_sign(folder, info.target_path, EVIL)

        # TUF alone takes the re-signed target: its signatures are valid.
        swapped, _ = fetch_release(
            source, info.target_path, tmp_path / "agent-2", sha256=hashlib.sha256(EVIL).hexdigest()
        )
        assert swapped.read_bytes() == EVIL
        # Pinned to what the release event recorded, the agent refuses it.
        with pytest.raises(NotThePublishedRelease, match="re-signed since") as refused:
            fetch_release(source, info.target_path, tmp_path / "agent-3", sha256=info.sha256)
        assert info.sha256 in str(refused.value)
