"""Render deploy/kubernetes/base's service manifests and NetworkPolicies from parley_core.topology.

Who may call whom is GRPC_CALLERS, the same table the services' mutual-TLS checks use; the
NetworkPolicies say it again at the network layer. `--check` fails when the committed files differ
from what this renders (a test runs it), so the two never drift apart.

    .venv/bin/python scripts/render_kubernetes.py [--check]
"""

from __future__ import annotations

import argparse
import copy
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from parley_core.audit_checkpoints import DEFAULT_CHECKPOINT_DIR
from parley_core.config import REGISTRY_FOLDER
from parley_core.topology import GRPC_CALLERS, NODE_AGENT, PLATFORM_USER, SERVICES

BASE = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes" / "base"
HEADER = "# Rendered by scripts/render_kubernetes.py from parley_core.topology; do not edit by hand.\n"
GRPC_PORT = 50051
CLIENT_PORT = 7443
NATS_PORT = 4222
NATS_ROUTE_PORT = 6222
POSTGRES_PORT = 5432
IMAGE_PYTHON = "/opt/parley/bin/python"
# Pods of the operator's tooling (`parley` commands run in the cluster) carry this label: the
# platform identity's certificate is theirs.
TOOLING_LABEL = {"parley.dev/tooling": "true"}


@dataclass(frozen=True)
class ServiceShape:
    replicas: int
    cpu: str
    memory: str
    # Keeps keys or files of its own (auth's signing keys, storage's keyring, the registry's TUF
    # repository): one replica until those are shared (docs/deploy.md).
    single_writer: bool = False
    # The data folder's subfolders the service writes and must find again after a restart: kept
    # on a PersistentVolumeClaim of its own.
    state: tuple[str, ...] = ()
    # Keys of its own in secrets/ (a state folder then), seeded on first start from the
    # `parley-<service>-keys` Secret `parley kubernetes secrets` makes from the data folder.
    keys: bool = False


SHAPES = {
    "gateway": ServiceShape(replicas=2, cpu="500m", memory="512Mi"),
    "messaging": ServiceShape(replicas=2, cpu="500m", memory="512Mi"),
    "auth": ServiceShape(replicas=1, cpu="500m", memory="512Mi", single_writer=True, state=("secrets",), keys=True),
    # Its audit checkpoints (parley_core.audit_checkpoints) too; the archive is PostgreSQL's.
    "storage": ServiceShape(
        replicas=1, cpu="500m", memory="1Gi", single_writer=True, state=("secrets", DEFAULT_CHECKPOINT_DIR), keys=True
    ),
    # The TUF repository and its keys (the registry's `folder`).
    "patch-registry": ServiceShape(
        replicas=1, cpu="250m", memory="512Mi", single_writer=True, state=(REGISTRY_FOLDER,)
    ),
}
DATA_DIR = "/var/lib/parley"
STATE_SIZE = "1Gi"
USER = 10001  # the image's (deploy/docker/Dockerfile)
SECURITY_CONTEXT = {
    "runAsNonRoot": True,
    "runAsUser": USER,
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
}

PEER_ENV = {
    "auth": "PARLEY_AUTH_ADDR",
    "messaging": "PARLEY_MESSAGING_ADDR",
    "storage": "PARLEY_STORAGE_ADDR",
    "patch-registry": "PARLEY_REGISTRY_ADDR",
}


def labels(service: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": service, "app.kubernetes.io/part-of": "parley"}


def health_probe(service: str, port: int) -> list[str]:
    """The image's interpreter (deploy/docker/Dockerfile) asking the service in its own pod."""
    return [
        IMAGE_PYTHON,
        "-I",
        "-m",
        "parley_core.health_probe",
        "--service",
        service,
        "--address",
        f"127.0.0.1:{port}",
    ]


def state_mount(folder: str) -> dict[str, Any]:
    """The data folder's `folder`, kept on the pod's volume (its init container made it)."""
    return {"name": "state", "mountPath": f"{DATA_DIR}/{folder}", "subPath": folder}


def secret_volume(name: str, secret_name: str) -> dict[str, Any]:
    return {"name": name, "secret": {"secretName": secret_name, "defaultMode": 0o400}}


def state_volumes(service: str) -> dict[str, Any]:
    """What seeds a keyed service's secrets/ on its volume: its NATS password and its keys."""
    sources = [f"parley-nats-{service}", f"parley-{service}-keys"]
    return {"name": "seed", "projected": {"defaultMode": 0o400, "sources": [{"secret": {"name": n}} for n in sources]}}


def prepare_state(service: str, container: dict[str, Any]) -> dict[str, Any]:
    """The init container making (and, with keys, seeding) the service's folder on its volume."""
    shape = SHAPES[service]
    command = [IMAGE_PYTHON, "-I", "-m", "parley_core.state_seed", *(f"/state/{f}" for f in shape.state)]
    mounts = [{"name": "state", "mountPath": "/state"}]
    if shape.keys:  # secrets/ first: the folder the seed fills
        command += ["--seed", "/seed"]
        mounts.append({"name": "seed", "mountPath": "/seed", "readOnly": True})
    return {
        "name": "prepare-state",
        "image": container["image"],
        "command": command,
        "resources": copy.deepcopy(container["resources"]),
        "securityContext": copy.deepcopy(SECURITY_CONTEXT),
        "volumeMounts": mounts,
    }


def deployment(service: str) -> dict[str, Any]:
    shape = SHAPES[service]
    port = CLIENT_PORT if service == "gateway" else GRPC_PORT
    env = [
        {"name": "PARLEY_SERVICE", "value": service},
        {"name": "PARLEY_DATA_DIR", "value": "/var/lib/parley"},
        {"name": "PARLEY_LISTEN_HOST", "value": "0.0.0.0"},
        {"name": "PARLEY_LISTEN_PORT", "value": str(port)},
        {"name": "PARLEY_NATS_URL", "valueFrom": {"configMapKeyRef": {"name": "parley-fleet", "key": "nats_url"}}},
        {"name": "PARLEY_NATS_REPLICAS", "value": "3"},
        *({"name": var, "value": f"{peer}:{GRPC_PORT}"} for peer, var in PEER_ENV.items()),
    ]
    if service == "storage":
        env.append(
            {"name": "PARLEY_DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": "parley-database", "key": "url"}}}
        )
    container = {
        "name": service,
        "image": f"parley/{service}:0.1.0",
        "ports": [{"name": "grpc", "containerPort": port}],
        "env": env,
        # The kubelet's own gRPC probe speaks plaintext and these ports speak mutual TLS only: the
        # probes run the image's TLS health check, SERVING or not (parley_core.health_probe).
        "readinessProbe": {"exec": {"command": health_probe(service, port)}, "periodSeconds": 5, "timeoutSeconds": 5},
        "livenessProbe": {
            "exec": {"command": health_probe(service, port)},
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 6,
        },
        "resources": {
            "requests": {"cpu": shape.cpu, "memory": shape.memory},
            "limits": {"cpu": shape.cpu, "memory": shape.memory},
        },
        "securityContext": copy.deepcopy(SECURITY_CONTEXT),
        "volumeMounts": [
            {"name": "pki", "mountPath": f"{DATA_DIR}/pki", "readOnly": True},
            # Where the service reads its NATS password: the Secret, or (keys of its own) its volume.
            state_mount("secrets")
            if shape.keys
            else {"name": "secrets", "mountPath": f"{DATA_DIR}/secrets", "readOnly": True},
            *(state_mount(folder) for folder in shape.state if folder != "secrets"),
            {"name": "scratch", "mountPath": "/tmp"},  # noqa: S108 - the pod's own emptyDir
        ],
    }
    pod: dict[str, Any] = {
        "automountServiceAccountToken": False,
        # fsGroup: the Secret volumes' files (0400) and the state volume are the pod user's group's.
        "securityContext": {"runAsNonRoot": True, "fsGroup": USER, "seccompProfile": {"type": "RuntimeDefault"}},
        "terminationGracePeriodSeconds": 30,
        "containers": [container],
        "volumes": [
            {"name": "pki", "secret": {"secretName": f"parley-pki-{service}", "defaultMode": 0o400}},
            state_volumes(service) if shape.keys else secret_volume("secrets", f"parley-nats-{service}"),
            {"name": "scratch", "emptyDir": {"sizeLimit": "64Mi"}},
        ],
    }
    if shape.state:
        pod["volumes"].append({"name": "state", "persistentVolumeClaim": {"claimName": f"{service}-state"}})
        pod["initContainers"] = [prepare_state(service, container)]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": service, "labels": labels(service)},
        "spec": {
            "replicas": shape.replicas,
            # One writer at a time for the services that keep files of their own.
            "strategy": {"type": "Recreate"}
            if shape.single_writer
            else {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "selector": {"matchLabels": labels(service)},
            "template": {"metadata": {"labels": labels(service)}, "spec": pod},
        },
    }


def state_claim(service: str) -> dict[str, Any]:
    """The volume a single-writer service's state lives on across restarts and re-schedules."""
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": f"{service}-state", "labels": labels(service)},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": STATE_SIZE}}},
    }


def service_object(service: str) -> dict[str, Any]:
    port = CLIENT_PORT if service == "gateway" else GRPC_PORT
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": service, "labels": labels(service)},
        "spec": {"selector": labels(service), "ports": [{"name": "grpc", "port": port, "targetPort": port}]},
    }


def disruption_budget(service: str) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": service, "labels": labels(service)},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": labels(service)}},
    }


def callers_of(service: str) -> list[dict[str, Any]]:
    peers = []
    for caller in GRPC_CALLERS[service]:
        if caller == NODE_AGENT:
            continue  # no node agent runs on Kubernetes: a roll-out there is a Deployment update
        selector = TOOLING_LABEL if caller == PLATFORM_USER else {"app.kubernetes.io/name": caller}
        peers.append({"podSelector": {"matchLabels": selector}})
    return peers


def network_policy(name: str, selector: dict[str, str], ingress: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name},
        "spec": {"podSelector": {"matchLabels": selector}, "policyTypes": ["Ingress"], "ingress": ingress},
    }


def network_policies() -> list[dict[str, Any]]:
    policies = [
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "default-deny-ingress"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
        }
    ]
    for service in SERVICES:
        if service == "gateway":  # the client-facing door: anyone may reach its client port
            ingress = [{"ports": [{"port": CLIENT_PORT, "protocol": "TCP"}]}]
        else:
            ingress = [{"from": callers_of(service), "ports": [{"port": GRPC_PORT, "protocol": "TCP"}]}]
        policies.append(network_policy(f"{service}-callers", labels(service), ingress))
    every_service = [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": s}}} for s in SERVICES]
    nats = {"app.kubernetes.io/name": "nats"}
    policies.append(
        network_policy(
            "nats-clients",
            nats,
            [
                {
                    "from": [*every_service, {"podSelector": {"matchLabels": TOOLING_LABEL}}],
                    "ports": [{"port": NATS_PORT}],
                },
                {"from": [{"podSelector": {"matchLabels": nats}}], "ports": [{"port": NATS_ROUTE_PORT}]},
            ],
        )
    )
    # Only storage keeps the archive (and the tooling, for backups and restores).
    storage = {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "storage"}}}
    tooling = {"podSelector": {"matchLabels": TOOLING_LABEL}}
    policies.append(
        network_policy(
            "postgres-clients",
            {"app.kubernetes.io/name": "postgres"},
            [{"from": [storage, tooling], "ports": [{"port": POSTGRES_PORT}]}],
        )
    )
    return policies


def render_all(objects: list[dict[str, Any]]) -> str:
    return HEADER + "".join("---\n" + yaml.safe_dump(o, sort_keys=False) for o in objects)


def rendered() -> dict[str, str]:
    services: list[dict[str, Any]] = []
    for service in SERVICES:
        services += [deployment(service), service_object(service)]
        if SHAPES[service].replicas >= 2:
            services.append(disruption_budget(service))
        if SHAPES[service].state:
            services.append(state_claim(service))
    return {"services.yaml": render_all(services), "networkpolicies.yaml": render_all(network_policies())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed files are stale")
    args = parser.parse_args()
    stale = []
    for name, text in rendered().items():
        path = BASE / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.write_text(text)
    if stale:
        print(f"stale: {', '.join(stale)}; run scripts/render_kubernetes.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
