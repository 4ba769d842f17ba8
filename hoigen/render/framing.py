"""Choosing one camera per trajectory view: aimed at the grasp, at the distance that gives ``--fill``.

A video needs one camera per (object, grasp, view) for all frames. :func:`frame_views` chooses it
from the trajectory's *end frame* (the grasp; the hand and object there are what a pose estimator
is trained on), in four steps per draw:

1. *Direction*: ``sample(center, rng)`` draws a camera looking at ``center``, the centre of the end
   frame's hand+object 3D box, with the elevation, azimuth, roll (and, for ``--camera random``, field
   of view) ranges of :func:`hoigen.render.cameras.sample_camera`. Only its rotation and ``K`` are
   kept (a preset keeps its K; the fill works through the distance).
2. *Placement* (:func:`place_camera`): with the rotation fixed, the camera is moved along its axis and
   sideways until the end frame's projected hand+object box (hand vertices and the object's
   vertices, through their convex hull) is centred in the image and its longer side is ``fill``
   times the image's shorter side (bisection on the distance, Newton steps for the centring).
3. *Table*: with a support plane (grasp ``support.height``), a camera at or below it is redrawn.
4. *Hand*: a view in which the hand is entirely hidden behind the object at the end frame
   (:func:`hand_hidden`) is redrawn.

After ``tries`` draws without a usable camera the view is skipped; :attr:`Framing.skip` names why
(:data:`SKIP_REASONS`), and the render stage counts skips per reason in ``run.json``
(``views_skipped``). Earlier frames of the approach are not considered: the hand may start outside
the image. :attr:`Framing.seen` records the share of the whole trajectory's points that are in view.
The generator depends only on (seed, object, grasp, view), so the choice is deterministic and the
same for every frame of the trajectory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from hoigen.render.cameras import Camera, in_view, project

# Why a view was skipped: every draw hid the hand behind the object at the grasp frame; no placement
# put the grasp frame in front of the camera within the clip range; every camera fell below the table.
SKIP_REASONS = ("hand_hidden", "out_of_view", "below_table")
TRAJECTORY_POINTS = (200, 100)  # object surface points per object pose, hand vertices per frame (for ``seen``)
HIDDEN_TOLERANCE = 0.002  # m: a hand point counts as hidden only behind the object surface by more than this
HIDDEN_POINTS = 256  # hand vertices ray-tested at most (evenly strided) when the quick test cannot decide
TABLE_CLEARANCE = 0.01  # m: the camera centre stays at least this far above the support plane


@dataclass
class Framing:
    """The chosen camera (None: the view is skipped for ``skip``), the draws it took, the share of
    trajectory points in view and the achieved fill at the end frame (projected points)."""

    camera: Camera | None
    tries: int
    seen: float
    skip: str = ""
    fill: float = 0.0

    @property
    def reason(self) -> str:
        """Why the view was skipped, in words (empty when a camera was chosen)."""
        if self.camera is not None:
            return ""
        return {
            "hand_hidden": f"the objects hide the whole hand at the grasp frame in all {self.tries} draws",
            "out_of_view": f"no camera of {self.tries} draws can place the grasp frame in view (out of view)",
            "below_table": f"all {self.tries} cameras would sit below the table",
        }[self.skip]


def subsample(points: np.ndarray, count: int) -> np.ndarray:
    """At most ``count`` of ``points`` (N,3), evenly strided (deterministic)."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if len(points) <= count:
        return points
    return points[np.linspace(0, len(points) - 1, count).round().astype(np.int64)]


def hull_points(points: np.ndarray) -> np.ndarray:
    """The vertices of the convex hull of ``points`` (N,3): a projected point set's box is reached at
    them, so the box of the hull is the box of all points. All points when the hull is degenerate."""
    from scipy.spatial import ConvexHull, QhullError

    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    try:
        return points[ConvexHull(points).vertices]
    except (QhullError, ValueError):
        return points


def _posed(vertices: np.ndarray, pose: np.ndarray) -> np.ndarray:
    pose = np.asarray(pose, dtype=np.float64).reshape(4, 4)
    return np.asarray(vertices, dtype=np.float64) @ pose[:3, :3].T + pose[:3, 3]


def box_share(points: np.ndarray, camera: Camera) -> float:
    """Longer side of the projected box of ``points`` over the image's shorter side."""
    uv, _ = project(points, camera.K, camera.world_to_cam)
    return float(np.max(np.ptp(uv, axis=0)) / min(camera.width, camera.height))


def _centre_shift(a: np.ndarray, z: np.ndarray, f: float, c: float, target: float) -> float:
    """Shift ``s`` with the projections ``f * (a + s) / z + c`` centred on ``target`` (Newton steps;
    their midpoint is increasing and piecewise linear in ``s``)."""
    s = 0.0
    for _ in range(12):
        u = f * (a + s) / z + c
        lo, hi = int(np.argmin(u)), int(np.argmax(u))
        g = 0.5 * (u[lo] + u[hi]) - target
        if abs(g) < 1e-3:
            break
        s -= g / (0.5 * f * (1.0 / z[lo] + 1.0 / z[hi]))
    return s


def place_camera(
    rotation: np.ndarray, K: np.ndarray, width: int, height: int, points: np.ndarray, fill: float,
    znear: float = 0.01, zfar: float = 10.0,
) -> np.ndarray | None:  # fmt: skip
    """world_to_cam (4,4) with the given camera ``rotation`` (3,3, world -> camera) whose translation
    centres the projected box of ``points`` (N,3, world) in the image and makes its longer side
    ``fill`` x the shorter image side; None when no distance does that with every point within
    (znear, zfar)."""
    R = np.asarray(rotation, dtype=np.float64)
    q = np.asarray(points, dtype=np.float64).reshape(-1, 3) @ R.T
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    centre = ((width - 1) / 2.0, (height - 1) / 2.0)
    target = float(fill) * min(width, height)
    mid = 0.5 * (q[:, 2].min() + q[:, 2].max())

    def at(depth: float) -> tuple[float, np.ndarray]:
        t = np.array([0.0, 0.0, depth - mid])
        z = q[:, 2] + t[2]
        t[0] = _centre_shift(q[:, 0], z, fx, cx, centre[0])
        t[1] = _centre_shift(q[:, 1], z, fy, cy, centre[1])
        u, v = fx * (q[:, 0] + t[0]) / z, fy * (q[:, 1] + t[1]) / z
        return max(float(np.ptp(u)), float(np.ptp(v))), t

    lo = mid - q[:, 2].min() + znear * 1.5  # the nearest point just beyond the near plane
    if at(lo)[0] < target:
        return None  # even as close as allowed the box stays smaller than asked
    hi = max(2.0 * lo, lo + 0.1)
    while at(hi)[0] > target:
        hi *= 2.0
        if hi - mid + q[:, 2].max() > zfar:
            return None
    for _ in range(60):  # size falls with distance: bisect in log distance
        m = float(np.sqrt(lo * hi))
        lo, hi = (m, hi) if at(m)[0] > target else (lo, m)
        if hi / lo < 1.0 + 1e-7:
            break
    _, t = at(float(np.sqrt(lo * hi)))
    if q[:, 2].max() + t[2] >= zfar:
        return None
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    return T


def _inside_convex(points: np.ndarray, hull: np.ndarray) -> np.ndarray:
    """(N,) bool: 2D ``points`` inside (or on) the convex polygon ``hull`` (H,2, counter-clockwise)."""
    if len(hull) < 3:
        return np.zeros(len(points), dtype=bool)
    edge = np.roll(hull, -1, axis=0) - hull
    rel = points[:, None, :] - hull[None, :, :]
    cross = edge[None, :, 0] * rel[:, :, 1] - edge[None, :, 1] * rel[:, :, 0]
    return np.all(cross >= -1e-9, axis=1)


def _segment_blocked(origin: np.ndarray, ends: np.ndarray, tris: np.ndarray, stop: np.ndarray) -> np.ndarray:
    """(N,) bool: the segment from ``origin`` towards ``ends[i]`` meets a triangle (T,3,3) at a
    parameter below ``stop[i]`` (Moeller-Trumbore, triangles in chunks)."""
    d = ends - origin
    blocked = np.zeros(len(ends), dtype=bool)
    for start in range(0, len(tris), 1024):
        a, b, c = (tris[start : start + 1024, k] for k in range(3))
        e1, e2 = b - a, c - a
        p = np.cross(d[:, None, :], e2[None])  # (N,T,3)
        det = np.einsum("ntk,tk->nt", p, e1)
        ok = np.abs(det) > 1e-15
        inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
        s = origin - a  # (T,3)
        u = np.einsum("ntk,tk->nt", p, s) * inv
        qv = np.cross(s, e1)  # (T,3)
        v = np.einsum("nk,tk->nt", d, qv) * inv
        t = np.einsum("tk,tk->t", e2, qv)[None, :] * inv
        hit = ok & (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 0) & (t < stop[:, None])
        blocked |= hit.any(axis=1)
        if blocked.all():
            break
    return blocked


def hand_hidden(
    camera: Camera, hand_vertices: np.ndarray, occluders: Sequence[tuple[np.ndarray, np.ndarray]],
    znear: float = 0.01,
) -> bool:  # fmt: skip
    """True when no hand vertex is seen: each is outside the image or behind the surface of one of
    ``occluders`` ((V,3) world vertices, (F,3) faces) by more than :data:`HIDDEN_TOLERANCE`.

    A vertex outside the projected convex hull of every occluder is seen at once; only when none is
    are up to :data:`HIDDEN_POINTS` of the rest ray-tested against the occluders' triangles. (Hand
    self-occlusion does not matter: a hand vertex that no occluder hides has some hand surface in
    front of it that is seen.)"""
    hand = np.asarray(hand_vertices, dtype=np.float64).reshape(-1, 3)
    hand = hand[in_view(hand, camera, znear)]
    if not len(hand):
        return True
    import cv2

    uv, _ = project(hand, camera.K, camera.world_to_cam)
    covered = np.zeros(len(hand), dtype=bool)
    for vertices, _faces in occluders:
        ouv, oz = project(vertices, camera.K, camera.world_to_cam)
        if np.any(oz <= znear):
            covered[:] = True  # the occluder reaches behind the camera: its projection bounds nothing
            break
        hull = cv2.convexHull(ouv.astype(np.float32)).reshape(-1, 2).astype(np.float64)
        if len(hull) >= 3 and np.cross(hull[1] - hull[0], hull[2] - hull[1]) < 0:
            hull = hull[::-1]
        covered |= _inside_convex(uv, hull)
    if not covered.all():
        return False
    test = subsample(hand, HIDDEN_POINTS)
    origin = camera.center
    dist = np.linalg.norm(test - origin, axis=1)
    stop = np.clip(1.0 - HIDDEN_TOLERANCE / np.maximum(dist, 1e-9), 0.0, 1.0)
    blocked = np.zeros(len(test), dtype=bool)
    test_uv, _ = project(test, camera.K, camera.world_to_cam)
    lo, hi = test_uv.min(axis=0), test_uv.max(axis=0)
    for vertices, faces in occluders:
        faces = np.asarray(faces, dtype=np.int64)
        ouv, oz = project(vertices, camera.K, camera.world_to_cam)
        if np.all(oz > znear):  # only triangles whose projected box meets the tested points' box
            tuv = ouv[faces]
            near = np.all(tuv.max(axis=1) >= lo, axis=1) & np.all(tuv.min(axis=1) <= hi, axis=1)
            faces = faces[near]
        tris = np.asarray(vertices, dtype=np.float64)[faces]
        todo = ~blocked
        blocked[todo] = _segment_blocked(origin, test[todo], tris, stop[todo])
        if blocked.all():
            return True
    return bool(blocked.all())


def frame_grasp(
    sample: Callable[[np.ndarray, np.random.Generator], Camera],
    rng: np.random.Generator,
    box_points: np.ndarray,
    hand_vertices: np.ndarray,
    occluders: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    fill: float,
    tries: int = 10,
    support_height: float | None = None,
    trajectory_points: np.ndarray | None = None,
    znear: float = 0.01,
    zfar: float = 10.0,
) -> Framing:
    """Draw up to ``tries`` cameras (module docstring) and keep the first usable one.

    ``box_points`` (N,3, world) are the points whose projected box is framed (the end frame's hand
    and object); ``hand_vertices`` and ``occluders`` the end frame's hand and the meshes that may hide
    it; ``trajectory_points`` those counted in :attr:`Framing.seen` (default ``box_points``)."""
    box_points = hull_points(box_points)
    center = 0.5 * (box_points.min(axis=0) + box_points.max(axis=0))
    seen_points = box_points if trajectory_points is None else trajectory_points
    fails: dict[str, int] = dict.fromkeys(SKIP_REASONS, 0)
    used = 0
    while used < max(1, int(tries)):
        used += 1
        drawn = sample(center, rng)
        world_to_cam = place_camera(
            drawn.world_to_cam[:3, :3], drawn.K, drawn.width, drawn.height, box_points, fill, znear, zfar
        )
        if world_to_cam is None:
            fails["out_of_view"] += 1
            continue
        camera = Camera(drawn.K, world_to_cam, drawn.width, drawn.height)
        if support_height is not None and camera.center[1] < support_height + TABLE_CLEARANCE:
            fails["below_table"] += 1
            continue
        if hand_hidden(camera, hand_vertices, occluders, znear):
            fails["hand_hidden"] += 1
            continue
        seen = float(np.mean(in_view(seen_points, camera, znear, zfar))) if len(seen_points) else 0.0
        return Framing(camera, used, seen, fill=box_share(box_points, camera))
    return Framing(None, used, 0.0, skip=max(SKIP_REASONS, key=lambda r: fails[r]))


def frame_views(
    sample: Callable[[np.ndarray, np.random.Generator], Camera],
    rng: Callable[[int], np.random.Generator],
    views: int,
    object_vertices: np.ndarray,
    object_faces: np.ndarray,
    object_poses: Sequence[np.ndarray],
    hand_vertices: Sequence[np.ndarray],
    *,
    fill: float,
    tries: int = 10,
    support_height: float | None = None,
    occluders: Sequence[tuple[np.ndarray, np.ndarray]] = (),
    frame: int = -1,
    znear: float = 0.01,
    zfar: float = 10.0,
) -> dict[int, Framing]:
    """One :class:`Framing` per view of a trajectory (skipped views have ``camera=None`` and a
    ``skip`` reason): the render stage's one call.

    ``object_poses`` and ``hand_vertices`` are per frame, in frame order; ``frame`` is the one framed
    (default the end frame, the grasp; with ``hoigen grasp --lift`` the lifted end); ``rng(view)``
    is the view's seeded generator; ``occluders`` are more world-frame meshes ((V,3), (F,3)) at that
    frame that may hide the hand, besides the grasped object (e.g. objects standing around it)."""
    end_object = _posed(object_vertices, object_poses[frame])
    end_hand = np.asarray(hand_vertices[frame], dtype=np.float64)
    box_points = np.concatenate([hull_points(end_object), end_hand])
    local = subsample(object_vertices, TRAJECTORY_POINTS[0])
    distinct = {np.asarray(p, dtype=np.float64).tobytes(): p for p in object_poses}
    parts = [_posed(local, p) for p in distinct.values()]
    parts += [subsample(v, TRAJECTORY_POINTS[1]) for v in hand_vertices]
    trajectory = np.concatenate(parts, axis=0)
    hiding = [(end_object, np.asarray(object_faces)), *occluders]
    return {
        view: frame_grasp(
            sample, rng(view), box_points, end_hand, hiding, fill=fill, tries=tries,
            support_height=support_height, trajectory_points=trajectory, znear=znear, zfar=zfar,
        )  # fmt: skip
        for view in range(int(views))
    }
