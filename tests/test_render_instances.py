"""Multi-instance rendering: the grasped object, a table and distractors tied back to their meshes."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from hoigen.data.contract import SEG_HAND, SEG_OBJECT, SEG_TABLE, amodal_bit, amodal_masks, distractor_seg_id
from hoigen.errors import HoigenError
from hoigen.render.annotate import mask_bbox
from hoigen.render.cameras import Camera, intrinsics, look_at, pixel_rays, project
from hoigen.render.renderer import Instance, SceneSpec

SIZE = 96
FAR = np.array([[0, 0, 5.0], [0.001, 0, 5.0], [0, 0.001, 5.0]])  # a tiny "hand" behind the camera


def _renderer():
    from hoigen.render.stage import _renderer as cached  # never closed (EGL display is shared)

    return cached(SIZE, SIZE)


def _pose(yaw: float, t: tuple[float, float, float]) -> np.ndarray:
    T = np.eye(4)
    c, s = np.cos(yaw), np.sin(yaw)
    T[:3, :3] = [[c, 0, s], [0, 1, 0], [-s, 0, c]]
    T[:3, 3] = t
    return T


def _nocs(mesh: trimesh.Trimesh) -> np.ndarray:
    lo, hi = mesh.bounds
    s = 1.0 / np.linalg.norm(hi - lo)
    T = np.eye(4)
    T[:3, :3] *= s
    T[:3, 3] = -s * (lo + hi) / 2.0
    return T


def _world(mesh: trimesh.Trimesh, pose: np.ndarray) -> trimesh.Trimesh:
    return trimesh.Trimesh(mesh.vertices @ pose[:3, :3].T + pose[:3, 3], mesh.faces, process=False)


def _closest(mesh: trimesh.Trimesh, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Closest surface points and distances by brute force over the faces (no rtree needed)."""
    n = len(mesh.faces)
    cand = trimesh.triangles.closest_point(
        np.tile(mesh.triangles, (len(points), 1, 1)), np.repeat(points, n, axis=0)
    ).reshape(len(points), n, 3)
    dist = np.linalg.norm(cand - points[:, None], axis=2)
    best = dist.argmin(axis=1)
    rows = np.arange(len(points))
    return cand[rows, best], dist[rows, best]


def _backproject(cam: Camera, depth_m: np.ndarray, mask: np.ndarray) -> np.ndarray:
    p_cam = pixel_rays(cam.K, cam.width, cam.height)[mask] * depth_m[mask][:, None]
    R, t = cam.world_to_cam[:3, :3], cam.world_to_cam[:3, 3]
    return (p_cam - t) @ R


def _scene() -> tuple[SceneSpec, dict[int, tuple[trimesh.Trimesh, np.ndarray, np.ndarray | None]]]:
    """Grasped sphere on a table, two boxes (one mesh, two instances) beside it, a capsule "hand"."""
    cam = Camera(intrinsics(SIZE, SIZE, 60.0), look_at(np.array([0.05, 0.3, 0.42]), np.array([0, -0.06, 0])),
                 SIZE, SIZE)
    sphere = trimesh.creation.icosphere(subdivisions=2, radius=0.05)
    table = trimesh.creation.box(extents=(0.6, 0.02, 0.5))
    box = trimesh.creation.box(extents=(0.06, 0.09, 0.05))
    obj_pose = _pose(0.3, (0.0, -0.05, 0.0))
    table_pose = _pose(0.0, (0.0, -0.11, 0.0))
    d0, d1 = _pose(0.5, (0.12, -0.055, -0.02)), _pose(-0.7, (-0.11, -0.055, 0.03))
    hand = trimesh.creation.capsule(height=0.08, radius=0.02, count=[12, 8])
    hand_v = hand.vertices @ _pose(1.0, (0, 0, 0))[:3, :3].T + [0.02, 0.02, 0.09]
    joints = np.tile([0.02, 0.02, 0.09], (21, 1))
    id0, id1 = distractor_seg_id(0), distractor_seg_id(5)  # id 9: amodal needs 16 bits
    extras = (
        Instance(table, table_pose, SEG_TABLE, None, mesh_key="table"),
        Instance(box, d0, id0, _nocs(box), mesh_key="box"),
        Instance(box, d1, id1, _nocs(box), mesh_key="box"),
    )
    spec = SceneSpec(hand_v, np.asarray(hand.faces), sphere, obj_pose, _nocs(sphere), cam, joints,
                     mesh_key="sphere", extras=extras)
    meshes = {SEG_OBJECT: (sphere, obj_pose, _nocs(sphere)), SEG_TABLE: (table, table_pose, None),
              id0: (box, d0, _nocs(box)), id1: (box, d1, _nocs(box)),
              SEG_HAND: (trimesh.Trimesh(hand_v, hand.faces, process=False), np.eye(4), None)}
    return spec, meshes


@pytest.fixture(scope="module")
def scene():
    spec, meshes = _scene()
    return spec, meshes, _renderer().render(spec)


def test_every_pixel_lands_on_the_instance_seg_names(scene):
    spec, meshes, res = scene
    cam = spec.camera
    assert set(np.unique(res.seg)) == {0, *meshes}  # every instance is seen
    assert np.array_equal(res.depth_m > 0, res.seg > 0)
    for seg_id, (mesh, pose, nocs_T) in meshes.items():
        m = res.seg == seg_id
        world = _backproject(cam, res.depth_m, m)
        inv = np.linalg.inv(pose)
        local = world @ inv[:3, :3].T + inv[:3, 3]
        closest, dist = _closest(mesh, local)
        assert m.sum() > 20 and dist.max() < 1e-4, seg_id
        if nocs_T is None:  # hand and table carry no NOCS
            assert np.all(res.nocs[m] == 0), seg_id
        else:  # NOCS = nocs_from_mesh of the back-projected point, per instance
            want = closest @ nocs_T[:3, :3].T + nocs_T[:3, 3]
            assert np.abs(res.nocs[m] / 255.0 - 0.5 - want).max() <= 0.5 / 255 + 1e-3, seg_id
    # the two instances of one mesh get different NOCS images of the same canonical box
    assert np.all(res.nocs[res.seg == 0] == 0)


def test_amodal_masks_are_each_mesh_alone_and_nearest_wins(scene):
    spec, meshes, res = scene
    r = _renderer()
    alone = {}
    for seg_id, (mesh, pose, nocs_T) in meshes.items():
        if seg_id == SEG_HAND:
            far = np.eye(4)
            far[:3, 3] = [0, 0, 5.0]
            one = r.render(SceneSpec(spec.hand_vertices, spec.hand_faces, mesh, far, np.eye(4), spec.camera,
                                     spec.joints3d))
            alone[seg_id] = (one.mask_hand, one.depth_m)
        else:
            one = r.render(SceneSpec(FAR, np.array([[0, 1, 2]]), mesh, pose,
                                     np.eye(4) if nocs_T is None else nocs_T, spec.camera, spec.joints3d))
            alone[seg_id] = (one.mask_object, one.depth_m)
        assert np.array_equal(res.full_masks[seg_id], alone[seg_id][0]), seg_id
    assert np.array_equal(res.mask_hand_full, res.full_masks[SEG_HAND])
    assert np.array_equal(res.mask_object_full, res.full_masks[SEG_OBJECT])
    # visible = the nearest of the instances covering the pixel, with its depth
    stack = np.stack([np.where(alone[k][0], alone[k][1], np.inf) for k in meshes])
    ids = np.array(list(meshes))
    covered = np.isfinite(stack).any(axis=0)
    assert np.array_equal(covered, res.seg > 0)
    assert np.array_equal(ids[np.argmin(stack, axis=0)][covered], res.seg[covered])
    assert np.array_equal(stack.min(axis=0)[covered], res.depth_m[covered])
    overlap = (np.isfinite(stack).sum(axis=0) > 1).sum()
    assert overlap > 100  # the test scene really has occlusions (objects over the table, the hand)
    # amodal.png: one bit per instance, 16 bits because of seg id 9, decoded back by the contract
    amodal = res.amodal
    assert amodal.dtype == np.uint16
    decoded = amodal_masks(amodal)
    assert set(decoded) == set(meshes)
    for seg_id in meshes:
        assert np.array_equal(decoded[seg_id], res.full_masks[seg_id])
        assert np.array_equal((amodal & amodal_bit(seg_id)) > 0, res.full_masks[seg_id])


def test_instance_boxes_and_counts(scene):
    _, meshes, res = scene
    boxes = res.instance_boxes()
    assert set(boxes) == set(meshes)
    for seg_id, box in boxes.items():
        assert box["bbox"] == mask_bbox(res.full_masks[seg_id])
        assert box["bbox_visible"] == mask_bbox(res.seg == seg_id)
        assert box["px_visible"] == int((res.seg == seg_id).sum()) <= box["px_full"]
        assert box["px_full"] == int(res.full_masks[seg_id].sum())
    assert boxes[SEG_HAND]["bbox"] == res.bboxes()["hand"]
    assert boxes[SEG_OBJECT]["bbox_visible"] == res.bboxes()["object_visible"]


def test_distractor_and_table_hide_joints():
    spec, meshes = _scene()
    cam = spec.camera
    box, pose, _ = meshes[distractor_seg_id(0)]
    centre = pose[:3, 3]
    view = centre - cam.center
    view /= np.linalg.norm(view)
    joints = spec.joints3d.copy()
    joints[3] = centre + 0.1 * view  # behind the distractor
    joints[4] = centre - 0.1 * view  # in front of it
    joints[7] = np.array([-0.2, -0.16, 0.1])  # under the table top
    spec.joints3d = joints
    res = _renderer().render(spec)
    uv, _ = project(joints, cam.K, cam.world_to_cam)
    assert np.all((uv[[3, 4, 7]] > 0) & (uv[[3, 4, 7]] < SIZE - 1))
    assert not res.joints_visible[3] and res.joints_visible[4] and not res.joints_visible[7]


def test_extras_are_checked():
    spec, _ = _scene()
    r = _renderer()
    table = spec.extras[0]
    for bad in ((Instance(table.mesh, table.pose, SEG_OBJECT),),  # taken by the grasped object
                (table, Instance(table.mesh, table.pose, SEG_TABLE)),  # twice
                (Instance(table.mesh, table.pose, 99),)):  # no amodal bit
        spec.extras = bad
        with pytest.raises(HoigenError, match="seg id"):
            r.render(spec)
    # fewer extras after more: the removed instances leave the scene
    spec.extras = ()
    res = r.render(spec)
    assert set(np.unique(res.seg)) <= {0, SEG_HAND, SEG_OBJECT} and set(res.full_masks) == {SEG_HAND, SEG_OBJECT}
    assert res.amodal.dtype == np.uint8
