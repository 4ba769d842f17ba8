"""The grasp stage: objects in, one sample per trajectory frame out.

Planning saves every object to ``<out>/objects/`` (``objects.parquet`` beside the shards) and
groups object ids into input units (``objects_per_shard`` each). For each object and grasp the
object gets a random yaw about the vertical (y up); with the table (the default) it stands on the
plane y = ``table_height`` (its lowest point on it, its bounding-box centre above the origin),
without it it floats with its bounding-box centre at the origin. A grasp is synthesised in the mesh
frame (kept above the table) and moved to the world, and the approach trajectory is posed (above
the table in every frame); ``--lift`` appends frames in which hand and object rise together.

Hands: ``--hands right|left`` uses that hand for every grasp; ``both`` draws each grasp's side from
``ctx.rng(object, grasp, "side")`` and synthesises each side's grasps with its own hand model.
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
from hoigen.grasp.report import STATS_DIR
from hoigen.grasp.synth import SynthesisReport, synthesize_grasps
from hoigen.grasp.trajectory import (
    HandPose,
    approach_from_above,
    approach_penetration_cm,
    approach_trajectory,
    clearance_rise,
    lift_offsets,
)
from hoigen.objects import ObjectAsset, load_objects, procedural_objects, read_objects, save_objects
from hoigen.options import Common, record

START_TILT_DEG = 20.0


class GraspStage(Stage):
    """Objects -> grasp shards (+ ``objects/`` and ``objects.parquet``; ``run.json`` gets the filter's counts)."""

    name = "grasp"
    sidecars = ("objects", STATS_DIR)  # the object meshes; per-object candidate counts

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
        hands = [load_hand(side, opts.mano_dir) for side in sides_of(opts.hands)]
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
            "hand_model": {"name": hands[0].name, "source": str(hands[0].source), "embedded": hands[0].is_embedded},
            "hand_sources": {h.side: str(h.source) for h in hands},
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

    @classmethod
    def tally(cls, out_dir: Path, quiet: bool = False) -> None:
        """The filter counts come from the whole index (written once every shard exists)."""
        record_grasp_filter(out_dir, quiet)


def record_grasp_filter(out: Path, quiet: bool = False) -> dict[str, Any]:
    """Add the grasp filter's counts and shortfall to ``run.json``; warn once per short object.

    Raises :class:`HoigenError` when no object yielded an accepted grasp, after removing
    ``index.parquet`` (a failed run leaves no index that looks like a result)."""
    from hoigen.data.contract import INDEX_FILE
    from hoigen.data.progress import console, info
    from hoigen.data.sidecar import update_run
    from hoigen.grasp.report import filter_line, filter_stats, no_grasp_error, short_line

    stats = filter_stats(out)
    update_run(out, grasp_filter=stats)
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


def sides_of(hands: str) -> tuple[str, ...]:
    """The hand sides a ``--hands`` value uses."""
    return ("right", "left") if hands == "both" else (hands,)


def grasp_sides(hands: str, object_id: str, count: int, ctx: StageContext) -> list[str]:
    """The side of each of an object's ``count`` grasps: ``hands`` itself, or for ``both`` a fair coin
    per grasp from ``ctx.rng(object, grasp, "side")`` (the same for every run with the same seed)."""
    if hands != "both":
        return [hands] * count
    return ["left" if ctx.rng(object_id, g, "side").random() < 0.5 else "right" for g in range(count)]


def support_in_mesh(asset: ObjectAsset) -> float:
    """The height (mesh frame, y up) of the plane the object stands on: its lowest vertex."""
    return float(np.asarray(asset.mesh.vertices)[:, 1].min())


def object_pose(asset: ObjectAsset, rng: np.random.Generator, table_height: float | None = None) -> np.ndarray:
    """Mesh frame -> world: a random yaw about y (the only rotation: the mesh frame's y is up).

    Without a table the bounding-box centre sits at the origin; on a table at ``table_height`` the
    centre is above the origin and the lowest point lies on the plane y = ``table_height``."""
    rot = Rotation.from_euler("y", rng.uniform(0.0, 2 * np.pi)).as_matrix()
    centre = asset.mesh.bounds.mean(axis=0)
    pose = np.eye(4)
    pose[:3, :3] = rot
    pose[:3, 3] = -rot @ centre
    if table_height is not None:  # a yaw keeps heights: the lowest vertex moves by the translation only
        pose[1, 3] = table_height - support_in_mesh(asset)
    return pose


def grasp_filter(opts: GraspOptions) -> GraspFilter:
    """The acceptance thresholds of a grasp run's options."""
    return GraspFilter(
        max_penetration=opts.max_penetration,
        max_sim_displacement=opts.max_sim_displacement,
        min_contacts=opts.min_contacts,
    )


def grasp_stage(samples: Iterable[Sample], ctx: StageContext) -> Iterator[Sample]:
    """For each object id in ``samples``: up to ``grasps`` accepted grasps x trajectory frames.

    Candidates are optimised per object (and hand side) in rounds (round 0 seeded by the object id,
    round r by the object id and r; with ``--hands both`` by the side too) until ``grasps`` pass the
    filters or ``max_rounds`` rounds are spent; only accepted grasps are written (keys 0..n-1).
    Every sample's ``grasp`` metrics carry the object's candidate counts, and each object's counts
    also go to ``grasp_stats/<object>.json`` (so an object with no accepted grasp still counts;
    :func:`record_grasp_filter` sums them).
    """
    from hoigen.hand import load_hand

    opts: GraspOptions = ctx.options
    hands = {side: load_hand(side, opts.mano_dir) for side in sides_of(opts.hands)}
    objects = _objects(str(ctx.out_dir))
    height = opts.table_height if opts.table else None
    for item in samples:
        asset = objects[item["__key__"]]
        mesh = asset.sdf_mesh  # watertight (a remesh when the source is not): signed distance needs it
        support = None if height is None else support_in_mesh(asset)
        sides = grasp_sides(opts.hands, asset.id, opts.grasps, ctx)
        found: dict[str, list[Any]] = {}
        evaluators: dict[str, GraspEvaluator] = {}
        reports: dict[str, SynthesisReport] = {}
        for side, hand in hands.items():
            wanted = sides.count(side)
            if not wanted:
                continue
            tag = (side,) if opts.hands == "both" else ()  # one side: the seeds of runs before --hands
            evaluator = evaluators[side] = GraspEvaluator(mesh, hand, asset.sha256)
            found[side], report = synthesize_grasps(
                mesh, hand, ctx.rng(asset.id, *tag), wanted, category=asset.category, key=asset.sha256,
                candidates=opts.candidates, grasp_filter=grasp_filter(opts), evaluator=evaluator,
                max_rounds=opts.max_rounds, round_rng=lambda r, k=asset.id, t=tag: ctx.rng(k, *t, "round", r),
                support=support,
            )  # fmt: skip
            reports[side] = report
        write_object_stats(ctx.out_dir, asset.id, merge_reports(list(reports.values())), reports)
        picked = [(side, found[side].pop(0)) for side in sides if found.get(side)]
        for g, (side, result) in enumerate(picked):
            yield from grasp_samples(asset, g, hands[side], result, evaluators[side], height, opts, ctx)


def merge_reports(reports: list[SynthesisReport]) -> SynthesisReport:
    """One object's counts over its hand sides (each side accepts at most its own quota)."""
    if len(reports) == 1:
        return reports[0]
    out = SynthesisReport()
    for r in reports:
        for name in ("candidates", "evaluated", "rounds", "wanted"):
            setattr(out, name, getattr(out, name) + getattr(r, name))
        out.accepted += r.accepted
        out.reasons.update(r.reasons)
        out.seconds += r.seconds
    return out


def posed(hand: Any, params: list[dict[str, np.ndarray]]) -> Any:
    """The hand posed by each of a list of MANO parameter sets, all at once (a ``HandOutput``)."""
    return hand.forward(*(np.stack([p[k] for p in params]) for k in ("global_orient", "hand_pose", "betas", "transl")))


def grasp_samples(
    asset: ObjectAsset, g: int, hand: Any, result: Any, evaluator: GraspEvaluator, height: float | None,
    opts: GraspOptions, ctx: StageContext,
) -> Iterator[Sample]:  # fmt: skip
    """The samples of one accepted grasp: the approach frames (the grasp last), then any lift frames."""
    rng = ctx.rng(asset.id, g)
    pose = object_pose(asset, rng, height)
    final = result.pose.transformed(pose)
    approach = pose[:3, :3] @ result.approach_dir
    if height is not None:
        approach = approach_from_above(approach)
    tilt = Rotation.from_rotvec(rng.normal(size=3) / np.sqrt(3) * np.deg2rad(START_TILT_DEG)).as_matrix()
    frames = approach_trajectory(
        final, approach, opts.frames, opts.approach_distance, start_rotation=tilt @ final.rotation
    )
    params = [f.mano_params(hand) for f in frames]
    out = posed(hand, params)
    if height is not None:
        rise = clearance_rise(out.vertices[..., 1].min(axis=1), height)
        if rise.any():  # an approach frame would reach into the table: raise it clear
            frames = [HandPose(f.rotation, f.translation + [0.0, dy, 0.0], f.hand_pose, f.betas)
                      for f, dy in zip(frames, rise, strict=True)]  # fmt: skip
            params = [f.mano_params(hand) for f in frames]
            out = posed(hand, params)
    inverse = np.linalg.inv(pose)
    in_mesh = out.vertices.astype(np.float64) @ inverse[:3, :3].T + inverse[:3, 3]
    metrics = {**result.metrics, "approach_penetration_cm": approach_penetration_cm(in_mesh, evaluator)}
    focus = (2 * pose[:3, 3] + out.joints[:, 0].mean(axis=0)) / 3
    poses = [pose] * len(frames)
    joints = list(out.joints)
    if opts.lift > 0:  # hand and object rise together from the grasp frame
        held = params[-1]
        for dy in lift_offsets(opts.lift, opts.lift_frames):
            params.append(dict(held, transl=held["transl"] + [0.0, dy, 0.0]))
            poses.append(pose.copy())
            poses[-1][1, 3] += dy
        joints += list(posed(hand, params[len(frames) :]).joints)
    support = None if height is None else {"height": float(height)}
    trajectory = {"frames": len(params), "grasp_frame": len(frames) - 1, "focus": focus.tolist(),
                  "approach_dir": approach.tolist()}  # fmt: skip
    for f, p in enumerate(params):
        key = sample_key(asset.id, g, f)
        yield {
            "__key__": key,
            "ann.json": frame_annotation(key, hand, p, joints[f], asset, poses[f], f, trajectory, metrics, support),
        }


def write_object_stats(out_dir: Path, object_id: str, report: Any, sides: dict[str, Any] | None = None) -> None:
    """One object's candidate counts as ``<out>/grasp_stats/<object>.json`` (atomic); ``sides``: the
    report of each hand side, kept under ``sides`` (wanted, evaluated, accepted, reasons)."""
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
    if sides:
        stats["sides"] = {
            side: {"wanted": r.wanted, "evaluated": r.evaluated, "accepted": r.accepted,
                   "reasons": dict(sorted(r.reasons.items()))}
            for side, r in sides.items()
        }  # fmt: skip
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
    trajectory: dict[str, Any],
    metrics: dict,
    support: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The grasp stage's ``ann.json`` (DESIGN.md's shard contract): ``trajectory`` holds ``frames``,
    ``grasp_frame`` (the grasp's frame; later ones lift), ``focus`` and ``approach_dir``; ``support``
    the table's ``height`` (world y) or None (no table)."""
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
        "trajectory": {"frame": frame, **trajectory},
        "support": support,
        "grasp": metrics,
    }
