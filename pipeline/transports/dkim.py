"""DKIM signatures (RFC 6376) on what the SMTP transport sends: rsa-sha256, relaxed/relaxed, no ``l=``.

A receiver checks the signature against the public key published at ``SELECTOR._domainkey.DOMAIN``
(`newsletter dns` prints the record). Each copy's body differs (its links carry the recipient's
tokens), so each needs its own body hash and its own RSA operation: what can be kept cheap is the rest.
dkimpy's ``dkim.sign`` took 8.7 ms a message here against 40 µs to build one: its RSA is pure Python
(6.6 ms for 2048 bits), its relaxed body rules are three regex passes over the whole body (0.9 ms)
and it parses the message again. Here the key is loaded once, the RSA operation is OpenSSL's
(``cryptography``, 0.3 ms), the message is signed as the bytes it is sent as, and the body is
canonicalised in C-speed passes (``bench/dkim.py`` prints the cost). dkimpy's own rules are the
reference: the tests hold our body canonicalisation equal to them and verify every message with it.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import stat
import time
from collections.abc import Callable
from pathlib import Path

import idna
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from pipeline.errors import SettingsError
from pipeline.settings import Settings

Sign = Callable[[bytes], bytes]
"""A complete message (CRLF line ends, as ``MessageTemplate.build`` writes it) → the message to send."""

SIGNED = (
    "from",
    "to",
    "subject",
    "date",
    "message-id",
    "reply-to",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "list-id",
    "feedback-id",
    "mime-version",
    "content-type",
)
"""The headers a reader, a filter or a one-click unsubscribe relies on (RFC 8058 requires both
List-Unsubscribe headers signed). Each is listed once more than the message has it, so none can be
added on the way, where it would take precedence (RFC 6376 §8.15); an absent one is signed absent."""

MIN_BITS = 1024
"""RFC 8301: verifiers refuse shorter RSA keys; 2048 is what to generate."""

_LINE = 78
_RUNS = re.compile(rb"  +")  # a literal start: re skips to each candidate at C speed
_WSP = re.compile(rb"[ \t]+")


def relaxed_body(body: bytes) -> bytes:
    """The relaxed body canonicalisation (RFC 6376 §3.4.4): whitespace runs as one space, none at line
    ends, no empty lines at the end. dkimpy's ``Relaxed.canonicalize_body`` gives the same bytes (a test
    holds them equal); here each rule is one C-speed pass over the body instead of a regex at every space."""
    body = _RUNS.sub(b" ", body.replace(b"\t", b" ")).replace(b" \r\n", b"\r\n")
    end = len(body)
    while body.endswith(b"\r\n", 0, end):
        end -= 2
    return body[:end] + b"\r\n" if end else b""


def _relaxed_header(name: bytes, value: bytes) -> bytes:
    """One header field in relaxed form (RFC 6376 §3.4.2), without its line end."""
    return name.lower().rstrip() + b":" + _WSP.sub(b" ", value.replace(b"\r\n", b"")).strip()


def _fields(head: bytes) -> dict[bytes, list[bytes]]:
    """The signed header fields of ``head`` in relaxed form, by lower-case name, top to bottom."""
    found: dict[bytes, list[bytes]] = {}
    lines = head.split(b"\r\n")
    for index, line in enumerate(lines):
        if line[:1] in (b" ", b"\t"):
            continue
        name, _, value = line.partition(b":")
        key = name.lower().rstrip()
        if key.decode("ascii", "replace") in SIGNED:
            more = index + 1
            while more < len(lines) and lines[more][:1] in (b" ", b"\t"):
                more += 1
            found.setdefault(key, []).append(
                _relaxed_header(name, b"\r\n".join([value, *lines[index + 1 : more]]))
            )
    return found


def _folded(pieces: list[str]) -> str:
    """``DKIM-Signature:`` and ``pieces`` on lines of at most 78 characters, broken only before a
    piece (each starts where folding white space may stand)."""
    lines = ["DKIM-Signature:"]
    for piece in pieces:
        if len(lines[-1]) + len(piece) > _LINE:
            lines.append(" " + piece.lstrip())
        else:
            lines[-1] += piece
    return "\r\n".join(lines)


class DkimSigner:
    """Signs each message with one RSA key as ``domain`` (d=) under ``selector`` (s=)."""

    def __init__(
        self, key: rsa.RSAPrivateKey, selector: str, domain: str, clock: Callable[[], float] = time.time
    ) -> None:
        self.key = key
        self.selector = selector
        self.domain = domain
        self.clock = clock

    def __call__(self, message: bytes) -> bytes:
        """``message`` with a DKIM-Signature header on top."""
        head, _, body = message.partition(b"\r\n\r\n")
        fields = _fields(head)
        names = [name for name in SIGNED for _ in range(len(fields.get(name.encode(), [])) + 1)]
        body_hash = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest()).decode("ascii")
        tags = {
            "v": "1",
            "a": "rsa-sha256",
            "c": "relaxed/relaxed",
            "d": self.domain,
            "s": self.selector,
            "t": str(int(self.clock())),
        }
        pieces = [f" {tag}={value};" for tag, value in tags.items()]
        listed = [f"{name}:" for name in names[:-1]] + [f"{names[-1]};"]
        pieces += [" h=" + listed[0], *listed[1:], f" bh={body_hash};"]
        unsigned = _folded(pieces) + "\r\n b="
        signed = [
            fields[key].pop() for key in (name.encode() for name in names) if fields.get(key)
        ]  # each name takes the last instance not yet taken (RFC 6376 §5.4.2)
        name, _, value = unsigned.encode("ascii").partition(b":")
        data = b"".join(line + b"\r\n" for line in signed) + _relaxed_header(name, value)
        signature = base64.b64encode(self.key.sign(data, padding.PKCS1v15(), hashes.SHA256())).decode()
        first = _LINE - len(" b=")
        rest = [signature[i : i + _LINE - 1] for i in range(first, len(signature), _LINE - 1)]
        header = "\r\n ".join([unsigned + signature[:first], *rest]) + "\r\n"
        return header.encode("ascii") + message


def domain_of(address: str) -> str:
    """The domain of ``address`` in its ASCII form, as DNS and the d= tag write it."""
    domain = address.rpartition("@")[2].lower()
    return domain if domain.isascii() else idna.encode(domain, uts46=True).decode("ascii")


def signing_domain(settings: Settings) -> str:
    """``dkim.domain``, else the domain of ``sender.from_email``."""
    return settings.dkim.domain or domain_of(settings.sender.from_email)


def key_file(settings: Settings) -> Path | None:
    """Where ``dkim.private_key_file`` points (resolved like every path in the settings), if set."""
    path = settings.dkim.private_key_file
    return None if path is None else settings.path(path)


def load_key(path: Path) -> rsa.RSAPrivateKey:
    """The RSA private key in the PEM file ``path``, refused with a SettingsError naming the setting and
    the file when it cannot be used or is readable by anyone but its owner (as OpenSSH and OpenDKIM
    refuse: whoever reads it can sign mail as the domain)."""
    where = f"dkim.private_key_file: {path}"
    try:
        with path.open("rb") as file:
            mode = os.fstat(file.fileno()).st_mode
            data = file.read(1 << 16)
    except OSError as exc:
        raise SettingsError(f"{where}: cannot read the DKIM key: {exc.strerror or exc}") from None
    if mode & 0o077:
        raise SettingsError(
            f"{where}: the DKIM key is open to other users (mode {stat.filemode(mode)}); anyone who can "
            f"read it can sign mail as the domain: `chmod 600 {path}`"
        )
    try:
        key: PrivateKeyTypes = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise SettingsError(
            f"{where}: the DKIM key has a passphrase; store it without one (mode 0600)"
        ) from None
    except ValueError:
        raise SettingsError(
            f"{where}: not a PEM private key (make one with `openssl genrsa -out dkim.pem 2048`)"
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise SettingsError(f"{where}: the DKIM key must be an RSA key (rsa-sha256 is what receivers verify)")
    if key.key_size < MIN_BITS:
        raise SettingsError(
            f"{where}: a {key.key_size}-bit RSA key is too short; receivers need {MIN_BITS} bits or more "
            "(generate 2048)"
        )
    return key


def message_signer(settings: Settings) -> Sign:
    """The signer ``[dkim]`` asks for, or one that leaves messages as they are when it sets no key."""
    path = key_file(settings)
    if path is None:
        return _unsigned
    return DkimSigner(load_key(path), settings.dkim.selector, signing_domain(settings))


def _unsigned(message: bytes) -> bytes:
    return message
