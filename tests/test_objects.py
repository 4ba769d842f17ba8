"""Objects: procedural meshes, NOCS frame, folder loading (YCB layout), errors, save/read, geometry."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import trimesh

from hoigen.errors import HoigenError
from hoigen.objects import (
    PROCEDURAL_CATEGORIES,
    MeshQuery,
    ObjectAsset,
    load_objects,
    nocs_transform,
    procedural_objects,
    read_objects,
    sample_surface,
    save_objects,
    signed_distance,
    slugify,
)
from hoigen.objects.asset import ID_PATTERN
from hoigen.objects.geometry import winding_number

# (min, max) extents in metres along x, y (up), z
SIZES = {
    "bottle": ((0.06, 0.071), (0.20, 0.25), (0.06, 0.071)),
    "can": ((0.062, 0.071), (0.11, 0.125), (0.062, 0.071)),
    "bowl": ((0.13, 0.17), (0.05, 0.07), (0.13, 0.17)),
    "mug": ((0.10, 0.125), (0.09, 0.11), (0.074, 0.087)),  # x includes the handle
    "box": ((0.06, 0.16), (0.08, 0.22), (0.04, 0.08)),
}


@pytest.fixture(scope="module")
def objs():
    return procedural_objects(PROCEDURAL_CATEGORIES, n_per_category=2, seed=3)


def test_procedural_shapes(objs):
    assert [o.id for o in objs[:4]] == ["bottle-000", "bottle-001", "bowl-000", "bowl-001"]
    for o in objs:
        m = o.mesh
        assert ID_PATTERN.match(o.id) and o.category == o.id.split("-")[0]
        assert m.is_watertight and m.is_winding_consistent and m.volume > 0, o.id
        assert 100 <= len(m.faces) <= 3000, (o.id, len(m.faces))
        np.testing.assert_allclose(m.bounds.mean(axis=0), 0.0, atol=1e-6)
        for axis, (lo, hi) in enumerate(SIZES[o.category]):
            assert lo <= m.extents[axis] <= hi, (o.id, axis, m.extents)
    mug = next(o for o in objs if o.category == "mug").mesh
    # the handle is on +x: the rim ring (top) is centred on the axis, which lies left of the bbox centre
    rim = mug.vertices[mug.vertices[:, 1] > mug.bounds[1, 1] - 1e-9]
    axis_x, radius = rim[:, 0].mean(), rim[:, 0].max() - rim[:, 0].mean()
    assert axis_x < -0.01
    assert mug.vertices[:, 0].max() > axis_x + radius + 0.02
    assert mug.vertices[:, 0].min() > axis_x - radius - 1e-6
    bowl = next(o for o in objs if o.category == "bowl")
    # a proper hollow bowl: the centre of its bounding box is empty space, its rim is solid
    q = MeshQuery(bowl.mesh)
    assert q.signed_distance(np.array([[0.0, 0.0, 0.0]]))[0] < -0.01
    assert bowl.mesh.volume < 0.3 * np.prod(bowl.mesh.extents)


def test_procedural_deterministic():
    a = procedural_objects(["mug", "can"], 2, seed=7)
    b = procedural_objects(["can", "mug"], 2, seed=7)
    c = procedural_objects(["mug"], 2, seed=8)
    sha = {o.id: o.sha256 for o in a}
    assert sha == {o.id: o.sha256 for o in b}  # object i depends on (seed, category, i) only
    assert sha["mug-000"] != sha["mug-001"]
    assert sha["mug-000"] != c[0].sha256
    assert a[0].source == "procedural:mug:7:0"
    with pytest.raises(HoigenError, match="unknown procedural category 'teapot'"):
        procedural_objects(["teapot"])


def test_nocs_transform_centres_and_scales():
    mesh = trimesh.creation.box(extents=[0.2, 0.1, 0.05])
    mesh.apply_translation([1.0, -2.0, 0.5])
    t = nocs_transform(mesh)
    v = mesh.vertices @ t[:3, :3].T + t[:3, 3]
    lo, hi = v.min(axis=0), v.max(axis=0)
    np.testing.assert_allclose((lo + hi) / 2, 0.0, atol=1e-12)
    assert np.linalg.norm(hi - lo) == pytest.approx(1.0)
    np.testing.assert_allclose(t[:3, :3], np.eye(3) / np.sqrt(0.2**2 + 0.1**2 + 0.05**2))
    obj = procedural_objects(["bottle"], seed=0)[0]
    nv = obj.nocs_vertices()
    assert np.linalg.norm(nv.max(0) - nv.min(0)) == pytest.approx(1.0)


def test_slugify_and_id_check():
    assert slugify("002_master_chef_can") == "002-master-chef-can"
    assert slugify(" Mug.v2 (Blue) ") == "mug-v2-blue"
    with pytest.raises(HoigenError, match="not valid"):
        ObjectAsset.create("mug_1", "mug", np.eye(3), [[0, 1, 2]], "x")


def _write(mesh: trimesh.Trimesh, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    mesh.export(path)


def test_load_folder_formats_and_ycb_layout(tmp_path):
    root = tmp_path / "meshes"
    _write(trimesh.creation.cylinder(radius=0.03, height=0.2, sections=16), root / "red_bottle.obj")
    _write(trimesh.creation.icosphere(2, radius=0.05), root / "sub" / "ball.ply")
    _write(trimesh.creation.box(extents=[0.1, 0.2, 0.05]), root / "cracker_box.stl")
    ycb = root / "002_master_chef_can"
    can = trimesh.creation.cylinder(radius=0.05, height=0.14, sections=24)
    _write(can, ycb / "google_16k" / "textured.obj")
    _write(trimesh.creation.box(extents=[0.3, 0.3, 0.3]), ycb / "google_16k" / "nontextured.ply")
    _write(trimesh.creation.box(extents=[0.4, 0.4, 0.4]), ycb / "tsdf" / "textured.obj")
    _write(trimesh.creation.icosphere(1, radius=0.04), root / "025_mug" / "textured.obj")
    (root / "notes.txt").write_text("not a mesh, ignored")

    assets = load_objects(root)
    by_id = {a.id: a for a in assets}
    assert [a.id for a in assets] == sorted(by_id)
    assert set(by_id) == {"002-master-chef-can", "025-mug", "ball", "cracker-box", "red-bottle"}
    cats = {k: a.category for k, a in by_id.items()}
    assert cats == {
        "002-master-chef-can": "can",
        "025-mug": "mug",
        "ball": "object",
        "cracker-box": "box",
        "red-bottle": "bottle",
    }
    # the google_16k textured variant wins over nontextured.ply and tsdf
    np.testing.assert_allclose(by_id["002-master-chef-can"].mesh.extents, [0.1, 0.1, 0.14], atol=1e-6)
    assert by_id["002-master-chef-can"].source.endswith(os.path.join("google_16k", "textured.obj"))
    # OBJ texture-seam duplicates are merged: the exported cylinder is closed again
    assert by_id["red-bottle"].mesh.is_watertight and by_id["ball"].mesh.is_watertight
    # the mesh frame is kept (no recentering); NOCS records the centring
    box = by_id["cracker-box"]
    assert box.unit_scale == 1.0
    np.testing.assert_allclose(box.nocs_from_mesh[:3, 3], 0.0, atol=1e-9)

    mapping = tmp_path / "map.yaml"
    mapping.write_text("ball: bowl\n002-master-chef-can: bottle\n")
    mapped = {a.id: a.category for a in load_objects(root, category="thing", mapping=mapping)}
    assert mapped["ball"] == "bowl" and mapped["002-master-chef-can"] == "bottle"
    assert mapped["red-bottle"] == "thing"  # --category beats the name heuristics
    jmap = tmp_path / "map.json"
    jmap.write_text(json.dumps({"red_bottle": "can"}))
    assert {a.id: a.category for a in load_objects(root, mapping=jmap)}["red-bottle"] == "can"


def test_load_scene_and_offset_mesh(tmp_path):
    scene = trimesh.Scene()
    scene.add_geometry(trimesh.creation.box(extents=[0.1, 0.1, 0.1]))
    part = trimesh.creation.box(extents=[0.05, 0.05, 0.05])
    part.apply_translation([0.2, 0.0, 0.0])
    scene.add_geometry(part)
    scene.export(tmp_path / "two_parts.glb")
    (asset,) = load_objects(tmp_path)
    assert asset.id == "two-parts" and len(asset.mesh.faces) == 24
    # the mesh stays where the file put it; only the NOCS transform centres it
    np.testing.assert_allclose(asset.mesh.bounds, [[-0.05, -0.05, -0.05], [0.225, 0.05, 0.05]], atol=1e-6)
    np.testing.assert_allclose(asset.nocs_vertices().min(0) + asset.nocs_vertices().max(0), 0.0, atol=1e-6)


def test_millimetre_mesh_is_scaled(tmp_path):
    _write(trimesh.creation.box(extents=[100.0, 200.0, 50.0]), tmp_path / "box_mm.ply")
    (asset,) = load_objects(tmp_path)
    assert asset.unit_scale == 0.001
    np.testing.assert_allclose(asset.mesh.extents, [0.1, 0.2, 0.05], rtol=1e-6)


@pytest.mark.parametrize(
    "name, content",
    [
        ("bad.obj", "this is not a mesh\n\x00\x01 garbage\n"),
        ("bad.obj", "v 0 0 0\nv 1 0 0\nv 0 1 0\n"),  # vertices, no faces
        ("bad.obj", "v 0 0 0\nv 1 0 0\nv nan 1 0\nf 1 2 3\n"),
        ("bad.ply", "ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nend_header\n1\n"),
        ("bad.stl", ""),
    ],
)
def test_bad_mesh_files_name_the_file(tmp_path, name, content):
    (tmp_path / name).write_text(content)
    with pytest.raises(HoigenError) as err:
        load_objects(tmp_path)
    assert name in str(err.value) and "\n" not in str(err.value)


def test_folder_errors(tmp_path):
    with pytest.raises(HoigenError, match="does not exist; pass --objects DIR"):
        load_objects(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("x")
    with pytest.raises(HoigenError, match="no meshes found"):
        load_objects(tmp_path / "empty")
    clash = tmp_path / "clash"
    _write(trimesh.creation.box(), clash / "mug_1.obj")
    _write(trimesh.creation.box(), clash / "mug-1.ply")
    with pytest.raises(HoigenError, match=r"mug_1\.obj.*'mug-1'|mug-1\.ply.*'mug-1'"):
        load_objects(clash)
    with pytest.raises(HoigenError, match="mapping file does not exist"):
        load_objects(tmp_path / "clash", mapping=tmp_path / "nope.yaml")


def test_save_read_round_trip(tmp_path, objs):
    src = tmp_path / "src"
    _write(trimesh.creation.icosphere(2, radius=0.05), src / "ball.obj")
    assets = list(objs[:3]) + load_objects(src)
    parquet = save_objects(assets, tmp_path / "out")
    assert parquet == tmp_path / "out" / "objects.parquet"
    back = read_objects(tmp_path / "out")
    assert sorted(back) == sorted(a.id for a in assets)
    for a in assets:
        b = back[a.id]
        assert b.sha256 == a.sha256 and b.category == a.category and b.source == a.source
        np.testing.assert_array_equal(b.mesh.vertices, a.mesh.vertices)
        np.testing.assert_array_equal(b.mesh.faces, a.mesh.faces)
        np.testing.assert_array_equal(b.nocs_from_mesh, a.nocs_from_mesh)
    # plain trimesh reads the file too, with identical geometry
    m = trimesh.load(tmp_path / "out" / "objects" / f"{assets[0].id}.ply", process=False)
    np.testing.assert_array_equal(m.vertices, assets[0].mesh.vertices)

    import pyarrow.parquet as pq

    table = pq.read_table(parquet)
    assert table.column_names[:5] == ["id", "category", "sha256", "source", "nocs_from_mesh"]
    assert {"n_vertices", "n_faces", "watertight"} <= set(table.column_names)
    assert table.column("watertight").to_pylist() == [True] * len(assets)

    # unchanged files are not rewritten; a second call adds rows
    ply = tmp_path / "out" / "objects" / f"{assets[0].id}.ply"
    before = (ply.stat().st_mtime_ns, parquet.stat().st_mtime_ns)
    os.utime(ply, ns=(1, 1))
    os.utime(parquet, ns=(1, 1))
    save_objects(assets, tmp_path / "out")
    assert ply.stat().st_mtime_ns == 1 and parquet.stat().st_mtime_ns == 1, before
    save_objects(objs[3:4], tmp_path / "out")
    assert len(read_objects(parquet)) == len(assets) + 1
    assert not list((tmp_path / "out").rglob("*.tmp-*"))

    # a different mesh under a saved id is refused; a changed file is detected
    other = procedural_objects(["bottle"], seed=99)[0]
    with pytest.raises(HoigenError, match="bottle-000.ply: a different mesh"):
        save_objects([other], tmp_path / "out")
    ply.write_bytes(ply.read_bytes()[:-4] + b"\x00\x00\x00\x00")
    with pytest.raises(HoigenError, match="sha256 differs"):
        read_objects(tmp_path / "out")


def test_sample_surface_deterministic_and_on_surface(objs):
    mesh = objs[0].mesh
    p1, n1 = sample_surface(mesh, 500, np.random.default_rng(4))
    p2, n2 = sample_surface(mesh, 500, np.random.default_rng(4))
    np.testing.assert_array_equal(p1, p2)
    np.testing.assert_array_equal(n1, n2)
    assert p1.shape == (500, 3) and n1.shape == (500, 3)
    _, d, _ = MeshQuery(mesh).closest_point(p1)
    assert d.max() < 1e-9
    np.testing.assert_allclose(np.linalg.norm(n1, axis=1), 1.0)


def test_signed_distance_sphere_and_mug(objs):
    sphere = trimesh.creation.icosphere(4, radius=0.05)
    rng = np.random.default_rng(0)
    pts = rng.uniform(-0.08, 0.08, size=(2000, 3))
    sd = signed_distance(sphere, pts)
    exact = 0.05 - np.linalg.norm(pts, axis=1)  # positive inside
    np.testing.assert_allclose(sd, exact, atol=2e-4)

    for o in objs[::2]:
        surf, normal = sample_surface(o.mesh, 200, np.random.default_rng(1))
        probe = np.vstack([surf - 0.0005 * normal, surf + 0.0005 * normal])
        sd = MeshQuery(o.mesh).signed_distance(probe)
        assert np.mean(np.abs(np.abs(sd) - 0.0005) < 1e-9) > 0.95, o.id
        if o.category != "mug":  # one closed surface: inward probes inside, outward outside, and
            # never farther than the offset (nearer only close to concave creases)
            assert np.all(sd[:200] > 0) and np.all(sd[200:] < 0), o.id
            assert np.all(np.abs(sd) <= 0.0005 + 1e-9), o.id
        # the mug's handle ends are buried in its wall: there the union decides, as winding numbers do
        assert np.array_equal(sd > 0, winding_number(o.mesh, probe) > 0.5), o.id
        far = rng.uniform(o.mesh.bounds[0] - 0.02, o.mesh.bounds[1] + 0.02, size=(300, 3))
        assert np.array_equal(signed_distance(o.mesh, far) > 0, winding_number(o.mesh, far) > 0.5), o.id
