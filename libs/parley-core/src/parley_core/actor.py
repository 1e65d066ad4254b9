"""Who did something: the one `Actor` value every event's envelope (and every audit record) carries.

Written in one canonical form:

    user:<user id>        a person, by their account id
    service:<name>        a service acting on its own (a schedule, a reaction to another's fact)
    platform              the operator tooling's identity (mutual TLS, `parley` commands)

Events already in the logs and archives were written in older forms, which stay readable:
a bare user id (messaging, the registry's operators), `registry` (the patch registry's automatic
roll-out steps), `node-agent@<host>` (a host's agent reporting a roll-out step) and
`platform (base version)` (a base release's publication). `Actor.parse` is the only place that
knows them, and `stored_forms` names every form one actor may stand under in an archive, so a
query by actor finds old rows too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

ActorKind = Literal["user", "service", "platform", "unknown"]

_USER = "user:"
_SERVICE = "service:"
_PLATFORM = "platform"
_NODE_AGENT = "node-agent"  # a host's agent: "node-agent@<host>"


@dataclass(frozen=True, order=True)
class Actor:
    kind: ActorKind
    name: str = ""  # the user id or service name; the text as found for `unknown`

    PLATFORM: ClassVar[Actor]
    UNKNOWN: ClassVar[Actor]

    @classmethod
    def user(cls, user_id: str) -> Actor:
        """A caller by the user id its token or certificate names: the platform identity's is
        `platform` (topology.PLATFORM_USER), which acts as the platform, not as an account."""
        if user_id == _PLATFORM:
            return cls.PLATFORM
        if not user_id or ":" in user_id:
            raise ValueError(f"not a user id: {user_id!r}")
        return cls("user", user_id)

    @classmethod
    def service(cls, name: str) -> Actor:
        if not name:
            raise ValueError("a service actor needs a name")
        return cls("service", name)

    @classmethod
    def parse(cls, text: str) -> Actor:
        """Any form an event was ever written with; never raises (an archive must stay readable)."""
        text = text.strip()
        if not text:
            return cls.UNKNOWN
        if text == _PLATFORM:
            return cls.PLATFORM
        if (old := _LEGACY.get(text)) is not None:
            return old
        if _is_node_agent(text):
            return cls("service", text)  # written bare by the registry
        for prefix, kind in ((_USER, "user"), (_SERVICE, "service")):
            if text.startswith(prefix) and len(text) > len(prefix):
                return cls(kind, text[len(prefix) :])  # type: ignore[arg-type]  # kind is one of the literals
        if ":" not in text:
            return cls("user", text)  # a bare id: how messaging and the registry named a person
        return cls("unknown", text)

    @property
    def user_id(self) -> str:
        """The account id of a person; "" for anyone else."""
        return self.name if self.kind == "user" else ""

    def stored_forms(self) -> tuple[str, ...]:
        """Every form this actor may stand under in stored events: the canonical one first."""
        canonical = str(self)
        if self.kind == "user" or (self.kind == "service" and _is_node_agent(self.name)):
            return (canonical, self.name)  # written bare before
        return (canonical, *(old for old, actor in _LEGACY.items() if actor == self))

    def __str__(self) -> str:
        if self.kind == "user":
            return _USER + self.name
        if self.kind == "service":
            return _SERVICE + self.name
        if self.kind == "platform":
            return _PLATFORM
        return self.name


Actor.PLATFORM = Actor("platform")
Actor.UNKNOWN = Actor("unknown")
# Older whole forms, read and never written again.
_LEGACY = {"registry": Actor("service", "patch-registry"), "platform (base version)": Actor.PLATFORM}


def _is_node_agent(name: str) -> bool:
    return name == _NODE_AGENT or name.startswith(_NODE_AGENT + "@")
