"""deploy/docker/Dockerfile agrees with the Kubernetes manifests that run its images.

Static checks only (no image is built here): the base image is pinned, the image runs as the
numeric non-root user the manifests' runAsUser names, and every service the manifests run has
the package the Dockerfile installs (parley-<service>) and the module its entrypoint starts
(parley_<service>, with a __main__), and the probes exec its interpreter with the health check.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
SERVICES_YAML = ROOT / "deploy" / "kubernetes" / "base" / "services.yaml"


def manifest_images() -> dict[str, str]:
    """Each Deployment's container image in the base, by container name."""
    images = {}
    for obj in yaml.safe_load_all(SERVICES_YAML.read_text()):
        if obj and obj["kind"] == "Deployment":
            for container in obj["spec"]["template"]["spec"]["containers"]:
                images[container["name"]] = container["image"]
    return images


def run_as_users() -> set[int]:
    users = set()
    for obj in yaml.safe_load_all(SERVICES_YAML.read_text()):
        if obj and obj["kind"] == "Deployment":
            for container in obj["spec"]["template"]["spec"]["containers"]:
                users.add(int(container["securityContext"]["runAsUser"]))
    return users


def test_the_base_image_is_pinned() -> None:
    [default] = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE.read_text(), flags=re.MULTILINE)
    name, _, tag = default.partition(":")
    assert name == "python"
    assert re.fullmatch(r"\d+\.\d+\.\d+-slim-\w+", tag), f"{default} is not pinned to a patch release"


def test_the_image_runs_as_the_manifests_non_root_user() -> None:
    [user] = re.findall(r"^USER (\S+)$", DOCKERFILE.read_text(), flags=re.MULTILINE)
    uid, _, gid = user.partition(":")
    assert uid.isdigit(), "USER must be numeric (runAsNonRoot cannot check a name)"
    assert gid.isdigit()
    assert int(uid) != 0
    assert int(gid) != 0
    assert run_as_users() == {int(uid)}


def test_every_service_the_manifests_run_has_its_package_and_module() -> None:
    images = manifest_images()
    assert set(images) == {"auth", "messaging", "storage", "gateway", "patch-registry"}
    for service, image in images.items():
        assert image.startswith(f"parley/{service}:"), image
        project = tomllib.loads((ROOT / "services" / service / "pyproject.toml").read_text())["project"]
        assert project["name"] == f"parley-{service}"  # what `pip install "parley-${SERVICE}"` finds in dist/
        module = "parley_" + service.replace("-", "_")
        assert (ROOT / "services" / service / "src" / module / "__main__.py").is_file()


def test_the_probes_run_the_images_interpreter_and_its_health_check() -> None:
    """Each Deployment's readiness and liveness probe execs the venv the Dockerfile installs into,
    asking its own service on its own port with parley_core.health_probe (a parley_core module,
    which every service's package depends on)."""
    [venv] = re.findall(r"python -m venv (\S+)", DOCKERFILE.read_text())
    assert (ROOT / "libs" / "parley-core" / "src" / "parley_core" / "health_probe.py").is_file()
    for obj in yaml.safe_load_all(SERVICES_YAML.read_text()):
        if not obj or obj["kind"] != "Deployment":
            continue
        for container in obj["spec"]["template"]["spec"]["containers"]:
            port = container["ports"][0]["containerPort"]
            expected = [
                "-m",
                "parley_core.health_probe",
                "--service",
                container["name"],
                "--address",
                f"127.0.0.1:{port}",
            ]
            for probe in ("readinessProbe", "livenessProbe"):
                command = container[probe]["exec"]["command"]
                assert command[0] == f"{venv}/bin/python", command
                assert command[-len(expected) :] == expected, command
