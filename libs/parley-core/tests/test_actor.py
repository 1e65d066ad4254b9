"""The one Actor value: its canonical form, and every older form that events in logs still carry."""

from __future__ import annotations

import pytest

from parley_core.actor import Actor
from parley_core.topology import PLATFORM_USER


@pytest.mark.parametrize(
    ("written", "actor"),
    [
        # Canonical forms, written from now on.
        ("user:4f1c2a", Actor.user("4f1c2a")),
        ("service:storage", Actor.service("storage")),
        ("platform", Actor.PLATFORM),
        # Older forms in logs and archives.
        ("4f1c2a", Actor.user("4f1c2a")),  # messaging, the registry's operators: a bare user id
        ("registry", Actor.service("patch-registry")),  # the registry's automatic steps
        ("node-agent@host-1", Actor.service("node-agent@host-1")),  # a host's agent, written bare
        ("platform (base version)", Actor.PLATFORM),  # a base release's publication
        ("", Actor.UNKNOWN),
    ],
)
def test_every_form_ever_written_parses_to_one_actor(written: str, actor: Actor) -> None:
    assert Actor.parse(written) == actor
    assert written in actor.stored_forms() or written == ""


@pytest.mark.parametrize(
    ("actor", "canonical"),
    [
        (Actor.user("4f1c2a"), "user:4f1c2a"),
        (Actor.service("patch-registry"), "service:patch-registry"),
        (Actor.PLATFORM, "platform"),
        (Actor.parse("registry"), "service:patch-registry"),
        (Actor.parse("4f1c2a"), "user:4f1c2a"),
    ],
)
def test_one_canonical_form_is_written_and_reads_back_as_itself(actor: Actor, canonical: str) -> None:
    assert str(actor) == canonical
    assert Actor.parse(canonical) == actor
    assert actor.stored_forms()[0] == canonical


def test_stored_forms_name_the_old_rows_of_the_same_actor_and_no_one_elses() -> None:
    assert Actor.user("4f1c2a").stored_forms() == ("user:4f1c2a", "4f1c2a")
    assert Actor.service("patch-registry").stored_forms() == ("service:patch-registry", "registry")
    assert Actor.service("storage").stored_forms() == ("service:storage",)
    assert Actor.PLATFORM.stored_forms() == ("platform", "platform (base version)")


def test_user_id_names_only_people() -> None:
    assert Actor.parse("user:4f1c2a").user_id == "4f1c2a"
    assert Actor.parse("4f1c2a").user_id == "4f1c2a"
    assert Actor.parse("service:auth").user_id == ""
    assert Actor.PLATFORM.user_id == ""


def test_the_platform_identity_acts_as_the_platform_not_as_an_account() -> None:
    assert Actor.user(PLATFORM_USER) is Actor.PLATFORM


def test_a_form_no_one_wrote_is_kept_as_found_rather_than_guessed() -> None:
    odd = Actor.parse("device:abc")
    assert odd.kind == "unknown"
    assert str(odd) == "device:abc"
    assert odd.user_id == ""


@pytest.mark.parametrize("bad", ["", "user:x", "a:b"])
def test_a_user_id_that_could_be_misread_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="user id"):
        Actor.user(bad)


def test_a_service_needs_a_name() -> None:
    with pytest.raises(ValueError, match="name"):
        Actor.service("")
