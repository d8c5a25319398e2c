"""Whole-process cost of the commands an editor runs on every save: `python -m bench.startup [--rounds N]`.

Each pair runs interleaved, round after round, in one run (the machine is shared: the ratios hold while
the absolute times drift), and prints the median wall time and CPU time of a whole process:

- `newsletter --help` against `python -c pass` (the interpreter's own start);
- `newsletter check` of every sample issue and welcome step against the goal of 0.8 s;
- `newsletter render ISSUE` against the MJML JavaScript CLI compiling the same issue's MJML (the tool the
  design card chose MRML, through mjml-python, to beat). The CLI comes from the npm registry into
  ~/.cache/newsletter-bench on first use (`npm install mjml@4`, about 10 s).

Beside render, its floor: a process that imports the third-party packages `newsletter render` imports
(read from its ``sys.modules``) and does nothing else, all of them and without pydantic and
email-validator: what the libraries the design card chose cost before a line of ours runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from pipeline.content.issue import issue_paths, load_issue
from pipeline.render.renderer import Renderer
from pipeline.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]
NEWSLETTER = str(Path(sys.executable).with_name("newsletter"))
MJML_HOME = Path.home() / ".cache" / "newsletter-bench"


def run_once(argv: Sequence[str], cwd: Path) -> tuple[float, float]:
    """Wall and CPU seconds (user + system, of the child and its children) of one whole process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def pair(
    label: str, ours: Sequence[str], other: Sequence[str], other_label: str, cwd: Path, rounds: int
) -> None:
    """Both commands ``rounds`` times, alternating; medians and the ratio ours / other."""
    times: dict[str, list[tuple[float, float]]] = {"ours": [], "other": []}
    for _ in range(rounds):
        times["ours"].append(run_once(ours, cwd))
        times["other"].append(run_once(other, cwd))
    wall = {k: statistics.median(w for w, _ in v) for k, v in times.items()}
    cpu = {k: statistics.median(c for _, c in v) for k, v in times.items()}
    print(f"{label}")
    print(f"  ours   {wall['ours']:6.3f} s wall  {cpu['ours']:6.3f} CPU-s")
    print(f"  {other_label:<6} {wall['other']:6.3f} s wall  {cpu['other']:6.3f} CPU-s")
    print(f"  ratio  {wall['ours'] / wall['other']:6.2f}x wall  {cpu['ours'] / cpu['other']:6.2f}x CPU")


def alone(label: str, ours: Sequence[str], goal: float, cwd: Path, rounds: int) -> None:
    results = [run_once(ours, cwd) for _ in range(rounds)]
    wall = statistics.median(w for w, _ in results)
    cpu = statistics.median(c for _, c in results)
    print(f"{label}")
    print(f"  ours   {wall:6.3f} s wall  {cpu:6.3f} CPU-s   goal ≤ {goal} s: {wall / goal:.2f} of it")


_MODULES_OF = """
import atexit, json, sys
from pipeline.cli import main
def shown():
    own = set(sys.stdlib_module_names) | {"pipeline"}
    third = [name for name, module in list(sys.modules.items())
             if name.partition(".")[0] not in own and not name.startswith("_")
             and getattr(module, "__file__", None)
             and "site-packages" in module.__file__]
    sys.__stdout__.write(json.dumps(third))
atexit.register(shown)
sys.stdout = open("/dev/null", "w")
main(sys.argv[1:])
"""
"""Runs a command and prints the third-party modules it imported, in the order they were imported."""


def imported_modules(argv: Sequence[str], cwd: Path) -> list[str]:
    """The third-party modules a ``newsletter`` command imports (every one, not only the packages:
    a package's own import may be lazy)."""
    done = subprocess.run(
        [sys.executable, "-c", _MODULES_OF, *argv], cwd=cwd, check=True, capture_output=True, text=True
    )
    return list(json.loads(done.stdout))


def floor(label: str, modules: Sequence[str], cwd: Path, rounds: int, mjml: Sequence[str]) -> None:
    """A process importing ``modules`` and nothing else, against the MJML CLI."""
    code = "\n".join(f"import {name}" for name in modules)
    results = [run_once([sys.executable, "-c", code], cwd) for _ in range(rounds)]
    others = [run_once(mjml, cwd) for _ in range(rounds)]
    cpu = statistics.median(c for _, c in results)
    other = statistics.median(c for _, c in others)
    print(f"  {label}: {cpu:.3f} CPU-s, {cpu / other:.2f} of the MJML CLI ({other:.3f})")


def mjml_cli() -> Path:
    """The MJML JavaScript CLI, installed from npm into the bench cache when missing."""
    binary = MJML_HOME / "node_modules" / ".bin" / "mjml"
    if not binary.exists():
        if shutil.which("npm") is None:
            raise SystemExit("bench/startup.py needs npm for the MJML CLI it compares with")
        MJML_HOME.mkdir(parents=True, exist_ok=True)
        print("installing the MJML CLI from npm into", MJML_HOME, "…", flush=True)
        subprocess.run(
            ["npm", "install", "--silent", "--no-audit", "--no-fund", "mjml@4"], cwd=MJML_HOME, check=True
        )
    return binary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="runs of each command (medians are shown)")
    args = parser.parse_args()
    mjml = mjml_cli()
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {args.rounds} rounds each\n")
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp)
        for part in ("settings.toml", "issues", "templates", "subscribers"):
            source = ROOT / part
            (shutil.copytree if source.is_dir() else shutil.copy2)(source, project / part)
        settings = load_settings(project / "settings.toml")
        issue = issue_paths([], settings.path(settings.newsletter.issues_dir))[0]
        (project / "issue.mjml").write_text(Renderer(settings).mjml(load_issue(issue)), encoding="utf-8")
        env_key = {"NEWSLETTER_SECRET_KEY": "bench-" * 8}
        os.environ.update(env_key)  # `render` signs preview links; the key would otherwise be generated

        pair(
            "newsletter --help",
            [NEWSLETTER, "--help"],
            [sys.executable, "-c", "pass"],
            "python",
            project,
            args.rounds,
        )
        alone(
            "newsletter check (every sample issue and welcome step)",
            [NEWSLETTER, "check"],
            0.8,
            project,
            args.rounds,
        )
        mjml_argv = [str(mjml), str(project / "issue.mjml"), "-o", str(project / "mjml.html")]
        pair(
            f"newsletter render {issue.name} (Jinja2 → MJML → HTML + text + .eml)",
            [NEWSLETTER, "render", str(issue)],
            mjml_argv,
            "mjml",
            project,
            args.rounds,
        )
        print("  goal: ours ≤ 1/3 of the MJML CLI's (ratio ≤ 0.33)")
        modules = imported_modules(["render", str(issue)], project)
        packages = sorted({name.partition(".")[0] for name in modules})
        print(f"  the floor: render imports {len(modules)} modules of {', '.join(packages)}")
        floor("importing them alone", modules, project, args.rounds, mjml_argv)
        heavy = ("pydantic", "pydantic_core", "email_validator", "annotated_types", "typing_inspection")
        lighter = [name for name in modules if name.partition(".")[0] not in heavy]
        floor("without pydantic and email-validator", lighter, project, args.rounds, mjml_argv)


if __name__ == "__main__":
    main()
