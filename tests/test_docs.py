"""The docs cannot drift: the generated references match the code, every ``hoigen`` command shown in the
README and docs/ parses against the CLI, and the blocks marked ```` ```bash run ```` run for real on tiny inputs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from clirun import run_hoigen

from hoigen.docgen import ROOT, DocCommand, check_command, doc_blocks, doc_commands, generated, hoigen_argv, main
from hoigen.errors import HoigenError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MARKDOWN = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
COMMANDS = [c for md in MARKDOWN for c in doc_commands(md)]


def _id(c: DocCommand) -> str:
    return f"{Path(c.file).relative_to(ROOT)}:{c.line}"


def test_generated_reference_is_current() -> None:
    for rel, text in generated().items():
        path = ROOT / rel
        assert path.exists(), f"{rel} is missing; run `make docs` and commit it"
        assert path.read_text() == text, f"{rel} differs from what the code generates; run `make docs` and commit it"


def test_generated_cli_reference_lists_every_option() -> None:
    """Spot-check the generator against the click app itself: every command heading and every flag appears."""
    from hoigen.docgen import walk

    text = generated()[Path("docs/reference/cli.md")]
    for path, cmd in walk():
        assert f"\n## {' '.join(path)}\n" in text
        for p in cmd.params:
            for opt in p.opts:
                if opt.startswith("-"):
                    assert f"`{opt}`" in text, f"{' '.join(path)} {opt} missing from the CLI reference"
    assert "| `--hands` | text | `right` | one of `right`, `left`, `both` |" in text  # a field's choices and default
    schema = generated()[Path("docs/reference/ann-schema.md")]
    assert "| `hand.joints3d` | array of numbers | 21 x 3 | x | x | x |" in schema


def test_docgen_check_fails_on_a_stale_reference(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for rel, text in generated().items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert main(["--check", "--root", str(tmp_path)]) == 0
    (tmp_path / "docs/reference/cli.md").write_text("old\n")
    assert main(["--check", "--root", str(tmp_path)]) == 1
    assert "make docs" in capsys.readouterr().err


def test_docs_show_commands() -> None:
    """The extraction finds the commands (a broken extractor would pass every parse check vacuously)."""
    files = {Path(c.file).name for c in COMMANDS}
    assert {"README.md", "training.md", "exporting.md", "many-machines.md", "real-weights.md"} <= files
    assert len(COMMANDS) >= 50
    assert sum(c.run for c in COMMANDS) >= 10  # README tour + guides


@pytest.mark.parametrize("command", COMMANDS, ids=_id)
def test_every_doc_command_parses(command: DocCommand) -> None:
    check_command(command.argv)


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (["grasp", "--grasps", "two"], "--grasps"),
        (["grasp", "--graps", "2"], "No such option"),
        (["grasp", "--hands", "middle"], "--hands must be one of"),
        (["render", "--size", "0"], "--size must be in 1..8192"),
        (["eval", "pose", "preds.json"], "Missing argument"),
        (["sythesize", "--in", "x"], "No such command"),
        (["export", "--format", "nocs", "--val-fraction", "1.5"], "--val-fraction"),
    ],
)
def test_the_checker_catches_wrong_commands(argv: list[str], problem: str) -> None:
    with pytest.raises(HoigenError, match=problem):
        check_command(argv)


def test_commands_are_found_in_shell_forms(tmp_path: Path) -> None:
    md = tmp_path / "x.md"
    md.write_text(
        "```bash run\nhoigen grasp --grasps 1 \\\n    --frames 2   # comment\nmkdir a && hoigen render --size 64\n```\n"
        "```\nHOIGEN_X=1 .venv/bin/hoigen validate out\n```\n"
        "```python\nprint('hoigen grasp')\n```\n"
    )
    found = [(c.argv, c.run) for c in doc_commands(md)]
    assert found == [
        (("grasp", "--grasps", "1", "--frames", "2"), True),
        (("render", "--size", "64"), True),
        (("validate", "out"), False),
    ]
    assert hoigen_argv(("torchrun", "--nproc_per_node", "2", "-m", "hoigen", "train")) == ("train",)
    assert hoigen_argv(("sbatch", "--array=0-3", "--wrap", "hoigen render --out r")) == ("render", "--out", "r")


# ------------------------------------------------------------------------------------- run blocks, for real
def _run_blocks(md: Path, cwd: Path) -> int:
    """Run a file's ```bash run blocks in ``cwd``, in order; every command must exit 0. Returns the count."""
    ran = 0
    for block in doc_blocks(md):
        if "run" not in block.info[1:]:
            continue
        for line, tokens in block.segments:
            argv = hoigen_argv(tokens)
            assert argv is not None, f"{md.name}:{line}: run blocks hold only hoigen commands, got {' '.join(tokens)}"
            here = os.getcwd()
            os.chdir(cwd)
            try:
                code, err = run_hoigen(*argv)
            finally:
                os.chdir(here)
            assert code == 0, f"{md.relative_to(ROOT)}:{line}: hoigen {' '.join(argv)} exited {code}"
            ran += 1
    return ran


@pytest.fixture(scope="module")
def tour(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The README's run blocks (the five-minute tour), run in a fresh folder."""
    cwd = tmp_path_factory.mktemp("tour")
    assert _run_blocks(ROOT / "README.md", cwd) >= 5
    return cwd


def test_readme_tour_runs(tour: Path) -> None:
    for stage in ("grasp", "render", "synth"):
        assert (tour / "out" / stage / "index.parquet").is_file()
    assert (tour / "out/nocs/run.json").is_file()
    assert (tour / "out/synth/contact_sheet.png").is_file()


GUIDES_WITH_RUN_BLOCKS = [md for md in MARKDOWN[1:] if any("run" in b.info[1:] for b in doc_blocks(md))]


@pytest.mark.parametrize("md", GUIDES_WITH_RUN_BLOCKS, ids=lambda p: str(p.relative_to(ROOT)))
def test_guide_run_blocks_run(md: Path, tour: Path, tmp_path: Path) -> None:
    """Each guide's run blocks, in a copy of the tour's folder (guides start from its out/grasp, render, synth)."""
    cwd = tmp_path / "work"
    shutil.copytree(tour, cwd, symlinks=True)
    assert _run_blocks(md, cwd) >= 1
