"""Who a message goes to: what the audience yields and personalisation reads."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Recipient:
    subscriber_id: int
    email: str
    name: str | None = None
    timezone: str | None = None

    def first_name(self, fallback: str) -> str:
        """The first word of the name, or ``fallback`` for subscribers who gave none."""
        parts = (self.name or "").split()
        return parts[0] if parts else fallback


@dataclass(frozen=True, slots=True)
class PersonalFields:
    """The few values that differ between two copies of an issue; everything else is rendered once."""

    first_name: str
    email: str
    unsubscribe_url: str
    preferences_url: str
