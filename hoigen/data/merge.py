"""``hoigen merge OUT [RANK_DIR ...]``: join ranks' outputs into one folder with one ``index.parquet``.

Ranks that wrote into one shared folder need no copying: the last rank to finish writes the index,
and ``hoigen merge OUT`` (no rank folders) writes it again from whatever is there. Ranks that wrote
into folders of their own (node-local disks) are joined by copying their shards into ``OUT``:

- every rank folder must come from the same run (stage, seed and configuration in ``run.json``);
- a shard present in two folders must be byte-identical (it is, for one run), else merge refuses;
- each shard's index part is copied before the shard, through temporary names, so a merge killed
  midway is finished by running it again; the stage's sidecar folders (object meshes, per-shard or
  per-object counts: :attr:`hoigen.data.runner.Stage.sidecars`) are copied too;
- ``index.parquet`` is then joined from the parts in shard order (the bytes a single run writes),
  and ``run.json`` is the first rank's record plus ``merged_from``, with the counts summed over
  every rank's shards (:meth:`hoigen.data.runner.Stage.tally`: skipped views, filter counts).

A merge refuses while shards are missing (listing them) unless ``partial`` is set.
"""

from __future__ import annotations

import filecmp
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from hoigen.data.atomic import atomic_write_bytes, is_tmp, remove_stale_tmp, tmp_name
from hoigen.data.card import write_card
from hoigen.data.contract import RUN_FILE, read_run_json
from hoigen.data.faults import write_error
from hoigen.data.index import PARTS_DIR, build_index, part_path
from hoigen.data.lock import folder_lock, remove_dead_locks
from hoigen.data.runner import stage_class
from hoigen.data.shards import list_shards, shard_index, shard_name
from hoigen.errors import HoigenError

SAME_RUN = ("stage", "seed", "config", "shards")


@dataclass
class MergeSummary:
    out_dir: Path
    sources: int
    shards: int
    copied: int
    samples: int

    def line(self) -> str:
        return (
            f"merge: {self.shards} shards ({self.copied} copied from {self.sources} folders), "
            f"{self.samples} samples -> {self.out_dir / 'index.parquet'}"
        )


def _copy(src: Path, dst: Path) -> bool:
    """Copy ``src`` to ``dst`` through a temporary name; False when ``dst`` already holds the same bytes."""
    if dst.exists():
        if filecmp.cmp(src, dst, shallow=False):
            return False
        raise HoigenError(f"{dst}: differs from {src}; these folders are not ranks of one run")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(dst)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise write_error(dst, exc) from None
    return True


def _same_run(records: dict[Path, dict]) -> dict:
    items = [(p, r) for p, r in records.items() if r]
    if not items:
        raise HoigenError("no run.json in any folder given; merge needs the output folders of a stage's ranks")
    first_path, first = items[0]
    for path, rec in items[1:]:
        for k in SAME_RUN:
            if rec.get(k) != first.get(k):
                raise HoigenError(
                    f"{path / RUN_FILE}: {k} differs from {first_path / RUN_FILE}; merge only ranks of one run"
                )
    return first


def merge(out_dir: Path, sources: list[Path], partial: bool = False, quiet: bool = False) -> MergeSummary:
    """Copy the shards of ``sources`` into ``out_dir`` and write one index (see the module doc)."""
    out_dir = Path(out_dir)
    sources = [Path(s) for s in sources if Path(s).resolve() != out_dir.resolve()]
    for s in sources:
        if not s.is_dir():
            raise HoigenError(f"{s}: not a folder; pass the ranks' output folders")
    if not sources and not out_dir.is_dir():
        raise HoigenError(f"{out_dir}: not a folder; pass the folder the ranks wrote (and their folders)")
    records = {p: read_run_json(p) for p in [out_dir, *sources]}
    run = _same_run(records)
    copied = 0
    with folder_lock(out_dir, 0, 1, "merge"):
        remove_dead_locks(out_dir)
        remove_stale_tmp(out_dir)
        remove_stale_tmp(out_dir / PARTS_DIR)
        stage = stage_class(str(run.get("stage")))
        sidecars = stage.sidecars if stage is not None else ()
        for src in sources:
            for sub in sidecars:  # object meshes, per-shard or per-object counts
                if (src / sub).is_dir():
                    for f in sorted((src / sub).iterdir()):
                        if f.is_file() and not is_tmp(f):
                            _copy(f, out_dir / sub / f.name)
            if (src / "objects.parquet").exists():
                _copy(src / "objects.parquet", out_dir / "objects.parquet")
            for shard in list_shards(src):
                part = part_path(src, shard.name)
                if part.exists():  # the part first: a shard in OUT always has its part
                    _copy(part, part_path(out_dir, shard.name))
                copied += _copy(shard, out_dir / shard.name)
        total = run.get("shards")
        have = {shard_index(p) for p in list_shards(out_dir)}
        if isinstance(total, int) and not partial:
            missing = [shard_name(i) for i in range(total) if i not in have]
            if missing:
                more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
                raise HoigenError(
                    f"{out_dir}: {len(missing)} of {total} shards missing ({', '.join(missing[:5])}{more}); "
                    "run the ranks that write them (or pass --partial)"
                )
        if sources:
            merged = {**run, "merged_from": sorted(str(s) for s in sources)}
            atomic_write_bytes(out_dir / RUN_FILE, json.dumps(merged, indent=2, sort_keys=True).encode() + b"\n")
        table = build_index(out_dir)
        if sources:
            if stage is not None:
                stage.tally(out_dir, quiet)  # the counts of every rank's shards, not the first rank's
            write_card(out_dir, read_run_json(out_dir))
    return MergeSummary(out_dir, len(sources), len(have), copied, table.num_rows)
