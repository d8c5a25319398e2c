"""Signed tokens for links in email (unsubscribe, preferences, confirm) and keyed address hashes.

A token is ``base64url(payload) "." base64url(BLAKE2b-128(key, purpose + payload + address))``; the
payload is ``subscriber_id`` plus, for expiring tokens, a Unix expiry. 128-bit tags keep URLs short and
forgery out of reach. The tag also covers the address the link was made for (not in the token: it is
never in a URL), so a link opens only while its id still stands for that address: were an id ever
handed out again, or a list imported into a new store under the same key, old links open nobody.

Tokens signed before addresses were bound (the id alone) still verify through ``verify_legacy``; the
caller decides whom such a token may still open for. Return-path tokens (``sign_compact``) are the
same tag after a number, in lower-case base32, so they survive servers that change the letter case
of an address's local part. The key comes from NEWSLETTER_SECRET_KEY; the embedded SQLite default
generates one into ``var/secret.key`` (mode 0600, in a 0700 folder) the first time, so a fresh clone
works without setup.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import secrets
import time
from pathlib import Path

from pipeline.errors import SettingsError, TokenError
from pipeline.settings import Settings, secret

log = logging.getLogger(__name__)
KEY_FILE = Path("var/secret.key")
_TAG_BYTES = 16
PREVIEW_ID = 0
"""The subscriber id preview links are signed for (``newsletter render``, [TEST] copies): nobody has it
(ids start at 1), and the web pages answer such a link "this is a preview" and change nothing."""


_URL_SAFE = bytes.maketrans(b"+/", b"-_")


def _b64(data: bytes) -> str:
    """URL-safe base64 without padding (``base64.urlsafe_b64encode`` minus its Python layers: it runs
    twice per recipient of a send)."""
    return binascii.b2a_base64(data, newline=False).rstrip(b"=").translate(_URL_SAFE).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def load_secret_key(settings: Settings) -> bytes:
    """The signing key: from the environment, or generated once into var/ for the embedded default."""
    from_env = secret("NEWSLETTER_SECRET_KEY")
    if from_env:
        if len(from_env) < 32:
            raise SettingsError(
                "NEWSLETTER_SECRET_KEY: must be at least 32 characters (use `openssl rand -hex 32`)"
            )
        return from_env.encode("utf-8")
    if not settings.store_url.startswith("sqlite:"):
        raise SettingsError(
            "NEWSLETTER_SECRET_KEY: not set; it is required with a shared store so every machine signs alike"
        )
    path = settings.path(KEY_FILE)
    if path.exists():
        return path.read_bytes().strip()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = secrets.token_hex(32).encode("ascii")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key + b"\n")
    log.warning("NEWSLETTER_SECRET_KEY is not set: generated a signing key in %s (mode 0600)", path)
    return key


class Signer:
    """Signs and verifies tokens for one purpose each (a preferences token cannot unsubscribe)."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        # Keyed BLAKE2b is a MAC in one call, about twice as fast as HMAC-SHA256 here, and two links per
        # recipient make tags the hot path of a send. Keys longer than BLAKE2b takes are hashed first.
        mac_key = hashlib.blake2b(key, digest_size=32, person=b"newsletter-tags").digest()
        self._keyed = hashlib.blake2b(key=mac_key, digest_size=_TAG_BYTES)
        self._purposes: dict[str, hashlib.blake2b] = {}
        self._addresses = hmac.new(key, b"address\0", hashlib.sha256)
        """HMAC's keyed states, fed the prefix once: a copy per address, not the key's set-up (an import
        hashes every address it reads)."""

    def _state(self, purpose: str) -> hashlib.blake2b:
        """A hash state that has taken the key and ``purpose + NUL``. BLAKE2b is a stream: a copy of it
        fed the rest of a message gives that message's one-shot tag, without setting up the key again."""
        state = self._purposes.get(purpose)
        if state is None:
            state = self._keyed.copy()
            state.update(purpose.encode() + b"\0")
            self._purposes[purpose] = state
        return state

    def _tag(self, purpose: str, payload: bytes, address: str | None) -> bytes:
        state = self._state(purpose).copy()
        if address is None:  # the id-only tags of before (one NUL less, so never the same)
            state.update(payload)
        else:
            state.update(payload + b"\0" + address.encode())
        return state.digest()

    def __reduce__(self) -> tuple[type[Signer], tuple[bytes]]:
        """Pickled as its key (hash states do not pickle): links go to worker processes this way."""
        return (Signer, (self._key,))

    def sign(
        self, purpose: str, subscriber_id: int, *, expires_at: int | None = None, address: str = ""
    ) -> str:
        """A token for ``subscriber_id`` that verifies only with the same ``address`` (as stored).

        Links in mail are signed for the person's address; short-lived tokens (confirmations, form
        tokens) and previews are signed for none (``""``).
        """
        payload = str(subscriber_id) if expires_at is None else f"{subscriber_id}.{expires_at}"
        raw = payload.encode("ascii")
        return f"{_b64(raw)}.{_b64(self._tag(purpose, raw, address))}"

    def claimed_id(self, token: str) -> int:
        """The subscriber id ``token`` names, unchecked: whose address to verify it against."""
        return _parse(token)[2]

    def verify(self, purpose: str, token: str, *, now: float | None = None, address: str = "") -> int:
        """The subscriber id in ``token``; ``TokenError`` if it is forged, tampered, expired, or signed for
        another address than ``address``.

        Expiring tokens signed before addresses were bound (confirmations, form tokens) are accepted
        until they expire: their life is hours, and they were only ever made for the id alone.
        """
        raw, tag, subscriber_id, expires_at = _parse(token)
        if not hmac.compare_digest(tag, self._tag(purpose, raw, address)) and (
            expires_at is None or not hmac.compare_digest(tag, self._tag(purpose, raw, None))
        ):
            raise TokenError("invalid token signature")
        _check_expiry(expires_at, now)
        return subscriber_id

    def verify_legacy(self, purpose: str, token: str, *, now: float | None = None) -> int:
        """The subscriber id in a token signed for the id alone, before addresses were bound.

        It proves only that we once signed this id: whether it still means the same person is for the
        caller to judge (``pipeline.audience.linkowner``).
        """
        raw, tag, subscriber_id, expires_at = _parse(token)
        if not hmac.compare_digest(tag, self._tag(purpose, raw, None)):
            raise TokenError("invalid token signature")
        _check_expiry(expires_at, now)
        return subscriber_id

    def sign_compact(self, purpose: str, number: int, *, address: str) -> str:
        """``number`` and its tag (bound to ``address``) as lower-case base32: a token for the local part
        of an address, where some servers change letter case and ``.``/``_``/``-`` may mean something."""
        payload = number.to_bytes(max(1, (number.bit_length() + 7) // 8), "big")
        raw = payload + self._tag(purpose, payload, address)
        return base64.b32encode(raw).decode("ascii").rstrip("=").lower()

    def verify_compact(self, purpose: str, token: str, *, address: str) -> int:
        """The number in a ``sign_compact`` token; ``TokenError`` unless it was signed for ``address``."""
        payload, tag = _parse_compact(token)
        if not hmac.compare_digest(tag, self._tag(purpose, payload, address)):
            raise TokenError("invalid token signature")
        return int.from_bytes(payload, "big")

    def address_hash(self, email: str) -> str:
        """A keyed hash of a normalised address: lets erased people stay suppressed without their address."""
        digest = self._addresses.copy()
        digest.update(email.strip().lower().encode("utf-8"))
        return digest.hexdigest()


class LinkSigner:
    """``[signer.sign(purpose, id, address=…) for purpose in purposes]`` for fixed purposes, the links
    of every message of a send, called once per recipient: at half the cost of signing each. The hash state of each purpose is looked up
    once, the payload encoded once, and the tags and the payload go through one base64 pass: each tag
    padded to 18 bytes, a whole number of base64 groups, so each keeps its own 22 characters, and the
    payload after them, its characters the token's first part."""

    __slots__ = ("_payload_at", "_purposes", "_signer", "_states", "_tags_at")

    def __init__(self, signer: Signer, purposes: tuple[str, ...]) -> None:
        self._signer = signer
        self._purposes = purposes
        self._states = tuple(signer._state(purpose) for purpose in purposes)
        self._tags_at = tuple(range(0, 24 * len(purposes), 24))
        self._payload_at = 24 * len(purposes)

    def __reduce__(self) -> tuple[type[LinkSigner], tuple[Signer, tuple[str, ...]]]:
        """Pickled as its signer and purposes (hash states do not pickle), for worker processes."""
        return (LinkSigner, (self._signer, self._purposes))

    def __call__(self, subscriber_id: int, address: str) -> list[str]:
        raw = b"%d" % subscriber_id
        message = raw + b"\0" + address.encode()
        parts = []
        for purpose in self._states:
            state = purpose.copy()
            state.update(message)
            parts.append(state.digest())
        parts.append(raw)
        encoded = binascii.b2a_base64(b"\0\0".join(parts), newline=False).translate(_URL_SAFE).decode("ascii")
        prefix = encoded[self._payload_at :].rstrip("=") + "."
        return [prefix + encoded[start : start + 22] for start in self._tags_at]


def _parse(token: str) -> tuple[bytes, bytes, int, int | None]:
    """``(payload, tag, subscriber_id, expires_at)`` of a well-formed token; ``TokenError`` otherwise."""
    try:
        encoded_payload, encoded_tag = token.split(".")
        raw, tag = _unb64(encoded_payload), _unb64(encoded_tag)
        fields = raw.decode("ascii").split(".")
        if len(fields) > 2:
            raise ValueError("too many fields")
        return raw, tag, int(fields[0]), int(fields[1]) if len(fields) == 2 else None
    except (ValueError, UnicodeDecodeError) as exc:
        raise TokenError("malformed token") from exc


def compact_claim(token: str) -> int:
    """The number a ``sign_compact`` token names, unchecked: whose address to verify it against."""
    return int.from_bytes(_parse_compact(token)[0], "big")


def _parse_compact(token: str) -> tuple[bytes, bytes]:
    """``(payload, tag)`` of a well-formed compact token, whatever its letter case; ``TokenError`` otherwise."""
    try:
        raw = base64.b32decode(token.upper() + "=" * (-len(token) % 8))
    except ValueError as exc:  # binascii.Error included
        raise TokenError("malformed token") from exc
    if not _TAG_BYTES < len(raw) <= _TAG_BYTES + 8:
        raise TokenError("malformed token")
    return raw[:-_TAG_BYTES], raw[-_TAG_BYTES:]


def _check_expiry(expires_at: int | None, now: float | None) -> None:
    if expires_at is not None and (now if now is not None else time.time()) > expires_at:
        raise TokenError("token has expired")
