"""A SendGrid send killed over and over: `python -m bench.crashes [--recipients N] [--kills K] [--code DIR]`.

N subscribers (50,000) are imported into a fresh SQLite project, the SendGrid emulator runs as its own
process with a real round trip per request (``--round-trip``, 0.3 s), and `newsletter send` is started
and SIGKILLed K times (20) at a seeded random moment 1-3 s into each run, once it has recorded a
batch; then one last run goes to the end. The emulator knows who was really accepted, so the ledger
can be judged from outside:

- delivered twice: people the emulator accepted more than once;
- silent skips: people never accepted whose ledger row is not in doubt (the operator is not told);
- in doubt: rows the ledger leaves to the operator, and how many of those the emulator had accepted
  (an exact ledger has none of those it could have known about).

``--code DIR`` runs the `newsletter` of another checkout (e.g. a `git worktree` of an older commit),
with that checkout's sample project, to compare before and after. Not part of `make test`.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from functools import partial
from pathlib import Path

from tests.sendproc import API_KEY, ISSUE, Process, SendProject

ROOT = Path(__file__).resolve().parent.parent
EMULATOR = ("-m", "tests.emulators.sendgrid", "--port", "0", "--api-key", API_KEY, "--record", "recipients")
PROJECT_FILES = ("settings.toml", "issues", "templates", "subscribers")


def start_emulator(round_trip: float) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen([sys.executable, *EMULATOR], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    url = process.stdout.readline().strip()
    if not url.startswith("http://"):
        process.kill()
        raise SystemExit(f"the emulator did not start (said {url!r})")
    body = json.dumps([{"delay": round_trip, "every": 1}]).encode()
    request = urllib.request.Request(f"{url}/_emulator/faults", body, {"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=30).close()
    return process, url


def accepted(url: str) -> Counter[str]:
    with urllib.request.urlopen(f"{url}/_emulator/recipients", timeout=120) as response:
        return Counter(json.load(response))


def project_from(code: Path, folder: Path, url: str, args: argparse.Namespace) -> SendProject:
    for name in PROJECT_FILES:
        source = code / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, folder / name)
    delivery = {"rate_per_second": args.rate, "batch_size": args.batch_size, "processes": args.processes}
    sendgrid = {"host": url, "concurrency": args.concurrency, "timeout": 20.0, "max_retries": 6}
    proj = SendProject(folder, {"delivery": delivery, "sendgrid": sendgrid})
    proj.env["PYTHONPATH"] = str(code)  # ahead of the editable install: that checkout's `pipeline`
    return proj


def _mid_send(proj: SendProject, process: Process, delay: float, sent_before: int) -> bool:
    """Late enough, and this run has recorded a batch of its own."""
    return process.elapsed >= delay and proj.counts()["sent"] > sent_before


def kill_repeatedly(proj: SendProject, kills: int, rng: random.Random) -> tuple[int, int]:
    """(kills that landed mid-send, rows they left ``sending``), then a last run to the end."""
    landed = left_sending = 0
    for number in range(1, kills + 1):
        delay = rng.uniform(1.0, 3.0)
        before = proj.counts()["sent"]
        with proj.spawn(*proj.send_args("sendgrid")) as process:
            if process.wait_until(partial(_mid_send, proj, process, delay, before)):
                process.kill()
        if process.returncode != -signal.SIGKILL:
            print(f"  run {number}: finished before the kill came")
            return landed, left_sending
        landed += 1
        sending = proj.counts()["sending"]
        left_sending += sending
        print(
            f"  kill {number} at {process.elapsed:.1f} s: {proj.counts()['sent']:,} sent, {sending:,} sending"
        )
    final = proj.send("sendgrid", timeout=600.0, expect=None)
    print(f"  last run exited {final.returncode}")
    return landed, left_sending


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipients", type=int, default=50_000)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--code", type=Path, default=ROOT, help="checkout whose `newsletter` runs")
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--rate", type=float, default=1000.0, help="delivery.rate_per_second")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=4, help="sendgrid.concurrency")
    parser.add_argument(
        "--round-trip", type=float, default=0.3, help="seconds the emulator takes per request"
    )
    parser.add_argument("--seed", type=int, default=20261202)
    args = parser.parse_args()

    emulator, url = start_emulator(args.round_trip)
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="crashes-") as folder:
            proj = project_from(args.code.resolve(), Path(folder), url, args)
            assert (proj.root / ISSUE).exists(), f"{args.code} has no {ISSUE}"
            emails = proj.import_subscribers(args.recipients)
            print(f"{args.recipients:,} recipients, code {args.code}, processes {args.processes}")
            landed, left_sending = kill_repeatedly(proj, args.kills, random.Random(args.seed))
            seen = accepted(url)
            ledger = proj.ledger()
    finally:
        emulator.kill()
        emulator.wait()

    in_doubt = [row for row in ledger if row.status in ("in_doubt", "sending")]
    in_doubt_emails = {row.email for row in in_doubt}
    print(f"\n{landed} kills landed mid-send; they left {left_sending:,} rows sending in all")
    print(f"  delivered twice:           {sum(1 for n in seen.values() if n > 1):,}")
    skipped = [e for e in emails if not seen[e] and e not in in_doubt_emails]
    print(f"  silent skips:              {len(skipped):,}")
    print(f"  in doubt at the end:       {len(in_doubt):,}")
    print(f"    of which were accepted:  {sum(1 for row in in_doubt if seen[row.email]):,}")
    print(f"  ledger: {dict(Counter(row.status for row in ledger))}")
    print(f"  {time.monotonic() - started:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
