"""A Subscribe call's stream: joined to the process's channel feed, then its backlog from the log.

A stream joins the feed before it reads any backlog, at the feed's position then: the log up to
there, the feed after it, so nothing is missed and nothing comes twice (which channels, from
where: parley_gateway.domain.streams.plan_stream). `joined` is synchronous on purpose: between
reading the feed's position and adding the stream no event can be handed out.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from nats.aio.client import Client as NatsClient
from parley.gateway.v1 import gateway_pb2
from parley.messaging.v1 import messaging_pb2

from parley_core.topology import channel_subject
from parley_gateway.catchup import events_between
from parley_gateway.domain.admission import LiveStreamCaps
from parley_gateway.domain.streams import plan_stream
from parley_gateway.fanout import ChannelFeed
from parley_gateway.live import LiveBuffer, LiveSubscriber, channel_event_of, view_of

# Per resumed channel, the positions (after, up to] its backlog is read between.
Backlog = dict[str, tuple[int, int]]


def joined(
    feed: ChannelFeed,
    mine: messaging_pb2.ListMyChannelsResponse,
    request: gateway_pb2.SubscribeRequest,
    *,
    user_id: str,
    caps: LiveStreamCaps,
    buffer_size: int,
    check: Callable[[], None],
) -> tuple[LiveSubscriber, gateway_pb2.ClientEvent, Backlog]:
    """The caller's stream over the channels asked for (all of `mine` when none are), joined to
    the feed; its `ready` event; and the backlog of each resumed channel."""
    resume = {r.channel_id: r.after_position for r in request.resume}
    mine_views = {c.channel_id: view_of(c) for c in mine.channels}
    plan = plan_stream(mine_views, asked=request.channel_ids, resume=resume, live_from=feed.position, caps=caps)
    stream = LiveSubscriber(
        user_id=user_id, views=plan.views, after=plan.after, buffer=LiveBuffer(buffer_size), check=check
    )
    feed.add(stream)
    # Channels not resumed start now; the client resumes from these positions if it drops.
    positions = [
        gateway_pb2.ResumeFrom(channel_id=c, after_position=stream.after[c])
        for c in plan.channel_ids
        if c not in resume
    ]
    ready = gateway_pb2.ClientEvent(ready=gateway_pb2.Ready(channel_ids=plan.channel_ids, positions=positions))
    return stream, ready, plan.backlog


async def backlog_events(
    nc: NatsClient, stream: LiveSubscriber, backlog: Backlog
) -> AsyncIterator[gateway_pb2.ClientEvent]:
    """The resumed channels' events the stream missed, as their member sees them."""
    for channel_id, (after, up_to) in backlog.items():
        view = stream.views[channel_id]
        async for position, envelope in events_between(
            nc, stream="MSG", subject=channel_subject(channel_id), after=after, up_to=up_to
        ):
            event = channel_event_of(envelope, position)
            if event.client_event is not None and event.seen_by(view):
                stream.check()  # the backlog is re-checked like live events: revocation ends it too
                yield event.client_event
