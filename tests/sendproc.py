"""Run the ``newsletter`` console script as a real subprocess against a throwaway project.

``SendProject`` writes a settings file for a copy of the project (tmp SQLite store, small batches, a
rate that makes a send last a few seconds), a generated subscriber CSV, and then starts, waits for or
kills ``newsletter`` processes while reading the store directly to see how far a campaign has got:
SQLite read-only (WAL lets it look while a sender writes), or a PostgreSQL database given by URL.
Used by ``tests/test_crash.py``.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import tomllib
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from signal import Signals
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

SECRET_KEY = "crash-test-signing-key-0123456789abcdef"
API_KEY = "SG.crash-test-api-key"
ISSUE = "issues/2026-12-01-name-it-to-tame-it.yaml"
STARTUP_TIMEOUT = 60.0
"""Seconds a `newsletter` process may take to do anything at all on a loaded machine."""


def newsletter_script() -> str:
    """The console script of the virtualenv running the tests."""
    beside = Path(sys.executable).parent / "newsletter"
    found = str(beside) if beside.exists() else shutil.which("newsletter")
    if found is None:  # pragma: no cover - the package is installed with the test extras
        raise RuntimeError("the `newsletter` console script is not installed (pip install -e '.[test]')")
    return found


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def dump_settings(data: Mapping[str, Mapping[str, Any]]) -> str:
    """The settings file as TOML: tables of scalars and lists, and tables within them ([bounces.imap]),
    which is all settings.toml has."""
    lines = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        lines += [
            f"{key} = {_toml_value(value)}" for key, value in values.items() if not isinstance(value, Mapping)
        ]
        lines.append("")
        inner = {f"{section}.{key}": value for key, value in values.items() if isinstance(value, Mapping)}
        if inner:
            lines.append(dump_settings(inner))
    return "\n".join(lines)


def subscriber_emails(count: int) -> list[str]:
    return [f"reader{i:06d}@example.com" for i in range(1, count + 1)]


def write_subscribers_csv(path: Path, count: int) -> list[str]:
    """``count`` active people (lower-case, unique addresses, a name each); returns the addresses."""
    emails = subscriber_emails(count)
    rows = ["email,name"] + [f"{email},Reader {i}" for i, email in enumerate(emails, 1)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return emails


@dataclass(frozen=True)
class Row:
    """One ledger row as the test sees it."""

    id: int
    subscriber_id: int
    email: str
    status: str
    error: str | None


@dataclass
class SendProject:
    """A project folder (the ``project`` fixture's copy) set up for sending through a subprocess."""

    root: Path
    settings_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    store_url: str | None = None
    """None: a SQLite file under var/."""
    _runs: int = 0

    def __post_init__(self) -> None:
        data: dict[str, dict[str, Any]] = tomllib.loads(
            (self.root / "settings.toml").read_text(encoding="utf-8")
        )
        self.db_path = self.root / "var" / "crash.db"
        data["store"] = {"url": self.store_url or f"sqlite:///{self.db_path}"}
        for section, values in self.settings_overrides.items():
            data.setdefault(section, {}).update(values)
        self.settings = self.root / "crash-settings.toml"
        self.settings.write_text(dump_settings(data), encoding="utf-8")
        self.logs = self.root / "logs"
        self.logs.mkdir(exist_ok=True)
        self.env = {k: v for k, v in os.environ.items() if k not in {"NEWSLETTER_SETTINGS", "SMTP_PASSWORD"}}
        self.env |= {
            "NEWSLETTER_SECRET_KEY": SECRET_KEY,
            "SENDGRID_API_KEY": API_KEY,
            "COLUMNS": "200",
            "PYTHONUNBUFFERED": "1",
        }

    # -- processes ---------------------------------------------------------------------------------

    def command(self, *args: str) -> list[str]:
        return [newsletter_script(), "--settings", str(self.settings), *args]

    @contextmanager
    def spawn(self, *args: str) -> Iterator[Process]:
        """Start ``newsletter ARGS``; its output goes to files under logs/. Killed if still running at exit."""
        self._runs += 1
        out = self.logs / f"{self._runs:02d}.out"
        err = self.logs / f"{self._runs:02d}.err"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            popen = subprocess.Popen(
                self.command(*args), cwd=self.root, env=self.env, stdout=stdout, stderr=stderr
            )
            process = Process(popen, out, err, time.monotonic())
            try:
                yield process
            finally:
                if popen.poll() is None:
                    popen.kill()
                popen.wait()

    def run(self, *args: str, timeout: float = 120.0, expect: int | None = 0) -> Process:
        """Run ``newsletter ARGS`` to the end; fails the test if it hangs or exits otherwise than ``expect``."""
        with self.spawn(*args) as process:
            process.wait(timeout)
        if expect is not None:
            assert process.returncode == expect, process.describe()
        return process

    def send(self, transport: str, *, timeout: float = 120.0, expect: int | None = 0) -> Process:
        return self.run("send", ISSUE, "--yes", "--transport", transport, timeout=timeout, expect=expect)

    def send_args(self, transport: str) -> tuple[str, ...]:
        return ("send", ISSUE, "--yes", "--transport", transport)

    def import_subscribers(self, count: int) -> list[str]:
        csv = self.root / "generated.csv"
        emails = write_subscribers_csv(csv, count)
        process = self.run("subscribers", "import", str(csv))
        assert f"{count} added" in process.stdout, process.describe()
        return emails

    # -- the store, read directly ------------------------------------------------------------------

    def _query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """``sql`` with ``?`` placeholders; no rows while the first process has not migrated the store."""
        if self.store_url is not None:
            return self._query_postgres(sql.replace("?", "%s"), params)
        if not self.db_path.exists():
            return []
        try:
            uri = f"file:{self.db_path}?mode=ro"
            with closing(sqlite3.connect(uri, uri=True, timeout=30.0)) as conn:
                return conn.execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []
            raise

    def _query_postgres(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        assert self.store_url is not None
        url = make_url(self.store_url).set(drivername="postgresql")
        conninfo = url.render_as_string(hide_password=False)
        try:
            with psycopg.connect(conninfo) as conn:
                return list(conn.execute(sql.encode(), params).fetchall())
        except psycopg.errors.UndefinedTable:
            return []

    def counts(self, campaign_id: int = 1) -> Counter[str]:
        """Ledger rows of the campaign by status (empty before it exists)."""
        rows = self._query(
            "SELECT status, count(*) FROM deliveries WHERE campaign_id = ? GROUP BY status", campaign_id
        )
        return Counter({status: int(n) for status, n in rows})

    def done(self, campaign_id: int = 1) -> int:
        """Rows whose outcome is known or given up on (neither queued nor sending; in doubt counts)."""
        counts = self.counts(campaign_id)
        return sum(counts.values()) - counts["queued"] - counts["sending"]

    def ledger(self, campaign_id: int = 1) -> list[Row]:
        rows = self._query(
            "SELECT id, subscriber_id, email, status, error FROM deliveries WHERE campaign_id = ? ORDER BY id",
            campaign_id,
        )
        return [Row(*row) for row in rows]

    def ids_with_status(self, status: str, campaign_id: int = 1) -> set[int]:
        return {row.id for row in self.ledger(campaign_id) if row.status == status}

    def campaign_status(self, campaign_id: int = 1) -> str | None:
        rows = self._query("SELECT status FROM campaigns WHERE id = ?", campaign_id)
        return str(rows[0][0]) if rows else None

    def subscribers(self) -> dict[int, tuple[str, str]]:
        """subscriber id → (lower-cased address, status)."""
        return {
            i: (key, status)
            for i, key, status in self._query("SELECT id, email_key, status FROM subscribers")
        }


@dataclass
class Process:
    popen: subprocess.Popen[bytes]
    out_path: Path
    err_path: Path
    started: float

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def stdout(self) -> str:
        return self.out_path.read_text(encoding="utf-8", errors="replace")

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(encoding="utf-8", errors="replace")

    def describe(self) -> str:
        args = " ".join(str(a) for a in self.popen.args[3:])  # type: ignore[index]
        return (
            f"`newsletter {args}` (pid {self.pid}) exited {self.popen.poll()}\n"
            f"--- stdout\n{self.stdout}\n--- stderr\n{self.stderr[-4000:]}"
        )

    def wait(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            raise AssertionError(f"still running after {timeout:.0f} s; killed.\n{self.describe()}") from None

    def signal(self, signum: Signals) -> None:
        self.popen.send_signal(signum)

    def signal_all(self, signum: Signals) -> int:
        """Signal this process and every process under it, as systemd stops a service (its whole
        control group); returns how many processes got it."""
        tree = [self.pid, *self.descendants()]
        for pid in tree:
            with suppress(ProcessLookupError):
                os.kill(pid, signum)
        return len(tree)

    def descendants(self) -> list[int]:
        """Every process under this one now (workers, the forkserver, the resource tracker…)."""
        children: dict[int, list[int]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                ppid = int(stat.read_text(encoding="ascii").rpartition(")")[2].split()[1])
            except (OSError, ValueError, IndexError):
                continue  # gone meanwhile
            children.setdefault(ppid, []).append(int(stat.parent.name))
        tree, todo = [], list(children.get(self.pid, []))
        while todo:
            pid = todo.pop()
            tree.append(pid)
            todo += children.get(pid, [])
        return tree

    def kill(self) -> None:
        """SIGKILL, and reap it, so its pid is gone (as the next run's liveness check expects)."""
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait()

    def wait_until(self, condition: Callable[[], bool], timeout: float = STARTUP_TIMEOUT) -> bool:
        """Poll ``condition`` until it holds (True) or the process ends (False); fails on ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            if condition():
                return True
            if self.popen.poll() is not None:
                return False
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not reached within {timeout:.0f} s\n{self.describe()}")
            time.sleep(0.02)
