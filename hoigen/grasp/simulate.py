"""Simulation displacement: does the object stay in the fixed hand under gravity? (pybullet, DIRECT)

The protocol follows GraspTTA's released evaluation (``metric/simulate.py`` of
github.com/hwjiang1510/GraspTTA, also used by later work such as GraspXL) in its settings, with
the collision geometry made of convex pieces, as physics engines prefer:

- the hand is **static** (mass 0), fixed in its grasp pose, made of one convex piece per skinning
  bone (:func:`hand_pieces`: the vertices whose strongest skinning weight is that bone's, plus
  their one-ring so neighbouring pieces overlap at the joints; the convex hull of the posed
  vertices, which pybullet computes from each OBJ group's points). GraspTTA gives pybullet the
  whole hand as one concave triangle mesh instead; on the grasp bench's candidates that was 2.5x
  slower per test (same object shapes) and agreed with the pieces on 82 % of the accept/reject
  decisions (the hold test is chaotic near its threshold: re-meshing the concave hand alone flips
  15 %);
- the object is a **dynamic** body of mass 1 kg whose collision shape is its convex hull when the
  mesh is nearly convex (volume >= ``CONVEX_FILL`` of the hull's), else pybullet's V-HACD
  convex decomposition; a hull keeps at most ``MAX_HULL_VERTICES`` of its vertices (contact cost
  grows with the vertex count: a 2,000-vertex capsule hull made a test 10x slower), chosen by
  farthest-point sampling, so it lies within the true hull (a 4 cm sphere's: 1.2 mm inside at
  most, 96 % of the volume; 64 vertices, V-HACD's cap per piece, would leave 2.5 mm). Computed
  once per mesh, cached in ``$HOIGEN_CACHE/collision`` (default ``~/.cache/hoigen``), keyed by the
  mesh's sha256;
- lateral friction 3 for both, restitution 0 (hand) and 0.5 (object), 150 solver iterations;
- gravity 9.8 m/s^2 along ``-y`` of the frame the meshes are given in (the world's down when the
  object stands upright, as hoigen places it); ``directions`` can add others;
- ``STEPS`` = 35 steps of 1/240 s (0.146 s; a free fall covers 10.4 cm in that time);
- the result is the distance (cm) the object's centre of mass moved; with several gravity
  directions, the largest.

Each test starts from ``resetSimulation``, so a result never depends on earlier tests (workers and
ranks agree). The hand reaches pybullet as a temporary OBJ file (one ``o`` group per piece), not as
vertex lists: pybullet 3.2.7 never frees shapes made from vertex lists (~0.2-0.3 MB per test, not
even on ``resetSimulation`` or reconnecting), while file-made shapes are freed.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import trimesh

MAX_HULL_VERTICES = 128
STEP_S = 1.0 / 240.0
STEPS = 35
FRICTION = 3.0
OBJECT_MASS = 1.0
CONVEX_FILL = 0.9
DOWN = (0.0, -1.0, 0.0)
_DECOMPOSED: dict[str, str] = {}
_TMP: Path | None = None


@contextlib.contextmanager
def _quiet_fd():
    """Silence C-level stdout and stderr (pybullet's banner, V-HACD's progress)."""
    import ctypes

    try:
        saved = [os.dup(1), os.dup(2)]
    except OSError:
        yield
        return
    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    sys.stderr.flush()
    with open(os.devnull, "wb") as null:
        os.dup2(null.fileno(), 1)
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            libc.fflush(None)  # C stdio buffers what it printed; flush it into /dev/null
            for fd, copy in zip((1, 2), saved, strict=True):
                os.dup2(copy, fd)
                os.close(copy)


def _tmp() -> Path:
    """Where collision files go: ``$HOIGEN_CACHE/vhacd`` (default ``~/.cache/hoigen``), else a temp dir."""
    global _TMP
    if _TMP is None:
        root = Path(os.environ.get("HOIGEN_CACHE", Path.home() / ".cache" / "hoigen")) / "collision"
        try:
            root.mkdir(parents=True, exist_ok=True)
            _TMP = root
        except OSError:
            _TMP = Path(tempfile.mkdtemp(prefix="hoigen-sim-"))
    return _TMP


def _pybullet():
    """pybullet, imported without its build-time banner on stdout."""
    with _quiet_fd():
        import pybullet

    return pybullet


def _client():
    p = _pybullet()
    with _quiet_fd():
        return p.connect(p.DIRECT)


def capped_hull(hull: trimesh.Trimesh, cap: int = MAX_HULL_VERTICES) -> trimesh.Trimesh:
    """A convex hull with at most ``cap`` vertices: the hull of ``cap`` of its own vertices, spread
    by farthest-point sampling (so it lies inside the original and adds no material)."""
    v = np.asarray(hull.vertices, dtype=np.float64)
    if len(v) <= cap:
        return hull
    picked = [int(np.argmax(np.linalg.norm(v - v.mean(axis=0), axis=1)))]
    nearest = np.linalg.norm(v - v[picked[0]], axis=1)
    for _ in range(cap - 1):
        picked.append(int(np.argmax(nearest)))
        nearest = np.minimum(nearest, np.linalg.norm(v - v[picked[-1]], axis=1))
    return trimesh.convex.convex_hull(v[picked])


def collision_file(mesh: trimesh.Trimesh, key: str) -> tuple[str, bool]:
    """(.obj path of the object's collision geometry, centred at its centroid; whether V-HACD made it)."""
    p = _pybullet()
    if key in _DECOMPOSED:
        path = _DECOMPOSED[key]
        return path, path.endswith("_vhacd.obj")
    out = _tmp() / f"{key}_vhacd.obj"
    if out.exists() and out.stat().st_size:
        _DECOMPOSED[key] = str(out)
        return str(out), True
    hull_path = _tmp() / f"{key}_hull{MAX_HULL_VERTICES}.obj"
    if hull_path.exists() and hull_path.stat().st_size:
        _DECOMPOSED[key] = str(hull_path)
        return str(hull_path), False
    centred = mesh.copy()
    centred.apply_translation(-mesh.center_mass if mesh.is_watertight else -mesh.centroid)
    hull = centred.convex_hull
    src = _tmp() / f"{key}.{os.getpid()}.in.obj"
    if mesh.is_watertight and abs(centred.volume) >= CONVEX_FILL * hull.volume:
        capped_hull(hull).export(src)
        os.replace(src, hull_path)
        _DECOMPOSED[key] = str(hull_path)
        return str(hull_path), False
    centred.export(src)
    partial = out.with_name(f"{out.stem}.{os.getpid()}.part.obj")
    cid = _client()
    try:
        with _quiet_fd():
            p.vhacd(str(src), str(partial), str(_tmp() / f"vhacd.{os.getpid()}.log"), resolution=50_000,
                    physicsClientId=cid)  # fmt: skip
    finally:
        p.disconnect(cid)
    os.replace(partial, out)  # atomic: parallel workers never read half a file
    src.unlink(missing_ok=True)
    _DECOMPOSED[key] = str(out)
    return str(out), True


def hand_pieces(faces: np.ndarray, vertex_bones: np.ndarray) -> tuple[np.ndarray, ...]:
    """Vertex ids of the hand's convex pieces: per skinning bone, its vertices and their one-ring."""
    faces = np.asarray(faces, dtype=np.int64)
    bones = np.asarray(vertex_bones)
    pieces = []
    for bone in np.unique(bones):
        own = bones == bone
        ring = own.copy()
        ring[faces[own[faces].any(axis=1)].reshape(-1)] = True
        pieces.append(np.flatnonzero(ring))
    return tuple(pieces)


def _pieces_obj(vertices: np.ndarray, pieces: tuple[np.ndarray, ...]) -> str:
    """OBJ text with one ``o`` group per piece holding the piece's vertices; pybullet turns each group
    of a (non-concave) mesh file into a convex hull of its points itself, so no hull is computed here.

    The faces only reference every vertex once (consecutive triples). Coordinates go out as float32
    with 9 significant digits, which read back to the very same float32 (pybullet's OBJ reader keeps
    float32). Against writing qhull's hulls (17 digits): the 235 hold tests of a bench pass gave the
    same displacement in 223, at most 0.55 mm apart in the rest (no accept/reject flip), for ~20% less
    CPU per test."""
    lines: list[str] = []
    offset = 1
    for k, ids in enumerate(pieces):
        pts = np.asarray(vertices[ids], dtype=np.float32)
        n = len(pts)
        refs = np.minimum(np.arange(-(-n // 3) * 3), n - 1) + offset  # pad the last triple with its last vertex
        lines.append(f"o piece{k}\n")
        lines.append(("v %.9g %.9g %.9g\n" * n) % tuple(pts.reshape(-1).tolist()))
        lines.append(("f %d %d %d\n" * (len(refs) // 3)) % tuple(refs.tolist()))
        offset += n
    return "".join(lines)


def simulation_displacement_cm(
    hand_vertices: np.ndarray,
    pieces: tuple[np.ndarray, ...],
    mesh: trimesh.Trimesh,
    key: str,
    directions: tuple[tuple[float, float, float], ...] = (DOWN,),
    steps: int = STEPS,
) -> float:
    """How far (cm) the object's centre of mass moves in ``steps`` under gravity, held by the fixed
    hand: posed ``hand_vertices`` (V, 3), cut into convex ``pieces`` (:func:`hand_pieces`)."""
    p = _pybullet()
    path, _ = collision_file(mesh, key)
    com = np.asarray(mesh.center_mass if mesh.is_watertight else mesh.centroid, dtype=np.float64)
    hand_file = Path(tempfile.gettempdir()) / f"hoigen-hand-{os.getpid()}-{next(_COUNTER)}.obj"
    hand_file.write_text(_pieces_obj(np.asarray(hand_vertices, dtype=np.float64), pieces))
    worst = 0.0
    cid = _sim_client()
    try:
        for direction in directions:
            p.resetSimulation(physicsClientId=cid)
            p.setPhysicsEngineParameter(
                fixedTimeStep=STEP_S, numSolverIterations=150, enableFileCaching=0, physicsClientId=cid
            )
            g = 9.8 * np.asarray(direction, dtype=np.float64) / np.linalg.norm(direction)
            p.setGravity(*g.tolist(), physicsClientId=cid)
            hand_shape = p.createCollisionShape(p.GEOM_MESH, fileName=str(hand_file), physicsClientId=cid)
            hand_body = p.createMultiBody(baseMass=0, baseCollisionShapeIndex=hand_shape, physicsClientId=cid)
            p.changeDynamics(hand_body, -1, lateralFriction=FRICTION, restitution=0.0, physicsClientId=cid)
            obj_shape = p.createCollisionShape(p.GEOM_MESH, fileName=path, physicsClientId=cid)
            obj = p.createMultiBody(
                baseMass=OBJECT_MASS, baseCollisionShapeIndex=obj_shape, basePosition=com.tolist(),
                physicsClientId=cid,
            )  # fmt: skip
            p.changeDynamics(obj, -1, lateralFriction=FRICTION, restitution=0.5, physicsClientId=cid)
            for _ in range(steps):
                p.stepSimulation(physicsClientId=cid)
            end = np.asarray(p.getBasePositionAndOrientation(obj, physicsClientId=cid)[0])
            worst = max(worst, float(np.linalg.norm(end - com)) * 100.0)
    finally:
        hand_file.unlink(missing_ok=True)
    return worst


_COUNTER = itertools.count()
_SIM: tuple[int, int] | None = None  # (process id, client id) of this process's hold-test client


def _sim_client() -> int:
    """One pybullet DIRECT client per process for the hold tests (connecting costs a few ms a test)."""
    global _SIM
    p = _pybullet()
    if _SIM is None or _SIM[0] != os.getpid() or not p.isConnected(physicsClientId=_SIM[1]):
        _SIM = (os.getpid(), _client())
    return _SIM[1]
