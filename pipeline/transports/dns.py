"""The DNS records a sender publishes so that receivers trust its mail: SPF, DKIM and DMARC.

Gmail and Yahoo require them of bulk senders: SPF and DKIM for the domain, one of them aligned with
the From domain, and a DMARC record. What the settings determine is filled in (names, the DKIM public
key from ``dkim.private_key_file``, the sending domain); what only the operator knows (the relay's SPF
include, a mailbox for DMARC reports) is a placeholder the notes name.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization

from pipeline.settings import Settings
from pipeline.transports.dkim import domain_of, key_file, load_key, signing_domain

TXT_STRING_MAX = 255
"""A TXT record is a list of strings of at most 255 bytes each; receivers join them."""

RELAY_SPF = {
    "smtp.sendgrid.net": "include:sendgrid.net",
    "smtp.mailgun.org": "include:mailgun.org",
    "smtp.office365.com": "include:spf.protection.outlook.com",
    "smtp.gmail.com": "include:_spf.google.com",
    "smtp-relay.gmail.com": "include:_spf.google.com",
    "smtp.postmarkapp.com": "include:spf.mtasv.net",
}
"""The SPF include of a few well-known relays, by SMTP host; others are a placeholder."""

_LOCAL = {"localhost", "127.0.0.1", "::1"}


@dataclass(frozen=True, slots=True)
class DnsRecord:
    kind: str
    """SPF, DKIM or DMARC."""
    name: str
    """The owner name, fully qualified (without the final dot)."""
    value: str | None
    """The TXT value; None when the provider gives the record instead (SendGrid's CNAMEs)."""
    notes: tuple[str, ...] = ()

    @property
    def strings(self) -> list[str]:
        """``value`` as the TXT record's strings, each within 255 characters (a DKIM key is longer)."""
        text = self.value or ""
        return [text[i : i + TXT_STRING_MAX] for i in range(0, len(text), TXT_STRING_MAX)]


def sender_records(settings: Settings, transport: str) -> list[DnsRecord]:
    """The SPF, DKIM and DMARC records for mail sent through ``transport`` (smtp or sendgrid)."""
    domain = domain_of(settings.sender.from_email)
    if transport == "sendgrid":
        return [*_sendgrid(domain), _dmarc(settings, domain)]
    spf = [_spf_for_smtp(settings, envelope) for envelope in _envelope_domains(settings)]
    return [*spf, _dkim(settings), _dmarc(settings, domain)]


def _envelope_domains(settings: Settings) -> list[str]:
    """The domains of the SMTP envelope sender (MAIL FROM), on which receivers check SPF: the From
    domain (test copies and confirmations, and everything while ``bounces.return_path`` is unset) and
    the return path's (campaign messages)."""
    addresses = [settings.sender.from_email, settings.bounces.return_path]
    return list(dict.fromkeys(domain_of(address) for address in addresses if address))


def _spf_for_smtp(settings: Settings, domain: str) -> DnsRecord:
    host = settings.smtp.host.lower()
    merge = "A domain has one SPF record: merge this into yours if it has one."
    if host in _LOCAL:
        return DnsRecord(
            "SPF",
            domain,
            "v=spf1 ip4:SERVER-IPV4 ~all",
            (
                "smtp.host is this machine: if its mail server relays through a provider, include the "
                "provider's SPF domain instead; else replace SERVER-IPV4 with the public address mail "
                "leaves from (and add ip6:… if it sends over IPv6).",
                merge,
            ),
        )
    include = RELAY_SPF.get(host)
    if include:
        return DnsRecord("SPF", domain, f"v=spf1 {include} ~all", (f"The include of {host}.", merge))
    return DnsRecord(
        "SPF",
        domain,
        "v=spf1 include:RELAY-SPF-DOMAIN ~all",
        (
            f"Replace RELAY-SPF-DOMAIN with the domain {host}'s provider says to include "
            "(its documentation on SPF names it).",
            merge,
        ),
    )


def _dkim(settings: Settings) -> DnsRecord:
    domain, selector = signing_domain(settings), settings.dkim.selector
    name = f"{selector}._domainkey.{domain}"
    path = key_file(settings)
    if path is None:
        return DnsRecord(
            "DKIM",
            name,
            None,
            (
                "No key yet: `openssl genrsa -out /etc/newsletter/dkim.pem 2048 && chmod 600 "
                "/etc/newsletter/dkim.pem`, set dkim.private_key_file to it, and run this again.",
            ),
        )
    public = (
        load_key(path)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return DnsRecord(
        "DKIM",
        name,
        f"v=DKIM1; k=rsa; p={base64.b64encode(public).decode('ascii')}",
        (
            f"The public half of {path}. A zone file needs it in strings of at most 255 characters; "
            "most web DNS consoles take it in one piece and split it themselves.",
        ),
    )


def _dmarc(settings: Settings, domain: str) -> DnsRecord:
    notes = [
        f"rua is where receivers mail daily aggregate reports: create dmarc-reports@{domain} or put "
        "a DMARC report service's address there.",
        "Start with p=none; once the reports show all your mail passing, move to p=quarantine, then p=reject.",
    ]
    signer = signing_domain(settings)
    if signer != domain and not domain.endswith("." + signer) and not signer.endswith("." + domain):
        notes.append(
            f"dkim.domain {signer} is not {domain} or a parent of it: DMARC passes only if both share "
            "their organisational domain."
        )
    return DnsRecord(
        "DMARC", f"_dmarc.{domain}", f"v=DMARC1; p=none; rua=mailto:dmarc-reports@{domain}", tuple(notes)
    )


def _sendgrid(domain: str) -> list[DnsRecord]:
    where = "SendGrid → Settings → Sender Authentication → Authenticate Your Domain"
    return [
        DnsRecord(
            "SPF",
            domain,
            None,
            (
                f"{where} gives a CNAME for the return path (em….{domain}) that covers SPF; "
                "with automated security off, publish v=spf1 include:sendgrid.net ~all instead.",
            ),
        ),
        DnsRecord(
            "DKIM",
            f"s1._domainkey.{domain}",
            None,
            (f"{where} gives two CNAMEs (s1._domainkey and s2._domainkey) and signs for you.",),
        ),
    ]
