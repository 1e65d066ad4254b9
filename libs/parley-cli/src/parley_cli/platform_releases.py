"""The releases `parley up` runs: each service's base version installed as a wheel in its own
environment, started (or the version its last roll-out left running), and published as a signed
release in the registry, so that a revert can return to it."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path

import grpc

from parley_agent import NodeAgent
from parley_agent.installer import installed_wheel
from parley_cli.publishing import base_wheel, publish_base_release, source_folder
from parley_cli.state import previous_version
from parley_cli.wheels import WheelBuildError, release_sources

Say = Callable[[str], None]


def base_version(service: str) -> str:
    """The version installed in this environment: what runs until a roll-out replaces it."""
    return metadata.version(f"parley-{service}")


async def install_base_releases(agent: NodeAgent, services: Sequence[str], say: Say) -> dict[str, Path]:
    """Each service's base version installed as a wheel in its own environment (all at once;
    once per host and source content: later starts find it installed), so that no instance
    runs from the source tree. A service not installed from a source folder runs as installed."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    wheels: dict[str, Path] = {}

    async def install(name: str) -> tuple[str, Path | None]:
        version = base_version(name)
        source = source_folder(name)
        if source is None or not (source / "pyproject.toml").exists():
            return name, agent.installed_python(name, version)
        sources = await asyncio.to_thread(release_sources, source)
        env_dir = agent.env_dir(name, version)
        built_from = env_dir.with_name(f"{env_dir.name}.source")  # the sources' digests at install
        python = agent.installed_python(name, version)
        if python is not None:
            changed = _changed_sources(built_from, sources)
            if changed:
                say(
                    f"note: {', '.join(changed)} changed since {name} {version} was installed; the release "
                    f"keeps running: publish the change as a new version and roll it out (or use a new data folder)"
                )
            return name, python
        try:
            wheel = await asyncio.to_thread(base_wheel, source, version)
        except (WheelBuildError, OSError) as error:
            raise RuntimeError(f"the base release {name} {version} could not be built: {error}") from error
        wheels[name] = wheel
        python = await agent.install(name, version, wheel)
        built_from.write_text(json.dumps(sources, indent=1) + "\n")
        return name, python

    installed = {name: python for name, python in await asyncio.gather(*map(install, services)) if python}
    if wheels:
        took = loop.time() - began
        say(f"installed base releases {', '.join(sorted(wheels))} in {agent.data_dir / 'envs'} ({took:.1f} s)")
    return installed


async def start_service(agent: NodeAgent, data_dir: Path, name: str, base_python: Path | None, say: Say) -> None:
    """The version it ran last time if the agent installed that one, else the base release."""
    version, python = base_version(name), base_python
    previous = previous_version(data_dir, name)
    if previous and previous != version:
        previous_python = agent.installed_python(name, previous)
        if previous_python is not None:
            version, python = previous, previous_python
            say(f"{name} runs {previous}, the release its last roll-out left running")
        else:
            say(f"{name} {previous} is not installed in {agent.data_dir}; starting {version}")
    try:
        await agent.start_serving(name, version, python, in_fleet=False)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}:\n{_why_it_stopped(agent.log_path(name))}") from exc


async def publish_base_releases(agent: NodeAgent, services: Sequence[str], say: Say) -> None:
    """Each service's base version as a signed release in the registry (once, on the first
    start), so that `parley patch revert` can return to it after a roll-out: the very wheel
    its instances run, which the agent then checks against the release through TUF."""
    published, verified = [], []
    for name in services:
        version = base_version(name)
        wheel = installed_wheel(agent.env_dir(name, version))
        try:
            release = await publish_base_release(agent.registry, service=name, version=version, wheel=wheel)
            if wheel is not None:
                problem = await agent.verify_installed(name, version, release.target_path, release.sha256)
                if problem:
                    say(f"WARNING: {problem}: {name} reports {version} but does not run that release")
                    continue
                verified.append(f"{name} {version}")
        except (grpc.aio.AioRpcError, WheelBuildError, OSError) as error:
            why = error.details() if isinstance(error, grpc.aio.AioRpcError) else str(error)
            say(f"base release {name} {version} not published ({why}); a revert cannot return to it")
            continue
        published.append(f"{name} {version}")
    if published:
        say(f"base releases (signed, kept for revert): {', '.join(published)}")
    if verified:
        say(f"base releases installed as signed (checked through TUF): {', '.join(verified)}")


def _changed_sources(marker: Path, sources: dict[str, str]) -> list[str]:
    """The folders whose content differs from when the release recorded in `marker` was built
    (an older marker holds only the service folder's digest)."""
    if not marker.exists():
        return []
    text = marker.read_text().strip()
    recorded = json.loads(text) if text.startswith("{") else {next(iter(sources)): text}
    return [folder for folder, digest in sources.items() if folder in recorded and recorded[folder] != digest]


def _why_it_stopped(path: Path) -> str:
    """A service that refused to start logged why as its last record: that line alone. Anything
    else: the end of its log."""
    tail = _tail(path)
    last = tail.splitlines()[-1] if tail else ""
    with contextlib.suppress(ValueError, AttributeError):
        message = str(json.loads(last).get("msg", ""))
        if message.startswith("refusing to start"):
            return message
    return tail


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
