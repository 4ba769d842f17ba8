"""What hoigen trusts: files from outside are data, read by loaders that cannot run code.

Pickles are the danger: unpickling calls whatever callables the file names. hoigen reads pickles
only through loaders that resolve an explicit allowlist of names:

- MANO pickles: :class:`RestrictedUnpickler` (here) with the numpy reconstruction functions below,
  plus the chumpy / scipy.sparse stand-ins of :mod:`hoigen.hand.model`; any other name is refused
  when the pickle asks for it, before the refused callable is called or anything is built from it.
- torch files (``.bin``/``.pt``/``.ckpt``/``.pkl``): :func:`safe_torch_load`, i.e. ``torch.load``
  with ``weights_only=True`` (torch's own allowlist); ``.safetensors`` holds no code at all.
  :func:`check_torch_pickles` checks files that a library would load with ``weights_only=False``
  (accelerate's ``custom_checkpoint_*.pkl``) before it does.

Size caps (:func:`check_file_size`, :func:`check_mesh_file`, :func:`check_png_size`) keep a crafted
file from exhausting memory before a parser would notice anything wrong; each refusal is one line
naming the file, the limit and what to do.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import collections
import copyreg
import os
import pickle
import re
import struct
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

try:  # numpy 2
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
    from numpy._core.multiarray import scalar as _np_scalar
except ImportError:  # numpy 1
    from numpy.core.multiarray import _reconstruct as _np_reconstruct
    from numpy.core.multiarray import scalar as _np_scalar

from hoigen.errors import HoigenError

MiB = 1 << 20
MANO_MAX_BYTES = 64 * MiB  # a real MANO_RIGHT.pkl is ~4 MB
MAX_ARRAY_ELEMENTS = 1 << 24  # largest array a pickle may ask numpy to allocate (MANO's largest: 315k)
MESH_MAX_BYTES = 256 * MiB  # trimesh peaks at ~7x an OBJ's size in memory
MESH_MAX_FACES = 10_000_000  # as declared in a PLY/OFF/STL header
MAX_IMAGE_PIXELS = 1 << 26  # 8192 x 8192
MESH_LIMIT_ENV = "HOIGEN_MESH_MAX_MB"


# ----------------------------------------------------------------------------------------------------
# Size caps


def check_file_size(path: str | Path, limit: int, what: str, hint: str = "") -> int:
    """The size of ``path`` in bytes; a one-line ``HoigenError`` when it is over ``limit``."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise HoigenError(f"{path}: {what} not found") from None
    if size > limit:
        raise HoigenError(
            f"{path}: {what} is {size / MiB:.1f} MiB, over the {limit / MiB:.0f} MiB hoigen reads"
            + (f"; {hint}" if hint else "")
        )
    return size


def mesh_max_bytes() -> int:
    """The mesh file size cap: ``MESH_MAX_BYTES``, or ``$HOIGEN_MESH_MAX_MB`` MiB when set."""
    value = os.environ.get(MESH_LIMIT_ENV, "").strip()
    if not value:
        return MESH_MAX_BYTES
    try:
        return int(float(value) * MiB)
    except ValueError:
        raise HoigenError(f"${MESH_LIMIT_ENV}={value!r}: expected a number of MiB, e.g. 512") from None


def _declared_faces(path: Path, head: bytes, size: int) -> int | None:
    """The face count a PLY, OFF or binary STL header declares (None: the format declares none)."""
    suffix = path.suffix.lower()
    if suffix == ".ply" and head.startswith(b"ply"):
        end = head.find(b"end_header")
        text = head[: end if end >= 0 else len(head)].decode("ascii", errors="replace")
        counts = re.findall(r"^element\s+(\w+)\s+(\d+)\s*$", text, flags=re.MULTILINE)
        return max((int(n) for _, n in counts), default=0)
    if suffix == ".off":
        lines = [ln.split("#", 1)[0].strip() for ln in head.decode("ascii", errors="replace").splitlines()]
        lines = [ln for ln in lines if ln]
        if lines and lines[0].upper().endswith("OFF"):
            rest = lines[0][3:].split() or (lines[1].split() if len(lines) > 1 else [])
            if len(rest) >= 2 and rest[0].isdigit() and rest[1].isdigit():
                return max(int(rest[0]), int(rest[1]))
        return None
    if suffix == ".stl" and size >= 84 and not head.lstrip().lower().startswith(b"solid"):
        (count,) = struct.unpack("<I", head[80:84])
        return count
    return None


def check_mesh_file(path: str | Path) -> None:
    """Refuse a mesh file before parsing: over the size cap, or a header declaring too many elements."""
    path = Path(path)
    limit = mesh_max_bytes()
    size = check_file_size(
        path, limit, "mesh file", f"simplify it, or raise the cap with {MESH_LIMIT_ENV}=<MiB> if you have the memory"
    )
    with open(path, "rb") as fh:
        head = fh.read(64 * 1024)
    declared = _declared_faces(path, head, size)
    if declared is not None and declared > MESH_MAX_FACES:
        raise HoigenError(
            f"{path}: the header declares {declared:,} elements, over the {MESH_MAX_FACES:,} hoigen reads; "
            "simplify the mesh (or the header is corrupt)"
        )


def check_png_size(data: bytes, what: str) -> None:
    """Refuse a PNG whose header declares more than ``MAX_IMAGE_PIXELS`` (a decompression bomb)."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24 and data[12:16] == b"IHDR":
        width, height = struct.unpack(">II", data[16:24])
        if width * height > MAX_IMAGE_PIXELS:
            raise HoigenError(
                f"{what}: the PNG declares {width}x{height} pixels, over the {MAX_IMAGE_PIXELS:,} hoigen decodes"
            )


# ----------------------------------------------------------------------------------------------------
# Pickles: an allowlist unpickler


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle asked for a name outside the allowlist; ``name`` is ``module.qualname``."""

    def __init__(self, module: str, name: str) -> None:
        self.name = f"{module}.{name}"
        super().__init__(f"refused to load {self.name}")


def _capped_shape(shape: Any) -> None:
    dims = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    total = 1
    for d in dims:
        if not isinstance(d, (int, np.integer)) or d < 0:
            raise pickle.UnpicklingError(f"bad array shape {shape!r}")
        total *= int(d)
    if total > MAX_ARRAY_ELEMENTS:
        raise pickle.UnpicklingError(f"array of {total:,} elements, over the {MAX_ARRAY_ELEMENTS:,} allowed")


class _Name:
    """What a pickle gets for ``numpy.ndarray``: a name to pass to ``_reconstruct``, not a class it can
    instantiate (``ndarray(shape)`` would allocate whatever shape the file asks for)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


_NDARRAY = _Name("numpy.ndarray")


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not _NDARRAY:
        raise pickle.UnpicklingError(f"array subtype {subtype!r} is not numpy.ndarray")
    _capped_shape(shape)
    return _np_reconstruct(np.ndarray, shape, dtype)


def _zeros(shape: Any, dtype: Any = float, *args: Any) -> np.ndarray:
    _capped_shape(shape)
    return np.zeros(shape, np.dtype(dtype))


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
    dtype = np.dtype(dtype)
    if dtype.hasobject:
        raise pickle.UnpicklingError("object arrays are not allowed")
    return np.frombuffer(buf, dtype=dtype).reshape(shape, order=order)


def _encode(text: Any, encoding: str = "utf-8", *args: Any) -> bytes:
    if not isinstance(text, str) or codecs.lookup(encoding).name not in ("iso8859-1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode({type(text).__name__}, {encoding!r}) is not allowed")
    return text.encode("latin-1")


def _scalar(dtype: Any, data: Any = None) -> Any:
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise pickle.UnpicklingError(f"numpy scalar of dtype {dtype!r} is not allowed")
    return _np_scalar(dtype, data)


def _each_numpy_core(name: str, obj: Any) -> dict[tuple[str, str], Any]:
    mods = {"multiarray": ("numpy.core.multiarray", "numpy._core.multiarray"),
            "numeric": ("numpy.core.numeric", "numpy._core.numeric")}  # fmt: skip
    part, attr = name.split(".")
    return {(m, attr): obj for m in mods[part]}


# What numpy arrays, dtypes and scalars need (numpy 1 and 2 names), and plain containers.
NUMPY_DATA_GLOBALS: dict[tuple[str, str], Any] = {
    **_each_numpy_core("multiarray._reconstruct", _reconstruct),
    **_each_numpy_core("multiarray.scalar", _scalar),
    **_each_numpy_core("numeric._frombuffer", _frombuffer),
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): np.dtype,
    ("numpy", "zeros"): _zeros,  # the embedded hand stores all-zero posedirs as a zeros() call
    ("_codecs", "encode"): _encode,  # bytes in Python 3 protocol-2 pickles
    ("builtins", "list"): list,
    ("builtins", "tuple"): tuple,
    ("builtins", "dict"): dict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "object"): object,
    ("collections", "OrderedDict"): collections.OrderedDict,
}


def _py3_name(module: str, name: str) -> tuple[str, str]:
    """Python 2 names (``__builtin__.set``, ``copy_reg._reconstructor``) as Python 3 spells them."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only ``allowed`` names (plus what :meth:`resolve` returns).

    Every other global raises :class:`RefusedGlobal` when the pickle asks for it: nothing it names
    is imported, called or built. Persistent ids are refused by ``pickle.Unpickler`` already.
    """

    allowed: dict[tuple[str, str], Any] = NUMPY_DATA_GLOBALS

    def resolve(self, module: str, name: str) -> Any | None:
        """Hook for subclasses: an object for (module, name), or None to refuse it."""
        return None

    def find_class(self, module: str, name: str) -> Any:
        key = _py3_name(module, name)
        obj = self.allowed.get(key)
        if obj is None:
            obj = self.resolve(*key)
        if obj is None:
            raise RefusedGlobal(*key)
        return obj


def reconstructor_for(allowed_class: Callable[[type], bool]) -> Callable[..., Any]:
    """``copyreg._reconstructor`` (Python 2 protocol 0/1 objects) limited to classes ``allowed_class`` accepts."""

    def reconstruct(cls: Any, base: Any, state: Any) -> Any:
        if base is not object or not isinstance(cls, type) or not allowed_class(cls):
            raise pickle.UnpicklingError(f"copyreg._reconstructor({cls!r}, {base!r}) is not allowed")
        return copyreg._reconstructor(cls, object, None)

    return reconstruct


# ----------------------------------------------------------------------------------------------------
# torch files


def safe_torch_load(path: str | Path, map_location: Any = "cpu") -> Any:
    """Load a torch file as data: ``.safetensors`` via safetensors, anything else with ``weights_only=True``.

    A file that needs more than tensors, numbers and containers (i.e. would run code) is refused
    with one line naming the file and the global it asked for. Integrators: use this for
    single-file checkpoints (``.ckpt``/``.pt``/``.bin``) instead of a bare ``torch.load``.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise HoigenError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device=str(map_location))
        except (SafetensorError, OSError, ValueError) as exc:
            raise HoigenError(f"{path}: not a readable safetensors file ({_first_line(exc)})") from None
    try:
        return torch.load(str(path), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise HoigenError(
            f"{path}: refused: this torch file needs more than weights to load ({_refused_name(exc)}), "
            "so loading it could run code; use a .safetensors file or re-save it as plain tensors"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise HoigenError(f"{path}: not a readable torch file ({_first_line(exc)})") from None


def check_torch_pickles(paths: Iterable[str | Path]) -> None:
    """Check, with :func:`safe_torch_load`, files that a library is about to load with ``weights_only=False``."""
    for path in paths:
        safe_torch_load(path)


def check_checkpoint_folder(folder: str | Path) -> None:
    """Refuse a training checkpoint whose ``custom_checkpoint_*.pkl`` (which accelerate's
    ``load_state`` reads with ``weights_only=False``) holds more than weights."""
    check_torch_pickles(sorted(Path(folder).glob("custom_checkpoint_*.pkl")))


def prefer_safetensors(folder: str | Path) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments for a local folder: ``use_safetensors=True`` when every
    folder holding weights there has ``.safetensors`` ones (so no pickle is read); else ``{}``
    (diffusers/transformers then read ``.bin`` with ``torch.load(weights_only=True)``)."""
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    dirs: dict[Path, set[str]] = {}
    for pattern in ("*.safetensors", "*.bin", "*.pt", "*.ckpt", "*/*.safetensors", "*/*.bin", "*/*.pt", "*/*.ckpt"):
        for f in folder.glob(pattern):
            dirs.setdefault(f.parent, set()).add(f.suffix)
    if dirs and all(".safetensors" in kinds for kinds in dirs.values()):
        return {"use_safetensors": True}
    return {}


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:200]


def _refused_name(error: BaseException) -> str:
    match = re.search(r"GLOBAL\s+([\w.]+)", str(error))
    return f"it asks for {match.group(1)}" if match else _first_line(error)


__all__ = [
    "MANO_MAX_BYTES",
    "MAX_ARRAY_ELEMENTS",
    "MESH_MAX_BYTES",
    "MESH_MAX_FACES",
    "NUMPY_DATA_GLOBALS",
    "RefusedGlobal",
    "RestrictedUnpickler",
    "check_checkpoint_folder",
    "check_file_size",
    "check_mesh_file",
    "check_png_size",
    "check_torch_pickles",
    "prefer_safetensors",
    "reconstructor_for",
    "safe_torch_load",
]


def load_user_callable(spec: str, flag: str, form: str) -> Any:
    """Import ``module:name`` and return that callable: the one way hoigen runs user code (``--caption-hook``,
    ``--filter-detector``); every other input is data. ``form`` is the expected spelling for the error line,
    e.g. ``"module:function, e.g. mycaptions:caption"``."""
    import importlib

    module_name, _, name = spec.partition(":")
    if not module_name or not name:
        raise HoigenError(f"{flag} {spec!r}: write {form}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise HoigenError(f"{flag} {spec!r}: cannot import {module_name} ({error}); check PYTHONPATH") from None
    target = getattr(module, name, None)
    if not callable(target):
        raise HoigenError(f"{flag} {spec!r}: {module_name} has no callable {name}")
    return target

