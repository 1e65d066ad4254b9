"""The compliance report as PDF: its HTML page printed by Chromium headless (Debian's
/usr/bin/chromium, the one `make chromium` installs for the browser tests; $PARLEY_CHROMIUM
names another). The page has no script and no external asset, so printing it fetches nothing."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

CHROMIUM_ENV = "PARLEY_CHROMIUM"
DEFAULT_CHROMIUM = "/usr/bin/chromium"
PRINT_TIMEOUT_S = 120.0


class PdfNotPrinted(Exception):
    """Chromium is missing or failed; the message says what to do."""


def chromium() -> Path:
    path = Path(os.environ.get(CHROMIUM_ENV) or DEFAULT_CHROMIUM)
    if not os.access(path, os.X_OK):
        raise PdfNotPrinted(
            f"a PDF report is printed by Chromium, and {path} is missing: install Debian's chromium "
            f"(`make chromium`, or apt-get install chromium), set ${CHROMIUM_ENV} to another, "
            "or ask for --out report.html"
        )
    return path


def html_to_pdf(page: bytes) -> bytes:
    """`page` (a self-contained HTML document) printed to A4 PDF."""
    browser = chromium()
    with tempfile.TemporaryDirectory(prefix="parley-report-pdf-") as work:
        source, printed = Path(work) / "report.html", Path(work) / "report.pdf"
        source.write_bytes(page)
        command = [
            str(browser),
            "--headless",
            "--no-sandbox",  # as the platform's user, often root in a container, where the sandbox cannot start
            "--disable-gpu",
            "--disable-dev-shm-usage",
            f"--user-data-dir={Path(work) / 'profile'}",
            "--no-pdf-header-footer",
            f"--print-to-pdf={printed}",
            source.as_uri(),
        ]
        try:
            done = subprocess.run(command, capture_output=True, timeout=PRINT_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            raise PdfNotPrinted(f"{browser} did not print the report within {PRINT_TIMEOUT_S:.0f} s") from None
        if done.returncode != 0 or not printed.is_file() or not printed.read_bytes().startswith(b"%PDF"):
            said = done.stderr.decode(errors="replace").strip().splitlines()[-3:]
            raise PdfNotPrinted(f"{browser} could not print the report (exit {done.returncode}): " + " / ".join(said))
        return printed.read_bytes()
