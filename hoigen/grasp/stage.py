"""The grasp stage: objects in, one sample per trajectory frame out.

Planning saves every object to ``<out>/objects/`` (``objects.parquet`` beside the shards) and
groups object ids into input units (``objects_per_shard`` each). For each object and grasp the
object gets a random yaw (its bounding-box centre at the world origin, y up), a grasp is
synthesised in the mesh frame and moved to the world, and the approach trajectory is posed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

from hoigen.data.runner import Plan, Stage, StageContext, Task
from hoigen.data.schema import Sample, sample_key
from hoigen.errors import HoigenError
from hoigen.grasp.metrics import GraspEvaluator, GraspFilter
from hoigen.grasp.options import GraspOptions
from hoigen.grasp.synth import synthesize_grasps
from hoigen.grasp.trajectory import approach_penetration_cm, approach_trajectory
from hoigen.objects import ObjectAsset, load_objects, procedural_objects, read_objects, save_objects
from hoigen.options import Common, record

START_TILT_DEG = 20.0


class GraspStage(Stage):
    """Objects -> grasp shards (+ ``objects/`` and ``objects.parquet``; ``run.json`` gets the filter's counts)."""

    name = "grasp"

    def __init__(self, options: GraspOptions) -> None:
        self.options = options
        self.assets: list[ObjectAsset] = []

    @property
    def transform(self) -> Any:
        return grasp_stage

    def plan(self, out_dir: Path, common: Common) -> Plan:
        """Load the hand (early: a bad --mano-dir fails here) and the objects; one task per object group."""
        from hoigen.hand import load_hand

        opts = self.options
        hand = load_hand(opts.side, opts.mano_dir)
        if opts.objects is not None:
            assets = load_objects(
                Path(opts.objects), category=opts.category, up=opts.up, units=opts.units, scale=opts.scale
            )
        else:
            assets = procedural_objects(opts.categories, seed=common.seed)
        if not assets:
            raise HoigenError("no objects to grasp; check --objects or --categories")
        self.assets = assets
        per = opts.objects_per_shard
        tasks = [
            Task(i, tuple({"__key__": a.id} for a in assets[j : j + per]))
            for i, j in enumerate(range(0, len(assets), per))
        ]
        extra = {
            "hand_model": {"name": hand.name, "source": str(hand.source), "embedded": hand.is_embedded},
            "objects": [
                {"id": a.id, "category": a.category, "source": a.source, "unit_scale": a.unit_scale,
                 "scale_from": a.scale_from}
                for a in assets
            ],  # fmt: skip
            "objects_skipped": [s.to_dict() for s in getattr(assets, "skipped", [])],
        }
        return Plan(tasks, opts, record(opts), extra=extra)

    def prepare(self, out_dir: Path, plan: Plan) -> None:
        """Save every object beside the shards (under the lock: a live rank may be reading them)."""
        out_dir.mkdir(parents=True, exist_ok=True)
        save_objects(self.assets, out_dir)

    def finalize(self, out_dir: Path, plan: Plan, summary: Any, common: Common) -> None:
        if summary.complete:  # the filter counts come from the whole index, written once every shard exists
            record_grasp_filter(out_dir, common.quiet)


def record_grasp_filter(out: Path, quiet: bool = False) -> dict[str, Any]:
    """Add the grasp filter's counts and shortfall to ``run.json``; warn once per short object.

    Raises :class:`HoigenError` when no object yielded an accepted grasp, after removing
    ``index.parquet`` (a failed run leaves no index that looks like a result)."""
    import json

    from hoigen.data.atomic import atomic_write_bytes
    from hoigen.data.contract import INDEX_FILE, read_run_json
    from hoigen.data.progress import console, info
    from hoigen.grasp.report import filter_line, filter_stats, no_grasp_error, short_line

    stats = filter_stats(out)
    run = read_run_json(out)
    run["grasp_filter"] = stats
    atomic_write_bytes(out / "run.json", json.dumps(run, indent=2, sort_keys=True, default=str).encode() + b"\n")
    if stats["objects"] and not stats["accepted"]:
        (out / INDEX_FILE).unlink(missing_ok=True)
        raise HoigenError(no_grasp_error(stats))
    for o in stats["short"]:
        console.print(f"warning: grasp: {short_line(o)}")
    info(filter_line(stats), quiet)
    return stats


@lru_cache(maxsize=4)
def _objects(folder: str) -> dict[str, ObjectAsset]:
    return read_objects(Path(folder))


def object_pose(asset: ObjectAsset, rng: np.random.Generator) -> np.ndarray:
    """Mesh frame -> world: a random yaw about y, bounding-box centre at the origin."""
    rot = Rotation.from_euler("y", rng.uniform(0.0, 2 * np.pi)).as_matrix()
    centre = asset.mesh.bounds.mean(axis=0)
    pose = np.eye(4)
    pose[:3, :3] = rot
    pose[:3, 3] = -rot @ centre
    return pose


def grasp_filter(opts: GraspOptions) -> GraspFilter:
    """The acceptance thresholds of a grasp run's options."""
    return GraspFilter(
        max_penetration=opts.max_penetration,
        max_sim_displacement=opts.max_sim_displacement,
        min_contacts=opts.min_contacts,
    )


def grasp_stage(samples: Iterable[Sample], ctx: StageContext) -> Iterator[Sample]:
    """For each object id in ``samples``: up to ``grasps`` accepted grasps x ``frames`` trajectory frames.

    Candidates are optimised per object in rounds (round 0 seeded by the object id, round r by the
    object id and r) until ``grasps`` pass the filters or ``max_rounds`` rounds are spent; only
    accepted grasps are written (keys 0..n-1). Every sample's ``grasp`` metrics carry the object's
    candidate counts, and each object's counts also go to ``grasp_stats/<object>.json`` (so an
    object with no accepted grasp still counts; :func:`record_grasp_filter` sums them).
    """
    from hoigen.hand import load_hand

    opts: GraspOptions = ctx.options
    hand = load_hand(opts.side, opts.mano_dir)
    objects = _objects(str(ctx.out_dir))
    for item in samples:
        asset = objects[item["__key__"]]
        mesh = asset.sdf_mesh  # watertight (a remesh when the source is not): signed distance needs it
        evaluator = GraspEvaluator(mesh, hand, asset.sha256)
        grasps, report = synthesize_grasps(
            mesh, hand, ctx.rng(asset.id), opts.grasps, category=asset.category, key=asset.sha256,
            candidates=opts.candidates, grasp_filter=grasp_filter(opts), evaluator=evaluator,
            max_rounds=opts.max_rounds, round_rng=lambda r, k=asset.id: ctx.rng(k, "round", r),
        )  # fmt: skip
        write_object_stats(ctx.out_dir, asset.id, report)
        for g, result in enumerate(grasps):
            rng = ctx.rng(asset.id, g)
            pose = object_pose(asset, rng)
            final = result.pose.transformed(pose)
            approach = pose[:3, :3] @ result.approach_dir
            tilt = Rotation.from_rotvec(rng.normal(size=3) / np.sqrt(3) * np.deg2rad(START_TILT_DEG)).as_matrix()
            frames = approach_trajectory(
                final, approach, opts.frames, opts.approach_distance, start_rotation=tilt @ final.rotation
            )
            params = [f.mano_params(hand) for f in frames]
            out = hand.forward(
                *(np.stack([p[k] for p in params]) for k in ("global_orient", "hand_pose", "betas", "transl"))
            )
            inverse = np.linalg.inv(pose)
            in_mesh = out.vertices.astype(np.float64) @ inverse[:3, :3].T + inverse[:3, 3]
            metrics = {**result.metrics, "approach_penetration_cm": approach_penetration_cm(in_mesh, evaluator)}
            focus = (2 * pose[:3, 3] + out.joints[:, 0].mean(axis=0)) / 3
            for f, p in enumerate(params):
                key = sample_key(asset.id, g, f)
                yield {
                    "__key__": key,
                    "ann.json": frame_annotation(
                        key, hand, p, out.joints[f], asset, pose, f, len(frames), focus, approach, metrics
                    ),
                }


def write_object_stats(out_dir: Path, object_id: str, report: Any) -> None:
    """One object's candidate counts as ``<out>/grasp_stats/<object>.json`` (atomic)."""
    import json

    from hoigen.data.atomic import atomic_write_bytes
    from hoigen.grasp.report import STATS_DIR

    stats = {
        "object": object_id,
        "wanted": report.wanted,
        "rounds": report.rounds,
        "candidates": report.candidates,
        "evaluated": report.evaluated,
        "accepted": report.accepted,
        "rejected": report.rejected,
        "written": min(report.accepted, report.wanted),
        "reasons": dict(sorted(report.reasons.items())),
    }
    folder = Path(out_dir) / STATS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / f"{object_id}.json", json.dumps(stats, sort_keys=True).encode() + b"\n")


def frame_annotation(
    key: str,
    hand: Any,
    params: dict[str, np.ndarray],
    joints: np.ndarray,
    asset: ObjectAsset,
    pose: np.ndarray,
    frame: int,
    frames: int,
    focus: np.ndarray,
    approach: np.ndarray,
    metrics: dict,
) -> dict[str, Any]:
    """The grasp stage's ``ann.json`` (DESIGN.md's shard contract)."""
    return {
        "key": key,
        "hand": {
            "side": hand.side,
            "model": hand.name,
            **{k: v.tolist() for k, v in params.items()},
            "joints3d": joints.astype(np.float64).tolist(),
        },
        "object": {
            "id": asset.id,
            "category": asset.category,
            "mesh_sha256": asset.sha256,
            "pose": pose.tolist(),
            "nocs_from_mesh": np.asarray(asset.nocs_from_mesh).tolist(),
        },
        "trajectory": {"frame": frame, "frames": frames, "focus": focus.tolist(), "approach_dir": approach.tolist()},
        "grasp": metrics,
    }
