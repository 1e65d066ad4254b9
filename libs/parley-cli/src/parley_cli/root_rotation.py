"""`parley patch root rotate`: new root keys for the release repository, signed with the offline ones.

The root keys never need to be on the registry's host: the registry prepares root v(n+1) with
the new public keys, this side checks it is exactly that and signs it with a threshold of the
current root keys and with the new ones (TUF clients holding root vn accept v(n+1) only then),
and the registry verifies both thresholds before it publishes it.
"""

from __future__ import annotations

from collections.abc import Sequence

from parley.patch.v1 import events_pb2, patch_pb2, patch_pb2_grpc
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, Root

from parley_cli.publishing import GrpcMetadata, KeyFileError, public_pem


def sign_root(prepared: bytes, *, old: Sequence[CryptoSigner], new: Sequence[CryptoSigner], threshold: int) -> bytes:
    """Signs the prepared root after checking its root keys and threshold are the ones asked for."""
    metadata = Metadata[Root].from_bytes(prepared)
    role = metadata.signed.roles["root"]
    if set(role.keyids) != {s.public_key.keyid for s in new} or role.threshold != threshold:
        raise KeyFileError("the registry prepared a root with other keys or threshold than asked; not signing it")
    metadata.signatures.clear()
    for signer in (*old, *new):
        metadata.sign(signer, append=True)
    return metadata.to_bytes()


async def rotate_root(
    stub: patch_pb2_grpc.PatchServiceAsyncStub,
    *,
    old: Sequence[CryptoSigner],
    new: Sequence[CryptoSigner],
    threshold: int,
    metadata: GrpcMetadata = (),
    timeout: float = 60.0,
) -> events_pb2.RootRotated:
    prepared = await stub.PrepareRootRotation(
        patch_pb2.PrepareRootRotationRequest(new_public_keys_pem=[public_pem(s) for s in new], threshold=threshold),
        metadata=metadata,
        timeout=timeout,
    )
    signed = sign_root(prepared.metadata, old=old, new=new, threshold=threshold)
    response: events_pb2.RootRotated = await stub.RotateRoot(
        patch_pb2.RotateRootRequest(signed_root=signed), metadata=metadata, timeout=timeout
    )
    return response
