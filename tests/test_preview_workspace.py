"""The preview's bookkeeping without a browser: what a poll finds changed, what it renders again, and
how broken settings, templates and segments show as lines instead of tracebacks."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from pipeline.cli.preview import is_loopback
from pipeline.content.issue import issue_paths
from pipeline.preview import Workspace, allowed_hosts, create_app
from pipeline.preview.schemes import as_seen_in
from pipeline.preview.watch import Watched, changes, snapshot
from pipeline.settings import load_settings
from tests.fixtures.project import FIRST_ISSUE, cli_invoker, own_template
from tests.paths import REPO

SECOND_ISSUE = "2026-12-08-realistic-expectations.yaml"
SAMPLES = len(issue_paths([], REPO / "issues"))
"""The sample issues and welcome steps: the preview shows each."""


@pytest.fixture
def workspace(project: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "p" * 40)
    return Workspace(project / "settings.toml")


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} is not in {path.name}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def test_a_poll_names_what_changed_by_what_it_means(project: Path) -> None:
    watched = Watched.of(project / "settings.toml", load_settings(project / "settings.toml"))
    before = snapshot(watched)

    edit(project / "issues" / FIRST_ISSUE, "Name it to tame it", "Name it")
    (project / "templates" / "README.md").write_text("not a template\n")
    found = changes(watched, before, snapshot(watched))

    assert found.issues == {project / "issues" / FIRST_ISSUE}
    assert not (found.templates or found.settings or found.segments or found.everything)

    before = snapshot(watched)
    own_template(project, "partials/footer.mjml.j2")
    edit(project / "subscribers" / "segments.toml", "Every active subscriber", "Everyone")
    found = changes(watched, before, snapshot(watched))

    assert found.templates and found.segments and found.everything and not found.issues


def test_a_save_by_rename_and_a_deleted_issue_are_changes(project: Path) -> None:
    watched = Watched.of(project / "settings.toml", load_settings(project / "settings.toml"))
    first, second = project / "issues" / FIRST_ISSUE, project / "issues" / SECOND_ISSUE
    before = snapshot(watched)

    replacement = first.with_suffix(".tmp")
    replacement.write_bytes(first.read_bytes())  # the same bytes, a new file: as editors save
    os.replace(replacement, first)
    second.unlink()

    assert changes(watched, before, snapshot(watched)).issues == {first, second}


def test_an_issue_change_renders_that_issue_again_and_no_other(project: Path, workspace: Workspace) -> None:
    views = {view.name: view for view in workspace.views()}
    renders = workspace.renders
    assert renders == SAMPLES

    edit(project / "issues" / FIRST_ISSUE, "Name it to tame it", "Say it to tame it")
    assert workspace.poll().issues == {project / "issues" / FIRST_ISSUE}
    again = {view.name: view for view in workspace.views()}

    assert workspace.renders == renders + 1
    changed = again.pop(Path(FIRST_ISSUE).stem)
    assert changed.email is not None and "Say it to tame it" in changed.email.copy.html
    assert all(again[name] is views[name] for name in again)
    assert not workspace.poll()  # nothing more to see


def test_a_template_change_renders_what_is_asked_for_again_with_the_new_template(
    project: Path, workspace: Workspace
) -> None:
    workspace.views()
    renders = workspace.renders
    masthead = own_template(project, "partials/masthead.mjml.j2")
    edit(masthead, "View in your browser", "Read it on the web")

    assert workspace.poll().everything
    view = workspace.view(Path(FIRST_ISSUE).stem)

    assert view is not None and view.email is not None
    assert "Read it on the web" in view.email.copy.html
    assert workspace.renders == renders + 1, "only the issue asked for is rendered"


def test_a_templates_folder_made_after_the_start_is_watched(project: Path, workspace: Workspace) -> None:
    shutil.rmtree(project / "templates")
    workspace.poll()
    workspace.views()

    edit(own_template(project, "partials/masthead.mjml.j2"), "View in your browser", "Online")
    assert workspace.poll().templates
    view = workspace.view(Path(FIRST_ISSUE).stem)

    assert view is not None and view.email is not None and "Online" in view.email.copy.html


def test_a_template_that_raises_is_a_line_on_the_page_at_its_line(
    project: Path, workspace: Workspace
) -> None:
    path = own_template(project, "partials/masthead.mjml.j2")
    edit(path, "View in your browser", "{{ 1 // 0 }}")
    line = 1 + next(
        i for i, text in enumerate(path.read_text(encoding="utf-8").splitlines()) if "1 // 0" in text
    )
    workspace.poll()

    view = workspace.view(Path(FIRST_ISSUE).stem)

    assert view is not None and view.email is None and view.status == "1 error"
    (problem,) = view.problems
    assert problem.text == (
        f"templates/partials/masthead.mjml.j2:{line}: error: "
        "template failed: ZeroDivisionError: integer division or modulo by zero"
    )


def test_a_failure_check_does_not_foresee_is_a_line_on_the_page_not_a_traceback(
    project: Path, workspace: Workspace, caplog: pytest.LogCaptureFixture
) -> None:
    """A macro that calls itself for ever: a RecursionError, which no check names, still leaves the
    page a line saying so; the trace goes to the terminal's log."""
    edit(
        own_template(project, "partials/masthead.mjml.j2"),
        "View in your browser",
        "{% macro again() %}{{ again() }}{% endmacro %}{{ again() }}",
    )
    workspace.poll()

    view = workspace.view(Path(FIRST_ISSUE).stem)

    assert view is not None and view.email is None and view.status == "1 error"
    (problem,) = view.problems
    assert problem.text.startswith(f"issues/{FIRST_ISSUE}: error: could not be rendered: RecursionError")
    assert "Traceback" in caplog.text


def test_broken_settings_show_in_every_view_until_fixed(project: Path, workspace: Workspace) -> None:
    settings_file = project / "settings.toml"
    good = settings_file.read_text(encoding="utf-8")
    edit(settings_file, 'base_url = "https://news.example.org"', 'base_url = "news.example.org"')
    line = good.splitlines().index('base_url = "https://news.example.org"') + 1

    assert workspace.poll().settings
    views = workspace.views()

    assert len(views) == SAMPLES and all(view.email is None for view in views)
    (problem,) = views[0].problems
    assert problem.text.startswith(f"settings.toml:{line}:1: error: newsletter.base_url: 'news.example.org'")

    settings_file.write_text(good, encoding="utf-8")
    workspace.poll()
    assert all(view.email is not None and view.status == "ok" for view in workspace.views())


def test_the_audience_names_segments_the_segments_file_lacks(project: Path, workspace: Workspace) -> None:
    view = workspace.view(Path(FIRST_ISSUE).stem)
    assert view is not None
    assert workspace.audience(view) == (["everyone"], [])

    edit(project / "subscribers" / "segments.toml", "[segments.everyone]", "[segments.everyone-else]")
    found = workspace.poll()
    names, problems = workspace.audience(view)

    assert found.segments and not found.everything
    assert names == ["everyone"]
    assert [line.text for line in problems] == [
        "subscribers/segments.toml: error: segments.everyone: no such segment (did you mean 'everyone-else'?)"
    ]


def test_the_dark_copy_answers_the_colour_scheme_queries_and_leaves_the_text_alone() -> None:
    html = (
        "<style>@media (prefers-color-scheme: dark) { a { color: white } }"
        "@media only screen and (prefers-color-scheme:light) { a { color: black } }</style>"
        '<picture><source media="(prefers-color-scheme: dark)" srcset="dark.png"></picture>'
        "<p>Try @media (prefers-color-scheme: dark) in your own CSS.</p>"
    )

    dark = as_seen_in(html, "dark")

    assert dark == (
        "<style>@media (min-width: 0px) { a { color: white } }"
        "@media only screen and (max-width: 0px) { a { color: black } }</style>"
        '<picture><source media="(min-width: 0px)" srcset="dark.png"></picture>'
        "<p>Try @media (prefers-color-scheme: dark) in your own CSS.</p>"
    )
    assert as_seen_in(html, "light").startswith("<style>@media (max-width: 0px)")


def test_only_this_machine_names_reach_the_preview_unless_it_listens_wider(workspace: Workspace) -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.0.2.7") and not is_loopback("example.org")
    assert allowed_hosts("0.0.0.0") == ["*"]
    assert allowed_hosts("192.0.2.7") == ["127.0.0.1", "localhost", "[::1]", "192.0.2.7"]

    app = create_app(workspace)
    assert TestClient(app, base_url="http://127.0.0.1:8001").get("/live.js").status_code == 200
    rebound = TestClient(app, base_url="http://attacker.example:8001").get("/")
    assert rebound.status_code == 400  # a page whose name was rebound to 127.0.0.1 reads nothing


def test_an_issue_that_is_not_there_is_a_page_that_says_so(workspace: Workspace) -> None:
    client = TestClient(create_app(workspace), base_url="http://127.0.0.1:8001")

    page = client.get("/issue/no-such-issue")
    state = client.get("/issue/no-such-issue/state")

    assert page.status_code == 404 and "There is no issue file called no-such-issue" in page.text
    assert state.status_code == 404 and state.json()["email"] is None
    assert client.get("/issue/no-such-issue/html").status_code == 404


def test_any_file_name_gets_its_page_and_its_copy(project: Path, workspace: Workspace) -> None:
    shutil.copy2(project / "issues" / FIRST_ISSUE, project / "issues" / "Draft notes.yaml")
    client = TestClient(create_app(workspace), base_url="http://127.0.0.1:8001")

    index = client.get("/")
    page = client.get("/issue/Draft%20notes")
    message = client.get("/issue/Draft%20notes/eml")

    assert 'href="/issue/Draft%20notes"' in index.text
    assert page.status_code == 200 and "should be YYYY-MM-DD-slug.yaml" in page.text
    assert message.headers["content-type"] == "message/rfc822"
    assert b"Subject: Guilt isn't a verdict: start by naming it" in message.content


def test_a_port_in_use_is_one_clear_line(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "p" * 40)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        result = cli_invoker(project / "settings.toml")("preview", "--port", str(port), expect=1)

    assert result.output.splitlines()[-1] == (
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use "
        "(is a preview running already? try --port)"
    )
