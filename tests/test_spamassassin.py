"""SpamAssassin, a judge nobody here wrote, on the messages as they are sent; and `newsletter check --spam`.

Debian's ``spamassassin`` with its local rules only (``-L``: no network), as installed by ``make
system-deps``. Without it these tests fail with the command that installs it; they never skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from email import message_from_bytes, policy
from pathlib import Path

import pytest

from pipeline.content.issue import issue_paths
from pipeline.render import spamcheck
from pipeline.render.lint import SPAM_SKIPPED, check_paths
from pipeline.settings import Settings
from tests.fixtures.project import FIRST_ISSUE, CliInvoker, own_template
from tests.mail import outbox_files
from tests.paths import REPO

SLUGS = sorted(path.stem for path in (REPO / "issues").glob("*.yaml"))
CHECKED = len(issue_paths([], REPO / "issues"))
"""What `check --spam` checks and scores: the sample issues and the welcome steps."""
PHRASE = "lose half its weight"
"""What SpamAssassin's DIET_1 ("Lose Weight Spam") matched in a sample before its wording changed."""
SUPPORT = "2026-12-15-build-your-support-system.yaml"
REWORDED = "it tends to feel half as heavy"


@pytest.fixture(scope="session")
def spamassassin() -> str:
    program = shutil.which("spamassassin")
    if program is None:
        pytest.fail(
            "spamassassin is missing: the spam score tests need Debian's SpamAssassin. Install it with\n"
            f"    apt-get update && {spamcheck.INSTALL}\n"
            "(or `make system-deps`).",
            pytrace=False,
        )
    return program


@pytest.fixture
def sa_home(tmp_path: Path) -> Iterator[Path]:
    """A home of its own for SpamAssassin: no user preferences or Bayes data of anyone's count."""
    home = tmp_path / "sa-home"
    home.mkdir()
    yield home


def judge(program: str, home: Path, message: bytes) -> tuple[float, list[str]]:
    """``spamassassin -L -t`` on one message: its score and the rules that fired (X-Spam-Status)."""
    done = subprocess.run(
        [program, "-L", "-t"],
        input=message,
        capture_output=True,
        env={**os.environ, "HOME": str(home)},
        timeout=120,
        check=True,
    )
    status = " ".join(str(message_from_bytes(done.stdout, policy=policy.compat32)["X-Spam-Status"]).split())
    score = float(status.split("score=")[1].split()[0])
    tests = status.split("tests=")[1].split()[0].split(",") if "tests=" in status else []
    return score, tests


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{path.name} no longer contains {old!r}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def line_and_column(path: Path, needle: str) -> tuple[int, int]:
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if needle in line:
            return number, line.index(needle) + 1
    raise AssertionError(f"{needle!r} not in {path}")


# The messages as sent score at most 0


@pytest.mark.parametrize("slug", SLUGS)
def test_every_sample_issue_scores_at_most_zero_as_sent(
    spamassassin: str, sa_home: Path, run: CliInvoker, project: Path, slug: str
) -> None:
    run("send", f"issues/{slug}.yaml", "--yes", "--segment", "toddlers")
    first = outbox_files(project / "outbox")[0]
    message = first.read_bytes()

    score, tests = judge(spamassassin, sa_home, message)

    assert message_from_bytes(message, policy=policy.default)["Feedback-ID"], "a campaign message, as sent"
    assert score <= 0, f"{slug} scores {score}: {tests}"
    assert "HTML_FONT_LOW_CONTRAST" not in tests


def test_a_preheader_painted_in_the_page_colour_is_what_the_rule_scores(
    spamassassin: str, sa_home: Path, run: CliInvoker, project: Path
) -> None:
    """The judge sees the old trick: MJML's mj-preview colours the hidden text white."""
    edit(
        own_template(project, "partials/head.mjml.j2"),
        "<mj-title>{{ issue.subject }}</mj-title>",
        "<mj-title>{{ issue.subject }}</mj-title>\n  <mj-preview>{{ issue.preheader }}</mj-preview>",
    )
    own_template(project, "partials/preheader.mjml.j2").write_text("", encoding="utf-8")
    run("send", f"issues/{FIRST_ISSUE}", "--yes", "--segment", "toddlers")

    score, tests = judge(spamassassin, sa_home, outbox_files(project / "outbox")[0].read_bytes())

    assert "HTML_FONT_LOW_CONTRAST" in tests and score > 0


# spamcheck: one SpamAssassin run for many messages


def sample_messages(run: CliInvoker, project: Path, count: int) -> list[bytes]:
    run("send", f"issues/{FIRST_ISSUE}", "--yes", "--segment", "toddlers")
    return [path.read_bytes() for path in outbox_files(project / "outbox")[:count]]


def test_one_run_scores_each_message_in_order_and_names_the_text_a_rule_matched(
    spamassassin: str, run: CliInvoker, project: Path
) -> None:
    clean, other, spammy = sample_messages(run, project, 3)
    # A body line starting "From " must not split the mbox SpamAssassin reads.
    marker = b"\r\nYOUR NEXT STEPS\r\n"
    assert marker in spammy
    spammy = spammy.replace(marker, b"\r\nFrom the editors: you will " + PHRASE.encode() + b"." + marker, 1)

    verdicts = spamcheck.score([clean, spammy, other], spamassassin)

    assert len(verdicts) == 3
    assert [v.scored for v in (verdicts[0], verdicts[2])] == [[], []]
    [diet] = verdicts[1].scored
    assert (diet.rule, diet.score, diet.matched) == ("DIET_1", 0.7, (PHRASE,))
    assert "Weight" in diet.description
    assert verdicts[1].score >= 0.7 > verdicts[0].score
    assert {"NO_RECEIVED", "NO_RELAYS"} <= {hit.rule for hit in verdicts[0].hits}, "fired, but not counted"


def test_messages_need_their_own_message_ids(spamassassin: str, run: CliInvoker, project: Path) -> None:
    (message,) = sample_messages(run, project, 1)

    with pytest.raises(ValueError, match="Message-ID"):
        spamcheck.score([message, message], spamassassin)


def test_a_spamassassin_that_fails_is_an_error_naming_it(run: CliInvoker, project: Path) -> None:
    (message,) = sample_messages(run, project, 1)

    with pytest.raises(spamcheck.SpamAssassinError, match="exited with status 1"):
        spamcheck.score([message], "/bin/false")


# newsletter check --spam


def test_check_spam_passes_on_the_samples(spamassassin: str, run: CliInvoker) -> None:
    result = run("check", "--spam", "--strict")

    assert result.output.splitlines() == [f"{CHECKED} files checked: 0 error(s), 0 warning(s)"]


def test_check_spam_warns_at_the_line_and_column_of_the_phrase(
    spamassassin: str, run: CliInvoker, project: Path
) -> None:
    path = project / "issues" / SUPPORT
    edit(path, REWORDED, f"it tends to {PHRASE}")
    line, column = line_and_column(path, PHRASE)

    relaxed = run("check", "--spam")
    strict = run("check", "--spam", "--strict", expect=1)

    warning = (
        f'{path}:{line}:{column}: warning: intro: spam score 0.7: DIET_1 (BODY: Lose Weight Spam): "{PHRASE}"'
    )
    assert relaxed.output.splitlines() == [warning, f"{CHECKED} files checked: 0 error(s), 1 warning(s)"]
    assert warning in strict.output


def test_check_spam_points_at_the_field_when_markdown_splits_the_phrase(
    spamassassin: str, run: CliInvoker, project: Path
) -> None:
    path = project / "issues" / FIRST_ISSUE
    edit(path, 'title: "Name it to tame it"', 'title: "Name it to *lose* half its weight"')
    line, column = line_and_column(path, 'title: "Name it to *lose*')

    output = run("check", "--spam", str(path)).output

    assert output.splitlines()[0] == (
        f"{path}:{line}:{column + 7}: warning: strategy.title: spam score 0.7: DIET_1 (BODY: Lose Weight Spam): "
        f'"{PHRASE}"'
    )


def test_check_spam_points_at_the_file_when_a_template_holds_the_phrase(
    spamassassin: str, run: CliInvoker, project: Path
) -> None:
    edit(
        own_template(project, "partials/footer.mjml.j2"),
        "{{ newsletter.description }}.",
        f"{{{{ newsletter.description }}}} who {PHRASE}.",
    )
    path = project / "issues" / FIRST_ISSUE

    output = run("check", "--spam", str(path)).output

    assert output.splitlines()[0] == (
        f'{path}:1:1: warning: spam score 0.7: DIET_1 (BODY: Lose Weight Spam): "{PHRASE}"'
    )


def test_check_without_spam_does_not_run_spamassassin(run: CliInvoker, project: Path) -> None:
    edit(project / "issues" / SUPPORT, REWORDED, f"it tends to {PHRASE}")

    assert "0 warning(s)" in run("check").output


def test_check_spam_without_spamassassin_says_so_once_and_passes(
    run: CliInvoker, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))

    result = run("check", "--spam", "--strict")

    assert result.output.splitlines() == [
        SPAM_SKIPPED,
        f"{CHECKED} files checked: 0 error(s), 0 warning(s)",
    ]
    assert "apt-get install -y --no-install-recommends spamassassin" in SPAM_SKIPPED


def test_a_failing_spamassassin_is_a_note_not_a_crash(
    settings: Settings, project: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    broken = tmp_path / "bin"
    broken.mkdir()
    (broken / "spamassassin").symlink_to("/bin/false")
    monkeypatch.setenv("PATH", str(broken))

    report = check_paths([project / "issues" / FIRST_ISSUE], settings, spam=True)

    assert report.problems == []
    assert report.notes == [f"note: spam check skipped: {broken / 'spamassassin'} exited with status 1: "]
