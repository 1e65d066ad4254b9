"""`parley report compliance` and `parley report verify`: a dated, signed report an auditor files."""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from parley_cli.compliance import gather, render
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

DEFAULT_PERIOD = timedelta(days=30)
REPORTS_DIR = "reports"


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
    return data_dir / REPORTS_DIR / f"compliance-{now.strftime('%Y-%m-%dT%H%M%SZ')}.md"


async def cmd_compliance(args: argparse.Namespace) -> int:
    now = datetime.fromtimestamp(time.time(), UTC)
    since = _since(args.since, now)
    out: Path = args.out or default_out(args.data_dir, now)
    if out.exists():
        raise SystemExit(f"error: {out} exists; a filed report is never overwritten: name a new file")
    facts = await gather(args, since=since.timestamp(), now=now.timestamp())
    key = load_or_create_signing_key(args.data_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("xb") as file:  # written whole once the facts are in: no half report on a failure above
        file.write(signed(render(facts).encode(), key))
    public = out.parent / PUBLIC_KEY_NAME
    public.write_bytes(public_pem(key.public_key()))
    print(f"compliance report written to {out}, signed by key {key_id(key.public_key())}")
    print(f"public key: {public}; an auditor checks the report with `parley report verify {out}`")
    return 1 if facts.audit.findings else 0


async def cmd_verify(args: argparse.Namespace) -> int:
    report: Path = args.file
    public: Path = args.public_key or report.parent / PUBLIC_KEY_NAME
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
    report = sub.add_parser("report", help="signed reports for auditors").add_subparsers(
        dest="report_command", required=True
    )
    compliance = report.add_parser(
        "compliance",
        help="a dated, signed compliance report: fleet, open findings, roll-outs and approvals, audit chain",
        description="Write a Markdown report of the running platform (fleet, open findings with deadlines, "
        "roll-outs in the period with who planned and approved them and their gate verdicts, the audit chain's "
        f"verify result and head), signed with Ed25519 by the key in <data>/secrets/ (made on first use); its "
        f"public key is written beside the report as {PUBLIC_KEY_NAME}. Exit 1 when the audit chain is tampered.",
    )
    compliance.add_argument("--since", metavar="DATE", help="start of the period (default: 30 days ago)")
    compliance.add_argument(
        "--out", type=Path, metavar="FILE", help="a new file (default <data>/reports/compliance-<time>.md)"
    )
    compliance.set_defaults(run=cmd_compliance)
    check = report.add_parser("verify", help="check a report's signature; exit 1 when it was changed")
    check.add_argument("file", type=Path)
    check.add_argument(
        "--public-key", type=Path, metavar="PEM", help=f"the signer's public key (default: {PUBLIC_KEY_NAME} beside FILE)"
    )
    check.set_defaults(run=cmd_verify)
