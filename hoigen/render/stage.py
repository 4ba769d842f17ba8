"""The render stage: each grasp frame seen from ``views`` cameras, as conditions and annotations.

Cameras are chosen per (object, grasp, view), so a view keeps its camera along the whole trajectory
(a fixed camera per trajectory, for video). The stage reads a whole input shard first and groups its
frames by (object, grasp), so that the camera can be aimed at the trajectory's end frame (the grasp)
at the distance that gives ``--fill`` (:func:`hoigen.render.framing.frame_views`: up to
``camera_tries`` seeded draws). A view without a usable camera after every draw (the hand hidden
at the grasp frame, ...) is skipped and counted per reason in ``run.json`` (``views_skipped``), and a
single frame that renders nothing is skipped; both are logged (logger ``hoigen.render``, a warning
on stderr) with the reason, never raised. The hand mesh is posed again from the stored MANO
parameters with the same hand model that made them.

``--camera`` picks the intrinsics: ``random`` (a horizontal field of view drawn in 45-55 deg, square
``--size`` images, default 512) or a preset of :data:`hoigen.render.cameras.CAMERA_PRESETS`
(native size, e.g. 640x480, unless ``--size`` is given; see
:func:`hoigen.render.cameras.preset_intrinsics`). ``--normals estimated`` replaces the rendered
``normal.png`` by normals estimated from the rendered ``depth.png`` (:func:`estimated_normals`).

The scene (:mod:`hoigen.render.placement`, docs/concepts/scenes.md): with the table on (default) the
grasped object stands on a table box (seg id 3) at the grasp's ``support.height``; ``--distractors N``
other objects stand on it around the object, clear of it and of the hand's whole approach, seeded per
(object, grasp) and the same in every frame and view. They come from the input folder's other objects,
shuffled; when it holds fewer than N others the embedded procedural library
(:func:`distractor_library`) is added, and then the render folder keeps its own ``objects/`` and
``objects.parquet`` (the grasp folder's objects plus the library) so later stages find every mesh a
sample names. ann.json gains ``instances`` (every object instance, the grasped one first, with pose,
NOCS transform, boxes and pixel counts) and ``table`` (null with ``--no-table``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache, lru_cache, partial
from pathlib import Path
from typing import Any

import numpy as np

from hoigen.data.contract import (
    OBJECTS_KEY,
    SEG_OBJECT,
    SEG_TABLE,
    distractor_seg_id,
    objects_dir_of,
    read_run_json,
)
from hoigen.data.runner import Plan, Stage, StageContext, input_tasks
from hoigen.data.schema import Sample, parse_key, sample_key
from hoigen.errors import HoigenError
from hoigen.objects import ObjectAsset, read_objects, save_objects
from hoigen.options import Common, OptionError, UsageError, record
from hoigen.render.options import RenderOptions

STATS_DIR = "render_stats"  # per-shard counts of skipped views, summed into run.json by finalize
log = logging.getLogger("hoigen.render")

# the embedded distractor library (used when the input folder holds too few other objects)
LIBRARY_CATEGORIES = ("bottle", "bowl", "can", "mug", "box", "camera")  # no laptop: too large to stand beside
LIBRARY_PER_CATEGORY = 2
LIBRARY_SEED = 21  # not a run seed: the library is the same in every run (and differs from grasp's seed-0 objects)
LIBRARY_PREFIX = "distractor"


@dataclass(frozen=True)
class RenderInputs:
    """What the render stage reads from its input folder besides the shards."""

    objects_dir: str  # the folder holding objects.parquet (the render folder itself when it adds library objects)
    mano_dir: str | None  # the hand model folder the grasp stage used (None: the embedded hand)
    library: tuple[str, ...] = ()  # ids of the procedural library's distractors among the objects


@lru_cache(maxsize=1)
def distractor_library() -> tuple[ObjectAsset, ...]:
    """The embedded distractors: :data:`LIBRARY_PER_CATEGORY` procedural objects of each of
    :data:`LIBRARY_CATEGORIES`, ids ``distractor-<category>-<i:03d>``, the same in every run."""
    import zlib

    from hoigen.objects.procedural import procedural_mesh_colored

    out = []
    for cat in LIBRARY_CATEGORIES:
        for i in range(LIBRARY_PER_CATEGORY):
            rng = np.random.default_rng([LIBRARY_SEED, zlib.crc32(cat.encode()), i])
            v, f, c = procedural_mesh_colored(cat, rng)
            source = f"procedural:{cat}:{LIBRARY_SEED}:{i}"
            out.append(ObjectAsset.create(f"{LIBRARY_PREFIX}-{cat}-{i:03d}", cat, v, f, source, colors=c))
    return tuple(out)


class RenderStage(Stage):
    """Grasp shards -> render shards."""

    name = "render"
    sidecars = ("objects", STATS_DIR)  # library distractors' meshes; skipped views per shard

    def __init__(self, in_dir: Path, options: RenderOptions) -> None:
        self.in_dir, self.options = Path(in_dir), options

    @property
    def transform(self) -> Any:
        return render_stage

    def prepare(self, out_dir: Path, plan: Plan) -> None:
        """With library distractors: save the grasp folder's objects plus the library beside the shards."""
        if self.library:
            out_dir.mkdir(parents=True, exist_ok=True)
            save_objects([*_objects(self.grasp_objects).values(), *self.library], out_dir)
            _objects.cache_clear()  # a folder read before (an earlier run into it) is read again

    def plan(self, out_dir: Path, common: Common) -> Plan:
        tasks = input_tasks(self.in_dir, ("grasp",))
        objects = str(objects_dir_of(self.in_dir))
        upstream = read_run_json(self.in_dir)
        grasp_config = upstream.get("config", {})
        if self.options.table and grasp_config.get("table") is False:
            raise OptionError(
                "table", f"is on but {self.in_dir} was grasped with --no-table (floating objects); "
                "pass --no-table or re-run hoigen grasp with the table"
            )
        self.library: tuple[ObjectAsset, ...] = ()
        self.grasp_objects = objects
        if self.options.distractors and len(_objects(objects)) - 1 < self.options.distractors:
            self.library = distractor_library()  # too few other objects: the render folder gets its own objects/
            objects = str(Path(out_dir).resolve())
        library = tuple(a.id for a in self.library)
        inputs = RenderInputs(objects, grasp_config.get("mano_dir"), library)
        # the config (the run's fingerprint, the same for every rank) names the input's objects and the
        # library, never this folder; run.json's top-level pointer says where the meshes are
        config = {**record(self.options), OBJECTS_KEY: self.grasp_objects, "mano_dir": inputs.mano_dir}
        if library:
            config["distractor_library"] = list(library)
        extra = {OBJECTS_KEY: objects, "hand_model": upstream.get("hand_model")}
        return Plan(tasks, self.options, config, in_dir=self.in_dir, extra=extra, inputs=inputs)

    @classmethod
    def tally(cls, out_dir: Path, quiet: bool = False) -> None:
        record_view_stats(out_dir)


def write_view_stats(out_dir: Path, shard: int, skipped: dict[str, int]) -> None:
    """``OUT/render_stats/shard-NNNNNN.json``: the shard's skipped views per reason (written before
    the shard is published, so a finished shard always has its counts; :mod:`hoigen.data.sidecar`)."""
    from hoigen.data.sidecar import write_shard_record

    write_shard_record(out_dir, STATS_DIR, shard, {"views_skipped": skipped})


def record_view_stats(out_dir: Path) -> dict[str, int]:
    """Sum every shard's skipped views per reason into ``run.json`` (``views_skipped``)."""
    from hoigen.data.sidecar import shard_records, update_run
    from hoigen.render.framing import SKIP_REASONS

    total = dict.fromkeys(SKIP_REASONS, 0)
    for rec in shard_records(out_dir, STATS_DIR):
        for reason, n in rec["views_skipped"].items():
            total[reason] = total.get(reason, 0) + int(n)
    update_run(out_dir, views_skipped=total)
    return total


@lru_cache(maxsize=4)
def _objects(folder: str) -> dict[str, ObjectAsset]:
    return read_objects(Path(folder))


@lru_cache(maxsize=64)
def _shape(folder: str, object_id: str, sha256: str) -> Any:
    """The convex hull of an object (placement geometry, :class:`hoigen.render.placement.Shape`)."""
    from hoigen.render.placement import Shape

    return Shape.of(_objects(folder)[object_id].mesh.vertices)


@cache
def _table_mesh(size: tuple[float, float], thickness: float) -> Any:
    from hoigen.render.placement import Table

    return Table(0.0, (0.0, 0.0), size, thickness).mesh()


@cache  # never evicted: deleting a pyrender EGL renderer terminates the shared display
def _renderer(width: int, height: int, supersample: int = 1) -> Any:
    from hoigen.render.renderer import make_renderer

    return make_renderer(width, height, supersample=supersample)


def _hand(side: str, model: str, mano_dir: str | None) -> Any:
    from hoigen.hand import EMBEDDED_HAND_NAME, load_hand

    hand = load_hand(side, None if model == EMBEDDED_HAND_NAME else mano_dir)
    if hand.name != model:
        raise HoigenError(
            f"the grasp shards were made with hand model '{model}' but '{hand.name}' was found; "
            "pass the same --mano-dir (or HOIGEN_MANO_DIR) as for hoigen grasp"
        )
    return hand


def _trajectories(samples: Iterable[Sample]) -> list[list[Sample]]:
    """The shard's samples grouped by (object, grasp), in order of first appearance, frames sorted."""
    groups: dict[tuple[str, int], list[Sample]] = {}
    for sample in samples:
        ids = parse_key(sample["__key__"])
        groups.setdefault((ids["object"], ids["grasp"]), []).append(sample)
    return [sorted(g, key=lambda s: parse_key(s["__key__"])["frame"]) for g in groups.values()]


@dataclass(frozen=True)
class Scene:
    """A trajectory's scene besides the hand and the grasped object (the same in every frame and view)."""

    table: Any = None  # hoigen.render.placement.Table, None with --no-table
    distractors: tuple[tuple[ObjectAsset, np.ndarray], ...] = ()  # (asset, pose mesh -> world), seg id 4 + k
    extras: tuple[Any, ...] = ()  # the renderer's Instances: the table, then the distractors

    def occluders(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """The distractors as world-frame meshes ((V,3), (F,3)) that may hide the hand from a camera
        (the table cannot: cameras and the hand are above its top)."""
        from hoigen.render.placement import transform

        return [(transform(a.mesh.vertices, pose), np.asarray(a.mesh.faces)) for a, pose in self.distractors]

    def instances(self, ann: dict[str, Any], result: Any) -> list[dict[str, Any]]:
        """ann.json ``instances``: the grasped object (seg id 2), then each distractor, with the frame's
        boxes and pixel counts (``result.instance_boxes()``)."""
        boxes = result.instance_boxes()
        obj = ann["object"]
        rows = [
            {"seg_id": SEG_OBJECT, "role": "grasped", "id": obj["id"], "category": obj["category"],
             "mesh_sha256": obj["mesh_sha256"], "pose": obj["pose"], "nocs_from_mesh": obj["nocs_from_mesh"]}
        ]  # fmt: skip
        for k, (asset, pose) in enumerate(self.distractors):
            rows.append(
                {"seg_id": distractor_seg_id(k), "role": "distractor", "id": asset.id, "category": asset.category,
                 "mesh_sha256": asset.sha256, "pose": np.round(pose, 8).tolist(),
                 "nocs_from_mesh": np.asarray(asset.nocs_from_mesh).tolist()}
            )  # fmt: skip
        empty = {"bbox": [0, 0, 0, 0], "bbox_visible": [0, 0, 0, 0], "px_visible": 0, "px_full": 0}
        for row in rows:
            found = boxes.get(row["seg_id"], {})
            row.update({k: found.get(k) or v for k, v in empty.items()})
        return rows


def _compose(
    trajectory: list[Sample], asset: ObjectAsset, hand_vertices: list[np.ndarray], objects: dict[str, ObjectAsset],
    inputs: RenderInputs, opts: RenderOptions, ctx: StageContext,
) -> Scene:  # fmt: skip
    """The table under the grasped object and the distractors around it (:mod:`hoigen.render.placement`)."""
    from hoigen.render.placement import footprint, hand_sweep, place_distractors, support_height, table_under, transform
    from hoigen.render.renderer import Instance

    if not opts.table:
        return Scene()
    first = trajectory[0]["ann.json"]
    ids = parse_key(trajectory[0]["__key__"])
    pose0 = np.asarray(first["object"]["pose"], dtype=np.float64)
    height = support_height(first, asset.mesh.vertices, pose0)
    if height is None:
        raise UsageError(
            f"render: {trajectory[0]['__key__']} was grasped with --no-table (support is null); "
            "pass --no-table or re-run hoigen grasp with the table"
        )
    table = table_under(height, asset.mesh.vertices, pose0)
    extras = [Instance(_table_mesh(table.size, table.thickness), table.pose, SEG_TABLE, None, "table")]
    sweep = hand_sweep(hand_vertices)
    if len(sweep) and sweep[:, 1].min() < table.height - 0.005:
        log.warning(
            "render: the hand of %s_%04d reaches %.1f cm below the table top (a grasp made without the table?)",
            ids["object"], ids["grasp"], 100 * (table.height - sweep[:, 1].min()),
        )
    placed: list[tuple[ObjectAsset, np.ndarray]] = []
    if opts.distractors:
        rng = ctx.rng(ids["object"], ids["grasp"], "distractors")
        others = [a for oid, a in objects.items() if oid != asset.id and oid not in inputs.library]
        library = [a for oid, a in objects.items() if oid != asset.id and oid in inputs.library]
        pool = [others[i] for i in rng.permutation(len(others))] + [library[i] for i in rng.permutation(len(library))]
        poses = [np.asarray(s["ann.json"]["object"]["pose"], dtype=np.float64) for s in trajectory]
        distinct = {p.tobytes(): p for p in poses}.values()  # the grasped object under each of its poses
        obstacles = [footprint(transform(asset.mesh.vertices, p)) for p in distinct]
        shapes = [_shape(inputs.objects_dir, a.id, a.sha256) for a in pool]
        centre = (table.centre[0], table.centre[1])
        for p in place_distractors(shapes, opts.distractors, table, centre, obstacles, sweep, rng):
            placed.append((pool[p.index], p.pose))
        if len(placed) < opts.distractors:
            log.warning(
                "render: %s_%04d: placed %d of %d distractors (no free spot for the rest)",
                ids["object"], ids["grasp"], len(placed), opts.distractors,
            )
        for k, (other, pose) in enumerate(placed):
            extras.append(Instance(other.mesh, pose, distractor_seg_id(k), other.nocs_from_mesh, other.id))
    return Scene(table, tuple(placed), tuple(extras))


def render_stage(samples: Iterable[Sample], ctx: StageContext) -> Iterator[Sample]:
    """Grasp samples in, ``views`` rendered samples out per input sample (fewer when a view or a
    frame shows nothing: see the module docstring)."""
    from hoigen.render.cameras import camera_sampler, camera_size
    from hoigen.render.framing import SKIP_REASONS, frame_views
    from hoigen.render.renderer import SceneSpec
    from hoigen.render.scene import sample_lights
    from hoigen.render.silhouette import silhouette

    opts: RenderOptions = ctx.options
    inputs: RenderInputs = ctx.inputs
    preset = opts.camera
    width, height = camera_size(preset, opts.size)
    sample_camera = camera_sampler(preset, opts.size)
    renderer = _renderer(width, height, opts.supersample)
    objects = _objects(inputs.objects_dir)
    skipped = dict.fromkeys(SKIP_REASONS, 0)
    for trajectory in _trajectories(samples):
        first = trajectory[0]["ann.json"]
        asset = objects[first["object"]["id"]]
        ids = parse_key(trajectory[0]["__key__"])
        posed = []
        for sample in trajectory:
            hand_ann = sample["ann.json"]["hand"]
            hand = _hand(hand_ann["side"], hand_ann["model"], inputs.mano_dir)
            out = hand.forward(
                *(np.asarray(hand_ann[k]) for k in ("global_orient", "hand_pose", "betas", "transl"))
            )
            posed.append((hand, out.vertices[0]))
        support = trajectory[-1]["ann.json"].get("support") or {}
        scene = _compose(trajectory, asset, [v for _, v in posed], objects, inputs, opts, ctx)
        framings = frame_views(
            sample_camera, partial(ctx.rng, ids["object"], ids["grasp"]), opts.views,
            asset.mesh.vertices, asset.mesh.faces, [s["ann.json"]["object"]["pose"] for s in trajectory],
            [v for _, v in posed], fill=opts.fill, tries=opts.camera_tries, support_height=support.get("height"),
            occluders=scene.occluders(), znear=renderer.znear, zfar=renderer.zfar,
        )  # fmt: skip
        cameras = {view: f for view, f in framings.items() if f.camera is not None}
        for view, framing in framings.items():
            if framing.camera is None:
                skipped[framing.skip] += 1
                log.warning("render: skipped %s_%04d view %d: %s", ids["object"], ids["grasp"], view, framing.reason)
        lights = {view: sample_lights(ctx.rng(ids["object"], ids["grasp"], view, "lights"))
                  for view in cameras if opts.lights == "random"}  # fmt: skip
        lit = {view: renderer.lights_record(lights.get(view)) for view in cameras}  # ann.json ``lights``

        for sample, (hand, vertices) in zip(trajectory, posed, strict=True):
            ann = sample["ann.json"]
            hand_ann, obj_ann = ann["hand"], ann["object"]
            frame_ids = parse_key(sample["__key__"])
            for view, framing in cameras.items():
                camera = framing.camera
                key = sample_key(frame_ids["object"], frame_ids["grasp"], frame_ids["frame"], view)
                result = renderer.render(
                    SceneSpec(
                        hand_vertices=vertices,
                        hand_faces=hand.faces,
                        object_mesh=asset.mesh,
                        object_pose=np.asarray(obj_ann["pose"]),
                        nocs_from_mesh=np.asarray(obj_ann["nocs_from_mesh"]),
                        camera=camera,
                        joints3d=np.asarray(hand_ann["joints3d"]),
                        mesh_key=asset.id,
                        lights=lights.get(view),
                        extras=scene.extras,
                    )
                )
                if result.empty:
                    log.warning("render: skipped %s: neither the hand nor the object covers a pixel", key)
                    continue
                full = silhouette(
                    asset.mesh.vertices, asset.mesh.faces, camera.world_to_cam @ np.asarray(obj_ann["pose"]),
                    camera.K, result.mask_object_full, renderer.znear,
                )
                normal = estimated_normals(result) if opts.normals == "estimated" else result.normal
                yield _rendered_sample(key, ann, result, view, preset, framing, full, normal, scene, lit[view])
    write_view_stats(ctx.out_dir, ctx.shard, skipped)


def estimated_normals(result: Any) -> np.ndarray:
    """``normal.png`` estimated from the rendered depth, per hand/object region (``--normals estimated``):
    :func:`hoigen.geometry.normals.normals_from_depth`, the function DexYCB ingest uses on sensor depth."""
    from hoigen.data.contract import decode_depth
    from hoigen.geometry.normals import encode_normals, normals_from_depth

    normals, defined = normals_from_depth(decode_depth(result.depth), result.camera.K, labels=result.seg)
    return encode_normals(normals, defined)


def _rendered_sample(
    key: str, ann: dict, result: Any, view: int, preset: str, framing: Any, full: dict[str, Any],
    normal: np.ndarray | None = None, scene: Scene | None = None, lights: dict[str, Any] | None = None,
) -> Sample:  # fmt: skip
    """One output sample: the input annotation plus camera, 2D joints, visibility, boxes, the shade
    pass's lights (the renderer's ``lights_record``) and maps (``normal``: the normal map to store,
    default the rendered one).

    Boxes of empty masks are ``[0, 0, 0, 0]`` (never null, so every sample has the same schema);
    ``object.silhouette`` is :func:`hoigen.render.silhouette.silhouette` (the unclipped silhouette)."""
    camera = result.camera
    boxes = {name: box or [0, 0, 0, 0] for name, box in result.bboxes().items()}
    scene = scene or Scene()
    return {
        "__key__": key,
        "ann.json": {
            **ann,
            "key": key,
            "instances": scene.instances(ann, result),
            "table": None if scene.table is None else scene.table.to_ann(),
            "hand": {
                **ann["hand"],
                "joints2d": np.round(result.joints2d, 4).tolist(),
                "joints_visible": result.joints_visible.astype(bool).tolist(),
                "joints_self_occluded": result.joints_self_occluded.astype(bool).tolist(),
                "bbox": boxes["hand"],
                "bbox_visible": boxes["hand_visible"],
            },
            "object": {
                **ann["object"],
                "bbox": boxes["object"],
                "bbox_visible": boxes["object_visible"],
                "silhouette": full,
            },
            "camera": {
                "K": camera.K.tolist(),
                "world_to_cam": camera.world_to_cam.tolist(),
                "width": camera.width,
                "height": camera.height,
                "view": view,
                "preset": preset,
                "in_view": round(framing.seen, 4),
            },
            **({} if lights is None else {"lights": lights}),
        },
        "normal.png": result.normal if normal is None else normal,
        "seg.png": result.seg,
        "skeleton.png": result.skeleton,
        "depth.png": result.depth,
        "nocs.png": result.nocs,
        "shade.png": result.shade,
        "amodal.png": result.amodal,
    }
