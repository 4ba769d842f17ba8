"""The public API (``hoigen.grasp(...)`` ... ``hoigen.train(...)``), options declared once (CLI flags and
recipe keys generated from the same fields, checked the same way) and ``import hoigen`` staying light."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer
from clirun import run_hoigen
from typer.testing import CliRunner

import hoigen
from hoigen.data.runner import RunSummary
from hoigen.data.shards import list_shards, read_shard
from hoigen.errors import HoigenError
from hoigen.options import OptionError, option, validate

ROOT = Path(__file__).resolve().parents[1]


def shard_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in list_shards(folder)}


def test_quickstart_chain_through_the_api_alone(tmp_path: Path) -> None:
    """grasp -> render -> synthesize -> export -> train with tiny sizes, through ``hoigen.<stage>(...)`` only."""
    g, r, s, n, m = (tmp_path / d for d in ("grasp", "render", "synth", "nocs", "model"))
    summaries = [
        hoigen.grasp(None, g, categories=["mug"], grasps=1, frames=2, quiet=True),
        hoigen.render(g, r, views=1, size=64, quiet=True),
        hoigen.synthesize(r, s, steps=2, size=64, quiet=True),
        hoigen.export(s, n, format="nocs", quiet=True),
        hoigen.train(s, m, steps=2, batch_size=2, checkpoint_every=0, threads=1, quiet=True),
    ]
    assert all(isinstance(x, RunSummary) for x in summaries)
    assert [x.stage for x in summaries] == ["grasp", "render", "synthesize", "export", "train"]
    assert [x.samples_written for x in summaries[:4]] == [2, 2, 2, 2]
    assert summaries[3].line().startswith("export: 2 images from 1 shards")
    assert summaries[4].stats["steps"] == 2 and summaries[4].line().startswith("train: 2 steps")
    sample = next(read_shard(list_shards(s)[0]))
    assert sample["image.jpg"].shape == (64, 64, 3) and sample["gen.json"]["steps"] == 2
    assert (n / "train_list.txt").read_text().count("\n") == 2
    assert (m / "model_index.json").exists()
    # the options reach run.json as the typed object recorded them
    run = json.loads((g / "run.json").read_text())
    assert run["config"]["categories"] == ["mug"] and run["config"]["grasps"] == 1


def test_the_cli_is_the_api(tmp_path: Path) -> None:
    """``hoigen grasp FLAGS`` and ``hoigen.grasp(options)`` write the same shard bytes."""
    api_out, cli_out = tmp_path / "api", tmp_path / "cli"
    hoigen.grasp(None, api_out, hoigen.GraspOptions(categories=["can"], grasps=1, frames=2), quiet=True)
    code, _ = run_hoigen("grasp", "--categories", "can", "--grasps", "1", "--frames", "2", "--out", cli_out, "-q")
    assert code == 0
    assert shard_bytes(api_out) == shard_bytes(cli_out) and shard_bytes(api_out)


def test_api_overrides_are_checked_like_flags(tmp_path: Path) -> None:
    with pytest.raises(OptionError, match="--grasps must be at least 1, got 0") as err:
        hoigen.grasp(None, tmp_path / "g", grasps=0)
    assert err.value.exit_code == 2
    with pytest.raises(HoigenError, match="unknown key 'grasp'; did you mean 'grasps'"):
        hoigen.grasp(None, tmp_path / "g", grasp=1)
    assert not (tmp_path / "g").exists()


@pytest.mark.parametrize(
    "section, needle",
    [
        ("grasp:\n  grasps: two\n", "[grasp]: grasps must be an integer, got 'two'"),
        ("grasp:\n  grasps: 1.7\n", "[grasp]: grasps must be an integer, got 1.7"),
        ("render: [1, 2]\n", "[render]: a section must be a mapping of options"),
        ("render:\n  views: 0\n", "[render]: views must be at least 1, got 0"),
        ("render:\n  camera: kinect\n", "[render]: camera must be one of random, nocs-camera"),
        ("synthesize:\n  video: maybe\n", "[synthesize]: video must be true or false, got 'maybe'"),
        ("render:\n  veiws: 2\n", "unknown key 'veiws'; did you mean 'views'?"),
        ("seed: zero\n", "seed must be an integer, got 'zero'"),
    ],
)
def test_recipe_values_are_checked_against_the_fields(tmp_path: Path, capsys, section: str, needle: str) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(section if section.startswith("seed") else "seed: 0\n" + section)
    code, err = run_hoigen("run", recipe, "--out", tmp_path / "o", capsys=capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"error: {recipe}") and needle in lines[0], err
    assert not (tmp_path / "o").exists()


def test_recipe_keeps_types_and_defaults() -> None:
    from hoigen.recipe import load_recipe

    rec = load_recipe(ROOT / "recipes" / "quickstart.yaml")
    assert rec.grasp.categories == ["bottle", "bowl", "can", "mug"] and rec.grasp.grasps == 2
    assert rec.render.size == 256 and rec.render.camera == "random"
    assert rec.synthesize.size == 64 and rec.synthesize.guidance == 7.5  # the default, from the one declaration
    assert rec.synthesize.resolved().size == 64 and hoigen.SynthOptions(model="/sd15").resolved().size == 512


def test_every_option_field_is_a_flag_with_its_help_and_default() -> None:
    from dataclasses import fields

    from hoigen.cli import app
    from hoigen.options import spec_of

    command = typer.main.get_command(app)
    pairs = {
        "grasp": hoigen.GraspOptions, "render": hoigen.RenderOptions, "synthesize": hoigen.SynthOptions,
        "export": hoigen.ExportOptions, "train": hoigen.TrainOptions,
    }  # fmt: skip
    for name, cls in pairs.items():
        params = {p.name: p for p in command.commands[name].params}
        for f in fields(cls):
            if not spec_of(f).cli:
                assert f.name not in params
                continue
            p = params[f.name]
            assert spec_of(f).help in p.help and p.default is None  # None: not given, the dataclass default applies
    synth = {p.name: p for p in command.commands["synthesize"].params}
    assert synth["video"].opts == ["--video"] and synth["video"].secondary_opts == ["--no-video"]
    assert "[default: 50]" in synth["steps"].help and "[default: ddim]" in synth["scheduler"].help
    grasp = {p.name: p for p in command.commands["grasp"].params}
    assert grasp["mano_dir"].envvar == "HOIGEN_MANO_DIR" and "-q" in grasp["quiet"].opts
    train = {p.name: p for p in command.commands["train"].params}
    assert train["use_8bit_adam"].secondary_opts == ["--no-8bit-adam"] and "workers" not in train


@dataclass(frozen=True)
class ToyOptions:
    kinds: list[str] | None = option(None, "KIND=ID, repeatable.")
    names: list[str] | None = option(None, "Comma-separated names.", split=",")
    scale: float = option(1.0, "A scale.", min=0, max=2)
    fast: bool = option(False, "Go fast.")

    def __post_init__(self) -> None:
        validate(self)


def test_generated_command_handles_lists_bools_and_ranges() -> None:
    from hoigen.cli import with_options

    app = typer.Typer()
    seen: list[ToyOptions] = []

    @app.command()
    @with_options(opts=ToyOptions)
    def toy(out: str = typer.Option("x", "--out"), opts: ToyOptions = None) -> None:  # type: ignore[assignment]
        seen.append(opts)

    @app.command()
    def other() -> None:  # a second command, so that typer keeps subcommand names
        pass

    runner = CliRunner()
    args = ["toy", "--kinds", "a=1", "--kinds", "b=2", "--names", "x, y", "--fast", "--scale", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert seen[-1] == ToyOptions(kinds=["a=1", "b=2"], names=["x", "y"], scale=2.0, fast=True)
    assert runner.invoke(app, ["toy"]).exit_code == 0 and seen[-1] == ToyOptions()
    with pytest.raises(OptionError, match="--scale must be in 0..2, got 3.0"):
        runner.invoke(app, ["toy", "--scale", "3"], catch_exceptions=False)


def test_option_declarations_match_their_users() -> None:
    from hoigen.render.cameras import CAMERA_CHOICES, CAMERA_PRESETS
    from hoigen.render.options import CAMERA_CHOICES as DECLARED

    assert DECLARED == CAMERA_CHOICES == ("random", *CAMERA_PRESETS)
    with pytest.raises(OptionError, match="--side must be one of right, left, got 'middle'"):
        hoigen.GraspOptions(side="middle")
    assert hoigen.GraspOptions(categories="mug, bowl").categories == ["mug", "bowl"]
    with pytest.raises(OptionError, match="--val-fraction must be in"):
        hoigen.ExportOptions(val_fraction=1.0)


def test_import_hoigen_is_light_and_the_api_is_there() -> None:
    code = (
        "import sys, hoigen; heavy = [m for m in ('torch', 'typer', 'diffusers', 'trimesh') if m in sys.modules]; "
        "print(heavy); print(callable(hoigen.grasp), callable(hoigen.render), callable(hoigen.synthesize), "
        "callable(hoigen.export), callable(hoigen.train))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.split("\n")[:2] == ["[]", "True True True True True"]
