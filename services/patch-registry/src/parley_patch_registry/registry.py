"""The registry's application layer: releases, advisories, findings and roll-outs over the bus,
each concern in its own module (release_commands, finding_commands, rollout_commands) on what they
share (registry_base: the projection, the event log, the fleet view, the TUF repository)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from parley_core.files import ensure_private_dir
from parley_core.topology import SERVICES
from parley_patch_registry.finding_commands import FindingCommands
from parley_patch_registry.key_store import KeyStore
from parley_patch_registry.release_commands import ReleaseCommands
from parley_patch_registry.releases import ReleaseRepository
from parley_patch_registry.rollout_commands import RolloutCommands
from parley_patch_registry.settings import RegistrySettings
from parley_patch_registry.tuf_store import Lifetimes


class Registry(ReleaseCommands, FindingCommands, RolloutCommands):
    """Every command of the registry, on one projection of the PATCH stream."""


def open_repository(folder: Path, settings: RegistrySettings) -> ReleaseRepository:
    """Opens the registry's TUF repository, creating it (and its keys) on first start. The
    registry's folder holds its online signing keys: owner-only, like every secret folder."""
    ensure_private_dir(folder)
    keys = KeyStore(folder / "keys")
    keys.make_private()
    lifetimes = Lifetimes(timestamp=timedelta(minutes=settings.timestamp_lifetime_minutes))
    repo_dir = folder / "tuf"
    if (repo_dir / "metadata" / "1.root.json").exists():
        online = {"snapshot": keys.load("snapshot"), "timestamp": keys.load("timestamp")}
        return ReleaseRepository(repo_dir, online=online, lifetimes=lifetimes)
    return ReleaseRepository.create(
        repo_dir,
        root_signers=[keys.generate("root", i) for i in range(settings.root_keys)],
        root_threshold=min(settings.root_threshold, settings.root_keys),
        targets_signer=keys.generate("targets"),
        snapshot_signer=keys.generate("snapshot"),
        timestamp_signer=keys.generate("timestamp"),
        services=SERVICES,  # publisher keys come later, from the publishers (SetPublisherKey)
        lifetimes=lifetimes,
    )
