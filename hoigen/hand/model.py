"""The MANO layer: load a MANO-format hand (real MANO or the embedded stand-in) through ``smplx``.

Real MANO pickles (v1.2) were written under Python 2 with chumpy objects and scipy sparse matrices;
chumpy does not import on Python 3.11, so :func:`load_mano_pickle` maps chumpy classes to a shim
that recovers the plain array. The file is untrusted data: its unpickler resolves only an allowlist
(numpy arrays, the chumpy/scipy.sparse shims, plain containers; see :mod:`hoigen.trust`) and refuses
any other name, so a crafted pickle cannot run code. Both kinds of file then go through the very same
``smplx.MANO(..., data_struct=...)`` call in :class:`HandModel`.

Pose conventions (smplx): ``global_orient`` rotates the hand about its root joint J0 (which depends on
``betas``), then ``transl`` is added: ``v = R (v_rest - J0) + J0 + transl``. ``hand_pose`` is the full
45-D axis-angle pose of MANO's 15 finger joints, relative to the flat hand (``flat_hand_mean=True``).
Joints come out in the common 21 order of :mod:`hoigen.hand.keypoints`.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hoigen.errors import HoigenError
from hoigen.hand.embedded import EMBEDDED_DIR, EMBEDDED_HAND_NAME, design_joints21
from hoigen.hand.keypoints import (
    FINGERS,
    MANO_JOINT_NAMES,
    REAL_MANO_TIP_IDS,
    joint_index,
    joints21_from_mano,
)
from hoigen.trust import MANO_MAX_BYTES, RefusedGlobal, RestrictedUnpickler, check_file_size, reconstructor_for

REAL_MANO_NAME = "mano-v1.2"
MANO_URL = "https://mano.is.tue.mpg.de"
_FILE_NAMES = {"right": "MANO_RIGHT.pkl", "left": "MANO_LEFT.pkl"}
# The nine keys smplx reads from a MANO pickle.
MANO_KEYS = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table", "f",
             "hands_components", "hands_mean")  # fmt: skip


# ----------------------------------------------------------------------------------------------------
# Loading pickles (real MANO with chumpy, or the embedded files)


class _PickledState:
    """Stand-in for a chumpy object or a scipy sparse matrix: keeps the pickled state only."""

    _module = ""
    _name = ""
    _state: object = None

    def __setstate__(self, state) -> None:
        self._state = state

    def __init__(self, *args, **kwargs) -> None:  # old protocols may call the class
        self._state = {}


def _to_array(obj, where: str):
    """Replace chumpy / sparse stand-ins (recursively inside containers) with numpy arrays."""
    if isinstance(obj, _PickledState):
        state = obj._state if isinstance(obj._state, dict) else {}
        if obj._module.startswith("scipy"):
            return _sparse_to_dense(obj._name, state, where)
        if "x" in state:
            return np.asarray(_to_array(state["x"], where))
        raise HoigenError(
            f"{where}: cannot read a chumpy '{obj._module}.{obj._name}' object (no stored array); "
            "use an unmodified MANO v1.2 file from " + MANO_URL
        )
    if isinstance(obj, dict):
        return {k: _to_array(v, where) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_array(v, where) for v in obj)
    return obj


def _sparse_to_dense(name: str, state: dict, where: str) -> np.ndarray:
    import scipy.sparse as sp

    shape = tuple(state.get("_shape", state.get("shape", ())))
    fmt = name[:3]
    try:
        if fmt in ("csc", "csr"):
            cls = sp.csc_matrix if fmt == "csc" else sp.csr_matrix
            mat = cls((state["data"], state["indices"], state["indptr"]), shape=shape)
        elif fmt == "coo":
            mat = sp.coo_matrix((state["data"], (state["row"], state["col"])), shape=shape)
        else:
            raise KeyError(name)
    except (KeyError, ValueError, TypeError) as exc:
        raise HoigenError(f"{where}: cannot read the sparse matrix '{name}' ({exc}); re-save it") from exc
    return np.asarray(mat.todense())


def _is_shim(cls: type) -> bool:
    return issubclass(cls, _PickledState)


class _MANOUnpickler(RestrictedUnpickler):
    """The allowlist unpickler (:mod:`hoigen.trust`) plus state-only stand-ins for chumpy objects and
    scipy sparse matrices, so that neither library is imported and no class of theirs is built."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._shims: dict[tuple[str, str], type] = {}  # per load: a file cannot alter another's classes

    def resolve(self, module: str, name: str):
        if module == "chumpy" or module.startswith("chumpy."):
            pass
        elif module.startswith("scipy.sparse") and name.endswith(("_matrix", "_array")):
            pass
        elif (module, name) == ("copyreg", "_reconstructor"):  # Python 2 protocol 0/1 objects
            return reconstructor_for(_is_shim)
        else:
            return None
        key = (module, name)
        if key not in self._shims:
            self._shims[key] = type(name, (_PickledState,), {"_module": module, "_name": name})
        return self._shims[key]


def load_mano_pickle(path: str | Path) -> dict:
    """Load a MANO-format pickle (real MANO v1.2 or embedded) into a dict of plain numpy arrays.

    The file is data: only numpy arrays, chumpy objects and scipy sparse matrices (as stand-ins) and
    plain containers can come out of it; a pickle naming anything else (``os.system``, ``eval`` ...)
    is refused with one line before that name is imported or called.
    """
    path = Path(path)
    if not path.is_file():
        raise HoigenError(f"{path}: file not found; download MANO from {MANO_URL} and pass --mano-dir")
    check_file_size(path, MANO_MAX_BYTES, "MANO pickle", f"use MANO v1.2 from {MANO_URL}")
    try:
        with open(path, "rb") as fh:
            data = _MANOUnpickler(fh, encoding="latin1").load()
        if not isinstance(data, dict):
            raise HoigenError(f"{path}: not a MANO pickle (holds {type(data).__name__}, not a dict)")
        data = _to_array(data, str(path))
    except RefusedGlobal as exc:
        raise HoigenError(
            f"{path}: refused to load '{exc.name}' from this MANO pickle: a MANO file holds only numpy arrays, "
            f"chumpy and scipy.sparse data, and loading this one could run code; do not use it, "
            f"re-download MANO from {MANO_URL}"
        ) from None
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, ValueError, TypeError, IndexError,
            KeyError, MemoryError, RecursionError, struct.error) as exc:  # fmt: skip
        raise HoigenError(
            f"{path}: not a readable MANO pickle ({type(exc).__name__}: {exc}); re-download it from {MANO_URL}"
        ) from None
    missing = [k for k in MANO_KEYS if k not in data]
    if missing:
        raise HoigenError(f"{path}: MANO pickle lacks {', '.join(missing)}; use MANO v1.2 from {MANO_URL}")
    for key in MANO_KEYS:
        value = data[key]
        if not isinstance(value, np.ndarray) or not (value.dtype.kind in "biuf" and value.size):
            raise HoigenError(
                f"{path}: MANO key {key} is not a numeric array ({type(value).__name__}); "
                f"use MANO v1.2 from {MANO_URL}"
            )
    return data


# ----------------------------------------------------------------------------------------------------
# The hand model


@dataclass
class HandOutput:
    """Posed hands: ``vertices`` (B, V, 3) and ``joints`` (B, 21, 3), float32, metres."""

    vertices: np.ndarray
    joints: np.ndarray


def _batch(x, dim: int, batch: int | None) -> np.ndarray:
    a = np.zeros((1, dim)) if x is None else np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2 or a.shape[1] != dim:
        raise ValueError(f"expected shape ({dim},) or (B, {dim}), got {a.shape}")
    if batch is not None and a.shape[0] == 1 and batch > 1:
        a = np.repeat(a, batch, axis=0)
    return a


def _rotvec_from_matrix(R: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_matrix(np.asarray(R, dtype=np.float64)).as_rotvec()


class HandModel:
    """A MANO hand (real or embedded) behind one ``smplx.MANO`` call.

    Attributes: ``name`` (the model's name for annotations), ``side`` ('right'/'left'), ``faces``
    (F, 3) int64, ``is_embedded``, ``tip_vertex_ids`` (thumb..pinky), ``source`` (the pickle's path),
    ``num_vertices``.
    """

    def __init__(self, path: str | Path, side: str) -> None:
        import smplx
        import torch
        from smplx.utils import Struct

        if side not in ("right", "left"):
            raise HoigenError(f"{path}: hand side must be 'right' or 'left', not {side!r}")
        self.source = Path(path)
        self.side = side
        data = load_mano_pickle(self.source)
        marker = data.get("hoigen_model")
        self.is_embedded = marker is not None
        self.name = str(marker) if marker is not None else REAL_MANO_NAME
        self.tip_vertex_ids = tuple(int(i) for i in data.get("tip_vertex_ids", REAL_MANO_TIP_IDS))
        with contextlib.redirect_stdout(io.StringIO()):  # smplx prints a note about 10 betas
            self._mano = smplx.MANO(
                model_path=str(self.source.parent),
                is_rhand=side == "right",
                data_struct=Struct(**data),
                use_pca=False,
                flat_hand_mean=True,
                batch_size=1,
            )
        self._mano.eval()
        self._torch = torch
        self.faces = np.asarray(self._mano.faces, dtype=np.int64)
        self.num_vertices = int(self._mano.v_template.shape[0])
        self._rest_joints0: np.ndarray | None = None
        if max(self.tip_vertex_ids) >= self.num_vertices:
            raise HoigenError(f"{path}: fingertip vertex ids exceed the mesh's {self.num_vertices} vertices")

    @functools.cached_property
    def vertex_bones(self) -> np.ndarray:
        """(V,) the joint (0..15, MANO order) that carries most of each vertex's skinning weight."""
        return np.asarray(self._mano.lbs_weights.detach().cpu().numpy()).argmax(axis=1)

    @functools.cached_property
    def vertex_fingers(self) -> np.ndarray:
        """(V,) finger of each vertex (0 thumb .. 4 pinky, the FINGERS order), -1 for the palm.

        A vertex belongs to the finger whose joints carry most of its skinning weight.
        """
        finger_of_joint = np.array([-1] + [FINGERS.index(name.rstrip("123")) for name in MANO_JOINT_NAMES[1:]])
        return finger_of_joint[self.vertex_bones]

    def __repr__(self) -> str:
        return f"HandModel(name={self.name!r}, side={self.side!r}, source='{self.source}')"

    # -- posing ----------------------------------------------------------------------------------------

    def forward(self, global_orient=None, hand_pose=None, betas=None, transl=None) -> HandOutput:
        """Pose the hand. Inputs are single ((3,), (45,), (10,), (3,)) or batched ((B, 3), ...);
        missing ones are zero. Returns vertices (B, V, 3) and the 21 joints (B, 21, 3)."""
        torch = self._torch
        sizes = [np.asarray(x).reshape(-1, np.asarray(x).shape[-1]).shape[0]
                 for x in (global_orient, hand_pose, betas, transl) if x is not None]  # fmt: skip
        b = max(sizes, default=1)
        args = {
            "global_orient": _batch(global_orient, 3, b),
            "hand_pose": _batch(hand_pose, 45, b),
            "betas": _batch(betas, 10, b),
            "transl": _batch(transl, 3, b),
        }
        if len({a.shape[0] for a in args.values()}) != 1:
            raise ValueError(f"batch sizes differ: { {k: a.shape[0] for k, a in args.items()} }")
        tensors = {k: torch.as_tensor(a, dtype=torch.float32) for k, a in args.items()}
        with torch.no_grad():
            out = self._mano(**tensors)
        verts = out.vertices.cpu().numpy().astype(np.float32)
        joints16 = out.joints.cpu().numpy()[:, : len(MANO_JOINT_NAMES)]
        joints = joints21_from_mano(joints16, verts, self.tip_vertex_ids).astype(np.float32)
        return HandOutput(vertices=verts, joints=joints)

    __call__ = forward

    def forward_torch(self, global_orient=None, hand_pose=None, betas=None, transl=None):
        """Differentiable, batched :meth:`forward` on torch tensors (float32, shapes (B, 3), (B, 45),
        (B, 10), (B, 3); missing ones are zero). Returns ``(vertices (B, V, 3), joints (B, 21, 3))``
        with gradients flowing to every input; used by grasp optimisation."""
        torch = self._torch
        given = [x for x in (global_orient, hand_pose, betas, transl) if x is not None]
        b = given[0].shape[0] if given else 1
        like = given[0] if given else torch.zeros(1)

        def arg(x, dim: int):
            return torch.zeros(b, dim, dtype=torch.float32, device=like.device) if x is None else x.float()

        out = self._mano(
            global_orient=arg(global_orient, 3), hand_pose=arg(hand_pose, 45),
            betas=arg(betas, 10), transl=arg(transl, 3),
        )  # fmt: skip
        joints16 = out.joints[:, : len(MANO_JOINT_NAMES)]
        return out.vertices, joints21_from_mano(joints16, out.vertices, self.tip_vertex_ids)

    def root_joint(self, betas=None) -> np.ndarray:
        """The root joint J0 (3,) of the rest hand with shape ``betas``: smplx rotates about it."""
        m = self._mano
        b = np.zeros(10) if betas is None else np.asarray(betas, dtype=np.float64).reshape(10)
        dirs = m.shapedirs.cpu().numpy().astype(np.float64)
        v = m.v_template.cpu().numpy().astype(np.float64) + dirs @ b[: dirs.shape[-1]]
        return m.J_regressor.cpu().numpy()[0].astype(np.float64) @ v

    def params_for_rigid(self, R, T, hand_pose=None, betas=None) -> tuple[np.ndarray, np.ndarray]:
        """(global_orient (3,), transl (3,)) so that the posed hand equals ``R @ v_canonical + T``,
        where v_canonical is the hand with this pose and shape at zero orient and zero transl."""
        R = np.asarray(R, dtype=np.float64).reshape(3, 3)
        T = np.asarray(T, dtype=np.float64).reshape(3)
        j0 = self.root_joint(betas)
        return _rotvec_from_matrix(R), T - j0 + R @ j0

    # -- canonical frame helpers -----------------------------------------------------------------------

    def rest_joints(self, betas=None) -> np.ndarray:
        """The 21 joints (21, 3) of the flat hand at zero orient and transl."""
        return self.forward(betas=betas).joints[0].astype(np.float64)

    def palm_frame(self, betas=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(centre, normal, forward) of the palm in the canonical frame (flat hand, zero orient/transl).

        ``centre`` lies on the palm's surface, ``normal`` is the unit direction the palm faces, and
        ``forward`` the unit direction from the wrist toward the middle finger."""
        out = self.forward(betas=betas)
        j = out.joints[0].astype(np.float64)
        v = out.vertices[0].astype(np.float64)
        forward, lateral, normal = _hand_axes(j, self.side)
        bases = [joint_index(f"{f}1") for f in FINGERS[1:]]
        inside = 0.45 * j[0] + 0.55 * j[bases].mean(axis=0)
        hits = _ray_hits(inside, normal, v[self.faces])
        h = float(hits.max()) if hits.size else 0.0
        return inside + h * normal, normal, forward

    def curl_pose(self, amount) -> np.ndarray:
        """Full 45-D hand pose curling this model's fingers by ``amount`` (see :func:`curl_pose`)."""
        if self._rest_joints0 is None:
            self._rest_joints0 = self.rest_joints()
        return curl_pose(amount, side=self.side, rest_joints=self._rest_joints0)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _ray_hits(origin: np.ndarray, direction: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Distances t > 0 at which the ray origin + t * direction crosses triangles (F, 3, 3)."""
    a, b, c = triangles[:, 0], triangles[:, 1], triangles[:, 2]
    e1, e2 = b - a, c - a
    p = np.cross(direction, e2)
    det = np.einsum("ij,ij->i", e1, p)
    ok = np.abs(det) > 1e-12
    inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
    s = origin - a
    u = np.einsum("ij,ij->i", s, p) * inv
    q = np.cross(s, e1)
    w = (q @ direction) * inv
    t = np.einsum("ij,ij->i", e2, q) * inv
    hit = ok & (u >= 0) & (w >= 0) & (u + w <= 1) & (t > 0)
    return t[hit]


def _hand_axes(j: np.ndarray, side: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(forward, lateral toward the thumb, palm normal) unit vectors from 21 rest joints."""
    forward = _unit(j[joint_index("middle1")] - j[0])
    lateral = j[joint_index("index1")] - j[joint_index("pinky1")]
    lateral = _unit(lateral - forward * (lateral @ forward))
    normal = np.cross(lateral, forward) * (1.0 if side == "right" else -1.0)
    return forward, lateral, normal


# Flexion at full curl (amount 1), radians: (joint1, joint2, joint3) per finger.
_CURL_ANGLES = {
    "thumb": (0.60, 0.50, 0.60),
    "index": (1.35, 1.65, 1.05),
    "middle": (1.40, 1.65, 1.05),
    "ring": (1.40, 1.65, 1.05),
    "pinky": (1.45, 1.60, 1.00),
}


def curl_pose(amount, side: str = "right", rest_joints: np.ndarray | None = None) -> np.ndarray:
    """Full 45-D axis-angle hand pose: ``amount`` 0 = flat open hand, 1 = closed fist.

    ``amount`` is one number or five (thumb, index, middle, ring, pinky). Each finger bends about
    ``finger_direction x palm_normal`` so it curls toward the palm; the thumb swings across the palm
    toward the pinky side. The axes come from ``rest_joints`` (21, 3) of the hand in question
    (default: the embedded hand of that ``side``), so left hands come out mirrored.
    """
    if side not in ("right", "left"):
        raise ValueError(f"side must be 'right' or 'left', not {side!r}")
    amounts = (
        np.broadcast_to(np.asarray(amount, dtype=np.float64), (5,))
        if np.ndim(amount) == 0
        else (np.asarray(amount, dtype=np.float64).reshape(5))
    )
    j = design_joints21(side) if rest_joints is None else np.asarray(rest_joints, dtype=np.float64)
    forward, lateral, normal = _hand_axes(j, side)
    pose = np.zeros((15, 3))
    for k, finger in enumerate(FINGERS):
        b1 = joint_index(f"{finger}1")
        if finger == "thumb":
            d = _unit(j[b1 + 3] - j[b1])
            toward = normal - 2.0 * lateral  # across the palm, a little in front of it
        else:
            d = _unit(j[b1 + 1] - j[b1])
            toward = normal
        toward = _unit(toward - d * (toward @ d))
        axis = _unit(np.cross(d, toward))
        for i, angle in enumerate(_CURL_ANGLES[finger]):
            mano_j = MANO_JOINT_NAMES.index(f"{finger}{i + 1}")
            pose[mano_j - 1] = axis * angle * amounts[k]
    return pose.reshape(45)


# ----------------------------------------------------------------------------------------------------
# Finding and caching models


def _resolve_dir(mano_dir: str | Path | None) -> Path | None:
    if mano_dir is None:
        env = os.environ.get("HOIGEN_MANO_DIR", "").strip()
        mano_dir = env or None
    return None if mano_dir is None else Path(mano_dir).expanduser().resolve()


def load_hand(side: str = "right", mano_dir: str | Path | None = None) -> HandModel:
    """The hand model for ``side``: from ``mano_dir``, else ``$HOIGEN_MANO_DIR``, else embedded."""
    if side not in ("right", "left"):
        raise HoigenError(f"hand side {side!r}: must be 'right' or 'left'")
    return _load_cached(side, _resolve_dir(mano_dir))


@functools.lru_cache(maxsize=8)
def _load_cached(side: str, directory: Path | None) -> HandModel:
    if directory is None:
        path = EMBEDDED_DIR / _FILE_NAMES[side]
        if not path.is_file():
            raise HoigenError(
                f"{path}: embedded hand missing; rebuild it with python -m hoigen.hand.embedded"
            )
        return HandModel(path, side)
    path = directory / _FILE_NAMES[side]
    if not path.is_file():
        raise HoigenError(
            f"{path}: MANO file not found; download MANO from {MANO_URL} and pass --mano-dir "
            f"pointing to the folder that holds {_FILE_NAMES['right']} and {_FILE_NAMES['left']}"
        )
    return HandModel(path, side)


__all__ = [
    "EMBEDDED_HAND_NAME",
    "HandModel",
    "HandOutput",
    "REAL_MANO_NAME",
    "curl_pose",
    "load_hand",
    "load_mano_pickle",
]
