"""VERP: each campaign message's envelope sender names its ledger row, ``bounces+TOKEN@domain``.

A bounce goes back to the envelope sender (MAIL FROM; the receiver writes it as ``Return-Path``), so
a bounce addressed to ``bounces+TOKEN@…`` says which message it is about without reading its text.
The token is the delivery id with a tag over it and the address it was sent to (``Signer.sign_compact``):
forged or mangled tokens name nobody, and a token stays tied to the person it was sent to. Lower-case
base32, because some servers change the letter case of a local part.
"""

from __future__ import annotations

from pipeline.settings import Settings
from pipeline.tokens import Signer, load_secret_key

PURPOSE = "return-path"


class ReturnPath:
    def __init__(self, address: str, signer: Signer) -> None:
        local, _, domain = address.rpartition("@")
        self.address = address
        self.local = local.lower()
        self.domain = domain.lower()
        self.signer = signer

    @classmethod
    def from_settings(cls, settings: Settings) -> ReturnPath | None:
        """The configured return path with the store's signing key; None while ``bounces.return_path``
        is unset (messages then go out from ``sender.from_email``)."""
        address = settings.bounces.return_path
        return cls(address, Signer(load_secret_key(settings))) if address else None

    def for_delivery(self, delivery_id: int, email: str) -> str:
        """The envelope sender of the message for ledger row ``delivery_id``, sent to ``email``."""
        token = self.signer.sign_compact(PURPOSE, delivery_id, address=email)
        return f"{self.local}+{token}@{self.domain}"

    def token_in(self, address: str) -> str | None:
        """The token of ``address`` if it is one of our VERP addresses (any letter case), else None."""
        local, _, domain = address.strip().strip("<>").rpartition("@")
        base, plus, token = local.lower().partition("+")
        if plus and base == self.local and domain.lower() == self.domain and token.isalnum():
            return token
        return None
