"""deploy/kubernetes: rendered from the topology, valid against the Kubernetes schemas, and within policy.

The base's service manifests and NetworkPolicies must be what scripts/render_kubernetes.py renders
from parley_core.topology now. Every object of the base, and of the example overlay as
`kubectl kustomize` renders it (skipped where kubectl is not installed), is validated against the
Kubernetes schemas that the kubernetes-validate package ships (offline), and checked against a
small policy: non-root, read-only root filesystem, CPU and memory limits, pinned images, two or
more replicas and a PodDisruptionBudget for the services that may run several.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from parley_core.topology import GRPC_CALLERS, NODE_AGENT

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "deploy" / "kubernetes" / "base"
OVERLAY = ROOT / "deploy" / "kubernetes" / "overlays" / "example"
KUBERNETES_VERSION = "1.32.0"
SEVERAL_REPLICAS = {"gateway", "messaging"}


def base_objects() -> list[dict[str, Any]]:
    files = ("services.yaml", "networkpolicies.yaml", "nats.yaml", "postgres.yaml")
    return [o for name in files for o in yaml.safe_load_all((BASE / name).read_text()) if o]


def overlay_objects() -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the overlay is not rendered here (the base is still checked)")
    out = subprocess.run([kubectl, "kustomize", str(OVERLAY)], capture_output=True, text=True, check=True, timeout=60)
    return [o for o in yaml.safe_load_all(out.stdout) if o]


def pod_specs(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{o['kind']}/{o['metadata']['name']}", o["spec"]["template"]["spec"])
        for o in objects
        if o["kind"] in {"Deployment", "StatefulSet"}
    ]


def policy_violations(objects: list[dict[str, Any]]) -> list[str]:
    found = []
    for where, spec in pod_specs(objects):
        if not spec.get("securityContext", {}).get("runAsNonRoot"):
            found.append(f"{where}: the pod may run as root")
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            at = f"{where}/{container['name']}"
            context = container.get("securityContext", {})
            if not context.get("runAsNonRoot") or not context.get("readOnlyRootFilesystem"):
                found.append(f"{at}: not non-root with a read-only root filesystem")
            if context.get("allowPrivilegeEscalation", True):
                found.append(f"{at}: privilege escalation allowed")
            limits = container.get("resources", {}).get("limits", {})
            if not {"cpu", "memory"} <= limits.keys():
                found.append(f"{at}: no CPU and memory limits")
            image = container["image"]
            if ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
                found.append(f"{at}: image {image} is not pinned to a version")
    budgets = {
        o["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]
        for o in objects
        if o["kind"] == "PodDisruptionBudget"
    }
    for o in objects:
        name = o["metadata"]["name"]
        if o["kind"] == "Deployment" and name in SEVERAL_REPLICAS:
            if o["spec"]["replicas"] < 2:
                found.append(f"Deployment/{name}: fewer than two replicas")
            if name not in budgets:
                found.append(f"Deployment/{name}: no PodDisruptionBudget")
    return found


def schema_errors(objects: list[dict[str, Any]]) -> list[str]:
    errors = []
    for o in objects:
        try:
            kubernetes_validate.validate(o, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            errors.append(f"{o['kind']}/{o['metadata']['name']}: {error.message}")
    return errors


def test_the_base_is_rendered_from_the_topology_as_it_is_now() -> None:
    check = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "render_kubernetes.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stderr


def test_network_policies_let_in_only_the_callers_the_topology_names() -> None:
    policies = {o["metadata"]["name"]: o for o in base_objects() if o["kind"] == "NetworkPolicy"}
    assert policies["default-deny-ingress"]["spec"]["podSelector"] == {}
    for service, callers in GRPC_CALLERS.items():
        if service == "gateway":
            continue
        (rule,) = policies[f"{service}-callers"]["spec"]["ingress"]
        allowed = {p["podSelector"]["matchLabels"].get("app.kubernetes.io/name", "tooling") for p in rule["from"]}
        assert allowed == {"tooling" if c == "platform" else c for c in callers if c != NODE_AGENT}, service


def test_every_base_object_is_valid_and_within_policy() -> None:
    objects = base_objects()
    assert schema_errors(objects) == []
    assert policy_violations(objects) == []


def test_the_example_overlay_renders_valid_and_within_policy() -> None:
    objects = overlay_objects()
    assert {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"} == {"parley-example"}
    assert schema_errors(objects) == []
    assert policy_violations(objects) == []


def test_the_policy_check_catches_a_root_container_without_limits() -> None:
    objects = base_objects()
    gateway = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "gateway")
    container = gateway["spec"]["template"]["spec"]["containers"][0]
    container["securityContext"]["runAsNonRoot"] = False
    del container["resources"]["limits"]
    container["image"] = "parley/gateway:latest"
    gateway["spec"]["replicas"] = 1
    found = "\n".join(policy_violations(objects))
    for what in ("not non-root", "no CPU and memory limits", "not pinned", "fewer than two replicas"):
        assert what in found


def deployment_spec(objects: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == name)["spec"]


def test_the_services_state_lives_on_claims_the_base_makes() -> None:
    """What auth, storage and the registry write and must find again after a restart (their keys,
    storage's audit checkpoints, the TUF repository) is on a PersistentVolumeClaim of the base, in
    a folder their init container makes; one pod at a time writes it (Recreate, one replica)."""
    from parley_core.audit_checkpoints import DEFAULT_CHECKPOINT_DIR
    from parley_core.config import REGISTRY_FOLDER

    objects = base_objects()
    claims = {o["metadata"]["name"] for o in objects if o["kind"] == "PersistentVolumeClaim"}
    kept = {"auth": {"secrets"}, "storage": {"secrets", DEFAULT_CHECKPOINT_DIR}, "patch-registry": {REGISTRY_FOLDER}}
    for service, folders in kept.items():
        spec = deployment_spec(objects, service)
        assert spec["replicas"] == 1, service
        assert spec["strategy"]["type"] == "Recreate", service
        pod = spec["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        claim = volumes["state"]["persistentVolumeClaim"]["claimName"]
        assert claim in claims, service
        (container,) = pod["containers"]
        on_claim = {m["mountPath"]: m["subPath"] for m in container["volumeMounts"] if m["name"] == "state"}
        assert on_claim == {f"/var/lib/parley/{f}": f for f in folders}, service
        (init,) = pod["initContainers"]
        assert {f"/state/{f}" for f in folders} <= set(init["command"]), service
        assert {"name": "state", "mountPath": "/state"} in init["volumeMounts"]
    for service in ("gateway", "messaging"):  # their state is the event log's
        assert "initContainers" not in deployment_spec(objects, service)["template"]["spec"]
