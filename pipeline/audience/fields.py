"""Checks of one subscriber field at a time, shared by the importer, the admin commands, the forms and
segments.

Each returns the clean value or raises ``ValueError`` with a message fit to follow a field name. A
message quotes the value it refuses through ``visible``, so a hostile cell can never put an escape
sequence on the operator's terminal by way of an error.
"""

from __future__ import annotations

import functools
import re
import zoneinfo
from typing import NamedTuple

from email_validator import EmailNotValidError, ValidatedEmail, validate_email
from email_validator.rfc_constants import CASE_INSENSITIVE_MAILBOX_NAMES

from pipeline.store.tables import EMAIL_LENGTH, TAG_LENGTH
from pipeline.validation import char_name, invisible_kind, printable

TAG_SEPARATOR = "|"
NAME_LENGTH = 200
"""The longest name a person may give, on the forms and in an import (the column's width)."""
ATTRIBUTE_LENGTH = 1000
"""The longest value of an attribute (a CSV column of one's own): a short value segments compare."""
LINE_BREAKS = "\t\n\r"
"""The control characters an attribute may hold (a quoted CSV cell can span lines); never a name."""
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_BIDI_ESCAPES = {ord(char): f"\\u{ord(char):04x}" for char in _BIDI_CONTROLS}
_SHOWN = 80
_PLAIN_LOCAL = re.compile(r"(?=.{1,64}\Z)[A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*\Z")
_FAST_MAX = 64 + 1 + 128  # well inside every length limit email-validator checks


class Address(NamedTuple):
    """An address checked by ``parse_email`` (a named tuple: made once per row of an import, it must
    cost little)."""

    email: str
    """As given, with the domain normalised (lower case; ASCII if typed in ASCII, else Unicode)."""
    key: str
    """The identity: the whole address in lower case with a Unicode domain, so Ana@Example.COM and
    ana@example.com are one, and so are zoe@xn--bcher-kva.de and zoe@bücher.de."""


def is_control(char: str) -> bool:
    """A character nobody can see that moves a terminal's cursor, colours or retitles it, or breaks a
    line or a header (``validation.invisible_kind``, the rule of issue files too), or one that
    reorders what a one-line table shows (a bidi override): never welcome in a name."""
    return char in _BIDI_CONTROLS or invisible_kind(char) is not None


def controls(text: str, allowed: str = "") -> list[str]:
    """The control characters in ``text`` (see ``is_control``), other than ``allowed``."""
    if text.isprintable():  # C-speed: nearly every value
        return []
    return [char for char in text if char not in allowed and is_control(char)]


def visible(text: str, limit: int | None = _SHOWN) -> str:
    """``text`` safe to print: control characters as escapes (``\\x1b``), cut after ``limit``."""
    shown = text if limit is None or len(text) <= limit else text[:limit] + "…"
    return shown if shown.isprintable() else printable(shown).translate(_BIDI_ESCAPES)


def needs_check(text: str, limit: int) -> bool:
    """False for the common value ``check_text`` would pass without looking twice (a C-speed test)."""
    return len(text) > limit or not text.isprintable()


def check_text(text: str, limit: int, *, allowed: str = "") -> str:
    """``text`` with no control character (other than ``allowed``) and at most ``limit`` characters."""
    found = controls(text, allowed)
    if found:
        names = ", ".join(char_name(char) for char in dict.fromkeys(found))
        raise ValueError(f"'{visible(text)}' contains invisible characters {names}; remove them")
    if len(text) > limit:
        raise ValueError(f"'{visible(text)}' is {len(text)} characters long; at most {limit} are allowed")
    return text


def check_name(name: str) -> str:
    """The rule of the preferences form, refusing where the form cleans: one line, ≤ NAME_LENGTH."""
    return check_text(name, NAME_LENGTH)


def check_attribute(value: str) -> str:
    return check_text(value, ATTRIBUTE_LENGTH, allowed=LINE_BREAKS)


def email_key(normalised: str) -> str:
    return normalised.lower()


def _checked(text: str) -> ValidatedEmail:
    try:
        return validate_email(text, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(f"'{visible(text)}' is not a valid email address: {exc}") from None


def _stored(given_domain: str, address: ValidatedEmail) -> str:
    """The address as the person typed it, normalised: the domain lower-cased, staying ASCII
    (punycode) if typed in ASCII and Unicode if typed in Unicode. Its identity (``email_key``) uses
    the Unicode form either way, so ``zoe@xn--bcher-kva.de`` and ``zoe@bücher.de`` are one person."""
    local = address.normalized.rpartition("@")[0]
    typed_ascii = given_domain.isascii() and address.ascii_domain is not None
    return f"{local}@{address.ascii_domain if typed_ascii else address.domain}"


def _validated(text: str) -> str:
    """The address to store, checked by email-validator (the fast path of ``parse_email`` agrees)."""
    return _stored(text.rpartition("@")[2], _checked(text))


@functools.lru_cache(maxsize=4096)
def _domain(domain: str) -> tuple[str, str]:
    """A domain checked once, as stored and as identified (Unicode): most of a list shares a few
    hundred domains."""
    address = _checked("x@" + domain)
    return _stored(domain, address).partition("@")[2], address.domain


def parse_email(raw: str) -> Address:
    """Check an address's syntax (no DNS: imports must not depend on the network); accept Unicode.

    Plain ASCII local parts take a fast path (email-validator would return them unchanged) with the
    domain validated once per domain; a test checks that both paths agree.
    """
    text = raw.strip()
    if not text:
        raise ValueError("email is empty")
    local, _, domain = text.rpartition("@")
    forms = None
    if (
        len(text) <= _FAST_MAX
        and _PLAIN_LOCAL.match(local)
        and local.lower() not in CASE_INSENSITIVE_MAILBOX_NAMES
    ):
        try:
            forms = _domain(domain)
        except ValueError:  # not contextlib.suppress: a context manager per address costs 0.3 µs
            forms = None  # the slow path's message then names the whole address
    if forms is None:
        local, _, stored = _validated(text).rpartition("@")
        forms = _domain(stored)
    email = f"{local}@{forms[0]}"
    if len(email) > EMAIL_LENGTH:
        raise ValueError(f"'{visible(text)}' is longer than {EMAIL_LENGTH} characters")
    return Address(email, email_key(f"{local}@{forms[1]}"))


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
        raise ValueError(f"unknown time zone '{visible(name)}' (use an IANA name such as Europe/London)")
    return name


def check_tag(tag: str) -> str:
    if not tag or tag != tag.strip():
        raise ValueError(f"tag '{visible(tag)}' is empty or has spaces around it")
    if TAG_SEPARATOR in tag or len(tag) > TAG_LENGTH:
        raise ValueError(
            f"tag '{visible(tag)}' contains '{TAG_SEPARATOR}' or is longer than {TAG_LENGTH} characters"
        )
    return tag if tag.isprintable() else check_text(tag, TAG_LENGTH)


def split_tags(cell: str) -> list[str]:
    """``a|b| a`` → ``[a, b]``: the CSV form of a tag list, order kept, duplicates and blanks dropped."""
    tags = dict.fromkeys(part.strip() for part in cell.split(TAG_SEPARATOR))
    return [check_tag(tag) for tag in tags if tag]
