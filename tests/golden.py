"""Golden files: every sample issue rendered as a fixed sample recipient gets it, HTML and text.

``make golden`` (``python -m tests.golden``) rewrites ``tests/golden/<slug>.html`` and ``<slug>.txt``
after an intended template or content change; review the diff before committing it. ``test_render.py``
compares fresh renders with these files, so any change to what subscribers get shows up in review.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline.content.issue import issue_paths, load_issue
from pipeline.recipient import Recipient
from pipeline.render.links import Links
from pipeline.render.renderer import Renderer, personalise
from pipeline.settings import Settings, load_settings
from pipeline.tokens import Signer
from tests.paths import REPO

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
SIGNING_KEY = b"golden-files: a fixed key that never signs a real link"
RECIPIENT = Recipient(subscriber_id=4217, email="sam.rivera@example.com", name="Sam Rivera")
HINT = "run `make golden` and review the diff"


def render_samples(settings: Settings) -> dict[str, str]:
    """``{file name: content}`` for every issue in the settings' issues folder, personalised for RECIPIENT."""
    renderer = Renderer(settings)
    fields = Links(settings, Signer(SIGNING_KEY)).personal_fields(RECIPIENT)
    out: dict[str, str] = {}
    for path in issue_paths([], settings.path(settings.newsletter.issues_dir)):
        issue_file = load_issue(path)
        copy = personalise(renderer.render(issue_file), fields)
        out[f"{issue_file.slug}.html"] = copy.html
        out[f"{issue_file.slug}.txt"] = copy.text
    return out


def write(files: dict[str, str], folder: Path = GOLDEN_DIR) -> list[str]:
    """Write ``files`` into ``folder``, removing golden files of issues that no longer exist."""
    folder.mkdir(parents=True, exist_ok=True)
    changed = []
    for stale in sorted({*folder.glob("*.html"), *folder.glob("*.txt")}):
        if stale.name not in files:
            stale.unlink()
            changed.append(f"removed {stale.name}")
    for name, content in sorted(files.items()):
        path = folder / name
        data = content.encode("utf-8")
        if not path.exists() or path.read_bytes() != data:
            path.write_bytes(data)
            changed.append(f"wrote {name}")
    return changed


def main() -> None:
    changed = write(render_samples(load_settings(REPO / "settings.toml")))
    for line in changed:
        print(line)
    print(f"{len(changed)} golden file(s) changed in {GOLDEN_DIR.relative_to(REPO)}", file=sys.stderr)


if __name__ == "__main__":
    main()
