"""What the browser tests (test_web_client, test_console) share: Chromium for the module's
platform, trusting exactly its gateway's key."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest_asyncio

from parley_testing.browser import launched_chromium
from parley_testing.platform import RunningPlatform

if TYPE_CHECKING:
    from playwright.async_api import Browser


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def browser(platform: RunningPlatform) -> AsyncIterator[Browser]:
    async with launched_chromium(platform.data_dir / "pki" / "gateway.crt") as launched:
        yield launched
