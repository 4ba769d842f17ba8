"""Prompt files: parsing as documented, and the fault table's prompt rows (one-line errors, nothing harmed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hoigen.data.shards import ShardWriter
from hoigen.diffusion.options import SynthOptions
from hoigen.diffusion.prompts import fill_prompt, load_prompts
from hoigen.errors import HoigenError
from hoigen.options import Common


def test_prompts_file_with_blank_lines_comments_and_placeholders(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text(
        "# hand-object prompts\n"
        "\n"
        "   a photo of a hand grasping a {object}, {background}   \n"
        "\t# an indented comment\n"
        "a {object} held in a hand, studio light\n"
        "\n\n"
        "literal {{braces}} and no placeholder\n",
        encoding="utf-8",
    )
    prompts = load_prompts(path)
    assert prompts == [
        "a photo of a hand grasping a {object}, {background}",
        "a {object} held in a hand, studio light",
        "literal {{braces}} and no placeholder",
    ]
    filled = fill_prompt(prompts[0], object="mug", background="on a desk")
    assert filled == "a photo of a hand grasping a mug, on a desk"
    assert fill_prompt(prompts[2]) == "literal {braces} and no placeholder"
    (tmp_path / "utf8.txt").write_text("une main tenant un {object} \u00e0 caf\u00e9\n", encoding="utf-8")
    assert load_prompts(tmp_path / "utf8.txt") == ["une main tenant un {object} \u00e0 caf\u00e9"]


def _render_dir(root: Path) -> Path:
    """A render folder with one shard (enough for synthesize to get to its prompts)."""
    folder = root / "render"
    folder.mkdir()
    seg = np.zeros((32, 32), np.uint8)
    with ShardWriter(folder / "shard-000000.tar") as writer:
        writer.write(
            {
                "__key__": "mug-1_0000_000_00",
                "normal.png": np.zeros((32, 32, 3), np.uint8),
                "seg.png": seg,
                "skeleton.png": np.zeros((32, 32, 3), np.uint8),
                "ann.json": {"object": {"category": "mug"}},
            }
        )
    (folder / "run.json").write_text('{"stage": "render"}')
    return folder


def _synthesize_fails(tmp_path: Path, prompts: Path, match: str) -> str:
    """Run the synthesize stage with ``prompts``: a one-line error; the output folder's files untouched."""
    from hoigen import api

    out = tmp_path / "synth"
    out.mkdir()
    earlier = out / "shard-000007.tar"
    earlier.write_bytes(b"finished earlier")
    with pytest.raises(HoigenError, match=match) as error:
        api.synthesize(_render_dir(tmp_path), out, SynthOptions(prompts=prompts, steps=1), Common(quiet=True))
    message = str(error.value)
    assert "\n" not in message and str(prompts) in message
    assert sorted(p.name for p in out.iterdir()) == ["shard-000007.tar"]
    assert earlier.read_bytes() == b"finished earlier"
    return message


def test_fault_prompts_empty(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    _synthesize_fails(tmp_path, empty, "holds no prompts")
    only_comments = tmp_path / "comments.txt"
    only_comments.write_text("# nothing yet\n\n   \n")
    with pytest.raises(HoigenError, match="comments.txt: holds no prompts"):
        load_prompts(only_comments)


def test_fault_prompts_not_utf8(tmp_path):
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("a hand holding a {object}\na caf\u00e9 table {background}\n".encode("latin-1"))
    message = _synthesize_fails(tmp_path, latin1, r"latin1.txt:2: not UTF-8")
    assert "UTF-8" in message


def test_fault_prompts_placeholder_without_value(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# ok so far\na hand holding a {object}\n\na {colour} {object} {background}\n")
    message = _synthesize_fails(tmp_path, prompts, r"prompts.txt:4: .*\{colour\}")
    assert "only {object}, {name} and {background}" in message
    for line in ("a {} mug", "a {object.name}", "a {0}"):
        bad = tmp_path / "bad.txt"
        bad.write_text(f"fine {{object}}\n{line}\n")
        with pytest.raises(HoigenError, match=r"bad.txt:2: "):
            load_prompts(bad)
    unbalanced = tmp_path / "unbalanced.txt"
    unbalanced.write_text("a hand holding a {object\n")
    with pytest.raises(HoigenError, match=r"unbalanced.txt:1: .*literal braces"):
        load_prompts(unbalanced)
