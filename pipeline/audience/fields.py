"""Checks of one subscriber field at a time, shared by the importer, the admin commands and segments.

Each returns the clean value or raises ``ValueError`` with a message fit to follow a field name.
"""

from __future__ import annotations

import functools
import re
import zoneinfo
from dataclasses import dataclass

from email_validator import EmailNotValidError, validate_email
from email_validator.rfc_constants import CASE_INSENSITIVE_MAILBOX_NAMES

from pipeline.store.tables import EMAIL_LENGTH, TAG_LENGTH

TAG_SEPARATOR = "|"
_PLAIN_LOCAL = re.compile(r"(?=.{1,64}\Z)[A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*\Z")
_FAST_MAX = 64 + 1 + 128  # well inside every length limit email-validator checks


@dataclass(frozen=True, slots=True)
class Address:
    email: str
    """As given, with the domain normalised (lower case, Unicode) by email-validator."""
    key: str
    """The identity: the whole address in lower case, so Ana@Example.COM and ana@example.com are one."""


def email_key(normalised: str) -> str:
    return normalised.lower()


def _validated(text: str) -> str:
    try:
        return validate_email(text, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise ValueError(f"'{text}' is not a valid email address: {exc}") from None


@functools.lru_cache(maxsize=4096)
def _domain(domain: str) -> str:
    """A domain checked and normalised once: most of a list shares a few hundred domains."""
    return _validated("x@" + domain).partition("@")[2]


def parse_email(raw: str) -> Address:
    """Check an address's syntax (no DNS: imports must not depend on the network); accept Unicode.

    Plain ASCII local parts take a fast path (email-validator would return them unchanged) with the
    domain validated once per domain; a test checks that both paths agree.
    """
    text = raw.strip()
    if not text:
        raise ValueError("email is empty")
    local, _, domain = text.rpartition("@")
    if (
        len(text) <= _FAST_MAX
        and _PLAIN_LOCAL.match(local)
        and local.lower() not in CASE_INSENSITIVE_MAILBOX_NAMES
    ):
        try:
            email = local + "@" + _domain(domain)
        except ValueError:
            email = _validated(text)  # the message then names the whole address
    else:
        email = _validated(text)
    if len(email) > EMAIL_LENGTH:
        raise ValueError(f"'{text}' is longer than {EMAIL_LENGTH} characters")
    return Address(email, email_key(email))


@functools.cache
def _zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def is_timezone(name: str) -> bool:
    return name in _zones()


def is_timezone_region(prefix: str) -> bool:
    """True for ``Europe`` or ``America/Argentina``: the part before ``/*`` in a segment's zone list."""
    return any(zone.startswith(prefix + "/") for zone in _zones())


def check_timezone(name: str) -> str:
    if not is_timezone(name):
        raise ValueError(f"unknown time zone '{name}' (use an IANA name such as Europe/London)")
    return name


def check_tag(tag: str) -> str:
    if not tag or tag != tag.strip():
        raise ValueError(f"tag '{tag}' is empty or has spaces around it")
    if TAG_SEPARATOR in tag or len(tag) > TAG_LENGTH:
        raise ValueError(f"tag '{tag}' contains '{TAG_SEPARATOR}' or is longer than {TAG_LENGTH} characters")
    return tag


def split_tags(cell: str) -> list[str]:
    """``a|b| a`` → ``[a, b]``: the CSV form of a tag list, order kept, duplicates and blanks dropped."""
    tags = dict.fromkeys(part.strip() for part in cell.split(TAG_SEPARATOR))
    return [check_tag(tag) for tag in tags if tag]
