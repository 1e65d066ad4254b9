"""The publisher's side of a release: the registry prepares the metadata, the publisher signs it.

A service's delegated targets key stays with its publisher, in a PEM file only they can read
(0600); the registry keeps only the public key it delegated `<service>/*` to. Publishing is two
calls: the registry prepares the service's next targets metadata with the release added, the
publisher checks that it names exactly the wheel they mean to publish and signs it with
python-tuf's Metadata API, and the registry verifies that signature against the delegation before
it updates snapshot and timestamp with its own online keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_private_key
from parley.patch.v1 import events_pb2, patch_pb2, patch_pb2_grpc
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, Targets

GrpcMetadata = tuple[tuple[str, str], ...]


class KeyFileError(Exception):
    """A signing key file that cannot be used; the message says why and what to do."""


def create_key_file(path: Path) -> CryptoSigner:
    """A new Ed25519 key, written once (never over an existing file), readable by its owner only."""
    signer = CryptoSigner.generate_ed25519()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{path} already exists; pass another --key-file or use the key in it") from None
    with os.fdopen(fd, "wb") as out:
        out.write(signer.private_bytes)
    return signer


def load_key_file(path: Path, service: str = "SERVICE") -> CryptoSigner:
    if not path.exists():
        raise KeyFileError(f"no signing key at {path}; create one with `parley patch key create {service}`")
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        raise KeyFileError(f"{path} is readable by others; `chmod 600 {path}` (and consider the key exposed)")
    try:
        return CryptoSigner(load_pem_private_key(path.read_bytes(), password=None))
    except (ValueError, TypeError) as error:
        raise KeyFileError(f"{path} is not an unencrypted PEM private key: {error}") from None


def public_pem(signer: CryptoSigner) -> str:
    """What the registry is given: the public half only, as SubjectPublicKeyInfo PEM."""
    key = load_pem_private_key(signer.private_bytes, password=None).public_key()
    return key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()


def sign_prepared(
    prepared: bytes, *, signer: CryptoSigner, service: str, version: str, wheel_name: str, wheel: bytes
) -> bytes:
    """Signs the registry's prepared metadata after checking that it names this very wheel."""
    metadata = Metadata[Targets].from_bytes(prepared)
    target = metadata.signed.targets.get(f"{service}/{wheel_name}")
    if target is None:
        raise KeyFileError(f"the registry prepared metadata without {service}/{wheel_name}; not signing it")
    target.verify_length_and_hashes(wheel)  # raises if the registry would publish other bytes
    if target.custom.get("version") != version or target.custom.get("service") != service:
        raise KeyFileError(f"the prepared target is {target.custom}, not {service} {version}; not signing it")
    metadata.signatures.clear()
    metadata.sign(signer)
    return metadata.to_bytes()


async def publish_release(
    stub: patch_pb2_grpc.PatchServiceAsyncStub,
    *,
    signer: CryptoSigner,
    service: str,
    version: str,
    wheel_name: str,
    wheel: bytes,
    fixes: Sequence[str] = (),
    min_event_schema: int = 1,
    metadata: GrpcMetadata = (),
    timeout: float = 60.0,
) -> events_pb2.ReleasePublished:
    """Prepare, sign here, publish: the one way a release gets into the registry."""
    prepared = await stub.PrepareRelease(
        patch_pb2.PrepareReleaseRequest(
            service=service,
            version=version,
            wheel_name=wheel_name,
            sha256=hashlib.sha256(wheel).hexdigest(),
            length=len(wheel),
            fixes=list(fixes),
            min_event_schema=min_event_schema,
        ),
        metadata=metadata,
        timeout=timeout,
    )
    signed = sign_prepared(
        prepared.metadata, signer=signer, service=service, version=version, wheel_name=wheel_name, wheel=wheel
    )
    release: events_pb2.ReleasePublished = await stub.PublishRelease(
        patch_pb2.PublishReleaseRequest(
            service=service,
            version=version,
            wheel_name=wheel_name,
            wheel=wheel,
            fixes=list(fixes),
            min_event_schema=min_event_schema,
            signed_metadata=signed,
        ),
        metadata=metadata,
        timeout=timeout,
    )
    return release


def source_folder(service: str) -> Path | None:
    """The source folder `parley-<service>` is imported from here (an editable install, or a
    folder on PYTHONPATH), if it is one: the project folder holding its pyproject.toml."""
    spec = importlib.util.find_spec(f"parley_{service.replace('-', '_')}")
    if spec is not None and spec.origin:
        project = Path(spec.origin).resolve().parents[2]  # <project>/src/parley_<service>/__init__.py
        if (project / "pyproject.toml").exists():
            return project
    try:
        text = metadata.distribution(f"parley-{service}").read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        return None
    if not text:
        return None
    url = str(json.loads(text).get("url", ""))
    return Path(url.removeprefix("file://")) if url.startswith("file://") else None


async def publish_base_release(
    registry: patch_pb2_grpc.PatchServiceAsyncStub,
    *,
    service: str,
    version: str,
    wheel: Path | None = None,
    timeout: float = 120.0,
) -> events_pb2.ReleasePublished:
    """The version this environment runs, published as a signed release (once) so that a roll-out
    can return to it: `wheel` (the one its instances were installed from), else its wheel built
    from the installed source at that version; the registry keeps it. Called by `parley up` as
    the platform identity."""
    from parley_cli.wheels import WheelBuildError

    releases = await registry.ListReleases(patch_pb2.ListReleasesRequest(service=service), timeout=timeout)
    for existing in releases.releases:
        if existing.version == version:
            return existing
    if wheel is None:
        source = source_folder(service)
        if source is None or not (source / "pyproject.toml").exists():
            raise WheelBuildError(f"parley-{service} was not installed from a source folder; publish {version} by hand")
        wheel = await asyncio.to_thread(base_wheel, source, version)
    request = patch_pb2.PublishBaseReleaseRequest(
        service=service, version=version, wheel_name=wheel.name, wheel=await asyncio.to_thread(wheel.read_bytes)
    )
    release: events_pb2.ReleasePublished = await registry.PublishBaseRelease(request, timeout=timeout)
    return release


def base_wheel(source: Path, version: str) -> Path:
    """The wheel of `source` at `version`, built once per content of the source folder and of the
    shared libraries it carries (kept in the user's cache: every platform started from the same
    sources installs and publishes the same bytes)."""
    from parley_cli.wheels import build_wheel, release_sources

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "parley" / "base-wheels"
    contents = sorted((Path(folder).name, digest) for folder, digest in release_sources(source).items())
    digest = hashlib.sha256(json.dumps(contents).encode()).hexdigest()  # by content, not by checkout
    key = cache / f"{source.name}-{version}-{digest[:32]}"
    built = sorted(key.glob("*.whl")) if key.is_dir() else []
    if built:
        return built[0]
    cache.mkdir(parents=True, exist_ok=True, mode=0o700)
    staged = Path(tempfile.mkdtemp(dir=cache))
    try:
        build_wheel(source, version, staged)
        with contextlib.suppress(OSError):  # a concurrent build of the same key got there first
            staged.rename(key)  # atomic
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return sorted(key.glob("*.whl"))[0]
