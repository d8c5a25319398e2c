"""Issue 14, item 1: DKIM on the SMTP path, checked by dkimpy against the public key, and `newsletter dns`.

Every message a real SMTP server (aiosmtpd) receives is verified with ``dkim.verify``, its DNS lookup
answered with the test key's TXT record; tampering must make it fail. A key that cannot be used stops
the send before anything is frozen.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
import secrets
from collections.abc import Callable
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from dkim.canonicalization import Relaxed
from dkim.util import parse_tag_value
from hypothesis import given
from hypothesis import strategies as st

from pipeline.audience.subscribers import add_subscriber
from pipeline.dispatch.single import send_confirmation
from pipeline.errors import SettingsError
from pipeline.render.renderer import Renderer
from pipeline.settings import Settings, load_settings
from pipeline.store.engine import open_store
from pipeline.store.statuses import SubscriberStatus
from pipeline.transports.dkim import message_signer, relaxed_body
from pipeline.transports.smtp import SmtpTransport
from tests.fixtures.project import CliInvoker, cli_invoker
from tests.fixtures.smtp import SmtpServer
from tests.test_transport_smtp import smtp_settings
from tests.transport_helpers import make_batch

ISSUE = "issues/2026-12-08-realistic-expectations.yaml"
KEY_SETTING = '# private_key_file = "/etc/newsletter/dkim.pem"'
RELATIVE_KEY = "keys/dkim.pem"
RECORD_NAME = b"newsletter._domainkey.news.example.org."
DnsFunc = Callable[..., bytes | None]


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def write_key(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
    return path


def txt_record(private: rsa.RSAPrivateKey) -> bytes:
    """The DKIM record a sender publishes for ``private``, built here independently of the code."""
    der = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)


def dns_answering(record: bytes) -> DnsFunc:
    """A DNS lookup that knows one name: the selector's record under news.example.org."""

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        return record if name == RECORD_NAME else None

    return lookup


def signature_tags(message: bytes) -> dict[bytes, bytes]:
    header = re.search(rb"^DKIM-Signature:(.*?)\r\n(?=\S)", message, re.S | re.M)
    assert header, "no DKIM-Signature header"
    return dict(parse_tag_value(header[1]))


def signed_names(message: bytes) -> list[str]:
    return [name.strip().decode() for name in signature_tags(message)[b"h"].split(b":")]


def with_key(project: Path, line: str = f'private_key_file = "{RELATIVE_KEY}"') -> Path:
    """The project's settings.toml with [dkim] private_key_file set (relative: under the project)."""
    path = project / "settings.toml"
    text = path.read_text(encoding="utf-8")
    assert KEY_SETTING in text
    path.write_text(text.replace(KEY_SETTING, line), encoding="utf-8")
    return path


def to_smtp_server(project: Path, server: SmtpServer) -> None:
    path = project / "settings.toml"
    text = path.read_text(encoding="utf-8").replace('host = "localhost"', 'host = "127.0.0.1"', 1)
    text = text.replace("port = 587", f"port = {server.port}").replace(
        'security = "starttls"', 'security = "none"'
    )
    path.write_text(text, encoding="utf-8")


@pytest.fixture
def signed_project(project: Path, key: rsa.RSAPrivateKey, smtp_server: SmtpServer) -> Path:
    """The project copy sending over SMTP to the test server, signing with ``key`` from keys/dkim.pem."""
    write_key(project / RELATIVE_KEY, pem(key))
    with_key(project)
    to_smtp_server(project, smtp_server)
    return project


# Every message verifies; the RFC 8058 headers are signed


def test_a_campaign_over_smtp_arrives_signed_and_dkimpy_verifies_every_message(
    signed_project: Path, run: CliInvoker, smtp_server: SmtpServer, key: rsa.RSAPrivateKey
) -> None:
    result = run("send", ISSUE, "--transport", "smtp", "--yes")

    assert "50 sent" in result.output
    received = smtp_server.handler.received
    assert len(received) == 50
    lookup = dns_answering(txt_record(key))
    for item in received:
        assert dkim.verify(item.data, dnsfunc=lookup), item.rcpt_tos
        tags = signature_tags(item.data)
        assert (tags[b"a"], tags[b"c"], tags[b"d"], tags[b"s"]) == (
            b"rsa-sha256",
            b"relaxed/relaxed",
            b"news.example.org",
            b"newsletter",
        )
        assert b"l" not in tags
        names = signed_names(item.data)
        for required in ("from", "to", "subject", "date", "message-id", "mime-version", "content-type"):
            assert required in names
        assert {"list-unsubscribe", "list-unsubscribe-post", "list-id", "reply-to"} <= set(names)


def test_each_signed_header_is_sealed_against_a_second_copy(
    signed_project: Path, run: CliInvoker, smtp_server: SmtpServer
) -> None:
    """Listed once more than the message has it, so a List-Unsubscribe added on the way breaks the
    signature instead of taking precedence."""
    run("send", ISSUE, "--transport", "smtp", "--to", "editor@example.org")

    names = signed_names(smtp_server.handler.received[0].data)
    assert names.count("list-unsubscribe") == names.count("list-unsubscribe-post") == 2
    assert names.count("from") == names.count("subject") == 2


def test_a_test_copy_is_signed(
    signed_project: Path, run: CliInvoker, smtp_server: SmtpServer, key: rsa.RSAPrivateKey
) -> None:
    result = run("send", ISSUE, "--transport", "smtp", "--to", "editor@example.org")

    assert "Test copy to editor@example.org: sent" in result.output
    (item,) = smtp_server.handler.received
    assert dkim.verify(item.data, dnsfunc=dns_answering(txt_record(key)))


def test_a_signup_confirmation_is_signed(
    signed_project: Path, smtp_server: SmtpServer, key: rsa.RSAPrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "c" * 40)
    settings = load_settings(signed_project / "settings.toml")
    with open_store(settings) as store:
        person = add_subscriber(store, "new@example.com", status=SubscriberStatus.UNCONFIRMED)
        transport = SmtpTransport.from_settings(settings)
        outcome = send_confirmation(
            settings, store, Renderer(settings), transport, person.id, dt.datetime.now(dt.UTC)
        )
        transport.close()

    assert outcome is not None and outcome.status == "sent"
    (item,) = smtp_server.handler.received
    assert dkim.verify(item.data, dnsfunc=dns_answering(txt_record(key)))


def test_without_a_key_nothing_is_signed(settings: Settings, smtp_server: SmtpServer) -> None:
    transport = SmtpTransport(smtp_settings(settings, smtp_server.port), None)
    transport.send(make_batch(settings, ["reader@example.com"]))
    transport.close()

    assert b"DKIM-Signature" not in smtp_server.handler.received[0].data


# The verification can fail: what tampering does, and what relays may do without harm


@pytest.fixture
def signed_message(settings: Settings, key: rsa.RSAPrivateKey, tmp_path: Path) -> bytes:
    path = write_key(tmp_path / "dkim.pem", pem(key))
    dkim_settings = settings.dkim.model_copy(update={"private_key_file": path})
    sign = message_signer(settings.model_copy(update={"dkim": dkim_settings}))
    batch = make_batch(settings, ["reader@example.com"])
    envelope = batch.envelopes[0]
    return sign(
        batch.message.build(envelope.recipient, envelope.fields, message_id=batch.message.message_id())
    )


def test_a_tampered_message_fails_verification(signed_message: bytes, key: rsa.RSAPrivateKey) -> None:
    lookup = dns_answering(txt_record(key))
    assert dkim.verify(signed_message, dnsfunc=lookup)

    head, _, body = signed_message.partition(b"\r\n\r\n")
    link = re.search(rb"/u/[A-Za-z0-9_.-]+", body)
    assert link
    other_token = link[0][:-1] + (b"A" if link[0][-1:] != b"A" else b"B")
    tampered = {
        "a link in the body": head + b"\r\n\r\n" + body.replace(link[0], other_token, 1),
        "the subject": signed_message.replace(b"Subject: ", b"Subject: Re: ", 1),
        "a second List-Unsubscribe": signed_message.replace(
            b"\r\nList-Unsubscribe:",
            b"\r\nList-Unsubscribe: <https://evil.example/u/x>\r\nList-Unsubscribe:",
            1,
        ),
        "a second Reply-To": signed_message.replace(
            b"\r\nSubject:", b"\r\nReply-To: evil@example.net\r\nSubject:", 1
        ),
    }
    for what, message in tampered.items():
        assert message != signed_message, what
        assert not dkim.verify(message, dnsfunc=lookup), what


def test_what_relays_do_in_transit_keeps_the_signature(signed_message: bytes, key: rsa.RSAPrivateKey) -> None:
    """relaxed/relaxed: a Received header on top, refolded headers, extra spaces in a line all pass."""
    lookup = dns_answering(txt_record(key))
    head, _, body = signed_message.partition(b"\r\n\r\n")
    relayed = (
        b"Received: from sender by mx.example.com; Wed, 2 Dec 2026 10:00:00 +0000\r\n"
        + head.replace(b"Subject: ", b"Subject:   ", 1).replace(b">,\r\n <mailto:", b">, <mailto:", 1)
        + b"\r\n\r\n"
        + body.replace(b" ", b"  ", 5)
        + b"\r\n\r\n"
    )
    assert dkim.verify(relayed, dnsfunc=lookup)


def test_another_key_does_not_verify(signed_message: bytes) -> None:
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert not dkim.verify(signed_message, dnsfunc=dns_answering(txt_record(stranger)))


@given(st.lists(st.sampled_from([b"a", b"=", b" ", b"\t", b"  ", b"\r\n", b"\r\n\r\n"]), max_size=40))
def test_body_canonicalisation_is_dkimpys(pieces: list[bytes]) -> None:
    body = b"".join(pieces)
    assert relaxed_body(body) == Relaxed.canonicalize_body(body)


# A key that cannot be used: a clear error when the transport opens, and nothing frozen


def short_key() -> rsa.RSAPrivateKey:
    """A 512-bit RSA key (cryptography refuses to generate one, but loads it)."""

    def prime() -> int:
        while True:
            n = secrets.randbits(256) | (1 << 255) | 1
            if all(pow(base, n - 1, n) == 1 for base in (2, 3, 5, 7, 11, 13, 17)):
                return n

    e = 65537
    while True:
        p, q = prime(), prime()
        if p != q and ((p - 1) * (q - 1)) % e:
            break
    d = pow(e, -1, (p - 1) * (q - 1))
    public = rsa.RSAPublicNumbers(e, p * q)
    return rsa.RSAPrivateNumbers(p, q, d, d % (p - 1), d % (q - 1), pow(q, -1, p), public).private_key()


def encrypted(private: rsa.RSAPrivateKey) -> bytes:
    return private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    )


def folder(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True)
    return path


BAD_KEYS: dict[str, tuple[Callable[[rsa.RSAPrivateKey, Path], Path], str]] = {
    "missing": (lambda key, path: path, "cannot read the DKIM key: No such file or directory"),
    "a folder": (lambda key, path: folder(path), "cannot read the DKIM key: Is a directory"),
    "readable by others": (lambda key, path: write_key(path, pem(key), 0o644), "chmod 600"),
    "readable by its group": (lambda key, path: write_key(path, pem(key), 0o640), "-rw-r-----"),
    "not a key": (lambda key, path: write_key(path, b"ssh-rsa AAAAB3Nza hello\n"), "not a PEM private key"),
    "a passphrase": (lambda key, path: write_key(path, encrypted(key)), "has a passphrase"),
    "an EC key": (
        lambda key, path: write_key(path, pem(ec.generate_private_key(ec.SECP256R1()))),
        "must be an RSA key",
    ),
    "too short": (lambda key, path: write_key(path, pem(short_key())), "too short"),
}


@pytest.mark.parametrize("case", list(BAD_KEYS))
def test_a_key_that_cannot_be_used_is_a_settings_error_naming_the_setting_and_file(
    case: str, settings: Settings, key: rsa.RSAPrivateKey, tmp_path: Path
) -> None:
    make, expected = BAD_KEYS[case]
    path = make(key, tmp_path / "keys" / "dkim.pem")
    dkim_settings = settings.dkim.model_copy(update={"private_key_file": path})

    with pytest.raises(SettingsError) as caught:
        SmtpTransport(settings.model_copy(update={"dkim": dkim_settings}), None)

    assert str(caught.value).startswith(f"dkim.private_key_file: {path}: ")
    assert expected in str(caught.value)


def test_a_key_open_to_others_stops_the_send_before_the_audience_is_frozen(
    signed_project: Path, run: CliInvoker, smtp_server: SmtpServer
) -> None:
    (signed_project / RELATIVE_KEY).chmod(0o644)

    result = run("send", ISSUE, "--transport", "smtp", "--yes", expect=1)

    assert f"dkim.private_key_file: {signed_project / RELATIVE_KEY}" in result.output
    assert "chmod 600" in result.output
    assert "realistic-expectations" not in run("campaigns").output
    assert smtp_server.handler.received == []


@pytest.mark.parametrize(
    ("key_line", "field"),
    [('selector = "my selector"', "dkim.selector"), ('domain = "-news.example.org"', "dkim.domain")],
)
def test_a_selector_or_domain_that_is_no_dns_name_is_refused_at_its_line(
    project: Path, key_line: str, field: str
) -> None:
    path = project / "settings.toml"
    text = path.read_text(encoding="utf-8").replace('selector = "newsletter"', f"{key_line}", 1)
    path.write_text(text, encoding="utf-8")
    line = next(n for n, text in enumerate(path.read_text().splitlines(), 1) if text.startswith(key_line))

    with pytest.raises(SettingsError) as caught:
        load_settings(path)

    assert f"settings.toml:{line}:1: error: {field}: " in str(caught.value)
    assert "is not a DNS name" in str(caught.value)


# `newsletter dns`


def dns_output(project: Path, *args: str, expect: int = 0) -> str:
    """`newsletter dns` run from another working directory, so relative paths must resolve against
    the settings file's folder."""
    return cli_invoker(project / "settings.toml")("dns", *args, expect=expect).output


def record_block(output: str, kind: str) -> str:
    """The lines of the record of ``kind`` (from its heading to the next blank line)."""
    block = re.search(rf"^{kind} at .*?(?:\n\n|\Z)", output, re.S | re.M)
    assert block, output
    return block[0]


def test_the_printed_dkim_record_verifies_a_message_signed_with_the_key(
    project: Path, key: rsa.RSAPrivateKey, signed_message: bytes
) -> None:
    write_key(project / RELATIVE_KEY, pem(key))
    with_key(project)

    block = record_block(dns_output(project, "--transport", "smtp"), "DKIM")

    assert block.startswith("DKIM at newsletter._domainkey.news.example.org\n")
    assert "newsletter._domainkey.news.example.org. 3600 IN TXT (" in block
    strings = re.findall(r'"([^"]*)"', block)
    assert len(strings) >= 2 and all(len(text) <= 255 for text in strings)
    printed = "".join(strings).encode("ascii")
    assert dkim.verify(signed_message, dnsfunc=dns_answering(printed))
    assert f"in one piece, for a web DNS console: {printed.decode()}\n" in block


def test_dns_prints_spf_and_dmarc_for_the_sender_domain(project: Path) -> None:
    path = project / "settings.toml"
    path.write_text(
        path.read_text(encoding="utf-8").replace('host = "localhost"', 'host = "smtp.mailgun.org"', 1),
        encoding="utf-8",
    )

    output = dns_output(project, "--transport", "smtp")

    assert 'news.example.org. 3600 IN TXT "v=spf1 include:mailgun.org ~all"' in record_block(output, "SPF")
    dmarc = record_block(output, "DMARC")
    assert (
        '_dmarc.news.example.org. 3600 IN TXT "v=DMARC1; p=none; rua=mailto:dmarc-reports@news.example.org"'
        in dmarc
    )
    assert "p=quarantine" in dmarc
    assert "openssl genrsa" in record_block(output, "DKIM")  # no key set: how to make one


def test_dns_for_sendgrid_points_to_its_domain_authentication(project: Path) -> None:
    output = dns_output(project, "--transport", "sendgrid")

    assert "Authenticate Your Domain" in record_block(output, "DKIM")
    assert "IN TXT" not in record_block(output, "DKIM")
    assert "v=DMARC1" in record_block(output, "DMARC")


def test_dns_with_a_key_open_to_others_is_the_same_clean_error(project: Path, key: rsa.RSAPrivateKey) -> None:
    write_key(project / RELATIVE_KEY, pem(key), 0o604)
    with_key(project)

    output = dns_output(project, expect=1)

    assert f"dkim.private_key_file: {project / RELATIVE_KEY}" in output and "chmod 600" in output


def test_dns_gives_the_return_path_domain_its_spf_record_too(project: Path) -> None:
    """Receivers check SPF on MAIL FROM: campaign messages use bounces.return_path, single copies the From."""
    path = project / "settings.toml"
    text = path.read_text(encoding="utf-8")
    path.write_text(
        text.replace(
            '# return_path = "bounces@news.example.org"', 'return_path = "bounces@mail.example.org"'
        ),
        encoding="utf-8",
    )

    output = dns_output(project, "--transport", "smtp")

    assert re.findall(r"^SPF at (\S+)$", output, re.M) == ["news.example.org", "mail.example.org"]
    assert 'mail.example.org. 3600 IN TXT "v=spf1 ip4:SERVER-IPV4 ~all"' in output  # smtp.host is localhost
    assert "replace SERVER-IPV4" in output


def test_dns_warns_when_the_signing_domain_cannot_align_with_the_from_domain(project: Path) -> None:
    path = project / "settings.toml"
    text = path.read_text(encoding="utf-8")
    path.write_text(
        text.replace('# domain = "news.example.org"', 'domain = "other.example.net"'), encoding="utf-8"
    )

    output = dns_output(project, "--transport", "smtp")

    assert "DKIM at newsletter._domainkey.other.example.net" in output
    assert "dkim.domain other.example.net is not news.example.org or a parent of it" in record_block(
        output, "DMARC"
    )
