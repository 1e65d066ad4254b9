"""The web client in a real browser: Debian's Chromium driven by Playwright, against the platform
as `make run` starts it (the built web app served by the gateway over TLS).

The browser trusts exactly the gateway's key (Chromium's SPKI pin), as a user's browser trusts
the platform's CA once it is imported. Screenshots of the main screens go to
web/test-results/screenshots/ (README and docs/web.md show copies from docs/screenshots/).
"""

from __future__ import annotations

import base64
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.hashes import SHA1
from cryptography.hazmat.primitives.twofactor.totp import TOTP
from parley.gateway.v1 import gateway_pb2_grpc
from parley.messaging.v1 import messaging_pb2

from parley_client import ParleyClient, ParleyError
from parley_testing.browser import log_in, require_built
from parley_testing.platform import RunningPlatform, platform_in
from parley_testing.stack import PASSWORD, bearer

playwright_api = pytest.importorskip("playwright.async_api")
Browser = playwright_api.Browser
BrowserContext = playwright_api.BrowserContext
Page = playwright_api.Page
ConsoleMessage = playwright_api.ConsoleMessage
expect = playwright_api.expect

# One platform and one browser for the module: its tests share the module's event loop.
pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

ROOT = Path(__file__).resolve().parents[2]
WEB_DIST = ROOT / "web" / "dist"
AXE = ROOT / "web" / "node_modules" / "axe-core" / "axe.min.js"
SHOTS = ROOT / "web" / "test-results" / "screenshots"
TIMEOUT_MS = 20_000
# Assertions wait as long as actions do: on a loaded machine a live event can take seconds.
expect.set_options(timeout=TIMEOUT_MS)
XSS = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=1</script>'
XSS_NAME = "<b>x</b><img src=x onerror=alert(1)>"  # channel names are at most 64 characters
DIALOGS: list[str] = []  # any alert() that ran


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPlatform]:
    require_built(WEB_DIST, "index.html")
    running = platform_in(tmp_path_factory.mktemp("web"), PARLEY_WEB_ROOT=str(WEB_DIST))
    yield from running.served()


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:6]}"


async def login_sent(
    browser: Browser, platform: RunningPlatform, name: str, **context_options: Any
) -> tuple[BrowserContext, Page]:
    """A new browser context on the web app, `name`'s login form sent (a second factor may be asked next)."""
    context = await browser.new_context(**context_options)
    page = await context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    await page.goto(platform.web_url)
    await log_in(page, name)
    return context, page


async def logged_in(browser: Browser, platform: RunningPlatform, name: str) -> tuple[BrowserContext, Page]:
    context, page = await login_sent(browser, platform, name, viewport={"width": 1100, "height": 700})
    page.on("dialog", lambda dialog: DIALOGS.append(dialog.message))
    await expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    return context, page


def messages(page: Page) -> object:
    return page.locator(".messages li.message .body")


async def send(page: Page, text: str) -> None:
    box = page.get_by_label("Message #", exact=False)
    await box.fill(text)
    await box.press("Enter")


async def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / f"{name}.png"))


async def test_page_has_a_strict_csp_passes_the_accessibility_check_and_registers(
    browser: Browser, platform: RunningPlatform
) -> None:
    context = await browser.new_context()
    page = await context.new_page()
    response = await page.goto(platform.web_url)
    assert response is not None
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert "unsafe-eval" not in csp
    assert "frame-ancestors 'none'" in csp
    # The head the build adds to every page (web/vite.config.ts), there in the page served.
    assert await page.locator('meta[name="referrer"]').get_attribute("content") == "no-referrer"
    await expect(page.get_by_role("button", name="Log in")).to_be_visible()
    # Asked for only after the platform says the account has two-factor authentication.
    await expect(page.get_by_label("Two-factor code (or a recovery code)")).to_be_hidden()
    await shot(page, "login")
    assert await axe_violations(page) == []

    # Registration (this platform's is open; with PARLEY_REGISTRATION=invite the code is required).
    name = unique("erin")
    await page.get_by_role("button", name="Create an account with an invitation").click()
    await page.get_by_label("Username").fill(name)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Create account").click()
    await expect(page.get_by_text(f"Signed in as {name}")).to_be_visible()
    await expect(page.get_by_role("heading", name="No channels yet")).to_be_visible()
    assert await axe_violations(page) == []
    await context.close()


async def axe_violations(page: Page) -> list[str]:
    """axe-core's WCAG 2 A/AA rules on the page as it is; the violations by rule and element."""
    await page.evaluate(AXE.read_text(encoding="utf-8") + "\n;0")  # evaluated by the driver, not by the page's CSP
    result = await page.evaluate(
        "async () => (await axe.run(document, {runOnly: ['wcag2a', 'wcag2aa']})).violations"
        ".map(v => `${v.id}: ${v.nodes.map(n => n.target.join(' ')).join(', ')}`)"
    )
    return list(result)


async def test_two_browsers_and_the_sdk_chat_live_and_hostile_text_stays_text(
    browser: Browser, platform: RunningPlatform
) -> None:
    alice, bob = unique("alice"), unique("bob")
    carol = await platform.new_user(unique("carol"))  # someone on the SDK (what the CLI uses)
    alice_sdk = await platform.new_user(alice)  # the channel's owner, later on the SDK too
    await (await platform.new_user(bob)).close()
    a_context, a_page = await logged_in(browser, platform, alice)
    b_context, b_page = await logged_in(browser, platform, bob)
    await expect(a_page.get_by_role("heading", name="No channels yet")).to_be_visible()
    await shot(a_page, "empty")

    # A channel whose name is markup, created in the browser.
    await a_page.get_by_label("New channel name").fill(XSS_NAME)
    await a_page.get_by_role("button", name="Create").click()
    await expect(a_page.locator("#channel-title")).to_have_text(f"# {XSS_NAME}")
    await expect(a_page.locator(".channel-head .meta")).to_have_text(re.compile(r"· 1 member$"))
    channel_id = (await a_page.locator(".channel-head .meta").inner_text()).split("channel id: ")[1].split(" ")[0]
    await carol.join_channel(channel_id)
    await b_page.get_by_label("Join a channel by its id").fill(channel_id)
    await b_page.get_by_role("button", name="Join").click()
    await expect(b_page.locator("#channel-title")).to_have_text(f"# {XSS_NAME}")
    await expect(b_page.locator("nav button.channel")).to_have_text(f"# {XSS_NAME}")

    # Live both ways between the two browsers, Enter sends and Shift+Enter is a new line.
    await send(a_page, "hello bob")
    await expect(messages(b_page).last).to_have_text("hello bob")
    box = b_page.get_by_label("Message #", exact=False)
    await box.fill("line one")
    await box.press("Shift+Enter")
    await box.type("line two")
    await box.press("Enter")
    await expect(messages(a_page).last).to_have_text("line one\nline two")

    # And with the SDK, both ways; someone else's edit shows live, tagged as one.
    sent = await carol.send(channel_id, "hi from the SDK?")
    await expect(messages(a_page).last).to_have_text("hi from the SDK?")
    await carol.edit(channel_id, sent.channel_seq, "hi from the SDK")
    await expect(messages(a_page).last).to_have_text("hi from the SDK")
    await expect(a_page.locator("li.message", has_text="hi from the SDK").locator(".edited")).to_have_text("(edited)")
    history = await carol.history(channel_id)
    assert [m.body for m in history.messages][-2:] == ["line one\nline two", "hi from the SDK"]

    # Markup in a message and in the topic is shown as the text it is, and never runs.
    await send(a_page, XSS)
    await expect(messages(b_page).last).to_have_text(XSS)
    await alice_sdk.set_topic(channel_id, XSS)
    await expect(b_page.locator(".channel-head .topic")).to_have_text(XSS)
    for page in (a_page, b_page):
        assert await page.evaluate("window.__pwned") is None
        assert await page.locator(".messages img, .channel-head img, nav img").count() == 0
    assert DIALOGS == []

    # Reactions and edits arrive live.
    await a_page.locator("li.message", has_text="hello bob").get_by_role("button", name="React 👍").click()
    await expect(b_page.locator("li.message", has_text="hello bob").locator("button.reaction")).to_have_text("👍 1")
    await shot(b_page, "channel")
    assert await axe_violations(b_page) == []

    # A reply in a thread, seen live by the other browser in the thread panel.
    await b_page.locator("li.message", has_text="hello bob").get_by_role("button", name="Reply").click()
    reply_box = b_page.get_by_label("Reply in thread")
    await reply_box.fill("a reply")
    await reply_box.press("Enter")
    replies = a_page.locator("li.message", has_text="hello bob").get_by_role("button", name="1 reply")
    await expect(replies).to_be_visible()
    await replies.click()
    await expect(a_page.get_by_role("log", name="Replies").locator(".body")).to_have_text(["a reply"])
    assert "a reply" not in await messages(a_page).all_inner_texts()  # not in the main timeline
    await shot(a_page, "thread")
    thread_panel = a_page.get_by_role("complementary", name="Thread")
    await expect(thread_panel).to_be_visible()

    # A direct conversation from the member list: the other side sees it with its unread count.
    await a_page.get_by_role("button", name="Members").click()
    await a_page.get_by_role("button", name=f"Message {bob}").click()
    await expect(a_page.locator("#channel-title")).to_have_text(f"@ {bob}")
    await expect(thread_panel).to_be_hidden()  # the other channel's thread closed with it
    await expect(a_page.get_by_label("Reply in thread")).to_have_count(0)
    await send(a_page, "just between us")
    dm = b_page.locator("nav button.channel", has_text=f"@ {alice}")
    await expect(dm.locator(".unread")).to_have_text("1")  # told by the live stream
    await dm.click()
    await expect(messages(b_page).last).to_have_text("just between us")
    await expect(dm.locator(".unread")).to_have_count(0)
    await carol.close()
    await alice_sdk.close()
    await a_context.close()
    await b_context.close()


async def test_offline_and_back_misses_nothing(browser: Browser, platform: RunningPlatform) -> None:
    alice, bob = await platform.new_user(unique("alice")), unique("bob")
    await (await platform.new_user(bob)).close()
    channel = await alice.create_channel(unique("room"))
    b_context, b_page = await logged_in(browser, platform, bob)
    await b_page.get_by_label("Join a channel by its id").fill(channel.channel_id)
    await b_page.get_by_role("button", name="Join").click()
    await alice.send(channel.channel_id, "before")
    await expect(messages(b_page).last).to_have_text("before")

    await b_context.set_offline(True)
    await expect(b_page.locator("#connection")).to_have_attribute("data-state", "offline")
    sent_while_away = [f"away {n}" for n in range(3)]
    for text in sent_while_away:
        await alice.send(channel.channel_id, text)
    await shot(b_page, "offline")
    await b_context.set_offline(False)
    await expect(b_page.locator("#connection")).to_have_attribute("data-state", "live")
    await expect(messages(b_page).last).to_have_text(sent_while_away[-1])
    assert await messages(b_page).all_inner_texts() == ["before", *sent_while_away]  # each once, in order

    # A reload keeps the session: the page asks for a new access token with its HttpOnly cookie,
    # which script never saw.
    await b_page.reload()
    await expect(b_page.locator("#connection")).to_have_attribute("data-state", "live")
    await expect(messages(b_page).last).to_have_text(sent_while_away[-1])
    assert "parley-refresh" not in await b_page.evaluate("document.cookie")
    await alice.close()
    await b_context.close()


async def test_login_with_a_totp_code(browser: Browser, platform: RunningPlatform) -> None:
    name = unique("dora")
    client = await platform.new_user(name)
    secret = (await client.begin_totp_enrolment()).secret_base32
    app = TOTP(base64.b32decode(secret + "=" * (-len(secret) % 8)), 6, SHA1(), 30)
    await client.confirm_totp_enrolment(app.generate(int(time.time())).decode())
    await client.close()

    context, page = await login_sent(browser, platform, name)
    code = page.get_by_label("Two-factor code (or a recovery code)")
    await expect(code).to_be_visible()
    await code.fill(app.generate(int(time.time()) + 30).decode())  # the next step: the first was spent
    await page.get_by_role("button", name="Log in").click()
    await expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    await expect(page.get_by_text(f"Signed in as {name}")).to_be_visible()
    await context.close()


async def test_history_opens_at_the_newest_and_pages_back_as_one_scrolls(
    browser: Browser, platform: RunningPlatform
) -> None:
    name = unique("fred")
    fred = await platform.new_user(name)
    channel = await fred.create_channel(unique("long"))
    for n in range(70):  # more than the 50 of the first page
        await fred.send(channel.channel_id, f"m{n:02d}")
    context, page = await logged_in(browser, platform, name)
    await expect(messages(page).last).to_have_text("m69")
    assert await messages(page).count() == 50
    log = page.get_by_role("log", name=f"Messages in {channel.name}")
    assert await log.evaluate("el => el.scrollHeight - el.scrollTop - el.clientHeight") < 5  # at the newest
    await log.evaluate("el => { el.scrollTop = 0; }")
    await expect(messages(page).first).to_have_text("m00")
    assert await messages(page).count() == 70
    await fred.close()
    await context.close()


async def test_an_encrypted_channel_is_shown_as_such_and_never_its_ciphertext(
    browser: Browser, platform: RunningPlatform
) -> None:
    name = unique("gina")
    client = platform.client()
    await client.register(name, PASSWORD)
    login = await client.login(name, PASSWORD)
    channel = await client.create_channel(unique("secret"), encrypted=True)
    # Ciphertext as an SDK with E2EE posts it (the server checks only its form).
    ciphertext = "megolm.v1:" + "QUJDREVGR0hJSktMTU5PUA" * 4
    async with platform.gateway_channel() as raw:
        await gateway_pb2_grpc.GatewayStub(raw).SendMessage(
            messaging_pb2.PostMessageRequest(channel_id=channel.channel_id, body=ciphertext, idempotency_key="e2ee-1"),
            metadata=bearer(login.access_token),
            timeout=20,
        )
    await client.close()
    context, page = await logged_in(browser, platform, name)
    await expect(messages(page)).to_have_text(["🔒 Encrypted message"])
    await expect(page.locator(".encrypted-note")).to_contain_text("cannot decrypt")
    await expect(page.get_by_label("Message #", exact=False)).to_have_count(0)  # nothing to send plaintext with
    assert ciphertext not in await page.content()
    await context.close()


async def test_settings_enrol_two_factor_with_a_qr_code_and_list_sessions(
    browser: Browser, platform: RunningPlatform
) -> None:
    name = unique("hana")
    await (await platform.new_user(name)).close()  # its own session, listed beside the browser's
    context, page = await logged_in(browser, platform, name)
    await page.get_by_role("button", name="Settings").click()
    await expect(page.get_by_role("heading", name="Sessions")).to_be_visible()
    await expect(page.locator("ul.sessions li", has_text="This browser")).to_have_count(1)
    await expect(page.locator("ul.sessions li").get_by_role("button", name="Revoke")).to_have_count(1)
    for session in await page.locator("ul.sessions li").all():  # where each logged in from, and when
        await expect(session).to_contain_text(re.compile(r"· from 127\.0\.0\.1 · started "))

    await page.get_by_role("button", name="Set up two-factor authentication").click()
    qr = page.get_by_role("img", name="QR code of the two-factor secret")
    await expect(qr).to_be_visible()
    assert (await qr.get_attribute("src") or "").startswith("data:image/png;base64,")
    secret = await page.locator("code.secret").inner_text()
    app = TOTP(base64.b32decode(secret + "=" * (-len(secret) % 8)), 6, SHA1(), 30)
    right = app.generate(int(time.time())).decode()
    await page.get_by_label("Code from your app").fill(f"{(int(right) + 500_000) % 1_000_000:06d}")
    await page.get_by_role("button", name="Confirm").click()
    status = page.get_by_role("status").filter(has_text="does not match")
    await expect(status).to_be_visible()
    await page.get_by_label("Code from your app").fill(right)
    await page.get_by_role("button", name="Confirm").click()
    await expect(page.locator("ul.codes li")).to_have_count(10)
    await expect(status).to_have_count(0)  # the wrong code's error went with the right one
    recovery = await page.locator("ul.codes li").first.inner_text()
    await shot(page, "settings")
    assert await axe_violations(page) == []
    await context.close()

    # From now on a login asks for the code.
    fresh = platform.client()
    with pytest.raises(ParleyError, match="two-factor"):
        await fresh.login(name, PASSWORD)
    await fresh.close()

    # Logged in again (with a recovery code), Settings knows two-factor is on.
    context, page = await login_sent(browser, platform, name)
    await page.get_by_label("Two-factor code (or a recovery code)").fill(recovery)
    await page.get_by_role("button", name="Log in").click()
    await expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    await page.get_by_role("button", name="Settings").click()
    await expect(page.get_by_text("Two-factor authentication is on for this account")).to_be_visible()
    await expect(page.get_by_role("button", name="Set up two-factor authentication")).to_have_count(0)
    await context.close()


def console_errors(page: Page) -> list[str]:
    """Every error the page logs (a failed request included) or throws, as it happens."""
    errors: list[str] = []

    def logged(message: ConsoleMessage) -> None:
        if message.type == "error":
            errors.append(f"{message.text} ({message.location.get('url', '')})")

    page.on("console", logged)
    page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
    return errors


async def test_a_first_visit_logs_no_error_in_the_console(browser: Browser, platform: RunningPlatform) -> None:
    name = unique("ivan")
    await (await platform.new_user(name)).close()
    context = await browser.new_context()
    page = await context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors = console_errors(page)
    await page.goto(platform.web_url)
    await expect(page.get_by_role("button", name="Log in")).to_be_visible()
    await log_in(page, name)
    await expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    await page.reload()  # the session is taken up again from the cookie
    await expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    await page.get_by_role("button", name="Log out").click()
    await expect(page.get_by_role("button", name="Log in")).to_be_visible()
    await page.reload()  # logged out: the page asks for nothing it cannot have
    await expect(page.get_by_role("button", name="Log in")).to_be_visible()
    assert errors == []
    await context.close()


@dataclass(frozen=True)
class Room:
    """alice's new channel with bob in it: their names and SDK clients."""

    alice: str
    bob: str
    alice_sdk: ParleyClient
    bob_sdk: ParleyClient
    channel_id: str


@pytest_asyncio.fixture(loop_scope="module")  # the module's event loop, as its tests and their clients use
async def room(platform: RunningPlatform) -> AsyncIterator[Room]:
    alice, bob = unique("alice"), unique("bob")
    alice_sdk, bob_sdk = await platform.new_user(alice), await platform.new_user(bob)
    channel = await alice_sdk.create_channel(unique("room"))
    await bob_sdk.join_channel(channel.channel_id)
    yield Room(alice, bob, alice_sdk, bob_sdk, channel.channel_id)
    await alice_sdk.close()
    await bob_sdk.close()


async def test_others_read_markers_show_live(browser: Browser, platform: RunningPlatform, room: Room) -> None:
    first = await room.alice_sdk.send(room.channel_id, "first")
    second = await room.alice_sdk.send(room.channel_id, "second")
    context, page = await logged_in(browser, platform, room.alice)
    await expect(messages(page)).to_have_text(["first", "second"])
    await expect(page.locator(".read-by")).to_have_count(0)  # nobody else has read anything yet

    await room.bob_sdk.mark_read(room.channel_id, first.channel_seq)
    on_first = page.locator("li.message", has_text="first").locator(".read-by")
    await expect(on_first).to_have_text(f"Read by {room.bob}")
    await room.bob_sdk.mark_read(room.channel_id, second.channel_seq)
    on_second = page.locator("li.message", has_text="second").locator(".read-by")
    await expect(on_second).to_have_text(f"Read by {room.bob}")
    await expect(on_first).to_have_count(0)  # a marker is in one place: where that reader is now
    await context.close()


async def test_a_redacted_message_names_its_sender(browser: Browser, platform: RunningPlatform, room: Room) -> None:
    gone = await room.alice_sdk.send(room.channel_id, "said in haste")
    await room.alice_sdk.send(room.channel_id, "kept")
    await room.alice_sdk.redact(room.channel_id, gone.channel_seq)
    context, page = await logged_in(browser, platform, room.bob)
    deleted = page.locator("li.message", has_text="(message deleted)")
    await expect(deleted.locator(".sender")).to_have_text([room.alice])  # from history

    reply = await room.alice_sdk.send(room.channel_id, "also in haste")
    await expect(messages(page).last).to_have_text("also in haste")
    await room.alice_sdk.redact(room.channel_id, reply.channel_seq)
    await expect(deleted.locator(".sender")).to_have_text([room.alice, room.alice])  # and live
    await context.close()


async def test_membership_changes_reach_the_channel_and_member_lists_live(
    browser: Browser, platform: RunningPlatform
) -> None:
    alice, carol, dave = unique("alice"), unique("carol"), unique("dave")
    alice_sdk, carol_sdk, dave_sdk = [await platform.new_user(n) for n in (alice, carol, dave)]
    carol_id, dave_id = carol_sdk.user_id or "", dave_sdk.user_id or ""
    home = await dave_sdk.create_channel(unique("home"))
    context = await browser.new_context(viewport={"width": 1100, "height": 700})
    page = await context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    await page.clock.install()
    await page.goto(platform.web_url)
    await log_in(page, dave)
    await expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    await expect(page.locator("#channel-title")).to_have_text(f"# {home.name}")
    # From here the page's timers stand still: whatever changes comes by the live stream.
    await page.clock.pause_at(time.time() + 1)
    channel_buttons = page.locator("nav button.channel")

    # Invited to a private channel: the invitation shows, and joining it opens the channel.
    club = await alice_sdk.create_channel(unique("club"), private=True)
    await alice_sdk.invite(club.channel_id, dave_id)
    invitation = page.locator("nav .invitation")
    await expect(invitation).to_contain_text(f"{alice} invited you to #{club.name}")
    await invitation.get_by_role("button", name="Join").click()
    await expect(page.locator("#channel-title")).to_have_text(f"# {club.name}")
    await expect(invitation).to_have_count(0)
    await alice_sdk.send(club.channel_id, "welcome")
    await expect(messages(page).last).to_have_text("welcome")  # the stream covers it now

    # Someone else joins: the member count and the open member list follow.
    await page.get_by_role("button", name="Members").click()
    await expect(page.locator("#members li")).to_have_count(2)
    await alice_sdk.invite(club.channel_id, carol_id)
    await carol_sdk.join_channel(club.channel_id)
    await expect(page.locator(".channel-head .meta")).to_contain_text("3 members")
    await expect(page.locator("#members li", has_text=carol)).to_have_count(1)

    # Kicked: the channel goes from the list, the others keep streaming.
    await alice_sdk.kick(club.channel_id, dave_id)
    await expect(channel_buttons.filter(has_text=club.name)).to_have_count(0)

    # Joined and left elsewhere (the CLI, another tab): the list follows.
    lounge = await alice_sdk.create_channel(unique("lounge"))
    await dave_sdk.join_channel(lounge.channel_id)
    await expect(channel_buttons.filter(has_text=lounge.name)).to_have_count(1)
    await dave_sdk.leave_channel(lounge.channel_id)
    await expect(channel_buttons.filter(has_text=lounge.name)).to_have_count(0)

    # A direct conversation someone else starts shows up with its unread message.
    dm = await alice_sdk.create_direct([dave_id])
    await alice_sdk.send(dm.channel_id, "psst")
    await expect(channel_buttons.filter(has_text=f"@ {alice}").locator(".unread")).to_have_text("1")
    await dave_sdk.send(home.channel_id, "still here")
    await expect(messages(page).last).to_have_text("still here")
    for client in (alice_sdk, carol_sdk, dave_sdk):
        await client.close()
    await context.close()


async def test_invitations_made_while_the_page_was_closed_are_listed_and_accepted_or_declined(
    browser: Browser, platform: RunningPlatform
) -> None:
    alice, dave = unique("alice"), unique("dave")
    alice_sdk, dave_sdk = await platform.new_user(alice), await platform.new_user(dave)
    dave_id = dave_sdk.user_id or ""
    club = await alice_sdk.create_channel(unique("club"), private=True)
    plans = await alice_sdk.create_channel(unique("plans"), private=True)
    await alice_sdk.invite(club.channel_id, dave_id)
    await alice_sdk.invite(plans.channel_id, dave_id)

    # Dave opens the page only now: both invitations are there, with the channel and who invited.
    context, page = await logged_in(browser, platform, dave)
    invitations = page.locator("nav .invitation")
    await expect(invitations).to_have_text(
        [f"{alice} invited you to #{plans.name} Join Decline", f"{alice} invited you to #{club.name} Join Decline"]
    )
    await expect(page.get_by_role("heading", name="No channels yet")).to_be_visible()
    await shot(page, "invitations")
    assert await axe_violations(page) == []

    # Accepted: the channel appears, opens and is live; declined: gone, here and for messaging.
    await invitations.filter(has_text=club.name).get_by_role("button", name="Join").click()
    await expect(page.locator("#channel-title")).to_have_text(f"# {club.name}")
    await expect(page.locator("nav button.channel").filter(has_text=club.name)).to_have_count(1)
    await alice_sdk.send(club.channel_id, "welcome")
    await expect(messages(page).last).to_have_text("welcome")
    await invitations.filter(has_text=plans.name).get_by_role("button", name="Decline").click()
    await expect(invitations).to_have_count(0)
    assert await dave_sdk.invitations() == []

    await page.reload()  # the session from the cookie; the list from messaging again
    await expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    await expect(page.locator("nav button.channel").filter(has_text=club.name)).to_have_count(1)
    await expect(invitations).to_have_count(0)
    await alice_sdk.close()
    await dave_sdk.close()
    await context.close()
