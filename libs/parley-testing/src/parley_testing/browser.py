"""Debian's Chromium for browser tests: trusting exactly the gateway's key, as a user's browser
trusts the platform's CA once it is imported."""

from __future__ import annotations

import base64
import contextlib
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from parley_testing.stack import PASSWORD

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

CHROMIUM = Path("/usr/bin/chromium")


def spki_pin(cert_path: Path) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo)) of a certificate, for Chromium's pin list."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def chromium_args(gateway_cert: Path) -> list[str]:
    return [
        f"--ignore-certificate-errors-spki-list={spki_pin(gateway_cert)}",
        "--no-sandbox",
        "--disable-dev-shm-usage",
    ]


def require_built(web_dist: Path, page: str) -> None:
    """A browser test fails, saying what to run, without the built app or Debian's Chromium."""
    if not (web_dist / page).exists():
        pytest.fail(f"web/dist is not built with {page}: run `make web` (make test does)")
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make chromium` installs Debian's chromium (make test does)")


@contextlib.asynccontextmanager
async def launched_chromium(gateway_cert: Path) -> AsyncIterator[Browser]:
    """Chromium trusting exactly the gateway's key (closed afterwards)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=chromium_args(gateway_cert))
        try:
            yield browser
        finally:
            await browser.close()


async def log_in(page: Page, name: str, password: str = PASSWORD) -> None:
    """The web app's login form filled and sent, as a person does it."""
    await page.get_by_label("Username").fill(name)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Log in").click()
