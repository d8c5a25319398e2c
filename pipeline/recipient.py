"""Who a message goes to: what the audience yields and personalisation reads.

Both are built once per recipient on the send path, so they are named tuples: immutable like a frozen
dataclass, at half the cost to construct.
"""

from __future__ import annotations

from typing import NamedTuple


class Recipient(NamedTuple):
    subscriber_id: int
    email: str
    name: str | None = None
    timezone: str | None = None

    def first_name(self, fallback: str) -> str:
        return first_name(self.name, fallback)


class PersonalFields(NamedTuple):
    """The few values that differ between two copies of an issue; everything else is rendered once."""

    first_name: str
    email: str
    unsubscribe_url: str
    preferences_url: str
    click_token: str = ""
    """The recipient's part of each tracked link (``pipeline.render.clicks``); empty when links are not
    tracked."""


def first_name(name: str | None, fallback: str) -> str:
    """The first word of ``name``, or ``fallback`` for subscribers who gave none."""
    words = name.split() if name else None
    return words[0] if words else fallback
