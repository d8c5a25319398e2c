"""``newsletter serve`` as an operator runs it: a real process that serves, and stops cleanly on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx2

from tests.fixtures.project import cli_invoker
from tests.sendproc import newsletter_script
from tests.system import free_port

WAIT = 30.0


def test_serve_has_help_for_the_operator() -> None:
    result = cli_invoker()("serve", "--help", expect=None)

    assert result.exit_code == 0
    assert "TLS-terminating proxy" in result.output and "--forwarded-allow-ips" in result.output


def test_serve_runs_the_service_and_stops_on_ctrl_c(project: Path, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    env = {**os.environ, "NEWSLETTER_SECRET_KEY": "serve-" + "k" * 40}
    command = [
        newsletter_script(),
        "--settings",
        str(project / "settings.toml"),
        "serve",
        "--port",
        str(port),
    ]
    with log.open("wb") as output:
        process = subprocess.Popen(command, cwd=project, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + WAIT
        with httpx2.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            while True:
                assert process.poll() is None, log.read_text()
                try:
                    response = client.get("/subscribe")
                    break
                except httpx2.TransportError:
                    assert time.monotonic() < deadline, log.read_text()
                    time.sleep(0.1)
        process.send_signal(signal.SIGINT)
        assert process.wait(WAIT) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert response.status_code == 200 and "Subscribe to The Juggle" in response.text
    assert "server" not in response.headers  # no version banner for strangers
    assert f"Serving The Juggle on http://127.0.0.1:{port}" in log.read_text()
