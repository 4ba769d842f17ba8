"""The render stage: each grasp frame seen from ``views`` cameras, as conditions and annotations.

Cameras are sampled per (object, grasp, view) around the trajectory's focus point, so a view keeps
its camera along the whole trajectory (a fixed camera per trajectory, for video). The hand mesh is
posed again from the stored MANO parameters with the same hand model that made them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from hoigen.data.index import read_run_json
from hoigen.data.runner import StageContext
from hoigen.data.schema import Sample, parse_key, sample_key
from hoigen.errors import HoigenError
from hoigen.objects import ObjectAsset, read_objects

OBJECTS_KEY = "objects_dir"


def objects_dir_of(folder: Path) -> Path:
    """The folder holding ``objects.parquet`` for a stage output (followed back through run.json)."""
    folder = Path(folder)
    for _ in range(8):
        if (folder / "objects.parquet").exists():
            return folder.resolve()
        pointer = read_run_json(folder).get(OBJECTS_KEY)
        if not pointer:
            break
        folder = Path(pointer)
    raise HoigenError(f"{folder}: no objects.parquet found; point --in at the output of hoigen grasp or render")


@lru_cache(maxsize=4)
def _objects(folder: str) -> dict[str, ObjectAsset]:
    return read_objects(Path(folder))


@cache  # never evicted: deleting a pyrender EGL renderer terminates the shared display
def _renderer(width: int, height: int, supersample: int) -> Any:
    from hoigen.render.renderer import Renderer

    return Renderer(width, height, supersample=supersample)


def _hand(side: str, model: str, mano_dir: str | None) -> Any:
    from hoigen.hand import EMBEDDED_HAND_NAME, load_hand

    hand = load_hand(side, None if model == EMBEDDED_HAND_NAME else mano_dir)
    if hand.name != model:
        raise HoigenError(
            f"the grasp shards were made with hand model '{model}' but '{hand.name}' was found; "
            "pass the same --mano-dir (or HOIGEN_MANO_DIR) as for hoigen grasp"
        )
    return hand


def render_stage(samples: Iterable[Sample], ctx: StageContext) -> Iterator[Sample]:
    """Grasp samples in, ``views`` rendered samples out per input sample."""
    from hoigen.render.cameras import sample_camera
    from hoigen.render.renderer import SceneSpec

    cfg = ctx.config
    size = int(cfg["size"])
    renderer = _renderer(size, size, int(cfg.get("supersample", 1)))
    objects = _objects(cfg[OBJECTS_KEY])
    for sample in samples:
        ann = sample["ann.json"]
        hand_ann, obj_ann = ann["hand"], ann["object"]
        hand = _hand(hand_ann["side"], hand_ann["model"], cfg.get("mano_dir"))
        out = hand.forward(*(np.asarray(hand_ann[k]) for k in ("global_orient", "hand_pose", "betas", "transl")))
        asset = objects[obj_ann["id"]]
        ids = parse_key(sample["__key__"])
        for view in range(int(cfg["views"])):
            camera = sample_camera(
                np.asarray(ann["trajectory"]["focus"]), ctx.rng(ids["object"], ids["grasp"], view), size, size
            )
            result = renderer.render(
                SceneSpec(
                    hand_vertices=out.vertices[0],
                    hand_faces=hand.faces,
                    object_mesh=asset.mesh,
                    object_pose=np.asarray(obj_ann["pose"]),
                    nocs_from_mesh=np.asarray(obj_ann["nocs_from_mesh"]),
                    camera=camera,
                    joints3d=np.asarray(hand_ann["joints3d"]),
                    mesh_key=asset.id,
                )
            )
            key = sample_key(ids["object"], ids["grasp"], ids["frame"], view)
            new_ann = {
                **ann,
                "key": key,
                "hand": {
                    **hand_ann,
                    "joints2d": np.round(result.joints2d, 4).tolist(),
                    "joints_visible": result.joints_visible.astype(bool).tolist(),
                },
                "camera": {
                    "K": camera.K.tolist(),
                    "world_to_cam": camera.world_to_cam.tolist(),
                    "width": camera.width,
                    "height": camera.height,
                    "view": view,
                },
            }
            yield {
                "__key__": key,
                "ann.json": new_ann,
                "normal.png": result.normal,
                "seg.png": result.seg,
                "skeleton.png": result.skeleton,
                "depth.png": result.depth,
                "nocs.png": result.nocs,
                "shade.png": result.shade,
            }
