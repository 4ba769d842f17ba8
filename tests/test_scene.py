"""The scene geometry (hoigen.render.placement): table, convex footprints, the hand's sweep, distractor placement."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from hoigen.data.contract import SEG_TABLE
from hoigen.objects import procedural_objects
from hoigen.objects.geometry import contains, sample_surface
from hoigen.render.placement import (
    CLEARANCE,
    Shape,
    Table,
    footprint,
    hand_sweep,
    place_distractors,
    polygon_distance,
    resting_pose,
    support_height,
    table_under,
    transform,
)

SQUARE = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])


def test_polygon_distance() -> None:
    assert polygon_distance(SQUARE, SQUARE + [1.5, 0.0]) == pytest.approx(0.5)
    assert polygon_distance(SQUARE, SQUARE + [0.5, 0.5]) == 0.0  # overlap
    assert polygon_distance(SQUARE, SQUARE + [2.0, 2.0]) == pytest.approx(np.sqrt(2.0))  # corner to corner
    tri = np.array([[0.0, 3.0], [1.0, 3.0], [0.5, 4.0]])
    assert polygon_distance(SQUARE, tri) == pytest.approx(2.0)
    assert polygon_distance(SQUARE, SQUARE + [1.0, 0.0]) == 0.0  # touching


def test_footprint_of_a_cylinder_is_its_disc() -> None:
    cyl = trimesh.creation.cylinder(radius=0.05, height=0.2, sections=64)
    cyl.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0]))  # axis along y
    foot = footprint(cyl.vertices)
    area = 0.5 * abs(np.dot(foot[:, 0], np.roll(foot[:, 1], 1)) - np.dot(foot[:, 1], np.roll(foot[:, 0], 1)))
    assert area == pytest.approx(np.pi * 0.05**2, rel=0.01)


def test_table_box_and_annotation() -> None:
    table = Table(0.1, (0.2, -0.3))
    world = transform(table.mesh().vertices, table.pose)
    assert world[:, 1].max() == pytest.approx(0.1)  # the top at the support height
    assert world[:, 1].min() == pytest.approx(0.1 - table.thickness)
    assert np.ptp(world[:, 0]) == pytest.approx(table.size[0]) and np.ptp(world[:, 2]) == pytest.approx(table.size[1])
    assert table.holds(SQUARE * 0.1 + [0.2, -0.3]) and not table.holds(SQUARE * 0.1 + [0.8, -0.3])
    assert table.to_ann() == {"seg_id": SEG_TABLE, "height": 0.1, "size": list(table.size)}


def test_support_height() -> None:
    box = trimesh.creation.box(extents=(0.1, 0.2, 0.1))
    pose = np.eye(4)
    pose[1, 3] = 0.5
    assert support_height({"support": {"height": 0.25}}, box.vertices, pose) == 0.25
    assert support_height({"support": None}, box.vertices, pose) is None  # grasped with --no-table
    assert support_height({}, box.vertices, pose) == pytest.approx(0.4)  # older shards: the lowest point
    table = table_under(0.4, box.vertices, pose)
    assert table.centre == pytest.approx((0.0, 0.0)) and table.height == 0.4


def test_hand_sweep_interpolates_between_frames() -> None:
    a, b = np.zeros((5, 3)), np.ones((5, 3))
    sweep = hand_sweep([a, b], steps=4)
    assert sweep.shape == (25, 3)
    assert sorted(set(np.round(sweep[:, 0], 6))) == [0.0, 0.25, 0.5, 0.75, 1.0]


def _scene(seed: int, count: int, sweep: np.ndarray) -> tuple[list, list, np.ndarray, Table]:
    assets = procedural_objects(["bottle", "bowl", "can", "mug", "box"], n_per_category=2, seed=3)
    grasped, pool = assets[0], assets[1:]
    pose0 = np.eye(4)
    pose0[:3, 3] = -grasped.mesh.bounds.mean(axis=0)
    table = table_under(support_height({}, grasped.mesh.vertices, pose0), grasped.mesh.vertices, pose0)
    shapes = [Shape.of(a.mesh.vertices) for a in pool]
    obstacle = footprint(transform(grasped.mesh.vertices, pose0))
    placed = place_distractors(shapes, count, table, table.centre, [obstacle], sweep, np.random.default_rng(seed))
    meshes = [grasped.mesh.copy().apply_transform(pose0)]
    meshes += [pool[p.index].mesh.copy().apply_transform(p.pose) for p in placed]
    return placed, meshes, pose0, table


def _hand_path() -> np.ndarray:
    """A hand-sized blob of points moving in along +x toward the object, 2-10 cm above the table plane."""
    rng = np.random.default_rng(0)
    blob = rng.normal(scale=[0.04, 0.02, 0.03], size=(300, 3))
    frames = [blob + [0.35 - 0.04 * f, -0.05, 0.0] for f in range(8)]  # the table top is near y = -0.11
    return hand_sweep(frames)


def test_placed_objects_rest_on_the_table_and_never_intersect() -> None:
    sweep = _hand_path()
    placed, meshes, _, table = _scene(5, 4, sweep)
    assert len(placed) == 4
    assert len({p.index for p in placed}) == 4  # four different objects
    rng = np.random.default_rng(1)
    for k, mesh in enumerate(meshes):
        if k:  # distractors stand upright on the table top, on the table
            assert mesh.vertices[:, 1].min() == pytest.approx(table.height, abs=1e-9)
            assert table.holds(footprint(mesh.vertices))
            assert np.allclose(placed[k - 1].pose[:3, 1], [0, 1, 0])
            assert not contains(mesh, sweep).any()  # the hand never enters a distractor
        points, _ = sample_surface(mesh, 3000, rng)
        for j, other in enumerate(meshes):
            if j != k:
                assert not contains(other, points).any(), f"mesh {k} enters mesh {j}"


def test_placement_is_seeded() -> None:
    sweep = _hand_path()
    a, _, _, _ = _scene(11, 3, sweep)
    b, _, _, _ = _scene(11, 3, sweep)
    c, _, _, _ = _scene(12, 3, sweep)
    assert [p.index for p in a] == [p.index for p in b]
    assert all(np.array_equal(p.pose, q.pose) for p, q in zip(a, b, strict=True))
    assert not all(np.array_equal(p.pose, q.pose) for p, q in zip(a, c, strict=False))


def test_clearance_from_the_hand_sweep() -> None:
    """A sweep filling the space above the whole placement disc leaves no spot; one above only half of it
    keeps every distractor out of that half."""
    _, _, _, table = _scene(2, 0, np.zeros((0, 3)))
    level = table.height + 0.02  # 2 cm above the table top: lower than any object
    grid = np.stack(np.meshgrid(np.linspace(-0.4, 0.4, 81), [level], np.linspace(-0.4, 0.4, 81)), -1)
    grid = grid.reshape(-1, 3)
    placed, _, _, _ = _scene(2, 3, grid)
    assert placed == []
    half = grid[grid[:, 0] > 0]
    placed, meshes, _, _ = _scene(2, 3, half)
    assert placed
    for mesh in meshes[1:]:
        assert mesh.vertices[:, 0].max() < 0.0  # every distractor keeps to the hand-free half
    shape = Shape.of(meshes[1].vertices)
    assert not shape.near(half, CLEARANCE * 0.5)


def test_a_crowded_table_places_fewer() -> None:
    placed, meshes, _, _ = _scene(4, 9, np.zeros((0, 3)))
    assert 0 < len(placed) <= 9
    feet = [footprint(m.vertices) for m in meshes]
    for i in range(len(feet)):
        for j in range(i):
            assert polygon_distance(feet[i], feet[j]) >= CLEARANCE - 1e-9


def test_resting_pose_turns_about_y_only() -> None:
    shape = Shape.of(trimesh.creation.box(extents=(0.1, 0.2, 0.05)).vertices)
    pose = resting_pose(shape, 0.3, -0.1, np.pi / 3, 0.05)
    assert np.allclose(pose[:3, :3] @ pose[:3, :3].T, np.eye(3)) and np.linalg.det(pose[:3, :3]) == pytest.approx(1)
    assert pose[1, 3] - 0.1 == pytest.approx(0.05)  # the box's base (y = -0.1) on the plane
    assert pose[0, 3] == 0.3 and pose[2, 3] == -0.1
