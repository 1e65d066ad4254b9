"""The domains import no gRPC, NATS or SQLAlchemy, nor protobuf where they are fully pure, however
deep the import (STYLE.md: imports point inward). Read from the source with `ast`, as
test_import_cycles.py reads it; TYPE_CHECKING imports count too."""

from __future__ import annotations

import ast
import functools
import importlib.util
from pathlib import Path

import pytest

# The import graph as test_import_cycles.py reads it (loaded by path: the tests are no package).
_spec = importlib.util.spec_from_file_location("import_cycles", Path(__file__).with_name("test_import_cycles.py"))
assert _spec is not None
assert _spec.loader is not None
import_cycles = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(import_cycles)

EDGES = ("grpc", "nats", "sqlalchemy")
PROTOBUF = ("google.protobuf", "parley.")
# Each domain module and whether protobuf is also kept out. Messaging's fold still takes
# POSTED_FIELDS from parley_core.chat_messages (the ChatMessage builder), which imports protobuf.
DOMAINS = {
    "parley_auth.domain": True,
    "parley_patch_registry.rollout": True,
    "parley_messaging.events": True,
    "parley_messaging.domain": False,
    "parley_messaging.decisions": False,
}


@functools.cache
def graph_and_modules() -> tuple[dict[str, set[str]], dict[str, Path]]:
    return import_cycles.import_graph(), import_cycles.modules()


def outside_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module)
    return found


@pytest.mark.parametrize(("domain", "without_protobuf"), sorted(DOMAINS.items()))
def test_a_domain_reaches_no_edge_library(domain: str, without_protobuf: bool) -> None:
    graph, known = graph_and_modules()
    reached: set[str] = set()
    todo = [domain]
    while todo:
        name = todo.pop()
        if name not in reached:
            reached.add(name)
            todo += graph.get(name, ())
    banned = EDGES + (PROTOBUF if without_protobuf else ())
    found = {
        f"{name} imports {target}"
        for name in reached
        for target in outside_imports(known[name])
        if target.startswith(banned) or target == "parley"
    }
    assert not found, "\n".join(sorted(found))
