"""Bounce processing rate: `python bench/bounces.py [--messages 2000] [--mailbox imap|maildir|both]`.

A fresh SQLite store gets N subscribers and one campaign of the first sample issue recorded as sent
to them (each row with its Message-ID and VERP return path, as the SMTP transport sends it). Then
one report per recipient, in the shapes of tests/data/bounces/ (Gmail, Outlook, Yahoo and Postfix
bounces, Yahoo and Microsoft complaints, delays) in turn, is delivered to the mailbox: a throwaway
Dovecot (IMAP APPEND, not timed) and/or a local Maildir. What is timed is `newsletter bounces`'
library call, end to end: log in, list, fetch, parse, tie each report to its ledger row, record it
(status changes and all), move it to Processed. Also printed: parsing alone, for where the time goes.

Not part of `make test`. The exit status is 1 only if a count is wrong (every report read and
moved, every hard bounce and complaint a status change); the rate itself is reported, not judged.
"""

from __future__ import annotations

import argparse
import mailbox
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.audience.importer import import_csv  # noqa: E402
from pipeline.content.issue import load_issue  # noqa: E402
from pipeline.dispatch import campaigns, ledger  # noqa: E402
from pipeline.feedback import dsn  # noqa: E402
from pipeline.feedback.bounces import BounceRun, process_mailbox  # noqa: E402
from pipeline.feedback.mailbox import ImapMailbox, Mailbox, MaildirMailbox  # noqa: E402
from pipeline.recipient import Recipient  # noqa: E402
from pipeline.render.links import Links  # noqa: E402
from pipeline.render.message import MessageTemplate  # noqa: E402
from pipeline.render.renderer import render  # noqa: E402
from pipeline.settings import ImapSettings, Settings, load_settings  # noqa: E402
from pipeline.store.engine import Store, connect  # noqa: E402
from pipeline.transports.base import Outcome  # noqa: E402
from pipeline.transports.returnpath import ReturnPath  # noqa: E402
from tests.bounce_support import fill  # noqa: E402
from tests.fixtures.imap import running_dovecot  # noqa: E402

KEY = b"bench-key-0123456789abcdef0123456789abcdef"
RETURN_PATH = "bounces@news.example.org"
ISSUE = "2026-12-01-name-it-to-tame-it.yaml"
SHAPES = (
    "gmail-hard.eml",
    "outlook-hard.eml",
    "postfix-hard.eml",
    "yahoo-notice.eml",
    "yahoo-arf.eml",
    "outlook-arf.eml",
    "postfix-soft.eml",
    "gmail-full.eml",
    "gmail-delayed.eml",
    "postfix-blocked.eml",
)
"""One report per recipient, taking these shapes in turn."""
CHANGES_STATUS = {"gmail-hard.eml", "outlook-hard.eml", "postfix-hard.eml", "yahoo-notice.eml"} | {
    "yahoo-arf.eml",
    "outlook-arf.eml",
}


def sent_campaign(store: Store, settings: Settings, folder: Path, count: int) -> list[bytes]:
    """``count`` subscribers sent the sample issue (ledger rows ``sent``); one report about each."""
    csv = folder / "people.csv"
    csv.write_text("email,name\n" + "".join(f"reader{i:05d}@example.com,Reader {i}\n" for i in range(count)))
    import_csv(store, csv)
    rendered = render(load_issue(settings.path(settings.newsletter.issues_dir) / ISSUE), settings)
    campaign, _ = campaigns.create_campaign(store, rendered, ("everyone",), "smtp")
    template = MessageTemplate(settings, rendered)
    links = Links(settings, store.signer)
    verp = ReturnPath(RETURN_PATH, store.signer)
    run = ledger.start_run(store, campaign.id)
    claim = ledger.claim(store, campaign.id, run, count)
    reports, outcomes = [], []
    for index, (delivery_id, subscriber_id, email, name, timezone, _variant) in enumerate(claim.rows):
        recipient = Recipient(subscriber_id, email, name, timezone)
        message_id = template.message_id()
        message = template.build(recipient, links.personal_fields(recipient), message_id=message_id)
        outcomes.append(Outcome(delivery_id, "sent", message_id))
        shape = SHAPES[index % len(SHAPES)]
        reports.append(fill(shape, verp=verp.for_delivery(delivery_id, email), rcpt=email, sent=message))
    ledger.record(store, outcomes)
    ledger.end_run(store, run)
    return reports


def expected_changes(count: int) -> int:
    return sum(SHAPES[i % len(SHAPES)] in CHANGES_STATUS for i in range(count))


def timed(label: str, count: int, work: Callable[[], BounceRun]) -> BounceRun:
    started = time.perf_counter()
    run = work()
    took = time.perf_counter() - started
    print(f"{label}: {count:,} reports in {took:.2f} s = {count / took:,.0f} messages/s")
    print(f"  {dict(run.counts)}, ignored {dict(run.ignored)}, {run.status_changes:,} status changes")
    return run


def check(run: BounceRun, count: int, processed: int) -> list[str]:
    wrong = []
    if run.read != count or run.unknown:
        wrong.append(f"read {run.read:,} of {count:,}, {len(run.unknown)} not understood")
    if processed != count:
        wrong.append(f"{processed:,} of {count:,} moved to Processed")
    if run.status_changes != expected_changes(count):
        wrong.append(f"{run.status_changes:,} status changes, expected {expected_changes(count):,}")
    return wrong


def bench(kind: str, count: int, settings: Settings) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="bench-bounces-") as name:
        folder = Path(name)
        segments = settings.path(settings.newsletter.segments_file)
        with closing(connect(f"sqlite:///{folder / 'store.db'}", KEY, segments_file=segments)) as store:
            reports = sent_campaign(store, settings, folder, count)
            if kind == "parse":
                started = time.perf_counter()
                kinds = Counter(dsn.read_report(raw).findings[0].kind for raw in reports)
                took = time.perf_counter() - started
                print(
                    f"parsing alone: {count:,} reports in {took:.2f} s = {count / took:,.0f} messages/s {dict(kinds)}"
                )
                return []
            if kind == "maildir":
                local = mailbox.Maildir(folder / "bounces", create=True)
                for raw in reports:
                    local.add(raw)
                box: Mailbox = MaildirMailbox(folder / "bounces", "Processed")
                run = timed("Maildir", count, lambda: process_mailbox(store, settings, box))
                processed = len(mailbox.Maildir(folder / "bounces").get_folder("Processed"))
                box.close()
                return check(run, count, processed)
            with running_dovecot() as server:
                account = server.account()
                started = time.perf_counter()
                account.append(*reports)
                print(
                    f"(IMAP APPEND of {count:,} reports, not timed below: {time.perf_counter() - started:.1f} s)"
                )
                config = ImapSettings(
                    host=server.host, port=server.port, security="none", username=account.username
                )

                def read() -> BounceRun:
                    imap = ImapMailbox(config, account.password, "Processed")
                    try:
                        return process_mailbox(store, settings, imap)
                    finally:
                        imap.close()

                run = timed("IMAP (Dovecot)", count, read)
                return check(run, count, len(account.messages("Processed")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--messages", type=int, default=2000, help="reports in the mailbox (one per recipient)"
    )
    parser.add_argument("--mailbox", choices=["imap", "maildir", "both"], default="both")
    args = parser.parse_args()
    base = load_settings(REPO / "settings.toml")
    settings = base.model_copy(
        update={"bounces": base.bounces.model_copy(update={"return_path": RETURN_PATH})}
    )
    kinds = ["parse"] + (["imap", "maildir"] if args.mailbox == "both" else [args.mailbox])
    wrong = [problem for kind in kinds for problem in bench(kind, args.messages, settings)]
    for problem in wrong:
        print(f"WRONG: {problem}")
    raise SystemExit(1 if wrong else 0)


if __name__ == "__main__":
    main()
