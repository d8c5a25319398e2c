"""A newsletter from nothing: the wheel installed in a fresh virtual environment outside the repository
is all a new user has, and `newsletter init`, `check`, `preview`, `render`, `subscribers add` and an
outbox `send` work there; the project's pre-commit hook runs under pre-commit itself."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import pytest

from pipeline.settings import SECRET_ENV_NAMES, SETTINGS_ENV
from tests.paths import REPO
from tests.system import free_port

INIT = (
    "init", "news",
    "--name", "Field Notes",
    "--base-url", "https://notes.example.net",
    "--from-email", "hello@notes.example.net",
    "--postal-address", "Field Notes, 12 Elm Road, Leeds LS1 4AB, UK",
)  # fmt: skip


def clean_env(bin_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a new user's shell with the virtual environment active: nothing of this
    repository or this test run (no PYTHONPATH, no settings or secrets chosen)."""
    dropped = {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", SETTINGS_ENV, *SECRET_ENV_NAMES}
    env = {key: value for key, value in os.environ.items() if key not in dropped}
    return {**env, "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", "COLUMNS": "200", **extra}


def shell(
    *command: str | Path, cwd: Path, env: Mapping[str, str], expect: int = 0, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == expect, (command, done.stdout, done.stderr)
    return done


@pytest.fixture(scope="module")
def venv_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``bin/`` of a fresh virtual environment holding the wheel built from this checkout and its
    dependencies from the package index. The wheel is built from a copy of what a source distribution
    holds, so the build leaves nothing in the repository."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    shutil.copytree(REPO / "pipeline", source / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    env = clean_env(work)
    shell(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", work / "dist", source, cwd=work, env=env, timeout=600)  # fmt: skip
    [wheel] = (work / "dist").glob("newsletter_pipeline-*.whl")
    shell(sys.executable, "-m", "venv", "--without-pip", work / "venv", cwd=work, env=env)
    bin_dir = work / "venv" / "bin"
    install(bin_dir, wheel, cwd=work)
    return bin_dir


def install(bin_dir: Path, *requirements: str | Path, cwd: Path) -> None:
    """``pip install`` into the virtual environment of ``bin_dir`` with this interpreter's pip
    (``--python``): seeding the environment with a pip of its own, and compiling every module ahead,
    took 30 of the 45 s on a busy machine; the environment still sees nothing of the repository."""
    pip = (sys.executable, "-m", "pip", "--python", bin_dir / "python", "install", "-q", "--no-compile")
    shell(*pip, *requirements, cwd=cwd, env=clean_env(bin_dir), timeout=900)


def preview_index(project: Path, env: Mapping[str, str]) -> str:
    """The index page of `newsletter preview` started in ``project``, which is stopped after (Ctrl-C)."""
    port = free_port()
    server = subprocess.Popen(
        ["newsletter", "preview", "--port", str(port)],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as answer:
                    assert answer.status == 200
                    return str(answer.read().decode("utf-8"))
            except urllib.error.URLError:
                assert server.poll() is None, server.communicate()
                assert time.monotonic() < deadline, "the preview did not answer within 60 s"
                time.sleep(0.2)
    finally:
        if server.poll() is None:  # it answered: Ctrl-C stops it cleanly
            server.send_signal(signal.SIGINT)
            output = server.communicate(timeout=30)
            assert server.returncode == 0, output


def test_from_the_wheel_alone_a_new_newsletter_checks_previews_renders_and_sends(
    venv_bin: Path, tmp_path: Path
) -> None:
    env = clean_env(venv_bin)
    where = shell("python", "-c", "import pipeline; print(pipeline.__file__)", cwd=tmp_path, env=env)
    assert Path(where.stdout.strip()).is_relative_to(venv_bin.parent), "the installed package, not the repo"

    shell("newsletter", *INIT, cwd=tmp_path, env=env)
    news = tmp_path / "news"
    [issue] = (news / "issues").glob("*.yaml")
    relative = f"issues/{issue.name}"
    checked = shell("newsletter", "check", cwd=news, env=env)
    strict = shell("newsletter", "check", "--strict", cwd=news, env=env)
    index = preview_index(news, env)
    listing = shell("newsletter", "templates", "list", cwd=news, env=env)
    shell("newsletter", "render", relative, cwd=news, env=env)
    shell("newsletter", "subscribers", "add", "ana@example.org", "--name", "Ana", cwd=news, env=env)
    sent = shell("newsletter", "send", relative, "--yes", cwd=news, env=env)

    for result in (checked, strict):
        assert result.stdout.splitlines()[-1] == "1 file checked: 0 error(s), 0 warning(s)"
    assert f'<a href="/issue/{issue.stem}">{issue.stem}</a>' in index
    assert "<td>Your first issue, section by section</td>" in index
    assert 'class="ok" data-status' in index, "the sample passes the check the preview runs"
    assert "weekly.mjml.j2" in listing.stdout and "partials/footer.mjml.j2" in listing.stdout
    html = (news / "rendered" / f"{issue.stem}.html").read_text(encoding="utf-8")
    assert "Field Notes" in html and "12 Elm Road" in html
    assert "campaign: 1 sent of 1 recipients" in sent.stdout
    [eml] = (news / "outbox").rglob("*.eml")
    assert b"To: Ana <ana@example.org>" in eml.read_bytes()


def test_the_new_projects_pre_commit_hook_passes_a_good_issue_and_stops_a_bad_one(
    venv_bin: Path, tmp_path: Path
) -> None:
    env = clean_env(venv_bin, PRE_COMMIT_HOME=str(tmp_path / "pre-commit-cache"))
    install(venv_bin, "pre-commit", cwd=tmp_path)
    shell("newsletter", *INIT, cwd=tmp_path, env=env)
    news = tmp_path / "news"
    shell("git", "init", "-q", cwd=news, env=env)
    shell("git", "add", ".", cwd=news, env=env)

    passed = shell("pre-commit", "run", "--all-files", cwd=news, env=env)
    [issue] = (news / "issues").glob("*.yaml")
    issue.write_text(issue.read_text(encoding="utf-8").replace("subject:", "subjet:"), encoding="utf-8")
    failed = shell("pre-commit", "run", "--all-files", cwd=news, env=env, expect=1)

    assert "newsletter check --strict" in passed.stdout and "Passed" in passed.stdout
    assert f"{issue}:" in failed.stdout and ": error: subjet: unknown key 'subjet'" in failed.stdout
    assert "Failed" in failed.stdout
