"""Generate the one Python package of protobuf and gRPC stubs from protos/.

Run through `make proto`. With --check, generate into a temporary folder and fail if the
committed code differs (CI runs this so stale stubs never land).
"""

from __future__ import annotations

import argparse
import filecmp
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


def generate(out_dir: Path) -> None:
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        # The plugins live beside this interpreter (the venv), which need not be on PATH.
        f"--plugin=protoc-gen-mypy={BIN / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={BIN / 'protoc-gen-mypy_grpc'}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    # Explicit packages (not namespace packages) so mypy and wheels see every module.
    for folder in (out_dir / GENERATED_TOP).rglob("*"):
        if folder.is_dir():
            (folder / "__init__.py").touch()
    (out_dir / GENERATED_TOP / "__init__.py").touch()
    (out_dir / GENERATED_TOP / "py.typed").touch()


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
        generate(Path(tmp))
        fresh = Path(tmp) / GENERATED_TOP
        if args.check:
            stale = differences(fresh, target) if target.exists() else ["no generated code"]
            if stale:
                print("generated protobuf code is stale; run `make proto`:", *stale, sep="\n  ")
                return 1
            print("generated protobuf code is up to date")
            return 0
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(fresh, target)
    print(f"generated {target.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
