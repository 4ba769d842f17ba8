"""The README's and docs' promises: every test named in the "Failure behaviour" and "Trust" tables exists, and every
relative link in README.md and docs/ points at a file (and heading) that exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _table(heading: str = "# Failure behaviour", doc: str = "docs/reference/failures.md") -> list[str]:
    text = (ROOT / doc).read_text()
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| ---")][1:]


def _failure_table() -> list[str]:
    return _table()


def _defined_tests() -> set[str]:
    return {
        name
        for path in (ROOT / "tests").glob("test_*.py")
        for name in re.findall(r"^(?:async )?def (test_\w+)", path.read_text(), flags=re.M)
    }


def test_every_fault_row_names_tests_that_exist() -> None:
    rows = _failure_table()
    assert len(rows) >= 20
    defined = {
        name: path.name
        for path in (ROOT / "tests").glob("test_*.py")
        for name in re.findall(r"^def (test_\w+)", path.read_text(), flags=re.M)
    }
    for row in rows:
        cell = row.rstrip(" |").rsplit("|", 1)[-1]
        names = re.findall(r"\b(test_\w+)\b(?!\.py)", cell)
        files = re.findall(r"\b(test_\w+)\.py", cell)
        assert names, f"row without a test: {row}"
        for name in names:
            assert name in defined, f"README names {name}, which no test file defines"
        for file in files:
            assert (ROOT / "tests" / f"{file}.py").is_file(), f"README names tests/{file}.py, which does not exist"


def test_every_trust_row_names_tests_that_exist() -> None:
    rows = _table("## Trust", "README.md")
    assert len(rows) >= 8
    defined = _defined_tests()
    for row in rows:
        names = re.findall(r"\b(test_\w+)\b(?!\.py)", row.rstrip(" |").rsplit("|", 1)[-1])
        assert names, f"trust row without a test: {row}"
        for name in names:
            assert name in defined, f"README's Trust table names {name}, which no test file defines"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {_slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


def test_every_relative_link_resolves() -> None:
    """Links in README.md and docs/**.md point at files that exist, and #anchors at headings that exist.

    docs/concepts/stand-ins.md is written by another piece of work; until it lands, a link to it is allowed."""
    pending = {ROOT / "docs/concepts/stand-ins.md"}
    checked = 0
    for md in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        text = re.sub(r"```.*?```", "", md.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # https:, mailto:
            file, _, anchor = target.partition("#")
            dest = (md.parent / file).resolve() if file else md
            if dest in pending and not dest.exists():
                continue
            assert dest.exists(), f"{md.relative_to(ROOT)}: link {target} points at a missing file"
            if anchor and dest.suffix == ".md":
                assert anchor in _anchors(dest), f"{md.relative_to(ROOT)}: link {target}: no such heading"
            checked += 1
    assert checked >= 40
