"""Addresses as they go on the wire: ASCII wherever the address allows it, UTF-8 only where it must.

A Unicode domain (``zoe@bücher.de``) has an ASCII form every server and API takes: its IDNA A-label
(``zoe@xn--bcher-kva.de``). A Unicode local part (``josé@…``) has none: it needs SMTPUTF8 (RFC 6531) on
the SMTP path and a UTF-8 header (RFC 6532) in the message; providers that offer neither must fail
that one recipient, clearly, never the batch.
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
