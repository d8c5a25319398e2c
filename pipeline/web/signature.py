"""SendGrid's signed Event Webhook: ECDSA P-256 / SHA-256 over ``timestamp + raw body``.

Verified with ``cryptography`` on the raw bytes (``sendgrid.helpers.eventwebhook`` wants text, raises
on a signature that is not base64 and never looks at the timestamp). A signed timestamp older than
``webhook_max_age_seconds``, or more than a few minutes ahead of our clock, is refused: a captured
post cannot be replayed later, and replays inside the window are harmless (events are de-duplicated).
"""

from __future__ import annotations

import base64
import binascii

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key, load_pem_public_key

from pipeline.errors import SettingsError

SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"
FUTURE_SKEW_SECONDS = 300
"""How far ahead of our clock a signed timestamp may be (clocks drift a little, never by hours)."""
_MAX_SIGNATURE_CHARS = 512


def load_public_key(text: str) -> ec.EllipticCurvePublicKey:
    """SendGrid's verification key as shown in its settings (base64 DER), or the same in PEM."""
    try:
        if "BEGIN PUBLIC KEY" in text:
            key = load_pem_public_key(text.encode("ascii"))
        else:
            key = load_der_public_key(base64.b64decode("".join(text.split()), validate=True))
    except (ValueError, binascii.Error, UnicodeEncodeError) as exc:
        raise SettingsError(f"web.webhook_public_key: not a valid public key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise SettingsError("web.webhook_public_key: must be an ECDSA P-256 public key (SendGrid's)")
    return key


class SignatureVerifier:
    """Checks the two signed-webhook headers; each check returns what is wrong, or None."""

    def __init__(self, public_key: str, *, max_age_seconds: int) -> None:
        self.key = load_public_key(public_key)
        self.max_age_seconds = max_age_seconds

    def stale(self, timestamp: str | None, now: float) -> str | None:
        """Why the signed timestamp is unacceptable (missing, malformed, too old, in the future)."""
        if not timestamp:
            return f"no {TIMESTAMP_HEADER} header"
        if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
            return "timestamp is not a Unix time"
        age = now - int(timestamp)
        if age > self.max_age_seconds:
            return f"timestamp is {int(age)} s old (more than web.webhook_max_age_seconds)"
        if -age > FUTURE_SKEW_SECONDS:
            return f"timestamp is {int(-age)} s in the future"
        return None

    def forged(self, body: bytes, signature: str | None, timestamp: str) -> str | None:
        """Why the signature does not prove SendGrid sent exactly this body at this time."""
        if not signature:
            return f"no {SIGNATURE_HEADER} header"
        if len(signature) > _MAX_SIGNATURE_CHARS:
            return "signature too long"
        try:
            der = base64.b64decode(signature, validate=True)
            self.key.verify(der, timestamp.encode("ascii") + body, ec.ECDSA(hashes.SHA256()))
        except (binascii.Error, ValueError):
            return "signature is not base64"
        except InvalidSignature:
            return "signature does not match"
        return None
