"""Generate the one Python package of protobuf and gRPC stubs from protos/, and the web
client's TypeScript (the Gateway service and every message it reaches) with protoc-gen-es.

Run through `make proto`. With --check, generate into a temporary folder and fail if the
committed code differs (CI runs this so stale stubs never land). The TypeScript generator is
the version pinned in web/package-lock.json (`npm ci --prefix web` installs it), run by the same
protoc as the Python stubs.
"""

from __future__ import annotations

import argparse
import filecmp
import re
import shutil
import sys
import tempfile
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUT_ROOT = ROOT / "libs" / "parley-protos" / "src"
GENERATED_TOP = "parley"
BIN = Path(sys.executable).parent
WEB_OUT = ROOT / "web" / "src" / "gen"
PROTOC_GEN_ES = ROOT / "web" / "node_modules" / ".bin" / "protoc-gen-es"
# The browser needs the client-facing API only: this file and what it imports.
WEB_ROOT_PROTO = "parley/gateway/v1/gateway.proto"
IMPORT = re.compile(r'^import\s+"([^"]+)";', re.MULTILINE)


def run_protoc(outputs: list[str], protos: list[str], *, what: str) -> None:
    """protoc over protos/, with the well-known types grpc_tools ships beside it."""
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    if protoc.main(["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{well_known}", *outputs, *protos]) != 0:
        raise SystemExit(f"{what} failed")


def generate(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    outputs = [
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        # The plugins live beside this interpreter (the venv), which need not be on PATH.
        f"--plugin=protoc-gen-mypy={BIN / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={BIN / 'protoc-gen-mypy_grpc'}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
    ]
    run_protoc(outputs, protos, what="protoc")
    # Explicit packages (not namespace packages) so mypy and wheels see every module.
    for folder in (out_dir / GENERATED_TOP).rglob("*"):
        if folder.is_dir():
            (folder / "__init__.py").touch()
    (out_dir / GENERATED_TOP / "__init__.py").touch()
    (out_dir / GENERATED_TOP / "py.typed").touch()


def web_protos() -> list[str]:
    """The gateway's proto and everything it imports from protos/ (well-known types come from
    @bufbuild/protobuf itself)."""
    found: list[str] = []
    pending = [WEB_ROOT_PROTO]
    while pending:
        name = pending.pop()
        if name in found or not (PROTO_ROOT / name).exists():
            continue
        found.append(name)
        pending.extend(IMPORT.findall((PROTO_ROOT / name).read_text(encoding="utf-8")))
    return sorted(found)


def generate_web(out_dir: Path) -> None:
    if not PROTOC_GEN_ES.exists():
        raise SystemExit(f"{PROTOC_GEN_ES} is missing: run `npm ci --prefix web` (make web-deps)")
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = [
        f"--plugin=protoc-gen-es={PROTOC_GEN_ES}",
        f"--es_out={out_dir}",
        "--es_opt=target=ts,import_extension=js",
    ]
    run_protoc(outputs, web_protos(), what="protoc (protoc-gen-es)")


def differences(left: Path, right: Path) -> list[str]:
    cmp = filecmp.dircmp(left, right, ignore=["__pycache__"])
    found = [f"only in one tree: {name}" for name in cmp.left_only + cmp.right_only]
    for name in cmp.common_files:
        if not filecmp.cmp(left / name, right / name, shallow=False):
            found.append(f"differs: {left / name}")
    for sub in cmp.common_dirs:
        found.extend(differences(left / sub, right / sub))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the committed stubs are stale")
    args = parser.parse_args()
    target = OUT_ROOT / GENERATED_TOP
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp) / "py")
        generate_web(Path(tmp) / "web")
        pairs = [(Path(tmp) / "py" / GENERATED_TOP, target), (Path(tmp) / "web", WEB_OUT)]
        if args.check:
            stale = [s for fresh, old in pairs for s in (differences(fresh, old) if old.exists() else [f"no {old}"])]
            if stale:
                print("generated protobuf code is stale; run `make proto`:", *stale, sep="\n  ")
                return 1
            print("generated protobuf code is up to date")
            return 0
        for fresh, old in pairs:
            if old.exists():
                shutil.rmtree(old)
            shutil.copytree(fresh, old)
            print(f"generated {old.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
