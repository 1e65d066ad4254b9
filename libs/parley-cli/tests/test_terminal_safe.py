"""Others' text never drives the terminal: every formatter of a command that prints what other
people wrote shows control characters, escape sequences, line breaks and bidi controls as
visible escapes (parley_cli.terminal.shown), and the guard on the CLI's output catches what
reaches it by any other path. No I/O; tests/e2e/test_terminal_safe_cli.py runs the commands.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

from google.protobuf.timestamp_pb2 import Timestamp
from parley.auth.v1 import auth_pb2
from parley.gateway.v1 import gateway_pb2
from parley.messaging.v1 import messaging_pb2
from parley.storage.v1 import storage_pb2

from parley_cli.admin import _show
from parley_cli.audit_query import _line
from parley_cli.chat import channel_label, format_event, format_message
from parley_cli.devices import device_lines
from parley_cli.layout import table
from parley_cli.messages import reacted_line, reactions_line
from parley_cli.parked import ParkedEvent
from parley_cli.privacy import retention_row
from parley_cli.terminal import TerminalGuard, shown, shown_lines
from parley_cli.usernames import named
from parley_client import LiveEvent

# A forged line, a screen clear, a window title (OSC), a one-character CSI, a right-to-left
# override, a carriage return that would overwrite the line, a line separator.
HOSTILE = "hi\n[    9] 12:00:00 admin: send me your password\x1b[2J\x1b]0;pwned\x07\x9b31m\u202etxt.exe\rX\u2028Y"
# Characters a terminal would act on, and the bidi controls.
ACTED_ON = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\u061c\u200e\u200f]")
ALICE = "a1" * 16


def safe_line(text: str) -> None:
    """One line, with HOSTILE's text visible in it and nothing a terminal would interpret."""
    assert ACTED_ON.search(text) is None, repr(text)
    assert "\\n[    9] 12:00:00 admin" in text
    assert "\\x1b[2J\\x1b]0;pwned\\x07\\x9b31m\\u202etxt.exe\\rX\\u2028Y" in text


def safe_lines(text: str) -> None:
    """The formatter's own line breaks kept; no line of it interpretable or forged."""
    for line in text.split("\n"):
        assert ACTED_ON.search(line) is None, repr(line)
    assert "\\n[    9] 12:00:00 admin" in text


def test_shown_escapes_what_a_terminal_acts_on_and_keeps_the_rest() -> None:
    safe_line(shown(HOSTILE))
    assert shown("plain text, accents été, emoji 👍🏽 and a family 👨‍👩‍👧") == (
        "plain text, accents été, emoji 👍🏽 and a family 👨‍👩‍👧"
    )
    assert shown("\t\x00\x7f") == "\\t\\x00\\x7f"
    assert shown_lines("one\ntwo\x1b") == "one\ntwo\\x1b"


def test_the_output_guard_keeps_only_the_clis_own_line_breaks() -> None:
    out = io.StringIO()
    guard = TerminalGuard(out)
    print("error: channel 'x\x1b[31m' is gone\u202e", file=guard)
    assert out.getvalue() == "error: channel 'x\\x1b[31m' is gone\\u202e\n"
    assert guard.getvalue() == out.getvalue()  # everything else is the stream's


def test_history_chat_thread_and_older_lines() -> None:
    message = messaging_pb2.ChatMessage(
        channel_seq=3,
        sender_id=ALICE,
        sender_name=HOSTILE,
        body=HOSTILE,
        reactions=[messaging_pb2.ReactionCount(emoji=HOSTILE, user_ids=[ALICE])],
    )
    line = format_message(message, {ALICE: HOSTILE})
    safe_line(line)
    assert line.count("[    9] 12:00:00 admin") == 4  # author, body, emoji, who reacted: all on this line


def test_live_edits_reactions_and_membership_reasons() -> None:
    edited = LiveEvent(
        "updated", gateway_pb2.ClientEvent(updated=messaging_pb2.ChatMessage(channel_seq=2, body=HOSTILE))
    )
    reaction = LiveEvent(
        "reaction", gateway_pb2.ClientEvent(reaction=gateway_pb2.Reaction(channel_seq=2, user_id=ALICE, emoji=HOSTILE))
    )
    kicked = LiveEvent(
        "membership",
        gateway_pb2.ClientEvent(
            membership=gateway_pb2.MembershipChange(user_id=ALICE, change="kicked", detail=HOSTILE)
        ),
    )
    for event in (edited, reaction, kicked):
        safe_line(format_event(event, {ALICE: HOSTILE}))


def test_channel_names_and_direct_conversations() -> None:
    safe_line(channel_label(messaging_pb2.Channel(name=HOSTILE), {}, me=ALICE))
    direct = messaging_pb2.Channel(direct=True, member_ids=[ALICE, "b2" * 16])
    safe_line(channel_label(direct, {ALICE: HOSTILE}, me="b2" * 16))


def test_reactions_devices_accounts_audit_parked_retention_and_patch_tables() -> None:
    reacted = messaging_pb2.ChatMessage(reactions=[messaging_pb2.ReactionCount(emoji=HOSTILE, user_ids=[ALICE])])
    safe_line(reactions_line(reacted))
    safe_line(reacted_line(reacted, HOSTILE, removed=False))
    device = auth_pb2.Device(user_id=ALICE, device_id=HOSTILE, display_name=HOSTILE, ed25519=b"\x01" * 32)
    safe_lines(device_lines(device, HOSTILE, mine=False))
    safe_line(_show(auth_pb2.Account(user_id=ALICE, username=HOSTILE, role="member")))
    event = storage_pb2.ArchivedEvent(event_type="parley.x", aggregate_type="user", aggregate_id=ALICE, actor=ALICE)
    safe_line(_line(event, {ALICE: HOSTILE}))
    parked = ParkedEvent(
        seq=1,
        subject="parley.parked",
        original_subject=HOSTILE,
        original_stream="MSG",
        original_seq="4",
        consumer=HOSTILE,
        reason=HOSTILE,
    )
    safe_line(parked.line())
    policy = storage_pb2.RetentionPolicy(channel_id=HOSTILE, days=7, set_by=HOSTILE, set_at=Timestamp(seconds=1))
    safe_line(retention_row(policy, 10))
    safe_line(named(ALICE, {ALICE: HOSTILE}))
    rendered = table(("who", "detail"), [(named(ALICE, {}), HOSTILE)])
    assert len(rendered.split("\n")) == 3  # header, rule, one row: the cell's newline forged none
    safe_lines(rendered)


def test_parley_up_prints_a_roll_out_reason_as_one_visible_line() -> None:
    """A planner's --reason reaches `parley up`'s output through the node agent's announce."""
    from parley.patch.v1 import patch_pb2

    from parley_agent.progress import rollout_progress
    from parley_cli.platform import Platform

    out = io.StringIO()
    platform = Platform(Path("unused"), out=out)
    rollout = patch_pb2.Rollout(rollout_id="r1", planned_by=ALICE, reason=HOSTILE, state="planned")
    for line in rollout_progress(rollout):
        platform.say(f"roll-out r1: {line}")
    printed = out.getvalue()
    assert printed.count("\n") == 1, printed
    safe_line(printed.removesuffix("\n"))
