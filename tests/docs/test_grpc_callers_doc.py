"""docs/security.md's table of who calls which service is topology's (GRPC_CALLERS and
GRPC_METHOD_CALLERS, what the servers enforce), row by row."""

from __future__ import annotations

import re
from pathlib import Path

from parley_core.topology import GRPC_CALLERS, GRPC_METHOD_CALLERS

ROOT = Path(__file__).resolve().parents[2]


def test_the_callers_table_says_what_the_servers_enforce() -> None:
    page = (ROOT / "docs" / "security.md").read_text()
    text = page.partition("**Who calls which service.**")[2].partition("\n\n**")[0]
    rows = {m[0]: (m[1], m[2]) for m in re.findall(r"^\| ([\w-]+) \| ([^|]+) \|\s*([^|]*?)\s*\|$", text, re.M)}
    for service, callers in GRPC_CALLERS.items():
        assert service in rows, f"docs/security.md has no callers row for {service}"
        named, narrowed = rows[service]
        if callers:
            assert named.strip() == ", ".join(callers), service
        for method, few in GRPC_METHOD_CALLERS.get(service, {}).items():
            assert f"`{method.rsplit('/', 1)[1]}`" in narrowed, method
            assert narrowed.split(": ", 1)[1].split(" (")[0] == ", ".join(few), method
        if not GRPC_METHOD_CALLERS.get(service):
            assert not narrowed.strip(), service
