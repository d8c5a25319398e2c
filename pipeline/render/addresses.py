"""Addresses as they go on the wire: ASCII wherever the address allows it, UTF-8 only where it must.

A Unicode domain (``zoe@bücher.de``) has an ASCII form every server and API takes: its IDNA A-label
(``zoe@xn--bcher-kva.de``). A Unicode local part (``josé@…``) has none: it needs SMTPUTF8 (RFC 6531) on
the SMTP path and a UTF-8 header (RFC 6532) in the message; providers that offer neither must fail
that one recipient, clearly, never the batch. ``refusal`` says so ahead, when an address is added.
"""

from __future__ import annotations

from functools import lru_cache

import idna


class AddressError(ValueError):
    """An address that cannot be put on the wire (a domain with no IDNA form)."""


@lru_cache(maxsize=4096)
def ascii_address(address: str) -> str | None:
    """``address`` in ASCII (IDNA domain), or None when its local part is not ASCII."""
    if address.isascii():
        return address
    local, _, domain = address.rpartition("@")
    if not local.isascii():
        return None
    try:
        return f"{local}@{idna.encode(domain, uts46=True).decode('ascii')}"
    except idna.IDNAError as exc:
        raise AddressError(f"{address}: the domain has no IDNA form ({exc})") from None


def needs_smtputf8(address: str) -> bool:
    """True when the address can only travel over SMTPUTF8: its local part is not ASCII."""
    return ascii_address(address) is None


_UNICODE_LOCAL_PART = {
    "smtp": "needs SMTPUTF8 (its local part is not ASCII): it is sent only if the SMTP server offers SMTPUTF8",
    "sendgrid": "cannot be sent through SendGrid, which does not accept a local part outside ASCII",
}
"""What each transport does with a Unicode local part; the outbox writes any address."""


def refusal(transport: str, address: str) -> str | None:
    """Why ``transport`` may be unable to send to ``address`` (None: it can), to warn the operator
    when the address is added rather than at each send."""
    try:
        if ascii_address(address) is not None:
            return None
    except AddressError as exc:
        return f"cannot be sent to by any transport: {exc}"
    return _UNICODE_LOCAL_PART.get(transport)
