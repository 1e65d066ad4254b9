"""The messaging service's composition and gRPC servicer: a request becomes a command, the
channel is read from the projection, `decisions` decides, the event log appends, and the answer
is made from the channel after (answers.py). No rule of the channel lives here: the calls are in
api_channels.py and api_messages.py, what they share in servicer_base.py."""

from __future__ import annotations

from parley_messaging.api_channels import ChannelsApi
from parley_messaging.api_messages import MessagesApi


class MessagingApp(ChannelsApi, MessagesApi):
    """Messaging's MessagingService; its DeviceKeyService is device_service.py."""
