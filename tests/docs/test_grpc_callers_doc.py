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
        # "`A`, `B`: callers (why); `C`: callers": each group's methods and their callers.
        groups = [group.split(": ", 1) for group in narrowed.split("; ") if group]
        said = {name.strip("`"): who.split(" (")[0] for names, who in groups for name in names.split(", ")}
        for method, few in GRPC_METHOD_CALLERS.get(service, {}).items():
            assert said.get(method.rsplit("/", 1)[1]) == ", ".join(few), method
        if not GRPC_METHOD_CALLERS.get(service):
            assert not narrowed.strip(), service
