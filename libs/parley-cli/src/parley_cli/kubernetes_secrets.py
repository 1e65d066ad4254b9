"""`parley kubernetes secrets`: the Secrets deploy/kubernetes' manifests mount, from a data folder.

Made on the operator's side from the platform's data folder, as `parley host add` makes a host's
bundle: certificates issued by the platform CA (its key never leaves the folder), each naming the
DNS names of its Kubernetes Service in the namespace; each service's NATS password; the
nats-server configuration `parley up --nats-cluster 3` would render (accounts, users, TLS, routes),
with the StatefulSet's paths and DNS names; the archive's database URL; and the keys a host bundle
gives a host running auth or storage (host_bundle.SERVICE_SECRETS), storage's keyring with them:
one storage replica keeps it on its volume, seeded from the Secret on first start. One YAML file
per Secret, owner-only, in a new folder: `kubectl apply -f DIR`.

Passwords, the JetStream store key and the database password stay in the data folder, so running
the command again gives the same ones (and new certificates).
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import secrets
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from parley_cli.arguments import add_database_url_option, command, command_group
from parley_cli.host_bundle import SERVICE_SECRETS
from parley_core.database import DATABASE_URL_FILE, DatabaseChoiceRefused, check_database_url
from parley_core.files import ensure_private_dir, write_private_file
from parley_core.natsconf import (
    NATS_PASSWORDS_FILE,
    ROUTE_USER,
    ClusterConfig,
    ensure_nats_passwords,
    render_server_config,
)
from parley_core.pki import CA_NAME, CertificateMissing, Pki, issue_into
from parley_core.topology import NATS_IDENTITY, PLATFORM_USER, SERVICES
from parley_storage.key_files import KEYRING_FILE

__all__ = ["KubernetesSecretsRefused", "dns_names", "make_secrets", "nats_dns_names"]

# What deploy/kubernetes/base names (tests/deploy checks the two agree).
NATS_SERVICE = "nats"
NATS_NODES = 3
NATS_PORT = 4222
NATS_ROUTE_PORT = 6222
NATS_CONFIG_DIR = Path("/etc/nats")
NATS_CONFIG_FILE = "nats-server.conf"
NATS_STORE_DIR = Path("/data/jetstream")
DATABASE_SECRET = "parley-database"  # noqa: S105 - a Secret's name
# The base's own PostgreSQL (postgres.yaml), when no --database-url names another.
IN_CLUSTER_DATABASE = "postgres:5432/parley"
CLUSTER_DOMAIN = "cluster.local"
# Kept in the data folder so that a second run gives the cluster the same keys.
STORE_KEY_FILE = "kubernetes-jetstream-store.key"
DATABASE_PASSWORD_FILE = "kubernetes-database-password"  # noqa: S105 - a file name
# The files of the data folder's secrets/ each keyed service's `parley-<service>-keys` Secret
# carries: a host bundle's (the database URL is parley-database's), and storage's keyring, which a
# bundle leaves on the hosts' shared file system and the pod's volume keeps instead.
SERVICE_KEYS = {
    "auth": SERVICE_SECRETS["auth"],
    "storage": (*(name for name in SERVICE_SECRETS["storage"] if name != DATABASE_URL_FILE.name), KEYRING_FILE),
}
_NAMESPACE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class KubernetesSecretsRefused(ValueError):
    """The namespace, the output folder or the data folder do not make the Secrets; the message says why."""


def dns_names(name: str, namespace: str) -> list[str]:
    """How pods reach a Service (or a StatefulSet pod, `nats-0.nats`) in `namespace`."""
    return [name, f"{name}.{namespace}", f"{name}.{namespace}.svc", f"{name}.{namespace}.svc.{CLUSTER_DOMAIN}"]


def nats_dns_names(namespace: str) -> list[str]:
    """The NATS Service's names and each node's: clients connect to `nats-N.nats`, routes too."""
    nodes = [f"{NATS_SERVICE}-{i}.{NATS_SERVICE}" for i in range(NATS_NODES)]
    return [name for host in (NATS_SERVICE, *nodes) for name in dns_names(host, namespace)]


def secret(name: str, namespace: str, data: dict[str, str], binary: dict[str, bytes] | None = None) -> dict[str, Any]:
    o: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/part-of": "parley"}},
        "type": "Opaque",
    }
    if binary is not None:  # key files need not be text
        o["data"] = {key: base64.b64encode(value).decode() for key, value in binary.items()}
    else:
        o["stringData"] = data
    return o


def make_secrets(data_dir: Path, *, namespace: str, out: Path, database_url: str = "") -> list[str]:
    """Writes one Secret manifest per file into `out` (a new folder, 0700) and returns their names;
    refuses before writing anything, and leaves no half-made folder."""
    from parley_cli.platform_nats import CLUSTER_NAME, ensure_store_key

    if not _NAMESPACE.match(namespace):
        raise KubernetesSecretsRefused(f"{namespace!r} is no namespace: lower-case letters, digits and '-', at most 63")
    if out.exists():
        raise KubernetesSecretsRefused(f"{out} exists; name a new folder for the Secrets")
    if database_url:
        try:
            check_database_url(database_url)
        except DatabaseChoiceRefused as exc:
            raise KubernetesSecretsRefused(str(exc)) from None
        if not database_url.lower().startswith(("postgresql", "postgres")):
            raise KubernetesSecretsRefused(
                "storage on Kubernetes keeps its archive in PostgreSQL: give a postgresql:// URL"
            )
    pki = Pki(directory=data_dir / "pki", ca_cert=data_dir / "pki" / f"{CA_NAME}.crt")
    if not pki.identity(CA_NAME).key.is_file():
        raise KubernetesSecretsRefused(
            f"{data_dir} holds no platform CA key: run this on the platform's own data folder (where `parley up` ran)"
        )
    secrets_dir = data_dir / "secrets"
    absent = [name for files in SERVICE_KEYS.values() for name in files if not (secrets_dir / name).is_file()]
    if absent:
        raise KubernetesSecretsRefused(
            f"{secrets_dir} lacks {', '.join(absent)}: auth's and storage's keys are made on their first start; "
            "run `parley up` once on this folder"
        )
    # Only the services': no pod runs as the platform, whose NATS user and certificate may do
    # everything; in the cluster a Secret holding them would serve anyone who may read Secrets.
    identities = list(SERVICES)
    passwords = ensure_nats_passwords(data_dir / NATS_PASSWORDS_FILE, [*identities, PLATFORM_USER, ROUTE_USER])
    database_url = database_url or _in_cluster_database_url(secrets_dir / DATABASE_PASSWORD_FILE)
    names = {service: dns_names(service, namespace) for service in SERVICES}
    names[NATS_IDENTITY] = nats_dns_names(namespace)
    objects: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="parley-kubernetes-") as scratch:
        issued = issue_into(pki, [*identities, NATS_IDENTITY], Path(scratch) / "pki", dns_names=names)
        ca = issued.ca_pem().decode()
        for identity in identities:
            cert, key = (part.decode() for part in issued.read(identity))
            pki_data = {f"{CA_NAME}.crt": ca, f"{identity}.crt": cert, f"{identity}.key": key}
            own_password = json.dumps({identity: passwords[identity]}, indent=2) + "\n"  # NATS_PASSWORDS_FILE
            objects.append(secret(f"parley-pki-{identity}", namespace, pki_data))
            objects.append(secret(f"parley-nats-{identity}", namespace, {NATS_PASSWORDS_FILE.name: own_password}))
        nats_cert, nats_key = (part.decode() for part in issued.read(NATS_IDENTITY))
    config = render_server_config(
        host="0.0.0.0",
        port=NATS_PORT,
        store_dir=NATS_STORE_DIR,
        pki=Pki(directory=NATS_CONFIG_DIR, ca_cert=NATS_CONFIG_DIR / f"{CA_NAME}.crt"),  # as the pod mounts it
        passwords=passwords,
        # Each pod's own name replaces it (`--name $(POD_NAME)` in nats.yaml).
        server_name=NATS_SERVICE,
        store_cipher_key=ensure_store_key(secrets_dir / STORE_KEY_FILE),
        cluster=ClusterConfig.routed(
            name=CLUSTER_NAME,
            host="0.0.0.0",
            port=NATS_ROUTE_PORT,
            routes=tuple(
                f"{NATS_SERVICE}-{i}.{NATS_SERVICE}.{namespace}.svc:{NATS_ROUTE_PORT}" for i in range(NATS_NODES)
            ),
            passwords=passwords,
        ),
    )
    nats_data = {
        NATS_CONFIG_FILE: config,
        f"{CA_NAME}.crt": ca,
        f"{NATS_IDENTITY}.crt": nats_cert,
        f"{NATS_IDENTITY}.key": nats_key,
    }
    objects.append(secret("parley-nats-server", namespace, nats_data))
    database = {"url": database_url, "password": urlsplit(database_url).password or ""}
    objects.append(secret(DATABASE_SECRET, namespace, database))
    for service, files in SERVICE_KEYS.items():
        keys = {name: (secrets_dir / name).read_bytes() for name in files}
        objects.append(secret(f"parley-{service}-keys", namespace, {}, keys))
    try:
        ensure_private_dir(out)
        for o in objects:
            write_private_file(out / f"{o['metadata']['name']}.yaml", yaml.safe_dump(o, sort_keys=False).encode())
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)  # no half-made folder
        raise
    return [o["metadata"]["name"] for o in objects]


def _in_cluster_database_url(password_file: Path) -> str:
    """The base's PostgreSQL, with a password of its own kept in the data folder."""
    if password_file.is_file():
        password = password_file.read_text(encoding="ascii").strip()
    else:
        password = secrets.token_urlsafe(32)
        ensure_private_dir(password_file.parent)
        write_private_file(password_file, (password + "\n").encode())
    return f"postgresql://postgres:{password}@{IN_CLUSTER_DATABASE}"


def cmd_kubernetes_secrets(args: argparse.Namespace) -> int:
    try:
        names = make_secrets(args.data_dir, namespace=args.namespace, out=args.out, database_url=args.database_url)
    except (KubernetesSecretsRefused, CertificateMissing) as exc:
        print(f"parley kubernetes secrets: {exc}", file=sys.stderr)
        return 2
    print(
        f"{len(names)} Secrets for namespace {args.namespace} in {args.out}: certificates from this platform's CA "
        "(not its key) naming the Services' DNS names, each service's NATS password, the nats-server "
        f"configuration, the database URL and auth's and storage's keys. Apply them with: kubectl apply -f {args.out}"
    )
    return 0


async def run(args: argparse.Namespace) -> int:
    return cmd_kubernetes_secrets(args)


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    commands = command_group(sub, "kubernetes", help="run the platform on Kubernetes (deploy/kubernetes)")
    made = command(
        commands,
        "secrets",
        run,
        help="write the Secrets the manifests mount (certificates, NATS users, nats-server config, database, auth's "
        "and storage's keys)",
    )
    made.add_argument("--namespace", required=True, help="the namespace the platform runs in (its DNS names)")
    made.add_argument("--out", type=Path, required=True, help="a new folder for the Secret manifests")
    add_database_url_option(
        made,
        help="the archive's PostgreSQL (default: $PARLEY_DATABASE_URL, else the base's own `postgres` Service "
        "with a password kept in the data folder)",
    )
