"""DKIM signatures (RFC 6376) on what the SMTP transport sends: rsa-sha256, relaxed/relaxed, no ``l=``.

A receiver checks the signature against the public key published at ``SELECTOR._domainkey.DOMAIN``
(`newsletter dns` prints the record). Each copy's body differs (its links carry the recipient's
tokens), so each needs its own body hash and its own RSA operation: what can be kept cheap is the rest.
dkimpy's ``dkim.sign`` took 8.3 ms a message here, against 25 µs to build one: its RSA is pure Python
(6.6 ms for 2048 bits, holding the GIL), its relaxed body rules are three regex passes over the
whole body (0.9 ms) and it parses the message again. Here the key is loaded once, the RSA operation
is OpenSSL's (``cryptography``: 0.3 ms, outside the GIL, so the SMTP connections' threads sign in
parallel), the message is signed as the bytes it is sent as, and the body is canonicalised in
C-speed passes: about 0.5 ms a message in all (``bench/dkim.py``). dkimpy's rules are the reference:
the tests hold our body canonicalisation equal to its own and verify every message with it.
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
    b"from",
    b"to",
    b"subject",
    b"date",
    b"message-id",
    b"reply-to",
    b"list-unsubscribe",
    b"list-unsubscribe-post",
    b"list-id",
    b"feedback-id",
    b"mime-version",
    b"content-type",
)
"""The headers a reader, a filter or a one-click unsubscribe relies on (RFC 8058 requires both
List-Unsubscribe headers signed). Each is listed once more than the message has it, so none can be
added on the way, where it would take precedence (RFC 6376 §8.15); an absent one is signed absent."""

MIN_BITS = 1024
"""RFC 8301: verifiers refuse shorter RSA keys; 2048 is what to generate."""

_LINE = 78
_CONTINUED = (b" ", b"\t")
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


def _relaxed_header(field: bytes) -> bytes:
    """One header field (``Name: value``, maybe folded) in relaxed form (RFC 6376 §3.4.2), no line end."""
    name, _, value = field.partition(b":")
    return name.lower().rstrip() + b":" + _WSP.sub(b" ", value.replace(b"\r\n", b"")).strip()


def _fields(head: bytes) -> dict[bytes, list[bytes]]:
    """The signed header fields of ``head`` in relaxed form, by lower-case name, top to bottom."""
    found: dict[bytes, list[bytes]] = {}
    lines = head.split(b"\r\n")
    for index, line in enumerate(lines):
        name = line.partition(b":")[0].lower().rstrip()
        if name in SIGNED and line[:1] not in _CONTINUED:
            end = index + 1
            while end < len(lines) and lines[end][:1] in _CONTINUED:
                end += 1
            found.setdefault(name, []).append(_relaxed_header(b"\r\n".join(lines[index:end])))
    return found


def _folded(pieces: list[bytes]) -> bytes:
    """``pieces`` joined on lines of at most 78 characters, broken only before a piece (each starts
    where folding white space may stand)."""
    lines = [pieces[0]]
    for piece in pieces[1:]:
        if len(lines[-1]) + len(piece) > _LINE:
            lines.append(b" " + piece.lstrip())
        else:
            lines[-1] += piece
    return b"\r\n".join(lines)


class DkimSigner:
    """Signs each message with one RSA key as ``domain`` (d=) under ``selector`` (s=)."""

    def __init__(
        self, key: rsa.RSAPrivateKey, selector: str, domain: str, clock: Callable[[], float] = time.time
    ) -> None:
        self.key = key
        self.tags = [
            b"v=1",
            b"a=rsa-sha256",
            b"c=relaxed/relaxed",
            b"d=" + domain.encode(),
            b"s=" + selector.encode(),
        ]
        self.clock = clock

    def __call__(self, message: bytes) -> bytes:
        """``message`` with a DKIM-Signature header on top."""
        head, _, body = message.partition(b"\r\n\r\n")
        fields = _fields(head)
        names = [name for name in SIGNED for _ in range(len(fields.get(name, ())) + 1)]
        body_hash = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest())
        unsigned = self._unsigned(names, body_hash)
        hashed = [fields[name].pop() for name in names if fields.get(name)]  # bottom up (RFC 6376 §5.4.2)
        data = b"".join(field + b"\r\n" for field in hashed) + _relaxed_header(unsigned)
        signature = base64.b64encode(self.key.sign(data, padding.PKCS1v15(), hashes.SHA256()))
        first = _LINE - len(b" b=")
        lines = [
            signature[:first],
            *(signature[i : i + _LINE - 1] for i in range(first, len(signature), _LINE - 1)),
        ]
        return unsigned + b"\r\n ".join(lines) + b"\r\n" + message

    def _unsigned(self, names: list[bytes], body_hash: bytes) -> bytes:
        """The DKIM-Signature header up to an empty ``b=`` on a line of its own: what is hashed, and
        what the signature then completes without refolding anything before it."""
        tags = [*self.tags, b"t=%d" % int(self.clock())]
        listed = [name + b":" for name in names[:-1]] + [names[-1] + b";"]
        pieces = [b"DKIM-Signature:", *(b" " + tag + b";" for tag in tags), b" h=" + listed[0], *listed[1:]]
        return _folded([*pieces, b" bh=" + body_hash + b";"]) + b"\r\n b="


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
