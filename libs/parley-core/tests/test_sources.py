"""Client addresses as sources are written and typed."""

from __future__ import annotations

import pytest

from parley_core.sources import is_address


@pytest.mark.parametrize(
    "text", ["ipv4:203.0.113.9", "203.0.113.9", "ipv6:[2001:db8::1]", "2001:db8::1", "ipv6:[2001:db8::]/64"]
)
def test_addresses_as_recorded_or_typed_are_addresses(text: str) -> None:
    assert is_address(text)


@pytest.mark.parametrize("text", ["garbage", "ipv4:garbage", "203.0.113", "ipv6:[nope]", "unix:/tmp/x", ""])
def test_other_text_is_not_an_address(text: str) -> None:
    assert not is_address(text)
