"""Object libraries: load a folder of meshes (YCB layout included), save and read the objects folder.

``load_objects`` finds .obj/.ply/.glb/.gltf/.stl/.off files recursively. A file with a generic name
(``textured.obj``, ``nontextured.ply``, ``model_normalized.obj`` ...) takes its id from the nearest
folder whose name is not generic, so ``002_master_chef_can/google_16k/textured.obj`` becomes
``002-master-chef-can``; when one object folder holds several generic variants (YCB ships
``google_16k/textured.obj``, ``google_16k/nontextured.ply``, ``tsdf/textured.obj`` ...), the best
one is used (google_16k first, textured before nontextured). Two files that name the same id
explicitly are an error.

The mesh frame is kept as given (only millimetre files are scaled to metres); the NOCS transform
records the bounding-box centring and scaling. ``save_objects`` writes ``objects/<id>.ply`` and
``objects.parquet`` beside the shards; ``read_objects`` reads them back and checks every hash.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import trimesh
import yaml

from hoigen.data.atomic import atomic_write_bytes
from hoigen.errors import HoigenError
from hoigen.objects.asset import ObjectAsset, check_id, mesh_bytes, slugify
from hoigen.objects.ply import read_ply_bytes

MESH_SUFFIXES = (".obj", ".ply", ".glb", ".gltf", ".stl", ".off")
GENERIC_STEMS = ("textured", "textured_simple", "nontextured", "model_normalized", "model", "mesh", "scene")
GENERIC_DIRS = ("google_16k", "google_64k", "google_512k", "poisson", "tsdf", "models", "meshes", "mesh")
MM_DIAGONAL = 5.0  # a bounding-box diagonal above this many "metres" means the file is in millimetres
PARQUET_NAME = "objects.parquet"

# name token -> category; plural tokens ("cups") match after dropping one trailing "s"
CATEGORY_WORDS = {
    "mug": "mug",
    "cup": "mug",
    "bottle": "bottle",
    "bowl": "bowl",
    "can": "can",
    "laptop": "laptop",
    "camera": "camera",
    "box": "box",
}


def guess_category(name: str) -> str:
    """A category from a name's words (``025_mug`` -> mug, ``065-a_cups`` -> mug), else ``object``."""
    for token in re.split(r"[^a-z]+", name.lower()):
        for word in (token, token[:-1] if token.endswith("s") else token):
            if word in CATEGORY_WORDS:
                return CATEGORY_WORDS[word]
    return "object"


def _object_name(path: Path, root: Path) -> tuple[str, bool]:
    """(name, generic): the name an id comes from; generic when it came from a parent folder."""
    if path.stem.lower() not in GENERIC_STEMS:
        return path.stem, False
    for parent in path.relative_to(root).parents:
        if parent != Path(".") and parent.name.lower() not in GENERIC_DIRS:
            return parent.name, True
    return (root.name if root.name else path.stem), True


def _variant_rank(path: Path) -> tuple:
    dirs = [p.lower() for p in path.parent.parts]
    dir_rank = next((i for i, d in enumerate(GENERIC_DIRS) if d in dirs), len(GENERIC_DIRS))
    stem_rank = GENERIC_STEMS.index(path.stem.lower())
    return (dir_rank, stem_rank, MESH_SUFFIXES.index(path.suffix.lower()), str(path))


def _read_mapping(mapping: Path) -> dict[str, str]:
    mapping = Path(mapping)
    if not mapping.is_file():
        raise HoigenError(
            f"{mapping}: category mapping file does not exist; pass a YAML/JSON {{name: category}}"
        )
    try:
        text = mapping.read_text()
        data = json.loads(text) if mapping.suffix.lower() == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise HoigenError(
            f"{mapping}: cannot read the category mapping ({exc}); write it as {{name: category}}"
        ) from exc
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise HoigenError(f"{mapping}: the category mapping must be a mapping of name to category string")
    out = {}
    for key, value in data.items():
        out[str(key)] = value
        out[slugify(str(key))] = value
    return out


def _load_mesh(path: Path) -> tuple[np.ndarray, np.ndarray, float]:
    """Vertices (metres), faces and the unit scale applied, or a HoigenError naming the file."""
    try:
        loaded = trimesh.load(str(path), force="mesh", process=False)
    except Exception as exc:  # noqa: BLE001 - any parser failure is the user's file
        raise HoigenError(
            f"{path}: cannot be read as a mesh ({type(exc).__name__}: {exc}); fix or remove it"
        ) from exc
    if not isinstance(loaded, trimesh.Trimesh):
        raise HoigenError(f"{path}: holds no triangle mesh (got {type(loaded).__name__}); fix or remove it")
    v = np.asarray(loaded.vertices, dtype=np.float64)
    f = np.asarray(loaded.faces, dtype=np.int64).reshape(-1, 3)
    if len(f) == 0 or len(v) == 0:
        raise HoigenError(f"{path}: the mesh has no faces; fix or remove it")
    if not np.isfinite(v).all():
        raise HoigenError(f"{path}: the mesh has NaN or infinite vertex coordinates; fix or remove it")
    if f.min() < 0 or f.max() >= len(v):
        raise HoigenError(f"{path}: faces index vertices that do not exist; fix or remove it")
    # merge duplicated positions (OBJ files split vertices at texture seams) so closed meshes close
    merged = trimesh.Trimesh(vertices=v, faces=f, process=True, validate=False)
    v, f = np.asarray(merged.vertices, dtype=np.float64), np.asarray(merged.faces, dtype=np.int64)
    if len(f) == 0:
        raise HoigenError(f"{path}: the mesh has only degenerate faces; fix or remove it")
    diag = float(np.linalg.norm(v.max(axis=0) - v.min(axis=0)))
    if diag <= 0:
        raise HoigenError(f"{path}: the mesh is a single point (zero-size bounding box); fix or remove it")
    scale = 0.001 if diag > MM_DIAGONAL else 1.0
    return v * scale, f, scale


def load_objects(root: Path, category: str | None = None, mapping: Path | None = None) -> list[ObjectAsset]:
    """Every mesh under ``root`` as an ``ObjectAsset``, sorted by id.

    Category: ``mapping`` ({name or id: category}) first, then ``category``, then name words.
    """
    root = Path(root)
    if not root.is_dir():
        raise HoigenError(
            f"objects folder {root} does not exist; pass --objects DIR with .obj/.ply/.glb/.stl meshes "
            "or leave it out to use the embedded procedural objects"
        )
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in MESH_SUFFIXES)
    if not files:
        raise HoigenError(
            f"{root}: no meshes found ({', '.join(MESH_SUFFIXES)}, searched recursively); "
            "point --objects at a folder of meshes"
        )
    names = _read_mapping(mapping) if mapping is not None else {}
    chosen: dict[str, tuple[Path, str, bool]] = {}
    for path in files:
        name, generic = _object_name(path, root)
        object_id = slugify(name)
        if not object_id:
            raise HoigenError(f"{path}: no usable id in the name {name!r}; rename it with letters or digits")
        if object_id in chosen:
            other, _, other_generic = chosen[object_id]
            if not (generic and other_generic):
                raise HoigenError(
                    f"{path}: gives the object id {object_id!r} that {other} already has; "
                    "rename one of them (ids are lower-case names with '-' for other characters)"
                )
            if _variant_rank(path) >= _variant_rank(other):
                continue
        chosen[object_id] = (path, name, generic)
    assets = []
    for object_id in sorted(chosen):
        path, name, _ = chosen[object_id]
        cat = names.get(name) or names.get(object_id) or category or guess_category(name)
        v, f, scale = _load_mesh(path)
        assets.append(ObjectAsset.create(object_id, cat, v, f, str(path), unit_scale=scale))
    return assets


def _table(rows: list[dict]) -> pa.Table:
    schema = pa.schema(
        [
            ("id", pa.string()),
            ("category", pa.string()),
            ("sha256", pa.string()),
            ("source", pa.string()),
            ("nocs_from_mesh", pa.list_(pa.float64(), 16)),
            ("unit_scale", pa.float64()),
            ("n_vertices", pa.int64()),
            ("n_faces", pa.int64()),
            ("watertight", pa.bool_()),
        ]
    )
    return pa.Table.from_pylist(rows, schema=schema)


def save_objects(assets: Iterable[ObjectAsset], out_dir: Path, overwrite: bool = False) -> Path:
    """Write ``out_dir/objects/<id>.ply`` and ``out_dir/objects.parquet``; return the parquet path.

    Rows already in ``objects.parquet`` for other ids are kept (several calls add up). A saved id
    whose mesh differs is an error unless ``overwrite``. Unchanged files are not rewritten.
    """
    out_dir = Path(out_dir)
    mesh_dir = out_dir / "objects"
    mesh_dir.mkdir(parents=True, exist_ok=True)
    parquet = out_dir / PARQUET_NAME
    rows: dict[str, dict] = {}
    if parquet.is_file():
        rows = {r["id"]: r for r in _read_table(parquet).to_pylist()}
    for asset in assets:
        old = rows.get(asset.id)
        if old is not None and old["sha256"] != asset.sha256 and not overwrite:
            raise HoigenError(
                f"{mesh_dir / (asset.id + '.ply')}: a different mesh with the id {asset.id!r} is already "
                "saved there; write to a new output folder (or overwrite it)"
            )
        data = mesh_bytes(asset.mesh)
        if hashlib.sha256(data).hexdigest() != asset.sha256:
            raise HoigenError(
                f"object {asset.id!r}: its sha256 does not match its mesh; build it with ObjectAsset.create"
            )
        atomic_write_bytes(mesh_dir / f"{asset.id}.ply", data)
        rows[asset.id] = {
            "id": asset.id,
            "category": asset.category,
            "sha256": asset.sha256,
            "source": asset.source,
            "nocs_from_mesh": np.asarray(asset.nocs_from_mesh, dtype=np.float64).reshape(16).tolist(),
            "unit_scale": float(asset.unit_scale),
            "n_vertices": len(asset.mesh.vertices),
            "n_faces": len(asset.mesh.faces),
            "watertight": bool(asset.mesh.is_watertight),
        }
    sink = pa.BufferOutputStream()
    pq.write_table(_table([rows[k] for k in sorted(rows)]), sink)
    atomic_write_bytes(parquet, sink.getvalue().to_pybytes())
    return parquet


def _read_table(parquet: Path) -> pa.Table:
    try:
        return pq.read_table(parquet)
    except Exception as exc:  # noqa: BLE001
        raise HoigenError(
            f"{parquet}: cannot be read as parquet ({exc}); re-run the stage that wrote it"
        ) from exc


def read_objects(folder: Path) -> dict[str, ObjectAsset]:
    """The objects saved by ``save_objects`` (pass the folder holding ``objects.parquet``, or the file)."""
    folder = Path(folder)
    parquet = folder if folder.suffix == ".parquet" else folder / PARQUET_NAME
    if not parquet.is_file():
        raise HoigenError(f"{parquet}: not found; point at the output folder of the grasp stage")
    out: dict[str, ObjectAsset] = {}
    for row in _read_table(parquet).to_pylist():
        check_id(row["id"])
        ply = parquet.parent / "objects" / f"{row['id']}.ply"
        if not ply.is_file():
            raise HoigenError(f"{ply}: missing (listed in {parquet}); copy the objects/ folder along")
        data = ply.read_bytes()
        if hashlib.sha256(data).hexdigest() != row["sha256"]:
            raise HoigenError(f"{ply}: sha256 differs from {parquet}; the file was changed, re-run the stage")
        try:
            v, f = read_ply_bytes(data)
        except ValueError as exc:
            raise HoigenError(f"{ply}: {exc}; re-run the stage that wrote it") from exc
        scale = row.get("unit_scale") or 1.0
        asset = ObjectAsset.create(row["id"], row["category"], v, f, row["source"], unit_scale=scale)
        asset.nocs_from_mesh = np.asarray(row["nocs_from_mesh"], dtype=np.float64).reshape(4, 4)
        out[asset.id] = asset
    return out
