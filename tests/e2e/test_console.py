"""The operator's console (web/console.html) in a real browser: Debian's Chromium driven by
Playwright, against the platform as `make run` starts it.

Accounts are real (created with `parley admin create-user --role …`) and log in with their
passwords; the pages read the same gateway API as any client. Screenshots go to
web/test-results/screenshots/ (the README shows copies from docs/screenshots/).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from parley.fleet.v1 import fleet_pb2
from parley.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from parley.patch.v1 import patch_pb2
from parley.storage.v1 import storage_pb2

from parley_client import ParleyError
from parley_core.topology import heartbeat_subject
from parley_testing.browser import log_in, require_built
from parley_testing.operators import OperatorTokens
from parley_testing.platform import RunningPlatform, platform_in
from parley_testing.stack import PASSWORD, bearer
from parley_testing.traffic import Traffic, send_continuously

playwright_api = pytest.importorskip("playwright.async_api")
Browser = playwright_api.Browser
BrowserContext = playwright_api.BrowserContext
Page = playwright_api.Page
expect = playwright_api.expect

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
WEB_DIST = ROOT / "web" / "dist"
MESSAGING_SOURCE = ROOT / "services" / "messaging"
SHOTS = ROOT / "web" / "test-results" / "screenshots"
TIMEOUT_MS = 20_000
ROLLOUT_TIMEOUT_MS = 600_000
expect.set_options(timeout=TIMEOUT_MS)
# Critical findings fall due within seconds here, so an overdue one exists without waiting a day.
CRITICAL_DEADLINE_HOURS = "0.001"
CRITICAL = "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"  # 9.8
LOW = "CVSS:3.1/AV:P/AC:H/PR:H/UI:R/S:U/C:L/I:N/A:N"  # 1.6
CSP_REFUSALS: list[str] = []  # what the CSP refused on any console page of this module


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPlatform]:
    require_built(WEB_DIST, "console.html")
    root = tmp_path_factory.mktemp("console")
    # No checkpoint folder is set, as with `make run`: storage reads <data>/audit-checkpoints.
    running = platform_in(
        root,
        PARLEY_WEB_ROOT=str(WEB_DIST),
        PARLEY_HEARTBEAT_SECONDS="1",
        PARLEY_PATCH_GATE_WINDOW_SECONDS="3",
        PARLEY_PATCH_DEADLINE_CRITICAL_HOURS=CRITICAL_DEADLINE_HOURS,
    )
    yield from running.served()


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:6]}"


def account(platform: RunningPlatform, role: str) -> str:
    name = unique(role.split("-", maxsplit=1)[0][:5])
    platform.cli("admin", "create-user", name, "--role", role, stdin=PASSWORD + "\n")
    return name


async def console(
    browser: Browser, platform: RunningPlatform, name: str, page_name: str = ""
) -> tuple[BrowserContext, Page]:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    # Anything the page's Content-Security-Policy refused (an inline style, say) is a failure.
    page.on("console", lambda m: CSP_REFUSALS.append(m.text) if "Content Security Policy" in m.text else None)
    response = await page.goto(f"{platform.web_url}/console.html" + (f"#{page_name}" if page_name else ""))
    assert response is not None
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp
    assert "style-src 'self'" in csp
    assert "unsafe-inline" not in csp
    await page.get_by_label("Username").fill(name)
    await page.get_by_label("Password").fill(PASSWORD)
    # No account here has two-factor authentication: its code row stays hidden until a challenge.
    await expect(page.get_by_label("Authentication code")).to_be_hidden()
    await page.get_by_role("button", name="Log in").click()
    await expect(page.locator("#me")).to_contain_text(name)
    return context, page


@contextlib.asynccontextmanager
async def gateway_as(platform: RunningPlatform, name: str) -> AsyncIterator[tuple[Any, tuple[tuple[str, str]]]]:
    """The gateway's gRPC stub and `name`'s own token as call metadata."""
    client = platform.client()
    login = await client.login(name, PASSWORD)
    await client.close()
    async with platform.gateway_channel() as raw:
        yield gateway_pb2_grpc.GatewayStub(raw), bearer(login.access_token)


async def gateway_call(platform: RunningPlatform, name: str, call: str, request: object) -> grpc.StatusCode:
    """A console call made over gRPC with `name`'s own token: its status (OK when answered)."""
    async with gateway_as(platform, name) as (stub, token):
        try:
            await getattr(stub, call)(request, metadata=token, timeout=20)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


async def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


async def test_a_member_gets_no_console_and_the_gateway_refuses_its_calls(
    browser: Browser, platform: RunningPlatform
) -> None:
    member = account(platform, "member")
    context, page = await console(browser, platform, member)
    await expect(page.get_by_role("heading", name="No console for your role")).to_be_visible()
    await expect(page.get_by_role("navigation", name="Console pages")).to_have_count(0)
    await expect(page.locator("table")).to_have_count(0)
    await context.close()
    for call, request in (
        ("ListInstances", fleet_pb2.ListInstancesRequest()),
        ("GetServiceHealth", fleet_pb2.GetServiceHealthRequest()),
        ("ListFindings", patch_pb2.ListFindingsRequest()),
        ("ListRollouts", patch_pb2.ListRolloutsRequest()),
        ("PlanRollout", patch_pb2.PlanRolloutRequest(service="messaging", to_version="9.9.9")),
        ("QueryAudit", storage_pb2.QueryAuditRequest()),
        ("VerifyAudit", storage_pb2.GetAuditChainStateRequest()),
        ("ListComplianceReports", gateway_pb2.ListComplianceReportsRequest()),
        ("GetComplianceReport", gateway_pb2.GetComplianceReportRequest()),
    ):
        assert await gateway_call(platform, member, call, request) == grpc.StatusCode.PERMISSION_DENIED, call


async def chat_client(browser: Browser, platform: RunningPlatform, name: str) -> tuple[BrowserContext, Page]:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    await page.goto(platform.web_url)
    await log_in(page, name)
    await expect(page.get_by_text(f"Signed in as {name}")).to_be_visible()
    return context, page


async def test_the_chat_client_links_to_the_console_for_its_roles_only(
    browser: Browser, platform: RunningPlatform
) -> None:
    context, page = await chat_client(browser, platform, account(platform, "member"))
    await expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    await expect(page.get_by_role("link", name="Console")).to_have_count(0)
    await context.close()
    operator = account(platform, "operator")
    context, page = await chat_client(browser, platform, operator)
    await page.get_by_role("link", name="Console").click()
    # The same session (the cookie) opens the console without a second login.
    await expect(page.locator("#me")).to_contain_text("· operator")
    await expect(page.get_by_role("button", name="Log in")).to_have_count(0)
    await expect(page.get_by_role("heading", name="Fleet")).to_be_visible()
    await context.close()


async def test_pages_shown_by_role(browser: Browser, platform: RunningPlatform) -> None:
    expected = {
        "operator": ["Fleet", "Advisories", "Roll-outs", "Health", "Reports"],
        "security-auditor": ["Fleet", "Advisories", "Roll-outs", "Health", "Audit", "Reports"],
        "admin": ["Fleet", "Advisories", "Roll-outs", "Health", "Security events", "Reports"],
    }
    for role, pages in expected.items():
        context, page = await console(browser, platform, account(platform, role))
        await expect(page.get_by_role("navigation", name="Console pages").get_by_role("link")).to_have_text(pages)
        await context.close()
    # What the auditor may only read, the gateway refuses to take from them.
    auditor = account(platform, "security-auditor")
    plan = patch_pb2.PlanRolloutRequest(service="messaging", to_version="9.9.9")
    assert await gateway_call(platform, auditor, "PlanRollout", plan) == grpc.StatusCode.PERMISSION_DENIED
    operator = account(platform, "operator")
    assert await gateway_call(platform, operator, "QueryAudit", storage_pb2.QueryAuditRequest()) == (
        grpc.StatusCode.PERMISSION_DENIED
    )


async def silent_instance(platform: RunningPlatform, instance_id: str) -> None:
    """One heartbeat of an instance that then falls silent (as a hung or cut-off host would).
    Sent with messaging's own NATS credentials: each service's account exports its heartbeat
    subjects, and only its own, to the registry's."""
    nc = await platform.nats("messaging", name="test-console")
    try:
        sent = Timestamp()
        sent.GetCurrentTime()
        beat = fleet_pb2.InstanceHeartbeat(
            service="messaging",
            version="0.1.0",
            instance_id=instance_id,
            host="gone-host",
            health="SERVING",
            sent_at=sent,
        )
        await nc.publish(heartbeat_subject("messaging", instance_id), beat.SerializeToString())
        await nc.flush()
    finally:
        await nc.close()


async def test_fleet_page_lists_every_instance_and_marks_one_that_fell_silent(
    browser: Browser, platform: RunningPlatform
) -> None:
    ghost = unique("ghost-")
    await silent_instance(platform, ghost)
    context, page = await console(browser, platform, account(platform, "operator"), "fleet")
    rows = page.locator("table.grid tbody tr")
    for service in ("auth", "messaging", "storage", "gateway", "patch-registry"):
        row = rows.filter(has_text=service).first
        await expect(row).to_contain_text("0.1.0")
    serving = rows.filter(has_text="SERVING").filter(has_text="gateway").first
    await expect(serving).to_contain_text(" ago")
    await expect(serving).not_to_have_class("stale")
    # The silent one: no heartbeat within the staleness window (15 s), marked; the page follows.
    stale_row = page.locator(f'tr[data-key="{ghost}"]')
    await expect(stale_row).to_contain_text("gone-host")
    await expect(stale_row).to_have_class("stale", timeout=60_000)
    await expect(stale_row).to_contain_text("STALE")
    await expect(page.locator("tr.stale")).to_have_count(1)
    # Each service's health over time: error rate and p99 charted, from the gates' figures. The
    # gateway has served this page's own calls, so its charts have points.
    for service in ("auth", "messaging", "storage", "gateway", "patch-registry"):
        await expect(page.locator(f'figure.service-health[data-service="{service}"] svg.chart')).to_have_count(2)
    gateway_health = page.locator('figure.service-health[data-service="gateway"]')
    await expect(gateway_health.locator("svg.chart").nth(1).locator("circle.service").first).to_be_visible()
    await expect(gateway_health.locator("figcaption")).not_to_contain_text(": 0 calls")
    await shot(page, "console-fleet")
    await context.close()


def osv(record_id: str, vector: str, summary: str) -> str:
    """An OSV record against grpcio, which every instance runs."""
    return json.dumps(
        {
            "id": record_id,
            "modified": "2026-01-01T00:00:00Z",
            "summary": summary,
            "severity": [{"type": "CVSS_V3", "score": vector}],
            "affected": [
                {
                    "package": {"ecosystem": "PyPI", "name": "grpcio"},
                    "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}]}],
                }
            ],
        }
    )


async def test_an_overdue_finding_is_first_on_the_advisories_page(
    browser: Browser, platform: RunningPlatform, tmp_path: Path
) -> None:
    low, critical = unique("TEST-LOW-"), unique("TEST-CRIT-")
    # The low one listed first in the upload and imported first: the page, not the order, puts
    # the overdue critical one on top.
    files = [tmp_path / f"{low}.json", tmp_path / f"{critical}.json"]
    files[0].write_text(osv(low, LOW, "a low one"))
    files[1].write_text(osv(critical, CRITICAL, "a critical one"))
    context, page = await console(browser, platform, account(platform, "operator"), "advisories")
    # The upload's controls are their own size, not stretched across the page.
    chooser = await page.get_by_label("Import OSV advisories (JSON files)").bounding_box()
    button = await page.get_by_role("button", name="Import", exact=True).bounding_box()
    width = await page.evaluate("document.documentElement.clientWidth")
    assert chooser is not None
    assert button is not None
    assert chooser["width"] < width / 2, chooser
    assert button["width"] < width / 4, button
    await page.get_by_label("Import OSV advisories (JSON files)").set_input_files([str(f) for f in files])
    await page.get_by_role("button", name="Import", exact=True).click()
    await expect(page.locator("#import-result")).to_have_text("imported 2, unchanged 0, withdrawn 0")
    rows = page.locator("table.grid tbody tr")
    await expect(rows.filter(has_text=critical).first).to_have_class("overdue", timeout=60_000)
    await expect(rows.first).to_contain_text(critical)
    await expect(rows.first).to_contain_text("overdue by")
    await expect(rows.first).to_contain_text("9.8")
    await expect(rows.filter(has_text=low).first).to_contain_text(" left")
    await expect(rows.filter(has_text=low).first).not_to_have_class("overdue")
    assert await rows.filter(has_text=low).count() > 0
    await shot(page, "console-advisories")
    # The fleet page names the findings against each instance (every one runs grpcio).
    await page.get_by_role("link", name="Fleet").click()
    gateway_row = page.locator("table.grid tbody tr").filter(has_text="gateway-").first
    await expect(gateway_row).to_contain_text(f"{critical} (critical)")
    await expect(gateway_row).to_contain_text(f"{low} (low)")
    await context.close()


async def test_the_reports_page_lists_the_filed_reports_and_shows_the_latest(
    browser: Browser, platform: RunningPlatform
) -> None:
    reports = platform.data_dir / "reports"
    older = "compliance-2026-01-01T000000Z"  # filed as Markdown only
    platform.cli("report", "compliance", "--out", str(reports / f"{older}.md"))
    made = platform.cli("report", "compliance").stdout  # the newest: Markdown and its HTML page
    newest = re.search(r"(compliance-[0-9T-]+Z)\.html", made).group(1)  # type: ignore[union-attr]
    context, page = await console(browser, platform, account(platform, "security-auditor"), "reports")
    # Commands as code, not Markdown's backticks shown as they are.
    hint = page.locator("#reports-hint")
    await expect(hint.locator("code")).to_have_text(["reports/", "parley report verify FILE"])
    await expect(hint).not_to_contain_text("`")
    rows = page.locator("#reports tbody tr")
    await expect(rows).to_have_count(2)
    await expect(rows.first).to_contain_text(newest)
    await expect(rows.first).to_contain_text("html, md")
    await expect(rows.nth(1)).to_contain_text(older)
    # The newest as its page, in a sandboxed frame that runs nothing and keeps the console's CSP.
    frame_element = page.locator("iframe.report")
    await expect(frame_element).to_have_attribute("sandbox", "")
    report = page.frame_locator("iframe.report")
    await expect(report.get_by_role("heading", name="Parley compliance report", level=1)).to_be_visible()
    await expect(report.locator("h2")).to_have_count(11)
    await expect(report.get_by_role("heading", name="Open findings")).to_be_visible()
    await expect(report.locator("svg")).to_have_count(2)
    # The report's bold is red, for what needs attention: an intact chain is not in it.
    await expect(report.get_by_text(re.compile(r"^Verify: intact, "))).to_be_visible()
    await expect(report.locator("strong").filter(has_text="intact")).to_have_count(0)
    assert "<table>" in (await frame_element.get_attribute("srcdoc") or "")
    await shot(page, "console-reports")
    # The older one as Markdown text.
    await rows.nth(1).get_by_role("button", name="Show").click()
    await expect(page.locator("pre.report")).to_contain_text("# Parley compliance report")
    await expect(page.locator("iframe.report")).to_have_count(0)
    await context.close()
    assert CSP_REFUSALS == []  # the report's stylesheet is allowed by its hash, nothing else inline
    # Ids, never paths: nothing outside reports/ can be named.
    auditor = account(platform, "security-auditor")
    for bad in ("../secrets/report-signing-key", "/etc/passwd", f"{newest}.html"):
        request = gateway_pb2.GetComplianceReportRequest(report_id=bad)
        assert await gateway_call(platform, auditor, "GetComplianceReport", request) == (
            grpc.StatusCode.INVALID_ARGUMENT
        ), bad
    missing = gateway_pb2.GetComplianceReportRequest(report_id="compliance-2020-01-01T000000Z")
    assert await gateway_call(platform, auditor, "GetComplianceReport", missing) == grpc.StatusCode.NOT_FOUND


async def test_auditor_queries_the_audit_trail_by_actor(browser: Browser, platform: RunningPlatform) -> None:
    member = account(platform, "member")
    client = platform.client()
    login = await client.login(member, PASSWORD)
    await client.close()
    # The operator's checkpoint, written where storage reads them with no setting (the data
    # folder's audit-checkpoints/), shows on the page's first verdict: no "Verify again" needed.
    taken = await asyncio.to_thread(platform.cli, "audit", "checkpoint")
    index_taken = taken.stdout.split("at record #", 1)[1].split()[0]
    written = Path(taken.stdout.split(" written to ", 1)[1].split()[0])
    assert written.parent.resolve() == (platform.data_dir / "audit-checkpoints").resolve()
    context, page = await console(browser, platform, account(platform, "security-auditor"), "audit")
    await page.get_by_label("Actor").fill(login.user_id)
    await page.get_by_role("button", name="Search").click()
    # The page's first, unfiltered search may answer after this one: wait for this one's table.
    results = page.locator(f'.audit-results[data-actor="{login.user_id}"] table tbody tr')
    await expect(results.first).to_be_visible()
    by_id = await results.all_inner_texts()
    for row in by_id:
        assert member in row  # the actor by name, not by id
        assert login.user_id not in row
    # By name too: the archive keeps ids, the page resolves the name it has seen to its id.
    await page.get_by_label("Actor").fill(member)
    await page.get_by_role("button", name="Search").click()
    by_name = page.locator(f'.audit-results[data-actor="{member}"] table tbody tr')
    await expect(by_name.first).to_be_visible()
    assert await by_name.all_inner_texts() == by_id
    # The chain, verified against the archive: intact, then a row deleted by someone with
    # database access is found.
    state = page.locator("#chain-state")
    await expect(state).to_have_attribute("data-intact", "true")
    await expect(state).to_contain_text("Audit chain intact: ")
    await expect(state).to_contain_text("every signature valid")
    checkpoint = page.locator("#chain-checkpoint")
    await expect(checkpoint).to_have_attribute("data-matches", "true")
    await expect(checkpoint).to_contain_text(f"Last checkpoint: record #{index_taken} ")
    await expect(checkpoint).to_contain_text(f"({written.name}): the archive still holds it")
    # Its time like the page's other times, not raw ISO 8601.
    await expect(checkpoint).to_contain_text(re.compile(r"taken \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \("))
    await shot(page, "console-audit")
    # A name nobody has: said so, with what the field takes, not an empty table.
    await page.get_by_label("Actor").fill("nobody-by-this-name")
    await page.get_by_role("button", name="Search").click()
    await expect(page.locator('.audit-results[data-actor="nobody-by-this-name"]')).to_contain_text(
        'No account named "nobody-by-this-name"'
    )
    with sqlite3.connect(platform.data_dir / "storage" / "archive.db") as db:
        seq, index = db.execute(
            "SELECT stream_seq, aggregate_version FROM events WHERE stream = 'SEC' AND aggregate_type = 'security' "
            "ORDER BY stream_seq LIMIT 1 OFFSET 1"
        ).fetchone()
        assert db.execute("DELETE FROM events WHERE stream = 'SEC' AND stream_seq = ?", (seq,)).rowcount == 1
    await page.get_by_role("button", name="Verify again").click()
    await expect(state).to_have_attribute("data-intact", "false")
    await expect(state).to_contain_text("Audit chain TAMPERED")
    await expect(state.locator("ul.findings li").first).to_contain_text(f"deleted: record #{index}")
    await context.close()


async def test_auditor_follows_the_security_events_live_filtered_by_kind_and_actor(
    browser: Browser, platform: RunningPlatform
) -> None:
    member, other = account(platform, "member"), account(platform, "member")
    client = platform.client()
    try:
        await client.login(member, PASSWORD)  # a login before the page opens: in its backlog
        context, page = await console(browser, platform, account(platform, "security-auditor"), "audit")
        await page.get_by_label("Kind").select_option(label="failed logins")
        await page.get_by_label("Person or service").fill(member)
        await page.get_by_role("button", name="Follow").click()
        events = page.locator(f'table.security-events[data-actor="{member}"] tbody tr')
        await expect(page.locator("#security-state")).to_have_attribute("data-state", "live")
        # Live: the member's failed login appears; the other's, and the member's success, do not.
        for name in (other, member):
            with pytest.raises(ParleyError, match="UNAUTHENTICATED"):
                await client.login(name, "not-the-password-at-all")
        await expect(events).to_have_count(1)
        await expect(events.first).to_have_attribute("data-kind", "login_failed")
        await expect(events.first).to_contain_text(member)  # by name
        await expect(events.first).not_to_contain_text(other)
        await shot(page, "console-security-events")
        # The Health page charts what just happened, from the services' heartbeats: these
        # failed logins, a few messages, and the auditor's page's open live stream.
        channel = await client.create_channel(unique("health-"))
        for n in range(3):
            await client.send(channel.channel_id, f"health {n}")
        await platform_health_charted(browser, platform)
        await context.close()
    finally:
        await client.close()
    # An admin has the stream on a page of its own, live.
    context, page = await console(browser, platform, account(platform, "admin"), "security")
    await expect(page.get_by_role("heading", name="Security events", exact=True)).to_be_visible()
    await expect(page.locator("#security-state")).to_have_attribute("data-state", "live")
    await expect(page.locator("table.security-events tbody tr").first).to_be_visible()
    await context.close()
    # The stream is the auditor's and the admin's: a member and an operator are refused it.
    for role in ("member", "operator"):
        refused = await gateway_stream_status(platform, account(platform, role))
        assert refused == grpc.StatusCode.PERMISSION_DENIED, role


async def platform_health_charted(browser: Browser, platform: RunningPlatform) -> None:
    """An operator's Health page shows the four charts, each with points, and (the page follows
    the registry) non-zero messages/s, live streams and login failures per minute."""
    context, page = await console(browser, platform, account(platform, "operator"), "health")
    await expect(page.get_by_role("heading", name="Health", exact=True)).to_be_visible()
    figures = page.locator("figure.platform-health")
    await expect(figures).to_have_count(4)
    for figure in ("archive_lag_seconds", "messages_per_second", "live_streams", "login_failures_per_minute"):
        chart = page.locator(f'figure.platform-health[data-figure="{figure}"]')
        await expect(chart.locator("svg.chart circle").first).to_be_attached()
        if figure != "archive_lag_seconds":  # caught up here: 0 s behind is the right figure
            await expect(chart).not_to_have_attribute("data-peak", re.compile(r"^(0)?$"))
    lag = page.locator('figure.platform-health[data-figure="archive_lag_seconds"]')
    await expect(lag.locator("svg.chart")).to_contain_text("MSG")  # a line per stream
    await shot(page, "console-health")
    await context.close()


async def gateway_stream_status(platform: RunningPlatform, name: str) -> grpc.StatusCode:
    """How the gateway answers `name` asking for the security event stream."""
    async with gateway_as(platform, name) as (stub, token):
        stream = stub.WatchSecurityEvents(storage_pb2.WatchSecurityEventsRequest(), metadata=token, timeout=20)
        try:
            async for _ in stream:
                return grpc.StatusCode.OK
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


async def publish_messaging(platform: RunningPlatform, version: str) -> None:
    """A release, published by a third operator with the CLI (the console does not publish)."""
    operators = OperatorTokens()
    await operators.publish_on_platform(platform.data_dir)
    operators.save_cli_login(platform.data_dir, "pat")
    if not (platform.data_dir / "cli" / "keys" / "messaging.pem").exists():
        await asyncio.to_thread(platform.cli, "--as", "pat", "patch", "key", "create", "messaging")
    published = await asyncio.to_thread(
        platform.cli, "--as", "pat", "patch", "publish", "messaging", version, "--source", str(MESSAGING_SOURCE)
    )
    assert f"published messaging {version}" in published.stdout


async def test_operator_plans_a_second_person_approves_and_the_timeline_reaches_done(
    browser: Browser, platform: RunningPlatform
) -> None:
    planner, approver = account(platform, "operator"), account(platform, "operator")
    await publish_messaging(platform, "0.2.0")
    old_instance = str(platform.service("messaging")["instances"][0]["instance_id"])  # type: ignore[index]

    # Traffic for the health gate to judge.
    client = platform.client()
    carol = unique("carol")
    await client.register(carol, PASSWORD)
    await client.login(carol, PASSWORD)
    channel = await client.create_channel(unique("upgrades"))
    traffic = Traffic()
    sender = asyncio.create_task(send_continuously(client, channel.channel_id, traffic))
    try:
        a_context, a_page = await console(browser, platform, planner, "rollouts")
        await expect(a_page.locator("#second-person-rule")).to_contain_text("second person")
        # What already runs everywhere (the base release) is nothing to roll out.
        offered = await a_page.get_by_label("Release").locator("option").all_inner_texts()
        assert "messaging 0.2.0" in offered, offered
        assert "messaging 0.1.0" not in offered, offered
        await a_page.get_by_label("Release").select_option("messaging 0.2.0")
        await a_page.get_by_label("Reason (optional)").fill("grpcio fix")
        await a_page.get_by_role("button", name="Plan roll-out").click()
        card = a_page.locator('article.rollout[data-state="planned"]')
        await expect(card).to_contain_text("you planned it, so you may not")
        await expect(a_page.locator("#plan-reason")).to_have_value("")  # the form is cleared once planned
        rollout_id = await card.get_attribute("data-rollout-id")
        assert rollout_id
        # The reason box is labelled on the page; the planner's Approve is off, and the registry
        # refuses the planner's own approval anyway.
        await expect(card.get_by_text("Reason (optional)")).to_be_visible()
        await expect(card.get_by_label(f"Reason for roll-out {rollout_id}")).to_have_attribute(
            "placeholder", re.compile(".")
        )
        await expect(card.get_by_role("button", name="Approve")).to_be_disabled()
        own = patch_pb2.RolloutCommand(rollout_id=rollout_id)
        assert await gateway_call(platform, planner, "ApproveRollout", own) == grpc.StatusCode.PERMISSION_DENIED

        b_context, b_page = await console(browser, platform, approver, "rollouts")
        b_card = b_page.locator(f'article.rollout[data-rollout-id="{rollout_id}"]')
        await b_card.get_by_role("button", name="Approve").click()
        await expect(b_card).to_contain_text(f"Planned by {planner}, approved by {approver} (you).")
        # The planner's page follows the roll-out to its end.
        done = a_page.locator(f'article.rollout[data-rollout-id="{rollout_id}"]')
        await expect(done).to_have_attribute("data-state", "done", timeout=ROLLOUT_TIMEOUT_MS)
        await expect(done.locator(".timeline li.RolloutApproved")).to_have_count(1)
        await expect(done.locator(".timeline li.RolloutCompleted")).to_have_count(1)
        # Gates come seconds apart: the timeline's times are to the millisecond.
        await expect(done.locator(".timeline time").first).to_have_text(
            re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} UTC$")
        )
        # Every phase's gate (10, 50, 100 % of callers) passed, with its figures charted.
        passed = done.locator("tr.gate-row.passed")
        await expect(passed).to_have_count(3)
        await expect(done.locator("svg.chart")).to_have_count(2)
        await expect(done.locator("svg.chart circle.canary")).to_have_count(6)
        await expect(done.locator("svg.chart text.verdict.passed")).to_have_count(6)
        # A p99 over no calls is no figure ("no calls"), never "0 ms".
        for cells in await done.locator("tr.gate-row").evaluate_all(
            "rows => rows.map(r => [...r.cells].map(c => c.textContent))"
        ):
            for calls, p99 in ((cells[3], cells[5]), (cells[6], cells[8])):
                assert p99 == "no calls" if calls == "0" else p99.endswith(" ms"), cells
        await shot(a_page, "console-rollout")
        assert CSP_REFUSALS == []  # the charts are drawn within the strict CSP
        await rushed_rollout_named(browser, platform, rollout_id, planner, approver)
        # The replaced instance stopped on purpose: it leaves the fleet page.
        await a_page.goto(f"{platform.web_url}/console.html#fleet")
        await expect(a_page.get_by_role("button", name="Log in")).to_have_count(0)
        await expect(a_page.locator("table.grid tbody tr").filter(has_text="0.2.0").first).to_contain_text("messaging")
        await expect(a_page.locator(f'tr[data-key="{old_instance}"]')).to_have_count(0, timeout=60_000)
        # Now every messaging instance runs 0.2.0: it is no longer offered for a roll-out.
        await a_page.get_by_role("link", name="Roll-outs").click()
        await expect(a_page.locator("#plan-release")).to_be_attached()  # filled before it is shown
        await expect(a_page.locator("#plan-release option", has_text="messaging 0.2.0")).to_have_count(0)
        await a_context.close()
        await b_context.close()
    finally:
        traffic.stop.set()
        await sender
        await client.close()
    assert traffic.failures == []


async def rushed_rollout_named(
    browser: Browser, platform: RunningPlatform, rollout_id: str, planner: str, approver: str
) -> None:
    """Approved seconds after it was planned: the detector's rushed_rollout finding, shown on the
    auditor's page with people by name (the finding itself keeps their ids)."""
    context, page = await console(browser, platform, account(platform, "security-auditor"), "audit")
    await page.get_by_label("Kind").select_option(label="anomalies")
    await page.get_by_role("button", name="Follow").click()
    rushed = page.locator('table.security-events tr[data-kind="anomaly:rushed_rollout"]').filter(has_text=rollout_id)
    await expect(rushed).to_have_count(1, timeout=60_000)
    cells = await rushed.locator("td").all_inner_texts()
    assert cells[2] == approver, cells  # Who: the approver, not "-"
    assert f"planned by {planner} was approved by {approver}" in cells[5], cells
    assert not re.search(r"\b[0-9a-f]{32}\b", cells[5]), cells
    await context.close()


@pytest.mark.slow  # minutes of roll-out under sends: `make test-all`; make test keeps a shorter roll-out test
async def test_a_roll_out_is_paused_resumed_and_rolled_back_from_the_console(
    browser: Browser, platform: RunningPlatform
) -> None:
    planner, approver = account(platform, "operator"), account(platform, "operator")
    await publish_messaging(platform, "0.3.0")
    a_context, a_page = await console(browser, platform, planner, "rollouts")
    await a_page.get_by_label("Release").select_option("messaging 0.3.0")
    await a_page.get_by_role("button", name="Plan roll-out").click()
    card = a_page.locator('article.rollout[data-state="planned"]')
    rollout_id = await card.get_attribute("data-rollout-id")
    assert rollout_id
    b_context, b_page = await console(browser, platform, approver, "rollouts")
    b_card = b_page.locator(f'article.rollout[data-rollout-id="{rollout_id}"]')
    await b_card.get_by_role("button", name="Approve").click()
    await b_card.get_by_role("button", name="Pause").click()
    await expect(b_card).to_have_attribute("data-state", "paused")
    await b_card.get_by_role("button", name="Resume").click()
    await expect(b_card).not_to_have_attribute("data-state", "paused")
    await b_card.get_by_label(f"Reason for roll-out {rollout_id}").fill("changed our mind")
    await b_card.get_by_role("button", name="Roll back").click()
    # The planner's page follows it: the node agent restores the old version, the roll-out ends.
    a_card = a_page.locator(f'article.rollout[data-rollout-id="{rollout_id}"]')
    await expect(a_card).to_have_attribute("data-state", "rolled_back", timeout=ROLLOUT_TIMEOUT_MS)
    await expect(a_card).to_contain_text("Rolled back: changed our mind")
    for event in ("RolloutApproved", "RolloutPaused", "RolloutResumed", "RollbackStarted", "RolloutRolledBack"):
        await expect(a_card.locator(f".timeline li.{event}")).to_have_count(1)
    await expect(a_card.get_by_role("button")).to_have_count(0)  # nothing left to do to a finished one
    await a_context.close()
    await b_context.close()
