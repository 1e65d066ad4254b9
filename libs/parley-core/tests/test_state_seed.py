"""parley_core.state_seed on a folder laid out as the kubelet lays out a Secret volume."""

from __future__ import annotations

from pathlib import Path

from parley_core.state_seed import main, seed_state


def secret_volume(folder: Path, files: dict[str, bytes]) -> Path:
    """The kubelet's layout: the files in a timestamped folder, `..data` linking to it, and each
    name a link through `..data`."""
    stamped = folder / "..2026_12_05_08_00_00.1"
    stamped.mkdir(parents=True)
    for name, content in files.items():
        (stamped / name).write_bytes(content)
    (folder / "..data").symlink_to(stamped.name)
    for name in files:
        (folder / name).symlink_to(Path("..data") / name)
    return folder


def test_keys_are_copied_once_and_the_nats_password_every_time(tmp_path: Path) -> None:
    seed = secret_volume(tmp_path / "seed", {"storage-kek.json": b"first", "nats-passwords.json": b"{}"})
    state = tmp_path / "volume" / "secrets"
    assert seed_state(state, seed) == ["nats-passwords.json", "storage-kek.json"]
    assert {p.name for p in state.iterdir()} == {"storage-kek.json", "nats-passwords.json"}
    assert state.stat().st_mode & 0o777 == 0o700
    assert (state / "storage-kek.json").stat().st_mode & 0o777 == 0o600
    (state / "storage-kek.json").write_bytes(b"rotated by storage")
    assert seed_state(state, seed) == ["nats-passwords.json"]
    assert (state / "storage-kek.json").read_bytes() == b"rotated by storage"


def test_the_command_makes_every_folder_and_seeds_the_first(tmp_path: Path) -> None:
    seed = secret_volume(tmp_path / "seed", {"auth-mfa-key.bin": b"key"})
    first, second = tmp_path / "v" / "secrets", tmp_path / "v" / "audit-checkpoints"
    assert main(["--seed", str(seed), str(first), str(second)]) == 0
    assert (first / "auth-mfa-key.bin").read_bytes() == b"key"
    assert second.is_dir()
    assert not any(second.iterdir())
    assert main([str(tmp_path / "registry")]) == 0  # no seed: the folder alone
    assert (tmp_path / "registry").stat().st_mode & 0o777 == 0o700
