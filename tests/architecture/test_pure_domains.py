"""The domains import no gRPC, NATS, SQLAlchemy or protobuf, however deep the import (STYLE.md:
imports point inward; issue 15: no protobuf, no grpc, no I/O). Read from the source with `ast`,
as test_import_cycles.py reads it, nothing imported. A name imported for the type checker only
(`if TYPE_CHECKING:`) is no dependency the domain runs with and does not count here."""

from __future__ import annotations

import ast
import functools
import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

# The modules as test_import_cycles.py finds them (loaded by path: the tests are no package).
_spec = importlib.util.spec_from_file_location("import_cycles", Path(__file__).with_name("test_import_cycles.py"))
assert _spec is not None
assert _spec.loader is not None
import_cycles = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(import_cycles)

BANNED = ("grpc", "nats", "sqlalchemy", "google.protobuf", "parley.")  # `parley.`: the generated protobuf
DOMAINS = (
    "parley_auth.domain",
    "parley_messaging.domain",
    "parley_messaging.decisions",
    "parley_messaging.events",
    "parley_patch_registry.rollout",
    "parley_gateway.domain.admission",
    "parley_gateway.domain.routes",
    "parley_gateway.domain.sending",
    "parley_gateway.domain.streams",
    "parley_core.connection_ages",  # the per-source connection cap's decision (every client port's)
    "parley_storage.domain",
    "parley_storage.detection.findings",
)


def runtime_imports(tree: ast.AST) -> Iterator[str]:
    """Every module a module's body imports (top level or in a function), `if TYPE_CHECKING:` aside."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING":
            yield from (m for child in node.orelse for m in runtime_imports(child))
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)  # `from pkg import module`
        yield from runtime_imports(node)


@functools.cache
def imports_of(module: str) -> frozenset[str]:
    return frozenset(runtime_imports(ast.parse(import_cycles.modules()[module].read_text())))


def reached_from(domain: str) -> dict[str, set[str]]:
    """Each first-party module the domain reaches at run time, and the outside modules it imports."""
    known = import_cycles.modules()
    reached: dict[str, set[str]] = {}
    todo = [domain]
    while todo:
        name = todo.pop()
        if name in reached:
            continue
        imported = imports_of(name)
        reached[name] = {m for m in imported if m.split(".")[0] not in {k.split(".")[0] for k in known}}
        todo += [m for m in imported if m in known]
    return reached


@pytest.mark.parametrize("domain", DOMAINS)
def test_a_domain_reaches_no_edge_library(domain: str) -> None:
    found = sorted(
        f"{name} imports {target}"
        for name, outside in reached_from(domain).items()
        for target in outside
        if target.startswith(BANNED)
    )
    assert not found, "\n".join(found)


def test_an_edge_library_behind_a_helper_is_found() -> None:
    """The walk goes through first-party helpers: the archive's projection reaches SQLAlchemy."""
    outside = set().union(*reached_from("parley_storage.archive.projection").values())
    assert any(m.startswith("sqlalchemy") for m in outside)
