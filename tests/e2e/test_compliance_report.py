"""`parley report compliance` and `parley report verify` against the platform as `make run` starts it:
a report with an overdue finding and no roll-out, its content, its signature, and a changed byte caught."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import sqlite3
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pypdfium2 as pdfium
import pytest
from cryptography.hazmat.primitives.hashes import SHA1
from cryptography.hazmat.primitives.twofactor.totp import TOTP
from playwright.sync_api import sync_playwright

from parley_core.topology import SERVICES
from parley_testing.browser import CHROMIUM
from parley_testing.operators import OperatorTokens
from parley_testing.platform import RunningPlatform, platform_in
from parley_testing.waiting import wait_until

pytestmark = pytest.mark.e2e

SHOTS = Path(__file__).resolve().parents[2] / "web" / "test-results" / "screenshots"

ADVISORY = "PARLEY-TEST-2026-0001"
SCHEDULE_HOURS = "0.005"
CRITICAL = "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"  # 9.8


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPlatform]:
    # A critical finding falls due within seconds, so the report has an overdue one to show; the
    # scheduled report comes every 18 s instead of daily. No checkpoint folder is set, as with
    # `make run`: storage reads <data>/audit-checkpoints, where `parley audit checkpoint` writes.
    root = tmp_path_factory.mktemp("report")
    running = platform_in(
        root,
        PARLEY_PATCH_DEADLINE_CRITICAL_HOURS="0.001",
        PARLEY_REPORT_EVERY_HOURS=SCHEDULE_HOURS,
    )
    yield from running.served()


def osv_against_grpcio(record_id: str) -> str:
    """An OSV record against grpcio, which every instance runs."""
    return json.dumps(
        {
            "id": record_id,
            "modified": "2026-01-01T00:00:00Z",
            "summary": "a critical one | with a pipe",
            "severity": [{"type": "CVSS_V3", "score": CRITICAL}],
            "affected": [
                {
                    "package": {"ecosystem": "PyPI", "name": "grpcio"},
                    "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}]}],
                }
            ],
        }
    )


REPORT_SECTIONS = [
    "Fleet",
    "Open findings",
    "Time to patch",
    "Roll-outs in the period",
    "Audit chain",
    "Encryption and key ages",
    "MFA coverage",
    "Retention policies in force",
    "Backups",
    "Erasures",
    "Security events in the period",
]
# Each <h2> of the page with the text of what follows it up to the next one.
SECTIONS_JS = """() => [...document.querySelectorAll('h2')].map(h => {
  let text = '', next = h.nextElementSibling;
  while (next && next.tagName !== 'H2') { text += next.innerText || next.textContent; next = next.nextElementSibling; }
  return [h.textContent, text];
})"""


def section(report: str, title: str) -> str:
    return report.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


async def enrol_totp(platform: RunningPlatform, name: str) -> None:
    async with platform.client() as client:
        await client.login(name, "a-long-enough-passphrase")
        secret = (await client.begin_totp_enrolment()).secret_base32
        app = TOTP(base64.b32decode(secret + "=" * (-len(secret) % 8)), 6, SHA1(), 30)
        await client.confirm_totp_enrolment(app.generate(int(time.time())).decode())


def test_signed_report_of_fleet_findings_and_audit_then_a_changed_byte_is_caught(
    platform: RunningPlatform, tmp_path: Path
) -> None:
    for service in SERVICES:
        platform.cli_until("fleet", shows=f"{service}-v0_1_0-", timeout=90.0)
    operators = OperatorTokens()
    asyncio.run(operators.publish_on_platform(platform.data_dir))
    operators.save_cli_login(platform.data_dir, "olga")
    (tmp_path / "osv").mkdir()
    (tmp_path / "osv" / "one.json").write_text(osv_against_grpcio(ADVISORY))
    platform.cli_until("--as", "olga", "advisories", "import", str(tmp_path / "osv"), shows="imported", timeout=90.0)
    platform.cli_until("advisories", "list", shows="OVERDUE", timeout=90.0)
    # A login puts records on the audit chain, so the report has a head to name.
    platform.cli("register", "auditee", stdin="a-long-enough-passphrase\n")
    platform.cli("login", "auditee", stdin="a-long-enough-passphrase\n")
    # What the security sections report: one account with a second factor, a retention policy,
    # a KEK rotation, a backup made and verified, an erasure.
    assert platform.cli("login", "auditee", stdin="not-the-passphrase-at-all\n", check=False).returncode != 0
    channel = platform.cli("--as", "auditee", "create-channel", "kept-a-month").stdout.split()[-1]
    asyncio.run(enrol_totp(platform, "auditee"))
    platform.cli("retention", channel, "30")
    platform.cli("rotate-kek")
    backup = tmp_path / "backups" / "today"
    platform.cli("backup", "create", str(backup))
    platform.cli("backup", "verify", str(backup))
    # The roll-out prober's kind of account (the platform identity registers it): no person's.
    platform.cli("admin", "create-user", "canary-prober-e2e", stdin="a-long-enough-passphrase\n")
    platform.cli("register", "leaver", stdin="a-long-enough-passphrase\n")
    platform.cli("erase", "leaver", "--reason", "asked to be forgotten", "--yes")
    platform.cli_until(
        "audit", "verify", shows="audit chain intact", timeout=90.0
    )  # the archive has caught up with the head

    taken = platform.cli("audit", "checkpoint").stdout  # into the data folder's checkpoint folder
    index_taken = taken.split("at record #", 1)[1].split()[0]
    checkpoint = Path(taken.split(" written to ", 1)[1].split()[0])
    assert checkpoint.parent.resolve() == (platform.data_dir / "audit-checkpoints").resolve()
    assert "the console's Audit page and the compliance report show it" in taken

    out = tmp_path / "filed" / "compliance.md"
    made = platform.cli("report", "compliance", "--since", "2020-01-01", "--out", str(out))
    assert f"compliance report written to {out}" in made.stdout
    report = out.read_text()

    assert "Period: 2020-01-01 00:00 UTC to " in report
    for service in SERVICES:
        assert f"| {service} | 0.1.0 | {service}-v0_1_0-" in report
    finding_rows = [line for line in report.splitlines() if line.startswith(f"| {ADVISORY} |")]
    assert finding_rows, report
    assert all("| critical | 9.8 |" in row and "**OVERDUE** by" in row for row in finding_rows)
    assert "grpcio" in finding_rows[0]
    assert f"- {ADVISORY}: a critical one \\| with a pipe" in report  # its summary cannot break a table
    # The overdue count, in bold (red on the page).
    assert re.search(r"\*\*[1-9]\d* overdue\*\*", section(report, "Open findings"))
    # nothing fixed yet; every instance affected, its open finding aged
    assert "| critical | 0 | - | - | 0 | " in section(report, "Time to patch")
    assert "No roll-out was planned or moved in the period." in report
    assert "Verify: intact, " in report  # not in bold: the page's bold is red, for what needs attention
    assert "Head (live SEC stream): record #" in report
    taken_at = r"taken \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC "  # like the report's other times, not raw ISO
    assert re.search(f"Last operator checkpoint: record #{index_taken}, {taken_at}", report)
    assert f"(checkpoint {checkpoint.name}), compared " in report
    assert ": the archive still holds it." in report
    # The security sections, each filled from the platform.
    keys = section(report, "Encryption and key ages")
    assert "| access-token signing key (Ed25519) |" in keys
    assert "| audit record signing key (Ed25519) |" in keys
    # The report key by its id, the one `parley report verify` prints, not by its file name.
    signer = made.stdout.split("signed by key ", 1)[1].split()[0]
    assert f"| compliance report signing key (Ed25519) | {signer} |" in keys
    assert "| TLS certificate (CA) | ca |" in keys
    assert "| TLS certificate | gateway |" in keys
    assert "Last KEK rotation: " in keys
    assert "none archived" not in keys
    mfa = section(report, "MFA coverage")
    assert "| member | 1 | 1 | 100% | optional |" in mfa  # auditee enrolled; leaver erased, the prober not a person
    assert "Not counted: 1 synthetic account(s), the platform's own roll-out probers" in mfa
    assert f"| {channel} | 30 days | platform |" in section(report, "Retention policies in force")
    backups = section(report, "Backups")
    assert "Last backup created: " in backups
    assert f"in `{backup}`" in backups
    assert "Last backup verified: " in backups
    erasures = section(report, "Erasures")
    assert "1 erasure(s) in the period" in erasures
    erasure_row = next(line for line in erasures.splitlines() if "asked to be forgotten" in line)
    assert "| STORE #" in erasure_row
    assert "| SEC record #" in erasure_row
    events = section(report, "Security events in the period")
    assert "| login_failed | 1 |" in events
    assert "| account_erased | 1 |" in events
    listed = events.split("Failures, lockouts")[1]
    failed = [line for line in listed.splitlines() if "| login_failed |" in line and "SEC record #" in line]
    assert failed
    assert all("| login_failed | auditee |" in line for line in failed), failed  # by name, not by id
    assert "| login_succeeded |" not in listed  # counted, not listed
    # The prober's account (its creation's role_assigned) is the platform's, not a person's.
    assert "event(s) of the platform's synthetic accounts (the roll-out probers) not counted." in events
    assert "canary-prober-e2e" not in events

    key = platform.data_dir / "secrets" / "report-signing-key.pem"
    assert key.stat().st_mode & 0o777 == 0o600
    assert (out.parent / "parley-report-key.pub.pem").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    verified = platform.cli("report", "verify", str(out))
    assert "signature valid" in verified.stdout

    look_at_the_html_report(platform, tmp_path)
    look_at_the_pdf_report(platform, tmp_path)

    again = platform.cli("report", "compliance", "--out", str(out), check=False)
    assert again.returncode == 1
    assert "never overwritten" in again.stderr

    content = bytearray(out.read_bytes())
    at = content.index(b"0.1.0")
    content[at] ^= 0x01  # "0.1.0" becomes "1.1.0"
    out.write_bytes(bytes(content))
    tampered = platform.cli("report", "verify", str(out), check=False)
    assert tampered.returncode == 1
    assert "NOT VERIFIED: TAMPERED" in tampered.stderr


def look_at_the_html_report(platform: RunningPlatform, tmp_path: Path) -> None:
    """The same report as an HTML page, in Chromium: every section filled, both charts drawn, no
    script, a screenshot for a look; a changed byte is caught as in the Markdown."""
    page_file = tmp_path / "filed" / "compliance.html"
    platform.cli("report", "compliance", "--since", "2020-01-01", "--out", str(page_file))
    assert "signature valid" in platform.cli("report", "verify", str(page_file)).stdout
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make chromium` installs Debian's chromium (make test does)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(page_file.as_uri())
            sections = page.evaluate(SECTIONS_JS)
            assert [title for title, _ in sections] == REPORT_SECTIONS
            for title, text in sections:
                assert text.strip(), f"section {title!r} is empty"
            assert page.locator("script").count() == 0
            severity = page.get_by_role("img", name="Open findings by severity: critical ")
            assert severity.count() == 1
            assert severity.locator("rect").count() >= 1
            sla = page.get_by_role("img", name="Patch SLA over the period: now 0 within their deadline, ")
            assert sla.count() == 1
            assert page.locator("td", has_text=ADVISORY).count() >= len(SERVICES)
            assert page.get_by_text("a critical one | with a pipe").count() == 1
            SHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SHOTS / "report.png"), full_page=False)
            page.screenshot(path=str(SHOTS / "report-full.png"), full_page=True)
        finally:
            browser.close()
    content = bytearray(page_file.read_bytes())
    content[content.index(b"<td>0.1.0</td>") + 4] ^= 0x01
    page_file.write_bytes(bytes(content))
    tampered = platform.cli("report", "verify", str(page_file), check=False)
    assert tampered.returncode == 1
    assert "NOT VERIFIED: TAMPERED" in tampered.stderr


def png(width: int, height: int, rgb: bytes, stride: int) -> bytes:
    """An RGB bitmap as a PNG file (no imaging library needed for a look at a page)."""
    rows = b"".join(b"\x00" + rgb[y * stride : y * stride + width * 3] for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def look_at_the_pdf_report(platform: RunningPlatform, tmp_path: Path) -> None:
    """The same page printed to PDF by Chromium headless: signed, readable page by page (each page
    saved as a PNG for a look), and a changed byte is caught."""
    pdf_file = tmp_path / "filed" / "compliance.pdf"
    platform.cli("report", "compliance", "--since", "2020-01-01", "--out", str(pdf_file))
    assert pdf_file.read_bytes().startswith(b"%PDF-")
    assert "signature valid" in platform.cli("report", "verify", str(pdf_file)).stdout
    document = pdfium.PdfDocument(pdf_file.read_bytes())
    try:
        assert len(document) >= 2  # eleven sections do not fit one A4 page
        text = ""
        SHOTS.mkdir(parents=True, exist_ok=True)
        for number in range(len(document)):
            page = document[number]
            text += page.get_textpage().get_text_range()
            bitmap = page.render(scale=1.5, rev_byteorder=True)
            assert bitmap.n_channels == 3
            shot = png(bitmap.width, bitmap.height, bytes(bitmap.buffer), bitmap.stride)
            (SHOTS / f"report-pdf-page-{number + 1}.png").write_bytes(shot)
    finally:
        document.close()
    for title in REPORT_SECTIONS:
        assert title in text, title
    assert ADVISORY in text
    content = bytearray(pdf_file.read_bytes())
    content[len(content) // 2] ^= 0x01
    pdf_file.write_bytes(bytes(content))
    tampered = platform.cli("report", "verify", str(pdf_file), check=False)
    assert tampered.returncode == 1
    assert "NOT VERIFIED: TAMPERED" in tampered.stderr


def test_a_report_over_a_damaged_audit_chain_says_so_and_is_still_signed(
    platform: RunningPlatform, tmp_path: Path
) -> None:
    platform.cli("register", "auditee2", stdin="a-long-enough-passphrase\n")
    platform.cli_until("audit", "verify", shows="audit chain intact", timeout=90.0)
    archive = platform.data_dir / "storage" / "archive.db"
    with sqlite3.connect(archive) as db:
        first = "SELECT stream_seq, aggregate_version, envelope FROM events WHERE stream = 'SEC' ORDER BY stream_seq"
        seq, number, envelope = db.execute(first).fetchone()
        damaged = bytearray(envelope)
        damaged[-1] ^= 0x01
        db.execute("UPDATE events SET envelope = ? WHERE stream = 'SEC' AND stream_seq = ?", (bytes(damaged), seq))
    out = tmp_path / "compliance.md"
    try:
        made = platform.cli("report", "compliance", "--out", str(out), check=False)
    finally:
        with sqlite3.connect(archive) as db:
            db.execute("UPDATE events SET envelope = ? WHERE stream = 'SEC' AND stream_seq = ?", (envelope, seq))
    assert made.returncode == 1
    assert "the audit chain is TAMPERED" in made.stderr
    report = out.read_text()
    assert "Verify: **TAMPERED**, 1 finding(s)" in report
    assert f"- unreadable: record #{number} (at {seq})" in report
    assert "signature valid" in platform.cli("report", "verify", str(out)).stdout


def test_parley_up_writes_a_signed_report_into_the_data_folder_on_schedule(platform: RunningPlatform) -> None:
    reports = platform.data_dir / "reports"

    def filed() -> list[Path]:
        return sorted(reports.glob("compliance-*.md")) if reports.is_dir() else []

    wait_until(lambda: bool(filed()), timeout=120, what="`parley up` to write a scheduled compliance report")
    report = filed()[0]
    assert f"compliance report: {report}" in platform.output()
    assert "# Parley compliance report" in report.read_text()
    assert "signature valid" in platform.cli("report", "verify", str(report)).stdout
    page = report.with_suffix(".html")  # the same report as a page, filed beside it
    assert "<h1>Parley compliance report</h1>" in page.read_text()
    assert "signature valid" in platform.cli("report", "verify", str(page)).stdout


def test_a_bad_schedule_is_refused_before_anything_starts(tmp_path: Path) -> None:
    bad = platform_in(tmp_path, PARLEY_REPORT_EVERY_HOURS="daily")
    with pytest.raises(RuntimeError, match="PARLEY_REPORT_EVERY_HOURS='daily': give hours between reports"):
        bad.start()
    bad.kill()
