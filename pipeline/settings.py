"""settings.toml → one typed, validated ``Settings`` object; secrets come only from the environment.

Every option has its help text here (``description``) and a comment in ``settings.toml``; a test keeps
both in step. Relative paths are resolved against the directory of the settings file, so commands work
from any working directory.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from email_validator import EmailNotValidError, validate_email
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from pipeline.errors import Problem, SettingsError
from pipeline.validation import field_errors, invisible_kind

SETTINGS_ENV = "NEWSLETTER_SETTINGS"
SECRET_ENV_NAMES = (
    "NEWSLETTER_SECRET_KEY",
    "SENDGRID_API_KEY",
    "SMTP_PASSWORD",
    "IMAP_PASSWORD",
    "NEWSLETTER_ADMIN_PASSWORD",
)


def _email(value: str) -> str:
    try:
        return validate_email(value, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise ValueError(f"not a valid email address: {exc}") from None


def _timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone '{value}' (use an IANA name such as Europe/London)") from None
    return value


TRANSPORTS = {
    "outbox": "pipeline.transports.outbox:OutboxTransport",
    "smtp": "pipeline.transports.smtp:SmtpTransport",
    "sendgrid": "pipeline.transports.sendgrid:SendGridTransport",
}
"""Every transport, by the name settings and ``--transport`` use, and the class that implements it
(imported only when opened). A new transport is one file in ``pipeline/transports/`` plus a line here
(and its own settings section below, if it has settings)."""


def _transport(value: str) -> str:
    if value not in TRANSPORTS:
        raise ValueError(f"unknown transport '{value}'; one of {', '.join(map(repr, TRANSPORTS))}")
    return value


def _base_url(value: str) -> str:
    if problems := list(_base_url_problems(value)):
        parts = urlsplit(value)
        shown = (
            parts._replace(netloc="…@" + parts.netloc.rpartition("@")[2]) if "@" in parts.netloc else parts
        )
        raise ValueError(
            f"'{shown.geturl()}' {' and '.join(problems)}; every link is this plus a path (/u/…), "
            "so write it like https://news.example.org"
        )
    return value.rstrip("/")


def _base_url_problems(value: str) -> Iterator[str]:
    """What keeps ``value`` from being the start of every link in a message."""
    if any(char.isspace() or invisible_kind(char) for char in value):
        yield "has spaces or invisible characters"
    if not value.isascii():
        yield "is not ASCII (write an international host name as xn--…)"
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"}:
        yield "is not an absolute http(s) URL"
    elif not parts.hostname:
        yield "has no host name"
    if "@" in parts.netloc:
        yield "has a user name or password in it"
    if "?" in value.partition("#")[0]:
        yield f"has a query ('?{parts.query}')"
    if "#" in value:
        yield f"has a fragment ('#{parts.fragment}')"
    try:
        port_ok = parts.port != 0
    except ValueError:
        port_ok = False
    if not port_ok:
        yield "has a port that is not a number from 1 to 65535"


STORE_DRIVERS = ("sqlite", "postgresql+psycopg", "postgresql", "postgres")
"""The store URL schemes the store opens (``postgresql`` and ``postgres`` mean psycopg 3)."""
_DATABASE_URL = re.compile(r"(?P<driver>[\w+]+)://.*", re.S)
"""SQLAlchemy's own test of a URL (``make_url``), without importing SQLAlchemy into every command."""


def _store_url(value: str) -> str:
    example = "write sqlite:///var/newsletter.db or postgresql+psycopg://user@host/db"
    if not (url := _DATABASE_URL.fullmatch(value)):
        raise ValueError(f"is not a database URL; {example}")
    if url["driver"] not in STORE_DRIVERS:
        raise ValueError(f"'{url['driver']}' is not a database the store can use; {example}")
    return value


_DEFAULT_PORTS = {"http": 80, "https": 443}
_HOST = re.compile(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?|\[[0-9a-f:.]+\]")


def origin_of(url: str) -> str | None:
    """The origin of an http(s) ``url`` as a browser writes it in ``Origin`` (``https://host[:port]``,
    lower case, no default port); None when it has none (another scheme, no or odd host or port)."""
    parts = urlsplit(url.strip())
    try:
        port = parts.port
    except ValueError:
        return None
    netloc = parts.netloc.lower()
    host = netloc.rsplit(":", 1)[0] if port is not None else netloc
    if parts.scheme.lower() not in _DEFAULT_PORTS or not _HOST.fullmatch(host) or port == 0:
        return None
    default = port in (None, _DEFAULT_PORTS[parts.scheme.lower()])
    return f"{parts.scheme.lower()}://{host}" + ("" if default else f":{port}")


def _origin(value: str) -> str:
    origin = origin_of(value)
    parts = urlsplit(value)
    if origin is None or value.lower() != f"{parts.scheme}://{parts.netloc}".lower():
        raise ValueError(
            f"'{value}' is not an origin: write scheme://host[:port] with no path, slash or wildcard, "
            "like https://www.example.org (an international host name as xn--…)"
        )
    return origin


def _category(value: str) -> str:
    if not (value.isascii() and value.isprintable()):
        raise ValueError(f"'{value}' is not plain ASCII, which SendGrid requires of categories")
    return value


def _distinct(values: list[str]) -> list[str]:
    if repeated := sorted({value for value in values if values.count(value) > 1}):
        raise ValueError(f"{', '.join(map(repr, repeated))} given more than once")
    return values


Email = Annotated[str, AfterValidator(_email)]
TimeZone = Annotated[str, AfterValidator(_timezone)]
NonEmpty = Annotated[str, Field(min_length=1)]
Category = Annotated[str, Field(min_length=1, max_length=255), AfterValidator(_category)]
Origin = Annotated[str, AfterValidator(_origin)]


class Section(BaseModel):
    """Numbers must be finite: ``inf`` and ``nan`` are valid TOML and would pass ``gt=0``."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True, allow_inf_nan=False)


class NewsletterSettings(Section):
    name: NonEmpty = Field(description="The newsletter's name, shown in the masthead and the From name.")
    base_url: Annotated[str, AfterValidator(_base_url)] = Field(
        description="Public URL of `newsletter serve`: unsubscribe, preferences and view-in-browser links."
    )
    description: NonEmpty = Field(
        "a weekly newsletter",
        description='What the newsletter is, after its name: the footer\'s "subscribed to NAME, DESCRIPTION".',
    )
    postal_address: NonEmpty = Field(description="Sender's postal address; required in every footer by law.")
    timezone: TimeZone = Field("UTC", description="IANA time zone in which issue dates are read.")
    language: NonEmpty = Field("en", description="BCP 47 language tag of the newsletter (the html lang).")
    default_template: NonEmpty = Field("weekly", description="Template used when an issue names none.")
    default_segments: list[NonEmpty] = Field(
        ["everyone"], min_length=1, description="Segments an issue goes to when it names none."
    )
    first_name_fallback: NonEmpty = Field("there", description="Greeting when a subscriber has no name.")
    issues_dir: Path = Field(Path("issues"), description="Folder of the issue YAML files.")
    templates_dir: Path = Field(Path("templates"), description="Folder of the Jinja2 templates.")
    segments_file: Path = Field(
        Path("subscribers/segments.toml"), description="Named audience segments (rules over tags etc.)."
    )


class SenderSettings(Section):
    from_email: Email = Field(description="Address messages are sent from.")
    from_name: NonEmpty = Field(description="Display name messages are sent from.")
    reply_to: Email | None = Field(None, description="Where replies go; defaults to from_email.")
    unsubscribe_mailto: Email | None = Field(
        None, description="Mailbox for mailto: unsubscribes in List-Unsubscribe; omitted when unset."
    )


class StoreSettings(Section):
    url: Annotated[str, AfterValidator(_store_url)] = Field(
        "sqlite:///var/newsletter.db",
        description="SQLAlchemy URL; sqlite:///relative/path is under the project, or postgresql+psycopg://…",
    )


class DeliverySettings(Section):
    transport: Annotated[str, AfterValidator(_transport)] = Field(
        "outbox", description=f"How messages leave: {', '.join(TRANSPORTS)}."
    )
    rate_per_second: float = Field(
        50.0,
        gt=0,
        description="Messages per second for the whole campaign, across every process and machine sending it.",
    )
    batch_size: int = Field(500, ge=1, le=1000, description="Recipients claimed from the ledger at once.")
    processes: int = Field(
        1,
        ge=1,
        le=64,
        description="Worker processes that sign links and build and send batches, one batch in flight each. "
        "1 keeps it all in this process (the transport's concurrency says how many are in flight); "
        "more put the per-recipient work on more CPU cores, for lists of hundreds of thousands.",
    )
    stop_seconds: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="After Ctrl-C, SIGTERM or a pause, how long the batches in flight may take to finish "
        "before they are cut short (what was not handed over goes back to the queue; a message cut "
        "mid-handover is in doubt). Keep it plus smtp.timeout under systemd's TimeoutStopSec (120 s).",
    )
    outbox_dir: Path = Field(Path("outbox"), description="Where the outbox transport writes .eml files.")


class SmtpSettings(Section):
    host: NonEmpty = Field("localhost", description="SMTP server host name.")
    port: int = Field(587, ge=1, le=65535, description="SMTP server port.")
    security: Literal["starttls", "tls", "none"] = Field(
        "starttls", description="starttls upgrades a plain connection; tls is implicit TLS (port 465)."
    )
    username: str | None = Field(None, description="Login name; the password comes from SMTP_PASSWORD.")
    connections: int = Field(4, ge=1, le=64, description="Parallel SMTP connections.")
    timeout: float = Field(30.0, gt=0, le=3600, description="Seconds before a silent server is given up on.")


_DNS_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DNS_NAME = re.compile(rf"(?=.{{1,253}}$){_DNS_LABEL}(?:\.{_DNS_LABEL})*")


def _dns_name(value: str) -> str:
    if not _DNS_NAME.fullmatch(value.lower()):
        raise ValueError(
            f"'{value}' is not a DNS name: letters, digits and hyphens in labels joined by dots "
            "(an international name as xn--…)"
        )
    return value.lower()


DnsName = Annotated[str, AfterValidator(_dns_name)]


class DkimSettings(Section):
    private_key_file: Path | None = Field(
        None,
        description="PEM RSA private key (2048 bits) that DKIM-signs every message the smtp transport "
        "sends; unset: no signature. Keep it out of the repository, readable by its owner only.",
    )
    selector: DnsName = Field(
        "newsletter", description="DKIM selector: the public key is published at SELECTOR._domainkey.DOMAIN."
    )
    domain: DnsName | None = Field(
        None,
        description="Signing domain (d=); defaults to sender.from_email's domain, which DMARC needs it "
        "to be or to share its organisational domain with.",
    )


class SendGridSettings(Section):
    host: NonEmpty = Field("https://api.sendgrid.com", description="API host; the key is SENDGRID_API_KEY.")
    timeout: float = Field(
        30.0, gt=0, le=3600, description="Seconds before a request is abandoned and retried."
    )
    concurrency: int = Field(4, ge=1, le=32, description="Requests in flight at once.")
    max_retries: int = Field(
        6, ge=0, le=20, description="Retries of a request on 429, 5xx or network errors."
    )
    categories: Annotated[list[Category], AfterValidator(_distinct)] = Field(
        [], max_length=10, description="Categories added to every message (SendGrid: ASCII, at most 10)."
    )


Weekday = Literal["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]


def _clock_time(value: str) -> str:
    if not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", value):
        raise ValueError(f"'{value}' is not a time of day as HH:MM (24-hour), such as 07:30")
    return value


class ScheduleSettings(Section):
    weekday: Weekday = Field(
        "tuesday", description="Day of the week issues go out (an issue's date should be one)."
    )
    time: Annotated[str, AfterValidator(_clock_time)] = Field(
        "07:00", description="Local time of day issues go out, HH:MM (24-hour)."
    )
    timezone: TimeZone | None = Field(
        None, description="IANA time zone of that time; defaults to newsletter.timezone."
    )
    catch_up_hours: float = Field(
        12.0,
        ge=0,
        le=24 * 365,
        description="After downtime, send an issue at most this late; older ones are marked missed.",
    )
    per_recipient_timezone: bool = Field(
        False, description="Deliver at the local time in each subscriber's own time zone."
    )
    tick_seconds: float = Field(
        60.0, gt=0, le=86400, description="How often `newsletter run` looks for due issues."
    )
    lease_seconds: float = Field(
        300.0,
        gt=0,
        le=86400,
        description="How long a silent scheduler keeps the lease before another takes over.",
    )


class WebSettings(Section):
    host: NonEmpty = Field("127.0.0.1", description="Address `newsletter serve` listens on.")
    port: int = Field(8000, ge=1, le=65535, description="Port `newsletter serve` listens on.")
    webhook_public_key: str | None = Field(
        None, description="SendGrid's signed Event Webhook verification key (base64 P-256 public key)."
    )
    webhook_max_age_seconds: int = Field(
        600, ge=1, description="Webhook posts with an older signed timestamp are refused as replays."
    )
    webhook_max_body_bytes: int = Field(5_000_000, ge=1024, description="Largest webhook post accepted.")
    confirm_hours: int = Field(
        72, ge=1, description="How long a double opt-in confirmation link stays valid."
    )
    signups_per_ip_per_hour: int = Field(
        10, ge=1, description="Signup form posts allowed per client address."
    )
    allowed_origins: Annotated[list[Origin], AfterValidator(_distinct)] = Field(
        [],
        description="Other sites whose pages may post the signup form or JSON to /subscribe "
        "(base_url's own origin always may); each as scheme://host[:port].",
    )
    bounce_rate_limit: float = Field(
        0.02, gt=0, le=1, description="A running campaign pauses itself when its bounce rate passes this."
    )
    complaint_rate_limit: float = Field(
        0.001, gt=0, le=1, description="A running campaign pauses itself when its complaint rate passes this."
    )
    health_min_sent: int = Field(
        200, ge=1, description="Rates are judged only once a campaign has sent at least this many."
    )


RETURN_PATH_LOCAL_MAX = 24
"""The longest local part ``bounces.return_path`` may have: ``+`` and a token of up to 39 characters
must still fit the 64 an address's local part may have."""


def _return_path(value: str) -> str:
    local = value.rpartition("@")[0]
    if "+" in local:
        raise ValueError(f"'{value}' already has a '+': the token for each recipient goes after one")
    if len(local) > RETURN_PATH_LOCAL_MAX:
        raise ValueError(
            f"'{value}': a local part of at most {RETURN_PATH_LOCAL_MAX} characters leaves room for the token"
        )
    return value


def _folder(value: str) -> str:
    if not (value.isascii() and value.isprintable()):
        raise ValueError(f"'{value}' is not plain ASCII; name a folder without accents or controls")
    return value


Folder = Annotated[str, Field(min_length=1), AfterValidator(_folder)]


class ImapSettings(Section):
    host: NonEmpty = Field("localhost", description="IMAP server of the bounce mailbox.")
    port: int = Field(993, ge=1, le=65535, description="IMAP server port (993 for tls, 143 otherwise).")
    security: Literal["tls", "starttls", "none"] = Field(
        "tls", description="tls is implicit TLS (port 993); starttls upgrades a plain connection."
    )
    username: str | None = Field(None, description="Login name; the password comes from IMAP_PASSWORD.")
    folder: Folder = Field("INBOX", description="The folder bounces and complaints arrive in.")
    timeout: float = Field(30.0, gt=0, le=3600, description="Seconds before a silent server is given up on.")


class BounceSettings(Section):
    return_path: Annotated[Email, AfterValidator(_return_path)] | None = Field(
        None,
        description="Where bounces go back to: with it set, every campaign message's envelope sender "
        "(MAIL FROM, the Return-Path a receiver writes) is this address with a signed token for its "
        "recipient after a +, so a bounce names its recipient; unset: sender.from_email.",
    )
    mailbox: Literal["imap", "maildir", "mbox"] | None = Field(
        None, description="What `newsletter bounces` reads: the imap account below, or a local path."
    )
    path: Path | None = Field(None, description="The Maildir folder or mbox file, for maildir and mbox.")
    processed_folder: Folder = Field(
        "Processed",
        description="Where read reports are moved: an IMAP folder, a Maildir++ subfolder, or the mbox "
        "file PATH.FOLDER. What cannot be read stays where it is, for a person.",
    )
    soft_bounce_limit: int = Field(
        3, ge=1, le=100, description="Soft bounces in a row (the last messages sent) that make a bounce."
    )
    every_tick: bool = Field(False, description="`newsletter run` reads the mailbox on every tick.")
    imap: ImapSettings = ImapSettings()


class TrackingSettings(Section):
    clicks: bool = Field(
        False,
        description="Links in the HTML go through our own redirect (`/c/…`), which counts each reader's "
        "clicks; SendGrid's click tracking is then turned off, so a click is never counted twice.",
    )
    text_clicks: bool = Field(
        False, description="With `clicks`, the text part's links are redirects too (else they stay plain)."
    )
    opens: bool = Field(
        False,
        description="SendGrid adds its open pixel. Off by default: a pixel tells the sender when and where "
        "someone read the mail, and Apple Mail fetches every pixel, read or not, so opens count machines.",
    )


class SubjectTestSettings(Section):
    sample_percent: float = Field(
        10.0,
        gt=0,
        le=33,
        description="Share of the audience each subject of a test goes to first, in per cent.",
    )
    min_per_variant: int = Field(
        500,
        ge=1,
        description="Fewest people a subject's sample may have; a smaller test is refused with the numbers.",
    )
    wait_hours: float = Field(
        4.0,
        gt=0,
        le=72,
        description="How long after the campaign starts the samples' clicks are counted before the "
        "winner goes to everyone else.",
    )


class Settings(Section):
    """The whole settings file. ``root`` is the folder it was read from (not a key in the file)."""

    newsletter: NewsletterSettings
    sender: SenderSettings
    store: StoreSettings = StoreSettings()
    delivery: DeliverySettings = DeliverySettings()
    smtp: SmtpSettings = SmtpSettings()
    dkim: DkimSettings = DkimSettings()
    sendgrid: SendGridSettings = SendGridSettings()
    schedule: ScheduleSettings = ScheduleSettings()
    web: WebSettings = WebSettings()
    bounces: BounceSettings = BounceSettings()
    tracking: TrackingSettings = TrackingSettings()
    subject_tests: SubjectTestSettings = SubjectTestSettings()
    root: Path = Field(Path("."), exclude=True)

    def path(self, relative: Path) -> Path:
        """``relative`` resolved against the settings file's folder."""
        return relative if relative.is_absolute() else self.root / relative

    @property
    def store_url(self) -> str:
        """The store URL with a relative SQLite path anchored at the project root."""
        url = self.store.url
        prefix = "sqlite:///"
        if url.startswith(prefix) and not url.startswith(prefix + "/") and url != "sqlite:///:memory:":
            return prefix + str(self.path(Path(url.removeprefix(prefix))).resolve())
        return url


def find_settings_file(explicit: str | os.PathLike[str] | None = None) -> Path:
    """``explicit``, else $NEWSLETTER_SETTINGS, else ./settings.toml."""
    candidate = Path(explicit or os.environ.get(SETTINGS_ENV) or "settings.toml")
    if not candidate.is_file():
        raise SettingsError(
            f"{candidate}: settings file not found (use --settings PATH or ${SETTINGS_ENV}, or start a newsletter with `newsletter init DIR`)"
        )
    return candidate


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """Read and validate the settings file; every problem is reported, each naming its key and line."""
    file = find_settings_file(path)
    try:
        text = file.read_text(encoding="utf-8")
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(str(_syntax_problem(str(file), str(exc), text))) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{file}: error: cannot read: {exc}") from None
    places = _key_places(text)
    if "root" in raw:
        raise SettingsError(str(_problem(file, places, ("root",), "unknown key 'root'")))
    try:
        return Settings.model_validate({**raw, "root": file.resolve().parent})
    except ValidationError as exc:
        problems = [
            _problem(file, places, error.path, error.message) for error in field_errors(exc, Settings)
        ]
        raise SettingsError("\n".join(map(str, problems))) from None


_TOML_KEY = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*')"""
_TOML_DOTTED = rf"{_TOML_KEY}(?:[ \t]*\.[ \t]*{_TOML_KEY})*"
_TOML_TABLE = re.compile(rf"[ \t]*\[\[?[ \t]*({_TOML_DOTTED})[ \t]*\]")
_TOML_ASSIGNMENT = re.compile(rf"([ \t]*)({_TOML_DOTTED})[ \t]*=")
_TOML_AT = re.compile(r" \(at line (\d+), column (\d+)\)$")
Place = tuple[int, int]


def _key_places(text: str) -> dict[tuple[str, ...], Place]:
    """(line, column) where each table and key is first written: tomllib keeps no positions, so a
    scan of the lines finds them (inside multi-line strings nothing is a key)."""
    places: dict[tuple[str, ...], Place] = {}
    table: tuple[str, ...] = ()
    open_quote = ""
    for number, line in enumerate(text.split("\n"), 1):
        if open_quote:
            open_quote = "" if line.count(open_quote) % 2 else open_quote
        elif header := _TOML_TABLE.match(line):
            table = _key_parts(header[1])
            places.setdefault(table, (number, 1))
        elif assignment := _TOML_ASSIGNMENT.match(line):
            key = (*table, *_key_parts(assignment[2]))
            for depth in range(len(table) + 1, len(key) + 1):  # `a.b = 1` also opens table a
                places.setdefault(key[:depth], (number, len(assignment[1]) + 1))
            rest = line[assignment.end() :]
            open_quote = next((quote for quote in ('"""', "'''") if rest.count(quote) % 2), "")
    return places


def _key_parts(dotted: str) -> tuple[str, ...]:
    return tuple(part.strip("\"'") for part in re.findall(_TOML_KEY, dotted))


def _problem(
    file: Path, places: dict[tuple[str, ...], Place], path: tuple[str | int, ...], message: str
) -> Problem:
    """The problem at the line of ``path``, or of the nearest table above it (a missing key names its
    table); with no line when not even the table is written."""
    keys = tuple(str(part) for part in path if not isinstance(part, int))
    found = next((places[keys[:depth]] for depth in range(len(keys), 0, -1) if keys[:depth] in places), None)
    line, column = found if found else (None, None)
    return Problem(str(file), message, line, column, ".".join(map(str, path)))


def _syntax_problem(source: str, message: str, text: str) -> Problem:
    """tomllib's "… (at line L, column C)" as FILE:L:C; a string left open is shown where it opened."""
    lines = text.split("\n")
    at = _TOML_AT.search(message)
    if at is None:  # "… (at end of document)"
        reason = message.removesuffix(" (at end of document)")
        return Problem(
            source, f"TOML syntax: {reason} at the end of the file", len(lines), len(lines[-1]) + 1
        )
    line, column = int(at[1]), int(at[2])
    if message.startswith("Illegal character '\\n'"):  # the line ended inside a string
        where = lines[line - 1]
        after = max(where.find("="), 0)
        quotes = [index for index in (where.find('"', after), where.find("'", after)) if index >= 0]
        opened = min(quotes, default=column - 1) + 1
        return Problem(source, "TOML syntax: this quoted value is not closed on its line", line, opened)
    return Problem(source, f"TOML syntax: {message[: at.start()]}", line, column)


def secret(name: str) -> str | None:
    """A secret from the environment (never from a file in the repo); empty counts as unset."""
    if name not in SECRET_ENV_NAMES:
        raise KeyError(name)
    return os.environ.get(name) or None
