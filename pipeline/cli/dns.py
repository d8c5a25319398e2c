"""``newsletter dns``: the SPF, DKIM and DMARC records to publish, as zone-file lines with notes."""

from __future__ import annotations

import click

from pipeline.cli.context import CliContext, console, pass_context
from pipeline.transports.dns import DnsRecord, sender_records

MAIL_TRANSPORTS = ("smtp", "sendgrid")


def zone_lines(record: DnsRecord) -> list[str]:
    """The record as a zone file writes it: a long value as a parenthesised list of quoted strings."""
    head = f"{record.name}. 3600 IN TXT"
    strings = [f'"{text}"' for text in record.strings]
    if len(strings) == 1:
        return [f"{head} {strings[0]}"]
    return [f"{head} (", *(f"    {text}" for text in strings), ")"]


@click.command()
@click.option(
    "--transport",
    type=click.Choice(MAIL_TRANSPORTS),
    default=None,
    help="The records for this transport.  [default: delivery.transport, or smtp for the outbox]",
)
@pass_context
def dns(ctx: CliContext, transport: str | None) -> None:
    """Print the DNS records (SPF, DKIM, DMARC) the sender's domain must publish, from the settings.

    Gmail and Yahoo refuse bulk mail without them. The DKIM record carries the public half of
    dkim.private_key_file; placeholders in capitals (SERVER-IPV4, RELAY-SPF-DOMAIN) are for you to fill.
    """
    settings = ctx.settings
    configured = settings.delivery.transport
    chosen = transport or (configured if configured in MAIL_TRANSPORTS else "smtp")
    console.print(f"DNS records for mail sent through {chosen}:", markup=False)
    for record in sender_records(settings, chosen):
        console.print()
        console.print(f"{record.kind} at {record.name}", style="bold", markup=False)
        lines = zone_lines(record) if record.value is not None else []
        if len(record.strings) > 1:
            lines.append(f"  in one piece, for a web DNS console: {record.value}")
        for line in [*lines, *(f"  {note}" for note in record.notes)]:
            console.print(line, markup=False, soft_wrap=True)
