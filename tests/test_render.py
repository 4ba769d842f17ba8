"""Rendering layer: cameras, skeleton drawing and the Renderer's maps tied back to the geometry."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from hoigen.errors import HoigenError
from hoigen.hand.skeleton import HAND_BONES, SKELETON_PALETTE, draw_skeleton, joint_color
from hoigen.render.cameras import Camera, intrinsics, look_at, pixel_rays, project, sample_camera
from hoigen.render.renderer import Renderer, SceneSpec

SIZE = 96


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _nocs_from_mesh(mesh: trimesh.Trimesh) -> np.ndarray:
    lo, hi = mesh.bounds
    s = 1.0 / np.linalg.norm(hi - lo)
    T = np.eye(4)
    T[:3, :3] *= s
    T[:3, 3] = -s * (lo + hi) / 2.0
    return T


def _scene(seed: int, obj: trimesh.Trimesh | None = None, hand_shift: float = 0.45) -> SceneSpec:
    """A random object near the origin, a capsule "hand" part-way toward the camera, 21 joints."""
    rng = np.random.default_rng(seed)
    obj = trimesh.creation.icosphere(subdivisions=2, radius=0.1) if obj is None else obj
    pose = np.eye(4)
    pose[:3, :3] = _rotation(rng)
    pose[:3, 3] = rng.uniform(-0.02, 0.02, 3)
    center = pose[:3, 3]
    cam = sample_camera(center, rng, SIZE, SIZE)
    to_cam = cam.center - center
    right = cam.world_to_cam[0, :3]
    hand_center = center + hand_shift * to_cam + 0.06 * right
    hand = trimesh.creation.capsule(height=0.1, radius=0.025, count=[12, 8])
    Rh = _rotation(rng)
    hand_vertices = hand.vertices @ Rh.T + hand_center
    joints = hand_center + rng.uniform(-0.04, 0.04, (21, 3))
    return SceneSpec(hand_vertices, np.asarray(hand.faces), obj, pose, _nocs_from_mesh(obj), cam, joints)


def _cached(width: int, height: int) -> Renderer:
    """A renderer that is never closed: closing one pyrender EGL renderer ends the shared display,
    which would break every other live renderer (the render stage keeps them the same way)."""
    from hoigen.render.stage import _renderer

    return _renderer(width, height)


@pytest.fixture(scope="module")
def renderer():
    return _cached(SIZE, SIZE)


def _backproject(spec: SceneSpec, depth_m: np.ndarray, mask: np.ndarray) -> np.ndarray:
    cam = spec.camera
    rays = pixel_rays(cam.K, cam.width, cam.height)[mask]
    p_cam = rays * depth_m[mask][:, None]
    R, t = cam.world_to_cam[:3, :3], cam.world_to_cam[:3, 3]
    return (p_cam - t) @ R


def _closest(mesh: trimesh.Trimesh, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Closest surface points, distances and face indices by brute force (no rtree needed)."""
    n_faces = len(mesh.faces)
    tris = np.tile(mesh.triangles, (len(points), 1, 1))
    pts = np.repeat(points, n_faces, axis=0)
    cand = trimesh.triangles.closest_point(tris, pts).reshape(len(points), n_faces, 3)
    dist = np.linalg.norm(cand - points[:, None], axis=2)
    face = dist.argmin(axis=1)
    rows = np.arange(len(points))
    return cand[rows, face], dist[rows, face], face


def _to_mesh(spec: SceneSpec, points_world: np.ndarray) -> np.ndarray:
    inv = np.linalg.inv(spec.object_pose)
    return points_world @ inv[:3, :3].T + inv[:3, 3]


# ---------------------------------------------------------------------------- cameras
def test_intrinsics_and_look_at_conventions():
    K = intrinsics(64, 48, 60.0)
    assert K[0, 2] == pytest.approx(31.5) and K[1, 2] == pytest.approx(23.5)
    # a ray at half the horizontal fov lands on the image's right edge u = W - 0.5
    T = look_at(np.array([0.0, 0.0, 1.0]), np.zeros(3))
    edge = np.array([[np.tan(np.deg2rad(30.0)), 0.0, 0.0]])
    uv, z = project(edge, K, T)
    assert uv[0, 0] == pytest.approx(63.5) and z[0] == pytest.approx(1.0)
    # world up (+y) is image up (smaller v); world +x seen from +z is image right
    uv, _ = project(np.array([[0, 0, 0], [0, 0.1, 0], [0.1, 0, 0]], dtype=float), K, T)
    assert uv[0] == pytest.approx([31.5, 23.5])
    assert uv[1, 1] < uv[0, 1] and uv[2, 0] > uv[0, 0]
    assert np.allclose(T[:3, :3] @ T[:3, :3].T, np.eye(3))
    # looking straight down still gives a valid rotation
    down = look_at(np.array([0.0, 1.0, 0.0]), np.zeros(3))
    assert np.allclose(down[:3, :3] @ down[:3, :3].T, np.eye(3)) and np.linalg.det(down[:3, :3]) > 0
    with pytest.raises(HoigenError):
        intrinsics(64, 64, 0.0)


def test_sample_camera_ranges_and_determinism():
    center = np.array([0.1, 0.2, -0.1])
    a = sample_camera(center, np.random.default_rng(3), 64, 64)
    b = sample_camera(center, np.random.default_rng(3), 64, 64)
    assert np.array_equal(a.K, b.K) and np.array_equal(a.world_to_cam, b.world_to_cam)
    for seed in range(20):
        cam = sample_camera(center, np.random.default_rng(seed), 64, 64)
        offset = cam.center - center
        d = np.linalg.norm(offset)
        assert 0.45 <= d <= 0.7
        assert 10.0 - 1e-6 <= np.rad2deg(np.arcsin(offset[1] / d)) <= 60.0 + 1e-6
        uv, z = project(center[None], cam.K, cam.world_to_cam)
        assert uv[0] == pytest.approx([31.5, 31.5]) and z[0] == pytest.approx(d)
    cam2 = Camera.from_dict(a.to_dict())
    assert np.array_equal(cam2.K, a.K) and cam2.width == 64


# ---------------------------------------------------------------------------- skeleton
def test_skeleton_drawing():
    assert len(HAND_BONES) == 20 and len(set(HAND_BONES)) == 20
    joints = np.stack([np.linspace(10, 50, 21), np.linspace(12, 52, 21)], axis=1)
    vis = np.ones(21, dtype=bool)
    vis[8] = False
    img = draw_skeleton(joints, vis, 64, 64)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    u, v = np.round(joints[4]).astype(int)
    assert tuple(img[v, u]) == SKELETON_PALETTE["thumb"] == joint_color(4)
    assert tuple(draw_skeleton(joints, None, 64, 64)[52, 50]) == SKELETON_PALETTE["pinky"]
    # nothing drawn when no joint is visible; the hidden index tip leaves its pixel dark on its own
    assert draw_skeleton(joints, np.zeros(21, bool), 64, 64).max() == 0
    lone = np.full((21, 2), 30.0)
    lone[8] = (5.0, 5.0)
    only_tip = np.zeros(21, bool)
    only_tip[8] = True
    assert draw_skeleton(lone, ~only_tip, 64, 64)[5, 5].max() == 0
    assert tuple(draw_skeleton(lone, only_tip, 64, 64)[5, 5]) == SKELETON_PALETTE["index"]


# ---------------------------------------------------------------------------- renderer
def test_pixel_convention_matches_project():
    """A square facing the camera covers exactly the pixels whose centres project inside it."""
    box = trimesh.creation.box(extents=(0.1, 0.1, 0.01))
    K = intrinsics(64, 64, 50.0)
    cam = Camera(K, look_at(np.array([0.013, 0.007, 0.5]), np.array([0.013, 0.007, 0.0])), 64, 64)
    spec = SceneSpec(
        hand_vertices=np.array([[0, 0, 5.0], [0.001, 0, 5.0], [0, 0.001, 5.0]]),  # behind the camera
        hand_faces=np.array([[0, 1, 2]]),
        object_mesh=box,
        object_pose=np.eye(4),
        nocs_from_mesh=_nocs_from_mesh(box),
        camera=cam,
        joints3d=np.zeros((21, 3)),
    )
    res = _cached(64, 64).render(spec)
    corners, _ = project(np.array([[-0.05, -0.05, 0.005], [0.05, 0.05, 0.005]]), K, cam.world_to_cam)
    (u0, v1), (u1, v0) = corners  # world +y is image up
    u, v = np.meshgrid(np.arange(64), np.arange(64))
    expect = (u > u0) & (u < u1) & (v > v0) & (v < v1)
    assert not np.any(np.isclose(u0 % 1, 0.5)) and res.mask_object.sum() > 100
    assert np.array_equal(res.mask_object, expect)
    assert not res.mask_hand.any()
    # flat face toward the camera: normal (0,0,-1) in the camera frame -> RGB (128,128,255)
    assert np.all(np.abs(res.normal[expect].astype(int) - [128, 128, 255]) <= 1)


def test_depth_nocs_normals_tie_to_geometry(renderer):
    spec = _scene(0)
    res = renderer.render(spec)
    m = res.mask_object
    assert m.sum() > 200 and res.mask_hand.sum() > 20
    assert res.depth.dtype == np.uint16 and res.nocs.dtype == np.uint8 and res.normal.dtype == np.uint8
    # depth back-projects onto the object surface
    world = _backproject(spec, res.depth_m, m)
    local = _to_mesh(spec, world)
    closest, dist, _ = _closest(spec.object_mesh, local)
    assert dist.max() < 1e-4
    assert np.all(np.abs(res.depth[m] / 1000.0 - res.depth_m[m]) <= 0.0005 + 1e-7)
    assert np.all(res.depth[res.seg == 0] == 0) and np.all(res.depth_m[res.seg == 0] == 0)
    # NOCS equals the canonical coordinate of that surface point
    T = spec.nocs_from_mesh
    nocs_true = closest @ T[:3, :3].T + T[:3, 3]
    nocs = res.nocs[m] / 255.0 - 0.5
    assert np.abs(nocs - nocs_true).max() <= 0.5 / 255 + 1e-3
    assert np.all(res.nocs[~m] == 0)
    # normals: unit length after decoding, facing the camera, and close to the sphere's normal
    covered = res.seg > 0
    n = 1.0 - 2.0 * res.normal[covered] / 255.0
    assert np.all(np.abs(np.linalg.norm(n, axis=1) - 1.0) < 0.02)
    rays = pixel_rays(spec.camera.K, SIZE, SIZE)[covered]
    assert np.all(np.sum(n * rays, axis=1) < 0)
    assert np.all(res.normal[~covered] == 0)
    radial = (local / np.linalg.norm(local, axis=1, keepdims=True)) @ spec.object_pose[:3, :3].T
    radial_cam = radial @ spec.camera.world_to_cam[:3, :3].T
    n_obj = 1.0 - 2.0 * res.normal[m] / 255.0
    cos = np.sum(n_obj / np.linalg.norm(n_obj, axis=1, keepdims=True) * radial_cam, axis=1)
    assert np.median(cos) > 0.999 and cos.min() > 0.97  # icosphere: smooth normals ~ radial


def test_box_normals_are_face_normals(renderer):
    box = trimesh.creation.box(extents=(0.08, 0.05, 0.06))
    spec = _scene(1, obj=box, hand_shift=3.0)  # hand behind the camera: the box alone
    res = renderer.render(spec)
    m = res.mask_object
    local = _to_mesh(spec, _backproject(spec, res.depth_m, m))
    _, dist, tri = _closest(box, local)
    assert dist.max() < 1e-4
    n_true = box.face_normals[tri] @ spec.object_pose[:3, :3].T @ spec.camera.world_to_cam[:3, :3].T
    n = 1.0 - 2.0 * res.normal[m] / 255.0
    # away from the edges (where the closest face may be the neighbour) normals are the face normals
    ratio = np.sort(np.abs(local) / (np.array([0.08, 0.05, 0.06]) / 2), axis=1)
    inner = ratio[:, 1] < 0.8
    assert inner.sum() > 50
    assert np.abs(n[inner] - n_true[inner]).max() < 0.01


def test_joints_projection_and_visibility(renderer):
    spec = _scene(2, hand_shift=3.0)  # the capsule "hand" out of the way: occlusion by the object only
    cam = spec.camera
    obj_center = spec.object_pose[:3, 3]
    view = obj_center - cam.center
    view /= np.linalg.norm(view)
    spec.joints3d[5] = obj_center + 0.15 * view  # behind the object
    spec.joints3d[6] = obj_center - 0.15 * view  # in front of the object
    spec.joints3d[7] = cam.center - 0.1 * view  # behind the camera
    res = renderer.render(spec)
    uv, _ = project(spec.joints3d, cam.K, cam.world_to_cam)
    assert np.allclose(res.joints2d, uv)
    assert not res.joints_visible[5] and res.joints_visible[6] and not res.joints_visible[7]
    # the skeleton image draws exactly the visible joints
    assert np.array_equal(res.skeleton, draw_skeleton(res.joints2d, res.joints_visible, SIZE, SIZE))
    u, v = np.round(res.joints2d[6]).astype(int)
    assert tuple(res.skeleton[v, u]) == joint_color(6)


def test_seg_follows_depth_order_and_renderer_is_reused(renderer):
    context = renderer.context
    with_hand = _scene(4)
    without = _scene(4, hand_shift=3.0)  # same scene, the hand moved behind the camera
    a = renderer.render(with_hand)
    b = renderer.render(without)
    hidden = a.mask_hand & b.mask_object
    assert hidden.sum() > 10  # the hand hides part of the object
    assert np.all(a.depth_m[hidden] < b.depth_m[hidden])
    assert np.array_equal(a.mask_object, b.mask_object & ~a.mask_hand)
    assert np.array_equal(a.depth_m[a.mask_object], b.depth_m[a.mask_object])
    # shade silhouette equals seg != 0
    for res in (a, b):
        assert np.array_equal(res.shade.max(axis=2) > 0, res.seg != 0)
    # one GL context, reused; re-rendering a scene reproduces it exactly (object cache included)
    other = renderer.render(_scene(5, obj=trimesh.creation.box(extents=(0.05, 0.1, 0.04))))
    again = renderer.render(with_hand)
    assert renderer.context is context
    assert not np.array_equal(other.seg, a.seg)
    for name in ("normal", "seg", "depth", "nocs", "shade", "skeleton"):
        assert np.array_equal(getattr(a, name), getattr(again, name)), name


def test_supersample_keeps_point_maps_and_smooths_normals(renderer):
    spec = _scene(6)
    one = renderer.render(spec)
    two = renderer.render(spec, supersample=2)
    for name in ("seg", "depth", "nocs", "joints_visible"):
        assert np.array_equal(getattr(one, name), getattr(two, name)), name
    interior = one.seg > 0
    for _ in range(2):  # two pixels away from any silhouette
        core = interior[:-2, 1:-1] & interior[2:, 1:-1] & interior[1:-1, :-2] & interior[1:-1, 2:]
        interior[1:-1, 1:-1] &= core
    interior &= (one.seg == np.roll(one.seg, 2, 0)) & (one.seg == np.roll(one.seg, 2, 1))
    diff = np.abs(one.normal[interior].astype(int) - two.normal[interior].astype(int))
    assert np.percentile(diff, 95) <= 6
    edge = (one.seg > 0) & ~interior
    assert np.any(two.normal[edge] != one.normal[edge])


def test_renderer_rejects_bad_input(renderer):
    spec = _scene(7)
    spec.camera = Camera(spec.camera.K, spec.camera.world_to_cam, 32, 32)
    with pytest.raises(HoigenError):
        renderer.render(spec)
    with pytest.raises(HoigenError):
        renderer.render(_scene(7), supersample=0)


# ---------------------------------------------------------------------------- amodal masks, boxes
def test_amodal_masks_and_boxes(renderer):
    from hoigen.render.annotate import mask_bbox

    both = renderer.render(_scene(4))
    alone = renderer.render(_scene(4, hand_shift=3.0))  # the same object without the hand
    assert np.array_equal(both.mask_object_full, alone.mask_object)  # amodal = the object rendered alone
    assert np.all(both.mask_object_full >= both.mask_object) and np.all(both.mask_hand_full >= both.mask_hand)
    hidden = both.mask_object_full & ~both.mask_object
    assert hidden.sum() > 10 and np.all(both.mask_hand[hidden])
    assert np.array_equal(both.mask_hand_full | both.mask_object_full, both.seg > 0)
    amodal = both.amodal
    assert amodal.dtype == np.uint8 and set(np.unique(amodal)) <= {0, 1, 2, 3}
    assert np.array_equal(amodal & 1 > 0, both.mask_hand_full) and np.array_equal(amodal & 2 > 0, both.mask_object_full)
    boxes = both.bboxes()
    for name, mask in (("hand", both.mask_hand_full), ("object_visible", both.mask_object)):
        x0, y0, x1, y1 = boxes[name]
        rows, cols = np.nonzero(mask)
        assert (x0, y0, x1, y1) == (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
        assert mask[y0:y1, x0:x1].sum() == mask.sum()
    ox0, oy0, ox1, oy1 = boxes["object"]
    vx0, vy0, vx1, vy1 = boxes["object_visible"]
    assert ox0 <= vx0 and oy0 <= vy0 and ox1 >= vx1 and oy1 >= vy1
    assert mask_bbox(np.zeros((4, 4), bool)) is None
    assert not both.empty


# ---------------------------------------------------------------------------- self-occlusion
def _hand_view(renderer_128, hand, curl: float, side: float, joints_override=None):
    out = hand.forward(np.zeros(3), hand.curl_pose(curl), np.zeros(10), np.zeros(3))
    verts, joints = out.vertices[0], out.joints[0].copy()
    if joints_override is not None:
        joints = joints_override(joints)
    palm = np.cross(joints[5] - joints[0], joints[17] - joints[0])  # toward the palm for a right hand
    palm /= np.linalg.norm(palm)
    center = verts.mean(axis=0)
    up = np.cross(palm, [1.0, 0.0, 0.0]) if abs(palm[0]) < 0.9 else np.cross(palm, [0.0, 0.0, 1.0])
    cam = Camera(intrinsics(128, 128, 40.0), look_at(center + side * 0.4 * palm, center, up=tuple(up)), 128, 128)
    far = np.eye(4)
    far[:3, 3] = center - 5.0 * side * palm  # the object far behind the hand: no object occlusion
    box = trimesh.creation.box(extents=(0.01, 0.01, 0.01))
    res = renderer_128.render(SceneSpec(verts, hand.faces, box, far, _nocs_from_mesh(box), cam, joints))
    return res, joints, cam


def test_self_occlusion_fist_and_flat_hand():
    from hoigen.hand import load_hand

    hand = load_hand("right")
    tips, knuckles = [4, 8, 12, 16, 20], [5, 9, 13, 17]
    r = _cached(128, 128)
    dorsal, _, _ = _hand_view(r, hand, 1.0, -1.0)  # fist seen from the back of the hand
    assert dorsal.joints_self_occluded[tips].all()  # the curled fingertips are under the fingers
    assert not dorsal.joints_self_occluded[[0, *knuckles]].any()  # wrist and knuckles on top
    palmar, _, _ = _hand_view(r, hand, 1.0, 1.0)  # fist seen from the palm
    assert not palmar.joints_self_occluded[tips[1:]].any()  # the fingertips press into the palm, seen
    assert palmar.joints_self_occluded[knuckles].sum() >= 3  # the knuckles are behind the curled fingers
    for side in (-1.0, 1.0):  # a flat hand hides none of its finger joints from either side
        flat, _, _ = _hand_view(r, hand, 0.0, side)
        assert not flat.joints_self_occluded[2:].any()
        assert np.array_equal(flat.joints_visible, ~flat.joints_self_occluded)
    # a joint moved 3 cm behind the flat hand (seen from the back) is hidden by it
    def behind(joints: np.ndarray) -> np.ndarray:
        palm = np.cross(joints[5] - joints[0], joints[17] - joints[0])
        joints[10] = joints[9] + 0.03 * palm / np.linalg.norm(palm)
        return joints

    moved, _, _ = _hand_view(r, hand, 0.0, -1.0, behind)
    assert moved.joints_self_occluded[10] and not moved.joints_visible[10]
    assert tuple(moved.skeleton[tuple(np.round(moved.joints2d[10][::-1]).astype(int))]) != (0, 0, 0)


# ---------------------------------------------------------------------------- normals vs depth
def test_normals_agree_with_depth_gradient():
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.1)
    size = 128
    cam = Camera(intrinsics(size, size, 45.0), look_at(np.array([0.05, 0.2, 0.4]), np.zeros(3)), size, size)
    spec = SceneSpec(np.array([[0, 0, 5.0], [0.001, 0, 5.0], [0, 0.001, 5.0]]), np.array([[0, 1, 2]]), sphere,
                     np.eye(4), _nocs_from_mesh(sphere), cam, np.zeros((21, 3)))
    res = _cached(size, size).render(spec)
    points = pixel_rays(cam.K, size, size) * res.depth_m[..., None]  # camera frame
    m = res.mask_object
    inner = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    du = points[1:-1, 2:] - points[1:-1, :-2]
    dv = points[2:, 1:-1] - points[:-2, 1:-1]
    n_depth = np.cross(dv, du)[inner]  # v down x u right = -z: toward the camera, as the map's normals
    n_depth /= np.linalg.norm(n_depth, axis=1, keepdims=True)
    n_map = 1.0 - 2.0 * res.normal[1:-1, 1:-1][inner] / 255.0
    n_map /= np.linalg.norm(n_map, axis=1, keepdims=True)
    angle = np.rad2deg(np.arccos(np.clip(np.sum(n_depth * n_map, axis=1), -1, 1)))
    assert inner.sum() > 1000
    assert angle.mean() < 2.0 and np.percentile(angle, 95) < 5.0


# ---------------------------------------------------------------------------- presets, framing
def test_camera_presets():
    from hoigen.render.cameras import CAMERA_PRESETS, camera_sampler, camera_size, preset_intrinsics

    K, w, h = preset_intrinsics("nocs-camera")
    assert (w, h) == (640, 480) and np.allclose(K, [[577.5, 0, 319.5], [0, 577.5, 239.5], [0, 0, 1]])
    K, _, _ = preset_intrinsics("nocs-real275")
    assert K[0, 0] == 591.0125 and K[1, 2] == 244.11084
    assert camera_size("random", None) == (512, 512) and camera_size("dexycb", None) == (640, 480)
    assert camera_size("dexycb", 256) == (256, 256)
    # --size S: centre square crop of 640x480 scaled to S; a point keeps its place in the crop
    native, _, _ = preset_intrinsics("nocs-real275")
    square, w, h = preset_intrinsics("nocs-real275", 96)
    T = look_at(np.array([0.0, 0.0, 0.5]), np.zeros(3))
    pts = np.array([[0.02, -0.03, 0.01], [-0.05, 0.04, 0.0]])
    uv_native, _ = project(pts, native, T)
    uv_square, _ = project(pts, square, T)
    s = 96 / 480
    assert np.allclose(uv_square, s * (uv_native - [80.0, 0.0] + 0.5) - 0.5)
    # the same seed gives the same viewpoint whatever the intrinsics
    a = camera_sampler("random", 64)(np.zeros(3), np.random.default_rng(5))
    b = camera_sampler("dexycb", None)(np.zeros(3), np.random.default_rng(5))
    assert np.allclose(a.world_to_cam, b.world_to_cam) and b.width == 640 and b.height == 480
    assert np.allclose(b.K[0, 0], CAMERA_PRESETS["dexycb"].fx)
    with pytest.raises(HoigenError):
        preset_intrinsics("kinect")
