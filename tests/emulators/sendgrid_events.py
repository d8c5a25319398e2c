"""SendGrid's side of the signed Event Webhook: a P-256 key pair, events shaped like SendGrid's, signed posts.

Why: the webhook's checks must be proven against real ECDSA signatures (not a patched verifier), and
the events it is fed must look like SendGrid's: ``custom_args`` of the message and of each
personalization flattened into every event's top level, ``sg_event_id`` unique per event.
``events_for`` turns a request the SendGrid emulator accepted into those events, so a test can send a
campaign through the emulator and report back on it exactly as SendGrid would.

Standalone: ``python -m tests.emulators.sendgrid_events keygen KEYFILE`` prints the public key for
``web.webhook_public_key``; ``… post KEYFILE URL EVENTS.json`` posts a signed file of events.
"""

from __future__ import annotations

import argparse
import base64
import json
import secrets
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

import httpx2
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.emulators.sendgrid import AcceptedMessage

SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"
WEBHOOK_PATH = "/webhooks/sendgrid"


class PostingClient(Protocol):
    """Anything that posts like httpx: Starlette's TestClient in-process, or a client of a live server."""

    def post(self, url: str, *, content: bytes, headers: Mapping[str, str]) -> Any: ...


class EventKey:
    """The key pair SendGrid signs with: the private half signs, the public half goes in settings."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey | None = None) -> None:
        self.private_key = private_key or ec.generate_private_key(ec.SECP256R1())

    @property
    def public_key(self) -> str:
        """Base64 DER, exactly as SendGrid shows its verification key."""
        der = self.private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.b64encode(der).decode("ascii")

    def sign(self, body: bytes, timestamp: int | str) -> str:
        signature = self.private_key.sign(str(timestamp).encode("ascii") + body, ec.ECDSA(hashes.SHA256()))
        return base64.b64encode(signature).decode("ascii")

    def headers(self, body: bytes, timestamp: int | None = None) -> dict[str, str]:
        stamp = int(time.time()) if timestamp is None else timestamp
        return {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: self.sign(body, stamp),
            TIMESTAMP_HEADER: str(stamp),
        }

    def pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    @classmethod
    def from_pem(cls, data: bytes) -> EventKey:
        key = serialization.load_pem_private_key(data, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("not an EC private key")
        return cls(key)


def event_id() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(16)).decode("ascii").rstrip("=")


def event(
    kind: str,
    email: str,
    *,
    campaign_id: int | None = None,
    subscriber_id: int | None = None,
    delivery_id: int | None = None,
    timestamp: int | None = None,
    sg_event_id: str | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """One event as SendGrid posts it; the ids are custom args, so they arrive as strings."""
    item: dict[str, Any] = {
        "email": email,
        "timestamp": int(time.time()) if timestamp is None else timestamp,
        "event": kind,
        "sg_event_id": sg_event_id or event_id(),
        "sg_message_id": f"{secrets.token_urlsafe(12)}.filterdrecv-1-1",
        "smtp-id": f"<{secrets.token_hex(8)}@news.example.org>",
    }
    custom = {"campaign_id": campaign_id, "subscriber_id": subscriber_id, "delivery_id": delivery_id}
    item.update({name: str(value) for name, value in custom.items() if value is not None})
    item.update(fields)
    return item


def events_for(message: AcceptedMessage, kind: str, **fields: Any) -> list[dict[str, Any]]:
    """One ``kind`` event per recipient of an accepted request, custom args flattened as SendGrid does."""
    found = []
    for personalization in message.personalizations:
        for to in personalization["to"]:
            item = event(kind, to["email"], **fields)
            item.update(message.custom_args)
            item.update(personalization.get("custom_args") or {})
            item["sg_message_id"] = f"{message.message_id}.filterdrecv-1-1"
            found.append(item)
    return found


def post_events(
    client: PostingClient,
    events: Iterable[Any] | bytes,
    key: EventKey,
    *,
    url: str = WEBHOOK_PATH,
    timestamp: int | None = None,
) -> Any:
    """Sign and post events (or a raw body) the way SendGrid does; returns the client's response.

    ``events`` may hold things that are not events, to test how the webhook treats them."""
    body = events if isinstance(events, bytes) else json.dumps(list(events)).encode("utf-8")
    return client.post(url, content=body, headers=key.headers(body, timestamp))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    keygen = commands.add_parser("keygen", help="write a private key, print the public key")
    keygen.add_argument("keyfile", type=Path)
    post = commands.add_parser("post", help="post a JSON file of events, signed")
    post.add_argument("keyfile", type=Path)
    post.add_argument("url", help="the webhook's URL, e.g. http://127.0.0.1:8000/webhooks/sendgrid")
    post.add_argument("events", type=Path)
    args = parser.parse_args(argv)
    if args.command == "keygen":
        key = EventKey()
        args.keyfile.write_bytes(key.pem())
        args.keyfile.chmod(0o600)
        print(key.public_key)
        return 0
    key = EventKey.from_pem(args.keyfile.read_bytes())
    with httpx2.Client(timeout=30) as client:
        response = post_events(client, args.events.read_bytes(), key, url=args.url)
    print(response.status_code, response.text)
    return 0 if response.status_code == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
