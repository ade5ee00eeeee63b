"""The README and docs/: every `gentune …` command line in them is parsed by gentune's own
argument parser (no page shows a flag or subcommand that does not exist), and every link to a
page of the project leads to a file."""

import re
import shlex
from pathlib import Path

import pytest

from gentune.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def commands(text: str) -> list[str]:
    """`gentune …` command lines: in fenced code blocks (continuation lines joined, comments
    dropped) and in inline code spans that give flags."""
    found = []
    for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = " ".join(line.split(" #")[0].split())
            if line.startswith("gentune "):
                found.append(line)
    outside = re.sub(r"```.*?```", "", text, flags=re.S)
    for span in re.findall(r"`([^`]+)`", outside):
        span = " ".join(span.split())
        if span.startswith("gentune ") and " --" in span:
            found.append(span)
    return found


def parse(line: str) -> str | None:
    """None where the parser takes the command line, else what it said."""
    parser = build_parser()
    argv = shlex.split(line)[1:]
    try:
        _, unknown = parser.parse_known_args(argv)
    except SystemExit as e:  # --help exits 0
        return None if e.code == 0 else "the parser refused it"
    return f"unknown arguments {unknown}" if unknown else None


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_command_line_parses(page, capsys):
    lines = commands(page.read_text())
    bad = {line: why for line in lines if (why := parse(line))}
    capsys.readouterr()
    assert not bad, bad


def test_the_pages_show_commands_at_all():
    assert sum(len(commands(p.read_text())) for p in PAGES) > 40


def test_the_check_finds_a_flag_that_does_not_exist():
    text = "```bash\ngentune train --task summarization --data d.jsonl \\\n  --out r --no-such-flag\n```"
    assert commands(text) == [
        "gentune train --task summarization --data d.jsonl --out r --no-such-flag"
    ]
    assert parse(commands(text)[0])
    assert parse("gentune nosuchcommand x")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_to_project_files_lead_somewhere(page):
    missing = [
        target
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text())
        if not target.startswith(("http://", "https://")) and not (page.parent / target).exists()
    ]
    assert not missing, missing
