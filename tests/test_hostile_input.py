"""Hostile and accidental bad input (issue 12): each is refused with FILE:LINE:COL: error: and changes nothing.

YAML bombs, invisible characters in issue files, settings that load but break mail, and messages that
pointed at the wrong place. The bomb is run as a real `newsletter check` in a subprocess with memory
and CPU limits, so a regression fails the test instead of taking the machine down.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import Result
from pydantic import BaseModel

from pipeline.content import yamlsource
from pipeline.content.issue import MAX_BYTES, load_issue
from pipeline.errors import ContentError, SettingsError
from pipeline.settings import Settings, load_settings
from pipeline.validation import LINE_BREAKS, invisible_kind
from tests.fixtures.project import FIRST_ISSUE, cli_invoker


def laughs(levels: int) -> str:
    """``levels`` lines, each a list of nine aliases of the line before: 9**levels strings in all."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [
        f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]"
        for prev, name in zip("abcdefgh", "bcdefghi", strict=True)
    ]
    return "\n".join(lines[:levels]) + "\n"


BILLION_LAUGHS = laughs(9)
"""387 bytes that stand for 10**9 strings: only ever run in a subprocess with limits."""
SMALL_LAUGHS = laughs(5)
"""The same shape, 59,049 strings: past the alias bound, yet harmless if a regression expands it."""


def snapshot(project: Path) -> dict[str, bytes]:
    """Every file of the project copy and its bytes: what "nothing changed" compares."""
    return {
        str(path.relative_to(project)): path.read_bytes() for path in project.rglob("*") if path.is_file()
    }


def check(project: Path, *paths: Path) -> Result:
    """`newsletter check PATHS` in-process; the project must be the same before and after."""
    before = snapshot(project)
    result = cli_invoker(project / "settings.toml")("check", *map(str, paths), expect=None)
    assert snapshot(project) == before, "check changed the project"
    return result


def errors_of(result: Result) -> list[str]:
    """The problem lines `check` printed (the summary line left out); no traceback anywhere."""
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return [line for line in result.output.splitlines() if ": error: " in line or ": warning: " in line]


def write_issue(project: Path, name: str, text: str) -> Path:
    path = project / "issues" / name
    path.write_text(text, encoding="utf-8")
    return path


def sample_with(project: Path, old: str, new: str, name: str = "2027-01-05-edited.yaml") -> Path:
    """The first sample issue with ``old`` replaced by ``new``, as another file in issues/."""
    text = (project / "issues" / FIRST_ISSUE).read_text(encoding="utf-8")
    assert old in text, f"the sample no longer contains {old!r}"
    return write_issue(project, name, text.replace(old, new, 1))


@pytest.fixture(params=["libyaml", "python"])
def either_parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test with libyaml's parser and with PyYAML's own (used where libyaml is missing)."""
    if request.param == "python":
        monkeypatch.setattr(yamlsource, "_Loader", yamlsource._PyLoader)
    else:
        assert yamlsource._Loader is not yamlsource._PyLoader, "libyaml is not installed here"
    return str(request.param)


# Item 9: YAML bombs


LIMITED_NEWSLETTER = (
    "import resource; "
    "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30)); "
    "resource.setrlimit(resource.RLIMIT_CPU, (60, 60)); "
    "from pipeline.cli import main; main()"
)
"""The `newsletter` command in a process that may use 1 GiB of memory and 60 s of CPU at most."""


def test_billion_laughs_is_refused_at_the_alias_in_a_bounded_subprocess(project: Path) -> None:
    """Issue 12 item 9: a billion-laughs file is refused at the alias that multiplies, FILE:LINE:COL,
    by a real `newsletter check` held to 1 GiB and 60 s of CPU (it used to pass 2 GB and die)."""
    bomb = write_issue(project, "2027-01-05-lol.yaml", BILLION_LAUGHS)
    before = snapshot(project)

    done = subprocess.run(
        [
            sys.executable,
            "-c",
            LIMITED_NEWSLETTER,
            "--settings",
            str(project / "settings.toml"),
            "check",
            str(bomb),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
        check=False,
    )

    assert done.returncode == 1, done.stderr
    assert done.stdout.splitlines() == [
        f"{bomb}:4:8: error: YAML refused: aliases repeat more than 1000 values (alias '*c' here); "
        "write the values out instead",
        "1 file checked: 1 error(s), 0 warning(s)",
    ]
    assert done.stderr == ""
    assert snapshot(project) == before


def test_aliases_past_the_bound_are_refused_by_either_parser(project: Path, either_parser: str) -> None:
    """Issue 12 item 9: the alias bound holds with libyaml and with PyYAML's own parser."""
    bomb = write_issue(project, "2027-01-05-lol.yaml", SMALL_LAUGHS)

    with pytest.raises(ContentError) as caught:
        load_issue(bomb)

    assert [str(p) for p in caught.value.problems] == [
        f"{bomb}:4:8: error: YAML refused: aliases repeat more than 1000 values (alias '*c' here); "
        "write the values out instead"
    ]


def test_an_alias_inside_its_own_value_is_refused(project: Path, either_parser: str) -> None:
    """Issue 12 item 9: a recursive alias (`&x [1, *x]`) is refused where it stands (it recursed forever)."""
    path = sample_with(project, "date: 2026-12-01\n", "date: 2026-12-01\nloop: &x [1, *x]\n")

    assert errors_of(check(project, path)) == [
        f"{path}:8:14: error: YAML refused: alias '*x' is inside the value it names"
    ]


@pytest.mark.parametrize(
    ("nesting", "column_of_refusal"),
    [("[" * 500 + "]" * 500, 27), ("{a: " * 500 + "1" + "}" * 500, 84)],
    ids=["lists", "mappings"],
)
def test_500_levels_of_nesting_are_refused_with_file_line_and_column(
    project: Path, either_parser: str, nesting: str, column_of_refusal: int
) -> None:
    """Issue 12 item 9: 500-level nesting is refused at the level past 20 (it was a RecursionError
    with 1,000 frames and no file name)."""
    path = sample_with(project, "date: 2026-12-01\n", f"date: 2026-12-01\nextra: {nesting}\n")

    assert errors_of(check(project, path)) == [
        f"{path}:8:{column_of_refusal}: error: YAML refused: nested more than 20 levels deep; an issue needs four"
    ]


def test_20_levels_of_nesting_still_load_as_yaml(project: Path) -> None:
    """Issue 12 item 9: the depth bound refuses bombs, not YAML: 20 levels reach the schema check."""
    path = sample_with(project, "date: 2026-12-01\n", f"date: 2026-12-01\nextra: {'[' * 19}{']' * 19}\n")

    assert errors_of(check(project, path)) == [f"{path}:8:1: error: extra: unknown key 'extra'" + _ALLOWED]


_ALLOWED = "; allowed: subject, subject_variants, preheader, date, intro, hero, strategy, story, next_steps, resources, segments, template"


def test_a_file_over_the_size_limit_is_refused_before_it_is_read(project: Path) -> None:
    """Issue 12 item 9: an issue over 1 MB is refused unread, by `check` and by every loader (a 20 MB
    issue took 120 s and 620 MB); a valid issue padded with comments shows the limit is about size."""
    sample = (project / "issues" / FIRST_ISSUE).read_text(encoding="utf-8")
    padding = ("# " + "x" * 97 + "\n") * (MAX_BYTES // 100 + 1)
    path = write_issue(project, "2026-12-01-huge.yaml", sample + padding)
    assert path.stat().st_size > MAX_BYTES

    assert errors_of(check(project, path)) == [
        f"{path}:1:1: error: larger than 1 MB; an issue file is a few KB, so it is not read"
    ]
    with pytest.raises(ContentError, match="larger than 1 MB"):
        load_issue(path)
    path.write_text(sample + padding[: MAX_BYTES - len(sample.encode()) - 10], encoding="utf-8")
    assert load_issue(path).issue.subject, "just under the limit loads"


# Item 10 (issue files): control characters in text fields


@pytest.mark.parametrize(
    ("escape", "named"),
    [("\\e", "U+001B (ESCAPE)"), ("\\0", "U+0000 (NULL)"), ("\\x7f", "U+007F (DELETE)")],
)
def test_escaped_control_character_in_the_subject_names_the_issue_field_not_the_template(
    project: Path, escape: str, named: str
) -> None:
    """Issue 12 item 10: a control character written as a YAML escape in the subject is reported at
    the subject's line, naming the field (MJML used to fail and blame templates/weekly.mjml.j2)."""
    path = sample_with(project, 'subject: "Guilt isn', f'subject: "Guilt{escape} isn')

    result = check(project, path)

    assert result.exit_code == 1
    assert errors_of(result) == [
        f"{path}:5:10: error: subject: {named} at character 6 is an invisible control character; delete it"
    ]
    assert "templates/" not in result.output


@pytest.mark.parametrize(
    ("raw", "named"),
    [("\x1b", "U+001B (ESCAPE)"), ("\0", "U+0000 (NULL)"), ("\x0b", "U+000B (VERTICAL TAB)")],
)
def test_raw_control_character_in_a_title_is_reported_where_it_stands(
    project: Path, either_parser: str, raw: str, named: str
) -> None:
    """Issue 12 item 10: a control character typed into the file (YAML refuses it outright) is
    reported at its own line and column under its field, and the rest of the file is still checked."""
    path = sample_with(project, 'title: "Name it to tame it"', f'title: "Name it{raw} to tame it"')
    path.write_text(path.read_text(encoding="utf-8").replace("kind: article", "kind: articel"), "utf-8")

    problems = errors_of(check(project, path))

    assert problems == [
        f"{path}:14:18: error: strategy.title: {named} is an invisible control character; delete it",
        f"{path}:56:11: error: resources.0.kind: input should be 'book', 'podcast', 'article', "
        "'community', 'service' or 'video'",
    ]


def test_multi_line_fields_keep_line_breaks_and_tabs_but_refuse_other_controls(project: Path) -> None:
    """Issue 12 item 10: a body may hold newlines and tabs; a bell (\\a) in it is an error at the body."""
    story_body = "  body: |\n    I work twelve-hour nights"
    fine = sample_with(
        project, story_body, '  body: "One\\n\\ttwo"\n  old_body: |\n    I work', "2026-12-01-a.yaml"
    )
    bell = sample_with(
        project, story_body, '  body: "One\\ntwo\\a"\n  old_body: |\n    I work', "2026-12-01-b.yaml"
    )

    assert errors_of(check(project, fine)) == [
        f"{fine}:37:3: error: story.old_body: unknown key 'old_body' (did you mean 'body'?)"
    ]
    assert errors_of(check(project, bell)) == [
        f"{bell}:36:9: error: story.body: U+0007 (BELL) at character 8 is an invisible control character; "
        "delete it",
        f"{bell}:37:3: error: story.old_body: unknown key 'old_body' (did you mean 'body'?)",
    ]


def test_the_file_scan_finds_what_the_field_check_refuses() -> None:
    """Issue 12 item 10: the pattern that scans whole files refuses exactly the characters the field
    check refuses (tab and line ends aside), so a raw character is never let through by one of them."""
    mismatched = [
        f"U+{code:04X}"
        for code in range(0x110000)
        if bool(yamlsource.UNSEEN.fullmatch(chr(code))) != bool(invisible_kind(chr(code), allowed="\t\n\r"))
    ]

    assert mismatched == []


def test_url_with_a_control_character_is_refused_without_echoing_it(project: Path) -> None:
    """Issue 12 item 10: a link with an escape character in it is an error naming the field, and the
    terminal gets an escape sequence written out, never the raw character."""
    path = sample_with(
        project, 'url: "https://www.pewresearch.org/"', 'url: "https://www.pew\\eresearch.org/"'
    )

    result = check(project, path)

    assert "\x1b" not in result.output
    assert errors_of(result) == [
        f"{path}:57:10: error: resources.0.url: must not contain spaces or invisible characters "
        "(write a space as %20)"
    ]


def test_invisible_characters_in_keys_are_written_out_as_escapes(project: Path) -> None:
    """Issue 12 item 10: an unknown key holding an escape character is shown as \\x1b, not sent raw."""
    path = sample_with(project, "intro:", '"intr\\eo":')

    result = check(project, path)

    assert "\x1b" not in result.output
    assert f"{path}:8:1: error: intr\\x1bo: unknown key 'intr\\x1bo' (did you mean 'intro'?)" in errors_of(
        result
    )


# Item 15: misleading messages


def test_unclosed_quote_is_reported_where_it_opened_not_where_yaml_gave_up(
    project: Path, either_parser: str
) -> None:
    """Issue 12 item 15: an unclosed quote on line 12 is reported at 12, not at 30:8 where the next
    quote closed it and YAML stopped."""
    lines = [f"key{n}: value {n}" for n in range(1, 11)] + ["strategy:", '  title: "Name it to tame it']
    lines += ["  body: Put it into words."] + [f"  note{n}: plain text" for n in range(14, 29)]
    lines += ['  steps:\n    - "Say it out loud."']
    path = write_issue(project, "2027-01-05-quote.yaml", "\n".join(lines) + "\n")
    assert path.read_text(encoding="utf-8").splitlines()[29] == '    - "Say it out loud."'

    [problem] = errors_of(check(project, path))

    assert problem.startswith(
        f'{path}:12:10: error: YAML syntax: the " opened here is closed only on line 30, '
    )
    assert problem.endswith('; is a closing " missing?')


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            "\x1c" * 8,
            [
                "1:1: error: U+001C (FILE SEPARATOR) is an invisible control character (and 7 more like it); "
                "delete it",
                "1:1: error: an issue file must be a mapping of keys (subject:, date:, …); this one holds no "
                "keys, only invisible characters: U+001C (FILE SEPARATOR) 8 times",
            ],
        ),
        (
            "\u00a0\u200b\n",
            [
                "1:1: error: an issue file must be a mapping of keys (subject:, date:, …); this one holds no "
                "keys, only invisible characters: U+00A0 (NO-BREAK SPACE) 1 time, U+200B (ZERO WIDTH SPACE) "
                "1 time"
            ],
        ),
        (
            "",
            ["1:1: error: an issue file must be a mapping of keys (subject:, date:, …); this one is empty"],
        ),
        (
            "# only a comment\n\n",
            [
                "1:1: error: an issue file must be a mapping of keys (subject:, date:, …); this one holds "
                "no keys, only comments and blank lines"
            ],
        ),
    ],
    ids=["file-separators", "invisible-spaces", "empty", "comments"],
)
def test_a_file_without_keys_says_what_it_holds(
    project: Path, either_parser: str, content: str, expected: list[str]
) -> None:
    """Issue 12 item 15: a file of 0x1C bytes is not called empty (0x1C is a line break to
    str.splitlines); it says what it holds, as does every other file without keys."""
    path = write_issue(project, "2027-01-05-blank.yaml", content)

    assert errors_of(check(project, path)) == [f"{path}:{line}" for line in expected]


def test_line_breaks_are_every_character_splitlines_breaks_at() -> None:
    """Issue 12 item 15: the single-line check knows every line break str.splitlines() knows."""
    breaking = {chr(code) for code in range(0x110000) if len(f"a{chr(code)}b".splitlines()) > 1}

    assert breaking == LINE_BREAKS


@pytest.mark.parametrize("char", sorted(LINE_BREAKS), ids=lambda c: f"U+{ord(c):04X}")
@pytest.mark.parametrize(
    ("field", "old", "line", "column"),
    [
        ("subject", 'subject: "Guilt isn', 5, 10),
        ("preheader", 'preheader: "More than', 6, 12),
        ("strategy.title", 'title: "Name it', 14, 10),
        ("story.title", 'title: "The night-shift', 35, 10),
        ("resources.0.title", 'title: "Research on', 54, 12),
    ],
)
def test_single_line_fields_refuse_every_line_break(
    project: Path, char: str, field: str, old: str, line: int, column: int
) -> None:
    """Issue 12 item 15: U+2028, U+0085 and every other break str.splitlines() knows, written as an
    escape inside the value, fail the single-line check of the subject, preheader and titles."""
    escape = char.encode("unicode_escape").decode("ascii") if char != "\n" else "\\n"
    path = sample_with(project, old, old.replace(' "', f' "x{escape}', 1))
    name = {"\n": "LINE FEED", "\r": "CARRIAGE RETURN", "\v": "VERTICAL TAB", "\f": "FORM FEED"}.get(char)
    shown = f"U+{ord(char):04X} ({name or _names[char]})"

    assert errors_of(check(project, path)) == [
        f"{path}:{line}:{column}: error: {field}: must be a single line: {shown} at character 2 breaks it"
    ]


_names = {
    "\x1c": "FILE SEPARATOR",
    "\x1d": "GROUP SEPARATOR",
    "\x1e": "RECORD SEPARATOR",
    "\x85": "NEXT LINE",
    "\u2028": "LINE SEPARATOR",
    "\u2029": "PARAGRAPH SEPARATOR",
}


def test_raw_line_separator_in_the_subject_is_reported_and_later_lines_keep_their_numbers(
    project: Path, either_parser: str
) -> None:
    """Issue 12 item 15: a U+2028 pasted into the subject (YAML counts it as a line break, editors do
    not) is an error at its own place, and problems further down keep the editor's line numbers."""
    path = sample_with(project, "subject: \"Guilt isn't", "subject: \"Guilt\u2028isn't")
    path.write_text(path.read_text(encoding="utf-8").replace("kind: article", "kind: articel"), "utf-8")

    assert errors_of(check(project, path)) == [
        f"{path}:5:16: error: subject: U+2028 (LINE SEPARATOR) is an invisible line break; delete it",
        f"{path}:56:11: error: resources.0.kind: input should be 'book', 'podcast', 'article', "
        "'community', 'service' or 'video'",
    ]


# Item 13: settings that loaded but broke mail


def set_key(project: Path, section: str, key: str, value: str) -> tuple[Path, int]:
    """settings.toml with ``key = value`` in ``[section]`` in place of the line there, and its line."""
    path = project / "settings.toml"
    lines = path.read_text(encoding="utf-8").splitlines()
    start = lines.index(f"[{section}]")
    index = next(i for i in range(start + 1, len(lines)) if lines[i].startswith(f"{key} ="))
    lines[index] = f"{key} = {value}"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, index + 1


def settings_errors(project: Path) -> list[str]:
    """What `newsletter check` prints when the settings are wrong; the project is left as it was."""
    before = snapshot(project)
    result = cli_invoker(project / "settings.toml")("check", expect=1)
    assert snapshot(project) == before
    assert "Traceback" not in result.output
    return result.stderr.splitlines()


_BASE_URL_HINT = "every link is this plus a path (/u/…), so write it like https://news.example.org"


@pytest.mark.parametrize(
    ("url", "wrong"),
    [
        ("https://news.example.org/?ref=mail#top", "has a query ('?ref=mail') and has a fragment ('#top')"),
        ("https://news example.org", "has spaces or invisible characters"),
        ("https://news.example.org:99999", "has a port that is not a number from 1 to 65535"),
        ("https:///news", "has no host name"),
    ],
    ids=["query-and-fragment", "space", "port", "no-host"],
)
def test_base_url_that_would_break_every_link_is_an_error_at_its_line(
    project: Path, url: str, wrong: str
) -> None:
    """Issue 12 item 13: a base_url with a query, a fragment or a space loaded and gave broken
    List-Unsubscribe headers; now it is an error naming the key, its line and what is wrong."""
    path, line = set_key(project, "newsletter", "base_url", f'"{url}"')

    assert settings_errors(project) == [
        f"{path}:{line}:1: error: newsletter.base_url: '{url}' {wrong}; {_BASE_URL_HINT}"
    ]


def test_base_url_with_a_password_is_refused_without_showing_it(project: Path) -> None:
    """Issue 12 item 13: credentials in base_url would go into every message; the error hides them."""
    path, line = set_key(project, "newsletter", "base_url", '"https://editor:hunter2@news.example.org"')

    assert settings_errors(project) == [
        f"{path}:{line}:1: error: newsletter.base_url: 'https://…@news.example.org' has a user name or "
        f"password in it; {_BASE_URL_HINT}"
    ]


@pytest.mark.parametrize(
    ("categories", "message"),
    [
        (
            '["wöchentlich"]',
            "categories.0: 'wöchentlich' is not plain ASCII, which SendGrid requires of categories",
        ),
        ('["weekly", "weekly"]', "categories: 'weekly' given more than once"),
        (f'["{"x" * 256}"]', "categories.0: string should have at most 255 characters"),
        (
            "[" + ", ".join(f'"c{n}"' for n in range(11)) + "]",
            "categories: list should have at most 10 items after validation, not 11",
        ),
    ],
    ids=["not-ascii", "repeated", "too-long", "too-many"],
)
def test_sendgrid_categories_follow_the_apis_rules(project: Path, categories: str, message: str) -> None:
    """Issue 12 item 13: categories SendGrid refuses (non-ASCII such as ["wöchentlich"], over 255
    characters, more than ten, repeated) are errors at the key's line, not a failed send."""
    path, line = set_key(project, "sendgrid", "categories", categories)

    assert settings_errors(project) == [f"{path}:{line}:1: error: sendgrid.{message}"]


FLOAT_KEYS = [
    (section, key)
    for section, info in Settings.model_fields.items()
    if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)
    for key, field in info.annotation.model_fields.items()
    if field.annotation is float
]
"""Every number setting that TOML could set to inf or nan."""


def test_the_float_settings_are_all_found() -> None:
    assert ("delivery", "rate_per_second") in FLOAT_KEYS
    assert len(FLOAT_KEYS) >= 9


@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
@pytest.mark.parametrize(("section", "key"), FLOAT_KEYS, ids=[f"{s}.{k}" for s, k in FLOAT_KEYS])
def test_infinite_or_nan_numbers_are_errors_naming_the_key(
    project: Path, section: str, key: str, value: str
) -> None:
    """Issue 12 item 13: `rate_per_second = inf` passed `gt=0`; no number setting takes inf or nan."""
    path, line = set_key(project, section, key, value)

    assert settings_errors(project) == [
        f"{path}:{line}:1: error: {section}.{key}: input should be a finite number"
    ]


@pytest.mark.parametrize(
    ("section", "key", "limit"),
    [
        ("delivery", "stop_seconds", "3600"),
        ("smtp", "timeout", "3600"),
        ("sendgrid", "timeout", "3600"),
        ("schedule", "tick_seconds", "86400"),
        ("schedule", "lease_seconds", "86400"),
        ("schedule", "catch_up_hours", "8760"),
    ],
)
def test_waits_too_long_for_the_clock_are_errors(project: Path, section: str, key: str, limit: str) -> None:
    """Issue 12 item 13: finite but huge waits (1e12) overflow sleeps, socket timeouts and dates."""
    path, line = set_key(project, section, key, "1e12")

    assert settings_errors(project) == [
        f"{path}:{line}:1: error: {section}.{key}: input should be less than or equal to {limit}"
    ]


def test_settings_lines_are_found_for_dotted_and_quoted_keys(tmp_path: Path) -> None:
    """Issue 12 item 13: the line is found for `table.key =` and `"key" =` forms too, and a key that is
    missing is reported at the first line of its table."""
    path = tmp_path / "settings.toml"
    path.write_text(
        'newsletter.name = "Weekly"\n'
        'newsletter.postal_address = "1 Main St, Springfield"\n'
        'sender.from_email = "hello@example.org"\n'
        'sender.from_name = "Weekly"\n'
        "sendgrid.'categories' = [\"wöchentlich\"]\n"
        "\n"
        "[delivery]\n"
        '  "rate_per_second" = inf\n',
        encoding="utf-8",
    )

    with pytest.raises(SettingsError) as caught:
        load_settings(path)

    assert str(caught.value).splitlines() == [
        f"{path}:1:1: error: newsletter.base_url: is required but missing",
        f"{path}:8:3: error: delivery.rate_per_second: input should be a finite number",
        f"{path}:5:1: error: sendgrid.categories.0: 'wöchentlich' is not plain ASCII, which SendGrid "
        "requires of categories",
    ]


# Item 15 (b): a garbled store URL


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgres//x", "is not a database URL"),
        ("sqllite:///var/newsletter.db", "'sqllite' is not a database the store can use"),
        ("mysql://db/news", "'mysql' is not a database the store can use"),
    ],
)
def test_garbled_store_url_names_the_key_not_the_secret_key(project: Path, url: str, message: str) -> None:
    """Issue 12 item 15: a garbled store URL was reported as "NEWSLETTER_SECRET_KEY not set"; now the
    command says the store URL is wrong, at its line, and nothing is created (no var/, no key file)."""
    path, line = set_key(project, "store", "url", f'"{url}"')
    before = snapshot(project)

    result = cli_invoker(path)(
        "render", str(project / "issues" / FIRST_ISSUE), "--out", str(project / "out"), expect=1
    )

    assert result.stderr.splitlines() == [
        f"{path}:{line}:1: error: store.url: {message}; "
        "write sqlite:///var/newsletter.db or postgresql+psycopg://user@host/db"
    ]
    assert "NEWSLETTER_SECRET_KEY" not in result.output
    assert snapshot(project) == before
    assert not (project / "var").exists()


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///var/news.db",
        "sqlite:////srv/news.db",
        "postgresql+psycopg://u@db/news",
        "postgres://u:p@db/news",
    ],
)
def test_store_urls_the_store_opens_still_load(project: Path, url: str) -> None:
    """Issue 12 item 15: only garbled URLs are refused; the SQLite and PostgreSQL forms load."""
    path, _ = set_key(project, "store", "url", f'"{url}"')

    assert load_settings(path).store.url == url
