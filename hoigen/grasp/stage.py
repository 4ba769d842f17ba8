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

from hoigen.config import GraspOptions
from hoigen.data.runner import StageContext, Task
from hoigen.data.schema import Sample, sample_key
from hoigen.errors import HoigenError
from hoigen.grasp.metrics import GraspEvaluator, GraspFilter
from hoigen.grasp.synth import synthesize_grasps
from hoigen.grasp.trajectory import approach_penetration_cm, approach_trajectory
from hoigen.objects import ObjectAsset, load_objects, procedural_objects, read_objects, save_objects

START_TILT_DEG = 20.0


def plan_grasp(opts: GraspOptions, out_dir: Path, seed: int) -> tuple[list[Task], list[ObjectAsset]]:
    """Load or make the objects, save them beside the shards, and group them into tasks."""
    if opts.objects is not None:
        assets = load_objects(
            Path(opts.objects), category=opts.category, up=opts.up, units=opts.units, scale=opts.scale
        )
    else:
        assets = procedural_objects(opts.categories, seed=seed)
    if not assets:
        raise HoigenError("no objects to grasp; check --objects or --categories")
    out_dir.mkdir(parents=True, exist_ok=True)
    save_objects(assets, out_dir)
    per = max(1, opts.objects_per_shard)
    tasks = [
        Task(i, tuple({"__key__": a.id} for a in assets[j : j + per])) for i, j in enumerate(range(0, len(assets), per))
    ]
    return tasks, assets


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


def grasp_filter(cfg: dict[str, Any]) -> GraspFilter:
    """The acceptance thresholds of a grasp run's config (defaults: :class:`GraspFilter`)."""
    d = GraspFilter()
    return GraspFilter(
        max_penetration=float(cfg.get("max_penetration", d.max_penetration)),
        max_sim_displacement=float(cfg.get("max_sim_displacement", d.max_sim_displacement)),
        min_contacts=int(cfg.get("min_contacts", d.min_contacts)),
    )


def grasp_stage(samples: Iterable[Sample], ctx: StageContext) -> Iterator[Sample]:
    """For each object id in ``samples``: up to ``grasps`` accepted grasps x ``frames`` trajectory frames.

    Candidates are optimised per object in rounds (round 0 seeded by the object id, round r by the
    object id and r) until ``grasps`` pass the filters or ``max_rounds`` rounds are spent; only
    accepted grasps are written (keys 0..n-1). Every sample's ``grasp`` metrics carry the object's
    candidate counts, and each object's counts also go to ``grasp_stats/<object>.json`` (so an
    object with no accepted grasp still counts; :func:`hoigen.stages.record_grasp_filter` sums them).
    """
    from hoigen.hand import load_hand

    cfg = ctx.config
    hand = load_hand(cfg["side"], cfg.get("mano_dir"))
    objects = _objects(str(ctx.out_dir))
    for item in samples:
        asset = objects[item["__key__"]]
        mesh = asset.sdf_mesh  # watertight (a remesh when the source is not): signed distance needs it
        evaluator = GraspEvaluator(mesh, hand, asset.sha256)
        grasps, report = synthesize_grasps(
            mesh, hand, ctx.rng(asset.id), cfg["grasps"], category=asset.category, key=asset.sha256,
            candidates=cfg.get("candidates"), grasp_filter=grasp_filter(cfg), evaluator=evaluator,
            max_rounds=int(cfg.get("max_rounds", 3)), round_rng=lambda r, k=asset.id: ctx.rng(k, "round", r),
        )  # fmt: skip
        write_object_stats(ctx.out_dir, asset.id, report)
        for g, result in enumerate(grasps):
            rng = ctx.rng(asset.id, g)
            pose = object_pose(asset, rng)
            final = result.pose.transformed(pose)
            approach = pose[:3, :3] @ result.approach_dir
            tilt = Rotation.from_rotvec(rng.normal(size=3) / np.sqrt(3) * np.deg2rad(START_TILT_DEG)).as_matrix()
            frames = approach_trajectory(
                final, approach, cfg["frames"], cfg["approach_distance"], start_rotation=tilt @ final.rotation
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


STATS_DIR = "grasp_stats"


def write_object_stats(out_dir: Path, object_id: str, report: Any) -> None:
    """One object's candidate counts as ``<out>/grasp_stats/<object>.json`` (atomic)."""
    import json

    from hoigen.data.atomic import atomic_write_bytes

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


def read_object_stats(out_dir: Path) -> list[dict[str, Any]]:
    """The per-object counts written by :func:`write_object_stats`, by object id."""
    import json

    folder = Path(out_dir) / STATS_DIR
    return [json.loads(f.read_text()) for f in sorted(folder.glob("*.json"))] if folder.is_dir() else []


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
