"""Simulation displacement: does the object stay in the fixed hand under gravity? (pybullet, DIRECT)

The protocol follows GraspTTA's released evaluation (``metric/simulate.py`` of
github.com/hwjiang1510/GraspTTA, also used by later work such as GraspXL):

- the hand is a **static concave triangle mesh** (mass 0, ``GEOM_FORCE_CONCAVE_TRIMESH``), fixed in
  its grasp pose;
- the object is a **dynamic** body of mass 1 kg whose collision shape is its convex hull when the
  mesh is nearly convex (volume >= ``CONVEX_FILL`` of the hull's), else pybullet's V-HACD
  convex decomposition (computed once per mesh, cached in ``$HOIGEN_CACHE/collision``, default
  ``~/.cache/hoigen``, keyed by the mesh's sha256);
- lateral friction 3 for both, restitution 0 (hand) and 0.5 (object), 150 solver iterations;
- gravity 9.8 m/s^2 along ``-y`` of the frame the meshes are given in (the world's down when the
  object stands upright, as hoigen places it); ``directions`` can add others;
- ``STEPS`` = 35 steps of 1/240 s (0.146 s; a free fall covers 10.4 cm in that time);
- the result is the distance (cm) the object's centre of mass moved; with several gravity
  directions, the largest.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import trimesh

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
    centred = mesh.copy()
    centred.apply_translation(-mesh.center_mass if mesh.is_watertight else -mesh.centroid)
    hull = centred.convex_hull
    src = _tmp() / f"{key}.{os.getpid()}.in.obj"
    if mesh.is_watertight and abs(centred.volume) >= CONVEX_FILL * hull.volume:
        hull.export(src)
        path = _tmp() / f"{key}_hull.obj"
        os.replace(src, path)
        _DECOMPOSED[key] = str(path)
        return str(path), False
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


def simulation_displacement_cm(
    hand_vertices: np.ndarray,
    hand_faces: np.ndarray,
    mesh: trimesh.Trimesh,
    key: str,
    directions: tuple[tuple[float, float, float], ...] = (DOWN,),
    steps: int = STEPS,
) -> float:
    """How far (cm) the object's centre of mass moves in ``steps`` under gravity, held by the fixed hand."""
    p = _pybullet()
    path, _ = collision_file(mesh, key)
    com = np.asarray(mesh.center_mass if mesh.is_watertight else mesh.centroid, dtype=np.float64)
    worst = 0.0
    cid = _sim_client()
    # resetSimulation clears the world before each test: a result never depends on earlier ones
    for direction in directions:
        p.resetSimulation(physicsClientId=cid)
        p.setPhysicsEngineParameter(
            fixedTimeStep=STEP_S, numSolverIterations=150, enableFileCaching=0, physicsClientId=cid
        )
        g = 9.8 * np.asarray(direction, dtype=np.float64) / np.linalg.norm(direction)
        p.setGravity(*g.tolist(), physicsClientId=cid)
        hand_shape = p.createCollisionShape(
            p.GEOM_MESH,
            vertices=np.asarray(hand_vertices, dtype=np.float64).tolist(),
            indices=np.asarray(hand_faces, dtype=np.int64).reshape(-1).tolist(),
            flags=p.GEOM_FORCE_CONCAVE_TRIMESH,
            physicsClientId=cid,
        )
        hand_body = p.createMultiBody(baseMass=0, baseCollisionShapeIndex=hand_shape, physicsClientId=cid)
        p.changeDynamics(hand_body, -1, lateralFriction=FRICTION, restitution=0.0, physicsClientId=cid)
        obj_shape = p.createCollisionShape(p.GEOM_MESH, fileName=path, physicsClientId=cid)
        obj = p.createMultiBody(
            baseMass=OBJECT_MASS, baseCollisionShapeIndex=obj_shape, basePosition=com.tolist(), physicsClientId=cid
        )
        p.changeDynamics(obj, -1, lateralFriction=FRICTION, restitution=0.5, physicsClientId=cid)
        for _ in range(steps):
            p.stepSimulation(physicsClientId=cid)
        end = np.asarray(p.getBasePositionAndOrientation(obj, physicsClientId=cid)[0])
        worst = max(worst, float(np.linalg.norm(end - com)) * 100.0)
    return worst


_SIM: tuple[int, int] | None = None  # (process id, client id) of this process's hold-test client


def _sim_client() -> int:
    """One pybullet DIRECT client per process for the hold tests (connecting costs a few ms a test)."""
    global _SIM
    p = _pybullet()
    if _SIM is None or _SIM[0] != os.getpid() or not p.isConnected(physicsClientId=_SIM[1]):
        _SIM = (os.getpid(), _client())
    return _SIM[1]
