"""Render and personalisation cost: `python bench/render.py [--recipients N]` prints the figures.

Render: each sample issue rendered (Jinja2 → MJML → HTML + text) repeatedly, with a warm template
environment, as `newsletter send` does once per issue. Personalise: per-recipient cost of filling the
split HTML and text (escaping included), of the signed links, and of a complete MIME message.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from pipeline.content.issue import issue_paths, load_issue
from pipeline.recipient import Recipient
from pipeline.render.links import Links
from pipeline.render.message import MessageTemplate
from pipeline.render.renderer import Renderer, personalise
from pipeline.settings import load_settings
from pipeline.tokens import Signer

ROOT = Path(__file__).resolve().parents[1]


def per_call(function: object, repeat: int) -> float:
    """Median seconds per call over 5 rounds of ``repeat`` calls."""
    rounds = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeat):
            function()  # type: ignore[operator]
        rounds.append((time.perf_counter() - start) / repeat)
    return statistics.median(rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=100_000, help="copies personalised per measurement")
    args = parser.parse_args()
    settings = load_settings(ROOT / "settings.toml")
    renderer = Renderer(settings)
    links = Links(settings, Signer(b"bench" * 8))
    files = [load_issue(p) for p in issue_paths([], settings.path(settings.newsletter.issues_dir))]

    print(f"{len(files)} sample issues")
    for issue_file in files:
        seconds = per_call(lambda f=issue_file: renderer.render(f), 20)
        print(f"  render {issue_file.slug:<40} {seconds * 1e3:6.2f} ms")
    rendered = renderer.render(files[0])
    recipient = Recipient(123456, "zoe.example@example.com", "Zoë Example")
    fields = links.personal_fields(recipient)
    message = MessageTemplate(settings, rendered)
    n = args.recipients
    print(f"per recipient ({n:,} copies, median of 5 rounds):")
    print(
        f"  personalise (html + text substitution)  {per_call(lambda: personalise(rendered, fields), n) * 1e6:6.2f} µs"
    )
    print(
        f"  signed unsubscribe + preferences links  {per_call(lambda: links.personal_fields(recipient), n) * 1e6:6.2f} µs"
    )
    build = per_call(lambda: message.build(recipient, fields, message_id="<x@example.org>"), n // 10)
    print(f"  complete MIME message (.eml bytes)      {build * 1e6:6.2f} µs")
    print(f"  rendered HTML size                      {rendered.html.static_size / 1024:6.1f} KB")


if __name__ == "__main__":
    main()
