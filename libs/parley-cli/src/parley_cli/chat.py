"""The interactive chat loop: lines typed are sent, others' messages are printed live."""

from __future__ import annotations

import asyncio
import shlex
import sys
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime

from grpc import StatusCode
from parley.messaging.v1.messaging_pb2 import Channel, ChatMessage

from parley_cli.terminal import shown
from parley_cli.wording import counted
from parley_client import DeviceStore, LiveEvent, OutcomeUnknown, ParleyClient, ParleyError, never_sent
from parley_client.e2ee import BODY_PREFIX
from parley_client.live import RESUMABLE
from parley_messaging.inputs import CHANNEL_ID

OPENING_PAGE = 20  # the newest messages `parley chat` shows before going live


class People:
    """Usernames of the user ids the CLI shows, asked of the platform once per id."""

    def __init__(self, client: ParleyClient) -> None:
        self._client = client
        self.names: dict[str, str] = {}

    async def learn(self, user_ids: Iterable[str]) -> None:
        missing = [u for u in dict.fromkeys(user_ids) if u and u not in self.names]
        if missing:
            found = await self._client.user_names(missing)
            self.names.update({u: found.get(u, u[:8]) for u in missing})  # unknown: the id's start

    async def learn_from(self, messages: Iterable[ChatMessage]) -> None:
        """The people a page of messages shows: authors whose name it lacks, and who reacted."""
        ids: list[str] = []
        for m in messages:
            if not m.sender_name and not m.erased:  # an erased author stays anonymous
                ids.append(m.sender_id)
            ids.extend(u for r in m.reactions for u in r.user_ids)
        await self.learn(ids)


def person(user_id: str, names: Mapping[str, str]) -> str:
    return shown(names.get(user_id) or user_id[:8])


def format_message(message: ChatMessage, names: Mapping[str, str] | None = None) -> str:
    names = names or {}
    when = datetime.fromtimestamp(message.sent_at.seconds).strftime("%H:%M:%S")
    if message.erased:
        body = "(erased with its author's data)"  # by the author or by the operator
    elif message.redacted:
        body = "(redacted)"
    elif message.body.startswith(BODY_PREFIX):
        body = "(encrypted; this device has no key for it)"
    else:
        body = shown(message.body) + (" (edited)" if message.edit_count or message.edited else "")
    if message.thread_root_seq:
        body = f"(in the thread of #{message.thread_root_seq}) {body}"
    if message.reply_count:
        body += f" ({message.reply_count} {'reply' if message.reply_count == 1 else 'replies'})"
    if message.reactions:
        body += "  " + " ".join(
            f"{shown(r.emoji)} {', '.join(person(u, names) for u in r.user_ids)}" for r in message.reactions
        )
    if message.sender_name:
        author = shown(message.sender_name)
    else:
        author = message.sender_id[:8] if message.erased else person(message.sender_id, names)
    return f"[{message.channel_seq:>5}] {when} {author}: {body}"


def format_event(
    event: LiveEvent, names: Mapping[str, str] | None = None, authors: Mapping[int, str] | None = None
) -> str:
    """One live event as a line; `names` (user id -> username) should know the people it shows,
    `authors` (channel_seq -> author's name) those of the messages shown before."""
    names = names or {}
    raw = event.event
    if event.kind == "message":
        return format_message(event.message, names)
    if event.kind == "updated":
        if event.message.redacted:
            author = (authors or {}).get(event.message.channel_seq)
            whose = f"{author}'s message" if author else "message"
            return f"[{event.message.channel_seq:>5}] ({whose} redacted)"
        return f"[{event.message.channel_seq:>5}] (edited) {shown(event.message.body)}"
    if event.kind == "reaction":
        verb = "took back" if raw.reaction.removed else "reacted"
        who = person(raw.reaction.user_id, names)
        return f"[{raw.reaction.channel_seq:>5}] {who} {verb} {shown(raw.reaction.emoji)}"
    if event.kind == "membership":
        change = raw.membership
        if change.change == "invited":
            return f"-- {person(change.actor_id, names)} invited {person(change.user_id, names)} --"
        detail = f": {shown(change.detail)}" if change.detail else ""
        return f"-- {person(change.user_id or change.actor_id, names)} {shown(change.change)}{detail} --"
    return ""  # read markers are not shown


def event_people(event: LiveEvent) -> list[str]:
    """The user ids a live event's line names."""
    raw = event.event
    if event.kind == "reaction":
        return [raw.reaction.user_id]
    if event.kind == "membership":
        return [raw.membership.user_id, raw.membership.actor_id]
    if event.kind == "message" and not event.message.sender_name:
        return [event.message.sender_id]
    return []


def author_of(message: ChatMessage, names: Mapping[str, str]) -> str:
    """The name a message's line shows for its author ("" for an erased author)."""
    if message.sender_name:
        return shown(message.sender_name)
    return "" if message.erased else person(message.sender_id, names)


class ReadMarker:
    """Moves the user's read marker to the newest message this terminal has shown, as the web
    client does: one call at a time, the newest number wins, a failure is said once."""

    def __init__(self, client: ParleyClient, channel_id: str) -> None:
        self._client = client
        self._channel_id = channel_id
        self._wanted = 0
        self._marked = 0
        self._task: asyncio.Task[None] | None = None
        self._failed = False

    def shown(self, channel_seq: int) -> None:
        self._wanted = max(self._wanted, channel_seq)
        if self._wanted > self._marked and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._move())

    async def _move(self) -> None:
        while self._wanted > self._marked:
            target = self._wanted
            try:
                await self._client.mark_read(self._channel_id, target)
            except ParleyError as exc:
                if not self._failed:
                    print(f"-- read marker not moved: {shown(exc.message)} --", flush=True)
                self._failed = True
                return
            self._marked = target

    async def settled(self) -> None:
        """Waits for the marker call in flight (leaving the chat lets it finish)."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()


def older_hint(parley: str, reference: str, first_shown: int) -> str:
    """The line under a page that is not the channel's first: how to see what came before it.
    `parley` is the command as this run was invoked (invocation.parley_as_run), so the line runs as printed."""
    return f"-- older messages: {shown(parley)} older {shown(shlex.quote(reference))} {first_shown} --"


HELP = "type a message and press Enter; /edit <#> <text>, /redact <#>, Ctrl-D to leave"


async def run_typed(client: ParleyClient, channel_id: str, text: str) -> None:
    """One typed line: a message, or a /command acting on an earlier message by its number."""
    command, _, rest = text.partition(" ")
    if command == "/edit":
        seq, _, body = rest.partition(" ")
        await client.edit(channel_id, _number(seq), body)
    elif command == "/redact":
        await client.redact(channel_id, _number(rest.strip()))
    elif command.startswith("/"):
        print(HELP, flush=True)
    else:
        await client.send(channel_id, text)


def _number(text: str) -> int:
    if not text.isdigit():
        raise ParleyError(StatusCode.INVALID_ARGUMENT, "give the message number shown in [brackets]")
    return int(text)


def channel_label(channel: Channel, names: Mapping[str, str], *, me: str | None) -> str:
    """#name, or for a direct conversation the other members' names (every one's when alone)."""
    if not channel.direct:
        return f"#{shown(channel.name)}"
    others = [u for u in channel.member_ids if u != me] or list(channel.member_ids)
    return "direct with " + ", ".join(person(u, names) for u in others)


def looks_like_an_id(reference: str) -> bool:
    """A channel id as the platform makes them (32 hex digits), not a name."""
    return bool(CHANNEL_ID.fullmatch(reference))


async def find_channel(client: ParleyClient, reference: str) -> Channel:
    """Accept a channel id or the name of a channel the user is in; a name two of them share is
    an error listing both (with ids), never a silent pick."""
    channels = await client.my_channels()
    for channel in channels:
        if reference == channel.channel_id:
            return channel
    named = [c for c in channels if c.name == reference and not c.direct]
    if len(named) == 1:
        return named[0]
    if named:
        choices = "; ".join(
            f"{c.channel_id} ({counted(len(c.member_ids), 'member')}, {counted(c.last_seq, 'message')})" for c in named
        )
        raise SystemExit(
            f"error: {len(named)} of your channels are named #{shown(reference)}: {choices}; give the id instead"
        )
    # Direct conversations are left out: they are named by id only (`parley channels` lists them).
    names = ", ".join(f"#{shown(c.name)}" for c in channels if not c.direct) or "none"
    raise SystemExit(
        f"error: {shown(reference)!r} is not one of your channels (yours: {names}); create it, or join it "
        f"(`parley join {shown(shlex.quote(reference))}`; a private channel needs an invitation first)"
    )


async def user_id_of(client: ParleyClient, reference: str) -> str:
    """A user id as given, or the id of the person with this name among those the caller may find
    (who share a channel with them; every account for a role that reads the directory)."""
    return reference if looks_like_an_id(reference) else await client.find_user(reference)


async def resolve_channel(client: ParleyClient, reference: str) -> str:
    return (await find_channel(client, reference)).channel_id


async def open_channel(client: ParleyClient, reference: str, *, store: DeviceStore | None) -> tuple[str, str]:
    """The channel's id and, in an end-to-end encrypted channel, a note on the device in use.

    There the client becomes the user's device in this data folder (`store`), created on first
    use, so that sends and edits are encrypted and history is decrypted: after a restart it
    still reads what was shared with it (its own messages included). It reads what is sent from
    its creation on (keys are shared with it at the senders' next message).
    """
    channel = await find_channel(client, reference)
    if not channel.encrypted:
        return channel.channel_id, ""
    new = store is None or not store.exists()
    device = await client.enable_e2ee(f"cli-{uuid.uuid4().hex[:12]}", store=store)
    kept = " (new)" if new else " (kept from an earlier run)"
    return channel.channel_id, f"end-to-end encrypted; this terminal is device {device.device_id}{kept}"


async def interactive(
    client: ParleyClient,
    reference: str,
    *,
    parley: str = "parley",
    store: DeviceStore | None = None,
    gone: Callable[[], str | None] = lambda: None,
) -> int:
    """`gone` says, when asked, why the gateway cannot be reached if the CLI knows (the platform
    stopped, a --gateway address that does not answer), else None."""
    channel_id, device_note = await open_channel(client, reference, store=store)
    if device_note:
        print(f"-- {device_note} --", flush=True)
    opened_with = client.access_token
    stream = client.subscribe([channel_id])
    await stream.ready()
    page = await client.latest(channel_id, limit=OPENING_PAGE)  # the newest, then live
    people = People(client)
    await people.learn_from(page.messages)
    read = ReadMarker(client, channel_id)
    authors: dict[int, str] = {}  # channel_seq -> author's name, for a redaction's line
    seen = 0
    if page.has_more and page.messages:
        print(older_hint(parley, reference, page.messages[0].channel_seq))
    for message in page.messages:
        print(format_message(message, people.names))
        authors[message.channel_seq] = author_of(message, people.names)
        seen = max(seen, message.channel_seq)
    print(f"-- live; {HELP} --", flush=True)
    read.shown(seen)

    async def show(event: LiveEvent) -> None:
        if event.channel_id != channel_id:
            await show_elsewhere(event)
            return
        await people.learn(event_people(event))
        if line := format_event(event, people.names, authors):
            print(line, flush=True)
        if event.kind == "message":
            authors[event.message.channel_seq] = author_of(event.message, people.names)
            read.shown(event.message.channel_seq)

    async def show_elsewhere(event: LiveEvent) -> None:
        """The user's arrival in another channel: an invitation is said, with the channel's name."""
        change = event.event.membership
        if event.kind != "membership" or change.change != "invited" or change.user_id != client.user_id:
            return
        await people.learn([change.actor_id])
        # Accepted meanwhile (another terminal, the web client): the channel is one of theirs.
        names = {i.channel_id: i.channel_name for i in await client.invitations()}
        if event.channel_id not in names:
            names = {c.channel_id: c.name for c in await client.my_channels()}
        name = f"#{shown(names[event.channel_id])}" if event.channel_id in names else "a channel"
        joining = shown(f"{parley} join {event.channel_id}")
        print(f"-- {person(change.actor_id, people.names)} invited you to {name}: {joining} --", flush=True)

    def live_again() -> None:
        print("-- live again --", flush=True)

    async def show_incoming() -> int:
        try:
            try:
                async for event in stream.events():
                    if event.kind != "message" or event.message.channel_seq > seen:
                        await show(event)
            except ParleyError as exc:
                if exc.code not in RESUMABLE and not await client.renewed_after(exc, opened_with):
                    raise
            # The stream dropped (gateway restart, network, too slow, the access token expired
            # and was renewed): resume where it stopped. A platform that stopped is said so.
            why = gone()
            print(f"-- reconnecting: {shown(why)} --" if why else "-- reconnecting --", flush=True)
            async for event in client.live([channel_id], resume=stream.positions, on_ready=live_again):
                await show(event)
        except ParleyError as exc:
            print(f"-- live stream ended: {shown(exc.message)}; leaving --", flush=True)
            return 1
        return 0

    ended = asyncio.Event()  # Ctrl-D at a terminal: leave, even while a send waits for its answer
    lines = _stdin_lines(ended)

    sending = False

    async def send_typed() -> int:
        nonlocal sending
        while (line := await lines.get()) is not None:
            text = line.rstrip("\n")
            if text.strip():
                try:
                    sending = True
                    await run_typed(client, channel_id, text)
                except OutcomeUnknown as exc:
                    # Retried with its key until the deadline: shown above if it was stored after all.
                    print(
                        "not confirmed, it may have been sent (shown above if it was): the platform did not answer "
                        f"in time ({shown(exc.last.message)})",
                        flush=True,
                    )
                except ParleyError as exc:
                    print(f"not sent: {shown((never_sent(exc) and gone()) or exc.message)}", flush=True)
                finally:
                    sending = False
        return 0

    incoming = asyncio.create_task(show_incoming())
    typed = asyncio.create_task(send_typed())
    leaving = asyncio.create_task(ended.wait())
    try:
        done, _ = await asyncio.wait({incoming, typed, leaving}, return_when=asyncio.FIRST_COMPLETED)
        if leaving in done and sending:
            print("-- leaving before the platform answered the last line; it may not have been sent --", flush=True)
            return 0
        await read.settled()
        return incoming.result() if incoming in done else 0  # typed lines end with 0
    finally:
        read.cancel()
        stream.cancel()
        incoming.cancel()
        typed.cancel()
        leaving.cancel()


def _stdin_lines(ended: asyncio.Event) -> asyncio.Queue[str | None]:
    """Lines typed, read by a daemon thread so that leaving never waits for one more Enter;
    `ended` is set at Ctrl-D on a terminal (input piped in is sent to its end)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    def read() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(queue.put_nowait, line)
        loop.call_soon_threadsafe(queue.put_nowait, None)
        if sys.stdin.isatty():
            loop.call_soon_threadsafe(ended.set)

    threading.Thread(target=read, name="stdin", daemon=True).start()
    return queue
