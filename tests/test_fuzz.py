"""A seeded fuzz of damage (issue 18): random byte flips and truncations of input and finished output
shards, random damage to index.parquet, index parts and run.json, random SIGKILL points. Every case
must end either byte-identical to an undamaged run after a rerun, or in one line (a HoigenError) —
never a traceback, never exit 0 with damaged data. A cheap stand-in stage (tests/test_integrity.py)
drives the real runner; a run is killed in a forked child, so a case costs milliseconds."""

from __future__ import annotations

import multiprocessing
import os
import sys
from pathlib import Path

import numpy as np

from hoigen.data.faults import KILL_ENV, reset_passes
from hoigen.data.validate import validate
from hoigen.errors import HoigenError

sys.path.insert(0, str(Path(__file__).parent))
from test_integrity import folder_bytes, toy  # noqa: E402

SEED = int(os.environ.get("HOIGEN_FUZZ_SEED", "18"))  # another seed: a new set of cases
CASES = int(os.environ.get("HOIGEN_FUZZ_CASES", "40"))
KILL_POINTS = ("shard-sample", "shard-closed", "shard-part", "shard-published", "atomic-tmp", "index")


def _killed_child(out: str, in_dir: str | None, point: str) -> None:
    os.environ[KILL_ENV] = point
    reset_passes()
    try:
        toy(Path(out), Path(in_dir) if in_dir else None)
    except BaseException:  # noqa: BLE001 - the point was never reached: end quietly
        os._exit(3)
    os._exit(0)


def kill_at(out: Path, in_dir: Path | None, point: str) -> None:
    """Run the stage in a forked child that SIGKILLs itself at ``point``."""
    proc = multiprocessing.get_context("fork").Process(
        target=_killed_child, args=(str(out), str(in_dir) if in_dir else None, point)
    )
    proc.start()
    proc.join(60)
    assert proc.exitcode is not None


def damage_file(path: Path, rng: np.random.Generator) -> str:
    """Flip one byte, cut the file, or delete it; returns what was done."""
    data = path.read_bytes()
    how = rng.choice(["flip", "cut", "delete"] if path.suffix != ".tar" else ["flip", "flip", "cut"])
    if how == "delete" or not data:
        path.unlink()
        return f"deleted {path.name}"
    if how == "cut":
        n = int(rng.integers(0, len(data)))
        path.write_bytes(data[:n])
        return f"cut {path.name} at {n}"
    pos = int(rng.integers(0, len(data)))
    bad = bytearray(data)
    bad[pos] ^= 1 << int(rng.integers(0, 8))
    path.write_bytes(bytes(bad))
    return f"flipped {path.name} byte {pos}"


def outcome(run) -> str | None:
    """None when the run finished; the error line when it stopped with one (anything else fails the test)."""
    try:
        run()
    except HoigenError as exc:
        text = str(exc)
        assert "\n" not in text and text, text
        return text
    return None


def restore(folder: Path, files: dict[str, bytes]) -> None:
    import shutil

    if folder.exists():
        shutil.rmtree(folder)
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)


def test_fuzz_damage_ends_identical_or_in_one_line(tmp_path: Path) -> None:
    rng = np.random.default_rng(SEED)
    a, b = tmp_path / "a", tmp_path / "b"  # b is made from a (run.json records the input's path)
    toy(a)
    toy(b, in_dir=a)
    ref_a, ref_b = folder_bytes(a), folder_bytes(b)
    seen = {"identical": 0, "one line": 0}
    for case in range(CASES):
        restore(a, ref_a)
        restore(b, ref_b)
        kind = rng.choice(["input", "output", "output-record", "kill", "kill+output"])
        what = kind
        if kind == "input":  # a damaged input shard, index part or record: the stage must notice or be unharmed
            target = rng.choice(sorted(p for p in a.rglob("*") if p.is_file() and p.name != "README.md"))
            what += ": " + damage_file(target, rng)
            restore(b, {})
        elif kind in ("output", "output-record"):
            pool = [p for p in b.rglob("*") if p.is_file()]
            pool = [p for p in pool if (p.suffix == ".tar") == (kind == "output")]
            what += ": " + damage_file(rng.choice(sorted(pool)), rng)
        else:
            restore(b, {})
            point = f"{rng.choice(KILL_POINTS)}#{int(rng.integers(1, 4))}"
            kill_at(b, a, point)
            what += f" at {point}"
            if kind == "kill+output" and list(b.glob("shard-*.tar")):
                what += ": " + damage_file(rng.choice(sorted(b.glob("shard-*.tar"))), rng)
        error = outcome(lambda: toy(b, in_dir=a))
        if error is None:
            got = folder_bytes(b)
            assert got == ref_b, f"case {case} ({what}): exit 0 but the folder differs: " + ", ".join(
                sorted(k for k in set(got) | set(ref_b) if got.get(k) != ref_b.get(k))
            )
            assert validate(b).ok
            seen["identical"] += 1
        else:
            assert kind.startswith("input") or "run.json" in what, f"case {case} ({what}): {error}"
            seen["one line"] += 1
    assert seen["identical"] and seen["one line"], seen
