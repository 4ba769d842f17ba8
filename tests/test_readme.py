"""The README's promises that point at tests: every test named in the "Failure behaviour" table exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _failure_table() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Failure behaviour", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| ---")][1:]


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
