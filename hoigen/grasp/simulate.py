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
  directions, the largest. Given the filter's threshold (``stop_cm``, as the grasp evaluator does),
  a test stops at the first step the object is past it and returns that step's distance: a lower
  bound, and the grasp is rejected either way (on the 237 hold tests of a grasp bench pass no
  object that got past 2 cm came back under it: no accept/reject flip; 38 tests stop early).

Each test starts from an empty world, so a result never depends on earlier tests (workers and
ranks agree): a process keeps one pybullet world, removes the previous test's two bodies and
creates the hand, then the object, as a fresh world would (removing them leaves bullet's world as
it found it: the 237 hold tests of a bench pass gave the same displacements, bit for bit, as a
``resetSimulation`` per test; ~1.1 ms less a test). The object's collision shape is loaded once and
reused. The world's client runs without pybullet's built-in renderer (TinyRenderer, unloaded: it
re-read each new body's mesh files to make a visual copy, ~0.6 ms per hand body; the physics does
not use it: same displacements bit for bit). The world is reset every ``RESET_EVERY`` tests all
the same: pybullet frees a collision shape only there (``removeCollisionShape`` refuses a shape a
body has used; ~50 kB per hand). The hand reaches pybullet as a temporary OBJ file (one ``o``
group per piece), not as vertex lists: pybullet 3.2.7 never frees shapes made from vertex lists
(~0.2-0.3 MB per test, not even on ``resetSimulation`` or reconnecting), while file-made shapes
are freed.
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
STOP_MARGIN_CM = 1e-3  # an early stop is this far past the threshold: rounding (4 decimals) keeps it rejected
RESET_EVERY = 64  # hold tests between two resetSimulation calls of a process's world
_DECOMPOSED: dict[str, str] = {}
_TMP: Path | None = None
_PB = None  # the pybullet module, once imported


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
    """pybullet, imported without its build-time banner on stdout (silencing costs ~40 us: once)."""
    global _PB
    if _PB is None:
        with _quiet_fd():
            import pybullet

        _PB = pybullet
    return _PB


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
    """OBJ text with one ``o`` group per piece whose faces reference the piece's vertices; pybullet
    turns each group of a (non-concave) mesh file into a convex hull of the points its faces use, so
    no hull is computed here.

    Every hand vertex goes out once, first (OBJ indices are global, so the pieces share the vertices
    of their overlapping one-rings: 778 vertex lines, not 1,208), then per piece its faces
    (consecutive triples of its vertex ids, in order; the same for every pose, made once: see
    :func:`_faces_obj`). pybullet adds the points in face order, as when each group had its own copy
    of its vertices: same hulls, bit for bit. Coordinates go out as float32 with 9 significant digits,
    which read back to the very same float32 (pybullet's OBJ reader keeps float32). Against writing
    qhull's hulls (17 digits): the 235 hold tests of a bench pass gave the same displacement in 223,
    at most 0.55 mm apart in the rest (no accept/reject flip), for ~20% less CPU per test."""
    pts = np.asarray(vertices, dtype=np.float32)
    return ("v %.9g %.9g %.9g\n" * len(pts)) % tuple(pts.reshape(-1).tolist()) + _faces_obj(pieces)


_FACES: tuple[tuple[np.ndarray, ...], str] | None = None  # the pieces and their face text, last made


def _faces_obj(pieces: tuple[np.ndarray, ...]) -> str:
    """The ``o``/``f`` lines of :func:`_pieces_obj`, kept for the last ``pieces`` tuple seen."""
    global _FACES
    if _FACES is None or _FACES[0] is not pieces:
        lines = []
        for k, ids in enumerate(pieces):
            n = len(ids)
            refs = np.asarray(ids)[np.minimum(np.arange(-(-n // 3) * 3), n - 1)] + 1  # pad with the last vertex
            lines.append(f"o piece{k}\n")
            lines.append(("f %d %d %d\n" * (len(refs) // 3)) % tuple(refs.tolist()))
        _FACES = (pieces, "".join(lines))
    return _FACES[1]


def simulation_displacement_cm(
    hand_vertices: np.ndarray,
    pieces: tuple[np.ndarray, ...],
    mesh: trimesh.Trimesh,
    key: str,
    directions: tuple[tuple[float, float, float], ...] = (DOWN,),
    steps: int = STEPS,
    stop_cm: float | None = None,
) -> float:
    """How far (cm) the object's centre of mass moves in ``steps`` under gravity, held by the fixed
    hand: posed ``hand_vertices`` (V, 3), cut into convex ``pieces`` (:func:`hand_pieces`).

    With ``stop_cm`` (the filter's threshold) a test ends at the first step where the object has
    moved more than ``stop_cm`` + ``STOP_MARGIN_CM``, and the result is that step's displacement: a
    lower bound of the full test's, enough to reject the grasp (the objects do not come back)."""
    p = _pybullet()
    path, _ = collision_file(mesh, key)
    com = np.asarray(mesh.center_mass if mesh.is_watertight else mesh.centroid, dtype=np.float64)
    hand_file = Path(tempfile.gettempdir()) / f"hoigen-hand-{os.getpid()}-{next(_COUNTER)}.obj"
    hand_file.write_text(_pieces_obj(np.asarray(hand_vertices, dtype=np.float64), pieces))
    limit = None if stop_cm is None else (stop_cm + STOP_MARGIN_CM) / 100.0
    cx, cy, cz = com.tolist()
    worst = 0.0
    world = _world()
    cid = world.cid
    try:
        for direction in directions:
            world.clear()
            g = 9.8 * np.asarray(direction, dtype=np.float64) / np.linalg.norm(direction)
            p.setGravity(*g.tolist(), physicsClientId=cid)
            hand_shape = p.createCollisionShape(p.GEOM_MESH, fileName=str(hand_file), physicsClientId=cid)
            hand_body = p.createMultiBody(baseMass=0, baseCollisionShapeIndex=hand_shape, physicsClientId=cid)
            world.bodies.append(hand_body)
            p.changeDynamics(hand_body, -1, lateralFriction=FRICTION, restitution=0.0, physicsClientId=cid)
            obj = p.createMultiBody(
                baseMass=OBJECT_MASS, baseCollisionShapeIndex=world.object_shape(path),
                basePosition=com.tolist(), physicsClientId=cid,
            )  # fmt: skip
            world.bodies.append(obj)
            p.changeDynamics(obj, -1, lateralFriction=FRICTION, restitution=0.5, physicsClientId=cid)
            for _ in range(steps):
                p.stepSimulation(physicsClientId=cid)
                if limit is not None:  # plain floats: numpy's norm would cost ~3 us more a step
                    x, y, z = p.getBasePositionAndOrientation(obj, physicsClientId=cid)[0]
                    if (x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 > limit**2:
                        break
            worst = max(worst, _moved(p, obj, com, cid) * 100.0)
            if limit is not None and worst > limit * 100.0:
                break
    finally:
        hand_file.unlink(missing_ok=True)
    return worst


def _moved(p, body: int, start: np.ndarray, cid: int) -> float:
    """How far (m) ``body``'s base is from ``start``."""
    position = p.getBasePositionAndOrientation(body, physicsClientId=cid)[0]
    return float(np.linalg.norm(np.asarray(position) - start))


_COUNTER = itertools.count()


class _World:
    """This process's hold-test world: one pybullet DIRECT client, emptied (bodies removed) before
    each test and reset every ``RESET_EVERY`` tests; the object shapes of the collision files it has
    loaded, kept until the reset."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.cid = _client()
        p = _pybullet()
        with _quiet_fd():  # no renderer: it would load every body's mesh files again, for nothing
            renderer = p.loadPlugin("tinyRendererPlugin", physicsClientId=self.cid)  # the built-in one's id
            if renderer >= 0:
                p.unloadPlugin(renderer, physicsClientId=self.cid)
        self.bodies: list[int] = []
        self.shapes: dict[str, int] = {}
        self.tests = RESET_EVERY  # reset before the first test

    def clear(self) -> None:
        """An empty world: the last test's bodies removed, or a ``resetSimulation`` every ``RESET_EVERY``
        tests (pybullet frees a collision shape only there: ``removeCollisionShape`` refuses once a body
        used it, ~50 kB per hand)."""
        p = _pybullet()
        if self.tests >= RESET_EVERY:
            p.resetSimulation(physicsClientId=self.cid)
            p.setPhysicsEngineParameter(
                fixedTimeStep=STEP_S, numSolverIterations=150, enableFileCaching=0, physicsClientId=self.cid
            )
            self.bodies, self.shapes, self.tests = [], {}, 0
        for body in self.bodies:
            p.removeBody(body, physicsClientId=self.cid)
        self.bodies = []
        self.tests += 1

    def object_shape(self, path: str) -> int:
        """The collision shape of the object file ``path`` (loaded once per reset)."""
        if path not in self.shapes:
            p = _pybullet()
            self.shapes[path] = p.createCollisionShape(p.GEOM_MESH, fileName=path, physicsClientId=self.cid)
        return self.shapes[path]


_WORLD: _World | None = None


def _world() -> _World:
    """This process's hold-test world (a forked worker makes its own; connecting costs a few ms)."""
    global _WORLD
    if _WORLD is None or _WORLD.pid != os.getpid() or not _pybullet().isConnected(physicsClientId=_WORLD.cid):
        _WORLD = _World()
    return _WORLD
