"""Training checkpoints: everything needed to continue a run as if it had never stopped.

A checkpoint is ``OUT/checkpoints/step-XXXXXXXX/`` holding ``accelerate``'s ``save_state`` output
(the trained model(s), optimiser, learning-rate scheduler, the EMA weights when used, and the
Python/NumPy/torch RNG states) plus ``trainer_state.json`` (the step, the loss history so far and
the settings that must not change on resume). It is written under ``step-XXXXXXXX.tmp`` and renamed
when complete, so a crash mid-save never leaves a checkpoint that looks finished; the oldest beyond
``keep`` are deleted.

hoigen's own randomness (noise, timesteps, text dropout, batch order) is drawn from generators
seeded by (run seed, step, rank), so the data position of a checkpoint is its step and a resumed run
draws exactly what the uninterrupted run would have drawn.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from hoigen.errors import HoigenError

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"^step-(\d{8})$")


def checkpoint_dir(out_dir: Path, step: int) -> Path:
    return Path(out_dir) / CHECKPOINTS / f"step-{step:08d}"


def list_checkpoints(out_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of ``out_dir`` as (step, folder), oldest first."""
    root = Path(out_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _NAME.match(path.name)
        if match and (path / STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def find_resume(out_dir: Path, resume: str | None) -> Path | None:
    """The checkpoint to resume from: ``auto`` = the latest in ``out_dir`` (None if none),
    ``never`` = None, anything else = that checkpoint folder."""
    if resume in (None, "", "never", "no", "false"):
        return None
    if resume == "auto":
        found = list_checkpoints(out_dir)
        return found[-1][1] if found else None
    path = Path(resume)
    if path.is_dir() and not (path / STATE_FILE).is_file():
        found = list_checkpoints(path)  # an output folder: its latest checkpoint
        if found:
            return found[-1][1]
    if not (path / STATE_FILE).is_file():
        raise HoigenError(
            f"{path}: not a training checkpoint (no {STATE_FILE}); pass OUT/checkpoints/step-N, "
            "an output folder with checkpoints, or --resume auto"
        )
    return path


def read_state(path: Path) -> dict[str, Any]:
    try:
        return json.loads((Path(path) / STATE_FILE).read_text())
    except (OSError, ValueError):
        raise HoigenError(
            f"{path}: unreadable {STATE_FILE}; delete this checkpoint and resume from an older one"
        ) from None


def save_checkpoint(accelerator: Any, out_dir: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Write checkpoint ``step`` (main process only) and prune to the newest ``keep``."""
    final = checkpoint_dir(out_dir, step)
    if accelerator.is_main_process:
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        accelerator.save_state(str(tmp), safe_serialization=True)
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        if keep > 0:
            for _, old in list_checkpoints(out_dir)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Any, path: Path) -> dict[str, Any]:
    """Restore models, optimiser, scheduler, EMA and RNG states; returns ``trainer_state.json``."""
    from hoigen.trust import check_checkpoint_folder

    state = read_state(path)
    check_checkpoint_folder(path)  # accelerate reads custom_checkpoint_*.pkl with weights_only=False
    accelerator.load_state(str(path))
    return state
