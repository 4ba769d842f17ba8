"""Issue 19's CLI items: -v/--log-level with one warning format, and the headline synthesize --objects options."""

from __future__ import annotations

import json
import logging
import warnings

import pytest
from clirun import run_hoigen as hoigen

from hoigen.logs import configure, level_for, module_of


@pytest.fixture
def default_logging():
    yield
    configure("warning")


def test_levels_from_flags() -> None:
    assert [level_for(0), level_for(1), level_for(2), level_for(5)] == ["warning", "info", "debug", "debug"]
    assert level_for(2, "error") == "error"
    assert module_of("/x/lib/python3.11/site-packages/trimesh/exchange/obj.py") == "trimesh.exchange.obj"
    assert module_of("/work/wt/hoigen/objects/library.py") == "hoigen.objects.library"


def test_one_format_for_library_logs_and_python_warnings(default_logging, capsys) -> None:
    from transformers.utils import logging as hf_logging  # installs its own stderr handler on first use

    configure("warning")
    hf_logging.get_logger("transformers.tokenization_utils").warning("sequence too long")
    logging.getLogger("trimesh").info("hidden by default")
    logging.getLogger("trimesh.exchange").warning("unit guess")
    logging.getLogger("hoigen.render").warning("render: skipped mug_0000 view 1: out of frame")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        configure("warning")  # catch_warnings saved showwarning; set ours inside it
        warnings.warn("old argument", FutureWarning, stacklevel=1)
    err = capsys.readouterr().err.splitlines()
    assert err[:3] == [
        "warning: transformers: sequence too long",  # once: transformers' own handler no longer prints it
        "warning: trimesh: unit guess",
        "warning: render: skipped mug_0000 view 1: out of frame",
    ]
    assert len(err) == 4 and err[3].startswith("warning: ") and err[3].endswith(": FutureWarning: old argument")
    configure("info")
    logging.getLogger("trimesh").info("now shown")
    hf_logging.get_logger("transformers.x").info("hf info")
    assert capsys.readouterr().err.splitlines() == ["info: trimesh: now shown", "info: transformers: hf info"]


def test_cli_verbose_and_log_level(default_logging, tmp_path, capsys) -> None:
    hoigen("-v", "inspect", tmp_path, capsys=capsys)
    assert logging.getLogger().level == logging.INFO
    hoigen("--log-level", "debug", "inspect", tmp_path, capsys=capsys)
    assert logging.getLogger().level == logging.DEBUG and logging.getLogger("diffusers").level == logging.DEBUG
    hoigen("inspect", tmp_path, capsys=capsys)
    assert logging.getLogger().level == logging.WARNING
    code, err = hoigen("--log-level", "loud", "inspect", tmp_path, capsys=capsys)
    assert code == 2 and err.strip() == "error: --log-level must be one of debug, info, warning, error, got 'loud'"


def test_headline_synthesize_takes_grasp_and_render_options(tmp_path, capsys) -> None:
    out = tmp_path / "synth"
    code, err = hoigen("synthesize", "--categories", "mug", "--grasps", "1", "--frames", "2", "--views", "1",
                       "--render-size", "48", "--steps", "1", "--size", "32", "--out", out, "--quiet", capsys=capsys)
    assert code == 0, err
    grasp = json.loads((out / "work" / "grasp" / "run.json").read_text())["config"]
    render = json.loads((out / "work" / "render" / "run.json").read_text())["config"]
    synth = json.loads((out / "run.json").read_text())["config"]
    assert (grasp["grasps"], grasp["frames"], grasp["categories"]) == (1, 2, ["mug"])
    assert (render["views"], render["size"]) == (1, 48) and synth["size"] == 32


@pytest.mark.parametrize(
    ("args", "code_wanted", "text"),
    [
        (("--render-size", "0"), 2, "error: --render-size must be in 1..8192, got 0"),
        (("--grasps", "0"), 2, "error: --grasps must be at least 1, got 0"),
        (("--units", "furlong"), 2, "error: --units must be one of"),
        (("--in", "somewhere", "--views", "3"), 2, "apply only when synthesize runs grasp and render first"),
    ],
)
def test_headline_option_errors(args, code_wanted, text, tmp_path, capsys) -> None:
    code, err = hoigen("synthesize", *args, "--out", tmp_path / "x", "--quiet", capsys=capsys)
    assert code == code_wanted and text in err and len(err.strip().splitlines()) == 1, err
