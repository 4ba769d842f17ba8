"""The export stage, a sink: synthesize (or render) shards -> one NOCS CAMERA-style or BOP dataset folder.

The runner (:func:`hoigen.data.runner.run`) holds the folder lock, deletes temporary files a killed
export left, removes ``run.json`` first and writes it last as the mark of a complete export; every
file is written atomically and deterministically, so rerunning a killed export completes it with the
same bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from hoigen.data.index import read_index
from hoigen.data.progress import info
from hoigen.data.runner import Plan, RunSummary, Stage, StageContext, Task, input_tasks
from hoigen.export.options import ExportOptions
from hoigen.options import Common, record


class ExportStage(Stage):
    name = "export"
    transform = None  # a sink: no output shards

    def __init__(self, in_dir: Path, options: ExportOptions) -> None:
        self.in_dir, self.options = Path(in_dir), options
        self.keys: list[str] = []
        self.objects: Any = None

    def plan(self, out_dir: Path, common: Common) -> Plan:
        from hoigen.data.contract import objects_dir_of
        from hoigen.objects import read_objects

        tasks = input_tasks(self.in_dir, ("synthesize", "render"))
        # input_tasks refuses missing shards: the image plan (scenes, splits) depends on every key
        self.keys = read_index(self.in_dir).column("key").to_pylist()
        self.objects = read_objects(objects_dir_of(self.in_dir))
        return Plan(tasks, self.options, record(self.options), in_dir=self.in_dir, seed=0, total=len(self.keys))

    def consume(self, tasks: list[Task], ctx: StageContext, tick: Callable[[], None]) -> None:
        from hoigen.export.bop import export_bop
        from hoigen.export.coco import export_coco
        from hoigen.export.nocs import export_nocs

        opts: ExportOptions = ctx.options
        writer = {"nocs": export_nocs, "bop": export_bop, "coco": export_coco}[opts.format]
        samples = (s for t in tasks for s in t.samples())
        writer(samples, self.keys, ctx.out_dir, self.objects, split=opts.split, val_fraction=opts.val_fraction,
               on_sample=tick)  # fmt: skip

    def finalize(self, out_dir: Path, plan: Plan, summary: RunSummary, common: Common) -> None:
        opts = self.options
        if opts.mix is not None:
            from hoigen.export.mix import mix_lists

            mixed = mix_lists(out_dir, opts.mix, opts.ratio, opts.mix_mode, opts.split)
            info(f"mixed list: {mixed}", common.quiet)
        summary.message = f"export: {summary.samples_written} images from {len(plan.tasks)} shards -> {out_dir}"
