"""Every package declares what its code imports (issue 15: packaging tells the truth).

A package that imports grpc because parley-core happens to pull grpcio in breaks the day
parley-core stops needing it, and its wheel's metadata misleads whoever installs it alone. So
each module under a package's src/ (tests aside) is read with `ast`, and each outside module it
imports at run time (top level or in a function; `if TYPE_CHECKING:` aside) must belong to a
distribution in that package's pyproject `dependencies`. Which distribution a module belongs to
is read from what is installed (each distribution's file list), so `yaml` is PyYAML and
`google.protobuf` is protobuf without a table to keep up. And every declared dependency is
pinned in constraints.txt (which `make venv` and the images install with) by a version the
declaration admits.
"""

from __future__ import annotations

import ast
import functools
import re
import sys
import tomllib
from collections.abc import Iterator
from importlib.metadata import distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = sorted([*ROOT.glob("libs/*/pyproject.toml"), *ROOT.glob("services/*/pyproject.toml")])


def normalized(name: str) -> str:
    """A distribution's name as PEP 503 compares them (PyJWT, pyjwt and py_jwt are one)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def declared(pyproject: Path) -> list[Requirement]:
    return [Requirement(d) for d in tomllib.loads(pyproject.read_text())["project"].get("dependencies", [])]


def project_name(pyproject: Path) -> str:
    return normalized(tomllib.loads(pyproject.read_text())["project"]["name"])


@functools.cache
def first_party() -> dict[str, str]:
    """Each top-level module in the repository's src/ folders and the package that ships it."""
    return {
        top.stem: project_name(pyproject)
        for pyproject in PACKAGES
        for top in (pyproject.parent / "src").iterdir()
        if (top.is_dir() and not top.name.endswith(".egg-info") and top.name != "__pycache__") or top.suffix == ".py"
    }


@functools.cache
def installed_owners() -> dict[str, frozenset[str]]:
    """Each installed module and package (dotted) and the distributions whose files hold it."""
    owners: dict[str, set[str]] = {}
    for dist in distributions():
        name = dist.metadata["Name"]
        for file in (dist.files or ()) if name else ():
            parts = file.parts
            if not parts or ".." in parts or parts[0].endswith((".dist-info", ".data")):
                continue
            stem = parts[-1].split(".")[0]  # message.py, _message.cpython-311-x86_64-linux-gnu.so
            if file.suffix not in {".py", ".so", ".pyd"} or not stem.isidentifier():
                continue
            dotted = [*parts[:-1]] if stem == "__init__" else [*parts[:-1], stem]
            for depth in range(1, len(dotted) + 1):
                owners.setdefault(".".join(dotted[:depth]), set()).add(normalized(name))
    return {name: frozenset(found) for name, found in owners.items()}


def runtime_imports(tree: ast.AST) -> Iterator[tuple[str, list[str]]]:
    """(module, names taken from it) for each absolute import a module runs, TYPE_CHECKING aside."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING":
            yield from (found for child in node.orelse for found in runtime_imports(child))
            continue
        if isinstance(node, ast.Import):
            yield from ((alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module, [alias.name for alias in node.names]
        yield from runtime_imports(node)


def owner(module: str, names: list[str]) -> str | frozenset[str]:
    """The package (first party) or the distributions that hold an imported module. A namespace
    several distributions share (`google`, `opentelemetry`) is resolved at its deepest name:
    `from opentelemetry import trace` is opentelemetry-api's."""
    top = module.partition(".")[0]
    if top in first_party():
        return first_party()[top]
    installed = installed_owners()
    for candidate in [*(f"{module}.{n}" for n in names), module]:
        parts = candidate.split(".")
        for depth in range(len(parts), 0, -1):
            if found := installed.get(".".join(parts[:depth])):
                if len(found) == 1 or depth == len(parts):
                    return found
                break
    return frozenset()


def undeclared(pyproject: Path) -> list[str]:
    """What to declare, each with the modules that import it."""
    package = pyproject.parent
    allowed = {normalized(r.name) for r in declared(pyproject)} | {project_name(pyproject)}
    found: dict[str, list[str]] = {}
    for path in sorted((package / "src").rglob("*.py")):
        if path.relative_to(package / "src").parts[0] in {"parley", "build"}:  # generated protobuf code
            continue
        for module, names in runtime_imports(ast.parse(path.read_text(), str(path))):
            if module.split(".")[0] in sys.stdlib_module_names or module == "__future__":
                continue
            holders = owner(module, names)
            if isinstance(holders, str):
                holders = frozenset({holders})
            if not holders:
                missing = f"{module} (which no installed distribution holds)"
            elif not holders & allowed:
                missing = " or ".join(sorted(holders))
            else:
                continue
            found.setdefault(missing, []).append(f"{path.relative_to(package)} imports {module}")
    return [f"declare {missing}: {', '.join(dict.fromkeys(where))}" for missing, where in sorted(found.items())]


@pytest.mark.parametrize("pyproject", PACKAGES, ids=lambda p: p.parent.name)
def test_a_package_declares_every_distribution_its_code_imports(pyproject: Path) -> None:
    missing = undeclared(pyproject)
    assert not missing, f"{pyproject.relative_to(ROOT)} lacks dependencies:\n" + "\n".join(missing)


def test_every_declared_dependency_is_pinned_in_constraints_by_a_version_it_admits() -> None:
    pins = {
        normalized(name): Version(version)
        for name, version in re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", (ROOT / "constraints.txt").read_text(), re.M)
    }
    ours = {project_name(p) for p in PACKAGES}
    wrong = [
        f"{pyproject.relative_to(ROOT)}: {req} "
        + (f"admits no {pins[name]}" if name in pins else "is not pinned in constraints.txt")
        for pyproject in PACKAGES
        for req in declared(pyproject)
        if (name := normalized(req.name)) not in ours and (name not in pins or pins[name] not in req.specifier)
    ]
    assert not wrong, "\n".join(wrong)


def test_an_import_the_package_does_not_declare_is_found(tmp_path: Path) -> None:
    """A package declaring grpcio and importing grpc, google.protobuf and (in a function) yaml is
    told the two it lacks."""
    (tmp_path / "src" / "parley_example").mkdir(parents=True)
    (tmp_path / "src" / "parley_example" / "__init__.py").write_text(
        "import grpc\nfrom google.protobuf import message\n\ndef f():\n    import yaml\n"
    )
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "parley-example"\ndependencies = ["grpcio>=1"]\n')
    assert undeclared(tmp_path / "pyproject.toml") == [
        "declare protobuf: src/parley_example/__init__.py imports google.protobuf",
        "declare pyyaml: src/parley_example/__init__.py imports yaml",
    ]
