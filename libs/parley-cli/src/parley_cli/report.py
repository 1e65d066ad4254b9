"""`parley report compliance` and `parley report verify`: a dated, signed report an auditor files."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from parley_cli.arguments import command, command_group
from parley_cli.compliance import ComplianceFacts, gather, render, render_html
from parley_cli.report_pdf import PdfNotPrinted, chromium, html_to_pdf
from parley_cli.report_signing import (
    PUBLIC_KEY_NAME,
    ReportNotVerified,
    key_id,
    load_or_create_signing_key,
    load_public_key,
    public_pem,
    signed,
    verify,
)
from parley_cli.state import load_running_state
from parley_core.compliance_reports import REPORTS_DIR, report_id

DEFAULT_PERIOD = timedelta(days=30)


def _since(text: str | None, now: datetime) -> datetime:
    if not text:
        return now - DEFAULT_PERIOD
    try:
        since = datetime.fromisoformat(text)
    except ValueError:
        raise SystemExit(f"error: --since {text!r}: give a date (2026-11-01) or a time (2026-11-01T08:00)") from None
    since = since if since.tzinfo else since.replace(tzinfo=UTC)
    if since > now:
        raise SystemExit(f"error: --since {text} is in the future")
    return since


def default_out(data_dir: Path, now: datetime) -> Path:
    return data_dir / REPORTS_DIR / f"{report_id(now)}.md"


class ReportExists(Exception):
    pass


class UnknownFormat(Exception):
    pass


@dataclass(frozen=True)
class WrittenReport:
    path: Path
    public_key: Path
    key_id: str
    audit_intact: bool
    also: tuple[Path, ...] = ()  # the same report in other formats


def _check_format(out: Path) -> None:
    """Refused before anything is read: an unknown suffix, or a PDF without Chromium to print it."""
    suffix = out.suffix.lower()
    if suffix == ".pdf":
        chromium()
    elif suffix not in (".html", ".md", ".markdown", ".txt", ""):
        raise UnknownFormat(f"{out}: name a .md (Markdown), .html or .pdf file")


def _content(facts: ComplianceFacts, out: Path) -> bytes:
    suffix = out.suffix.lower()
    if suffix == ".html":
        return render_html(facts).encode()
    if suffix == ".pdf":
        return html_to_pdf(render_html(facts).encode())
    if suffix in (".md", ".markdown", ".txt", ""):
        return render(facts).encode()
    raise UnknownFormat(f"{out}: name a .md (Markdown), .html or .pdf file")


async def write_report(
    data_dir: Path, *, since: datetime, now: datetime, out: Path | None = None, html_too: bool = False
) -> WrittenReport:
    """The signed report of the running platform in `out` (a new file, whole or not at all), its
    public key beside it; with `html_too`, the same report as a signed HTML page beside it."""
    out = out or default_out(data_dir, now)
    outs = [out, out.with_suffix(".html")] if html_too and out.suffix != ".html" else [out]
    for path in outs:
        if path.exists():
            raise ReportExists(f"{path} exists; a filed report is never overwritten: name a new file")
        _check_format(path)
    load_running_state(data_dir)  # a mistyped folder is named, not created by the key below
    # Made before the facts are read, so even the first report lists the key that signs it.
    await asyncio.to_thread(load_or_create_signing_key, data_dir)
    facts = await gather(data_dir, since=since.timestamp(), now=now.timestamp())
    contents = [await asyncio.to_thread(_content, facts, path) for path in outs]
    intact = not facts.audit.findings
    written = [
        await asyncio.to_thread(_file, data_dir, p, c, audit_intact=intact) for p, c in zip(outs, contents, strict=True)
    ]
    return WrittenReport(
        path=out,
        public_key=written[0].public_key,
        key_id=written[0].key_id,
        audit_intact=intact,
        also=tuple(w.path for w in written[1:]),
    )


def _file(data_dir: Path, out: Path, body: bytes, *, audit_intact: bool) -> WrittenReport:
    key = load_or_create_signing_key(data_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    public = out.parent / PUBLIC_KEY_NAME  # first: whoever sees the report finds its key beside it
    public.write_bytes(public_pem(key.public_key()))
    _create_whole(out, signed(body, key))
    return WrittenReport(path=out, public_key=public, key_id=key_id(key.public_key()), audit_intact=audit_intact)


def _create_whole(path: Path, data: bytes) -> None:
    """A reader (an auditor's sync, `parley report verify`) never sees the file half written."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.link(tmp, path)  # fails if path appeared meanwhile: never replaced
    except FileExistsError:
        raise ReportExists(f"{path} exists; a filed report is never overwritten: name a new file") from None
    finally:
        tmp.unlink(missing_ok=True)


async def cmd_compliance(args: argparse.Namespace) -> int:
    now = datetime.fromtimestamp(time.time(), UTC)
    try:
        # Filed in the data folder, as the daily one: Markdown and the HTML page the console shows.
        written = await write_report(
            args.data_dir, since=_since(args.since, now), now=now, out=args.out, html_too=args.out is None
        )
    except (ReportExists, UnknownFormat, PdfNotPrinted) as exc:
        raise SystemExit(f"error: {exc}") from None
    also = "".join(f" and {path}" for path in written.also)
    print(f"compliance report written to {written.path}{also}, signed by key {written.key_id}")
    print(f"public key: {written.public_key}; an auditor checks it with `parley report verify {written.path}`")
    if not written.audit_intact:
        print("the audit chain is TAMPERED: the report says how (`parley audit verify` too)", file=sys.stderr)
    return 0 if written.audit_intact else 1


async def cmd_verify(args: argparse.Namespace) -> int:
    return await asyncio.to_thread(check_report, args.file, args.public_key)


def check_report(report: Path, public_key: Path | None) -> int:
    public = public_key or report.parent / PUBLIC_KEY_NAME
    try:
        content = report.read_bytes()
    except OSError as exc:
        print(f"error: cannot read {report}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        verified = verify(content, load_public_key(public))
    except ReportNotVerified as exc:
        print(f"{report}: NOT VERIFIED: {exc}", file=sys.stderr)
        return 1
    print(f"{report}: signature valid, signed by key {verified.key_id} ({public})")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    report = command_group(sub, "report", help="signed reports for auditors")
    compliance = command(
        report,
        "compliance",
        cmd_compliance,
        help="a dated, signed compliance report: fleet, open findings, roll-outs and approvals, audit chain",
        description="Write a Markdown report of the running platform (fleet, open findings with deadlines, "
        "roll-outs in the period with who planned and approved them and their gate verdicts, the audit chain's "
        f"verify result and head), signed with Ed25519 by the key in <data>/secrets/ (made on first use); its "
        f"public key is written beside the report as {PUBLIC_KEY_NAME}. Exit 1 when the audit chain is tampered.",
    )
    compliance.add_argument("--since", metavar="DATE", help="start of the period (default: 30 days ago)")
    compliance.add_argument(
        "--out",
        type=Path,
        metavar="FILE",
        help="a new file: .md (Markdown), .html (a self-contained page with charts) or .pdf (that page "
        "printed by Chromium headless); "
        "default <data>/reports/compliance-<time>.md and .html",
    )
    check = command(report, "verify", cmd_verify, help="check a report's signature; exit 1 when it was changed")
    check.add_argument("file", type=Path)
    check.add_argument(
        "--public-key", type=Path, metavar="PEM", help=f"the signer's public key (default: {PUBLIC_KEY_NAME} by FILE)"
    )
