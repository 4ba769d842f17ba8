"""Object libraries: load a folder of meshes (YCB layout included), save and read the objects folder.

Finding meshes. ``load_objects`` takes a folder (searched recursively for .obj/.ply/.glb/.gltf/.stl/.off
and .urdf files) or a single mesh or URDF file. A URDF stands for its object: its visual meshes
(``hoigen.objects.urdf``), scaled as it says, are joined and the mesh files it names are not loaded
again on their own. A file
with a generic name (``textured.obj``, ``nontextured.ply``, ``model_normalized.obj`` ...) takes its
id from the nearest folder whose name is not generic, so ``002_master_chef_can/google_16k/textured.obj``
becomes ``002-master-chef-can``; when one object folder holds several generic variants (YCB ships
``google_16k/textured.obj``, ``google_16k/nontextured.ply``, ``tsdf/textured.obj`` ...), the best one
is used (google_16k first, textured before nontextured).

Id collisions. When two files still give one id (``a/mug.obj`` and ``b/mug.obj``, or ``mug_1.obj``
and ``mug-1.ply``), every one of them is renamed deterministically, whatever order the disk lists
them in: first to the slug of its path below the folder (``a-mug``, ``b-mug``), then, if that still
collides, with its extension added (``mug-1-obj``, ``mug-1-ply``), then with ``-2``, ``-3`` ... in
path order. Each rename is a logged warning; the mapping file may name an object by its old name,
its new id or its path.

Category, per mesh, first that applies: the mapping file; a folder below the root named after a
category (``mugs/a.obj`` -> mug); ``category`` (``--category``); words of its name (``025_mug`` ->
mug); else ``object``. The mapping file is ``mapping`` or, when not given, ``categories.csv``,
``.json``, ``.yaml`` or ``.yml`` in the root folder:

- CSV with a header row: ``id,category`` and optional ``up``, ``unit`` and ``scale`` columns, e.g.
  ``002_master_chef_can,can,+z,m,``;
- JSON/YAML: ``{name: category}`` or ``{name: {category: ..., up: ..., unit: ..., scale: ...}}``;

where ``name`` is a file stem or object folder name, an object id, or a path below the root.
``up`` is the file's axis that points up (``+x``, ``-x``, ``+y``, ``-y``, ``+z``, ``-z``; default the
``up`` argument, else ``DEFAULT_UP``, +z, in every layout: YCB, BOP, Google Scanned Objects, URDF and
STL/CAD files are z-up; only glTF/GLB files, whose format fixes +y up, default to +y). An object of an
upright category (bottle, can, mug, bowl) that is round about a horizontal axis instead of up gets one
warning naming the axis to pass. ``unit`` is ``m``, ``cm``, ``mm``, ``in`` or ``auto`` and ``scale`` a
factor to metres; they override ``--units``/``--scale`` (see ``hoigen.objects.units`` for the rule).

Every mesh goes through ``repair_mesh``; a mesh that cannot be used is skipped with a one-line
reason (logged on ``hoigen.objects`` and kept in ``ObjectLibrary.skipped``) and loading goes on. Only
when no mesh at all is usable is it an error. The mesh frame is the file's, scaled to metres and
turned so that up is +y; the NOCS transform records the bounding-box centring and scaling.
``save_objects`` writes ``objects/<id>.ply`` (and ``objects/watertight/<id>.ply`` for a remesh) and
``objects.parquet`` beside the shards; ``read_objects`` reads them back and checks every hash.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import trimesh
import yaml

from hoigen.data.atomic import atomic_write_bytes
from hoigen.errors import HoigenError
from hoigen.objects.asset import ObjectAsset, canonical_mesh, check_id, mesh_bytes, mesh_colors, slugify
from hoigen.objects.frame import UPRIGHT_CATEGORIES, lying_axis, mesh_from_source, parse_up, upright_rotation
from hoigen.objects.ply import read_ply_bytes_colors
from hoigen.objects.repair import FACE_BUDGET, UnusableMesh, repair_mesh
from hoigen.objects.units import check_scale, check_units, choose_scale
from hoigen.objects.urdf import read_urdf, referenced_meshes
from hoigen.trust import check_mesh_file

log = logging.getLogger("hoigen.objects")

MESH_SUFFIXES = (".obj", ".ply", ".glb", ".gltf", ".stl", ".off")
URDF_SUFFIX = ".urdf"
OBJECT_SUFFIXES = (URDF_SUFFIX, *MESH_SUFFIXES)  # a URDF first: it says how to scale and place its meshes
DEFAULT_UP = "+z"  # every layout; see the module docstring
FORMAT_UP = {".glb": "+y", ".gltf": "+y"}  # formats whose specification fixes the up axis
GENERIC_STEMS = ("textured", "textured_simple", "nontextured", "model_normalized", "model", "mesh", "scene")
GENERIC_DIRS = ("google_16k", "google_64k", "google_512k", "poisson", "tsdf", "models", "meshes", "mesh")
MAPPING_NAMES = ("categories.csv", "categories.json", "categories.yaml", "categories.yml")
PARQUET_NAME = "objects.parquet"
WATERTIGHT_DIR = "watertight"

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


@dataclass(frozen=True)
class SkippedMesh:
    """A mesh file that could not be used: its path, the id it would have had and why."""

    path: str
    id: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


class ObjectLibrary(list):
    """The usable ``ObjectAsset``s (a plain list, sorted by id) plus what loading skipped and warned.

    ``skipped``: ``SkippedMesh`` per unusable file; ``warnings``: one line per repair the user
    should know about (units guessed, simplified, remeshed, renamed).
    """

    def __init__(self, assets: Iterable[ObjectAsset] = (), skipped=(), warnings=()) -> None:
        super().__init__(assets)
        self.skipped: list[SkippedMesh] = list(skipped)
        self.warnings: list[str] = list(warnings)


@dataclass(frozen=True)
class MappingEntry:
    category: str | None = None
    up: str | None = None
    unit: str | None = None
    scale: float | None = None


def guess_category(name: str) -> str | None:
    """A category from a name's words (``025_mug`` -> mug, ``065-a_cups`` -> mug), else None."""
    for token in re.split(r"[^a-z]+", name.lower()):
        for word in (token, token[:-1] if token.endswith("s") else token):
            if word in CATEGORY_WORDS:
                return CATEGORY_WORDS[word]
    return None


def _folder_category(path: Path, root: Path) -> str | None:
    """The category of a folder below the root named exactly after one (``mugs/``, ``Bottle/``)."""
    for part in path.relative_to(root).parent.parts:
        word = part.lower()
        for w in (word, word[:-1] if word.endswith("s") else word):
            if w in CATEGORY_WORDS:
                return CATEGORY_WORDS[w]
    return None


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
    return (dir_rank, stem_rank, OBJECT_SUFFIXES.index(path.suffix.lower()), str(path))


def default_up(path: Path) -> str:
    """The up axis of a file when nothing says otherwise: ``DEFAULT_UP``, or the format's own (glTF: +y)."""
    return FORMAT_UP.get(Path(path).suffix.lower(), DEFAULT_UP)


MAPPING_KEYS = ("category", "up", "unit", "scale")


def _entry(value, where: str) -> MappingEntry:
    if isinstance(value, str):
        return MappingEntry(category=value)
    if isinstance(value, dict) and set(value) <= set(MAPPING_KEYS):
        given = {k: (None if v in (None, "") else v) for k, v in value.items()}
        scale = given.pop("scale", None)
        return MappingEntry(
            **{k: None if v is None else str(v) for k, v in given.items()},
            scale=None if scale is None else check_scale(scale, f"{where} scale"),
        )
    raise HoigenError(
        f"{where}: a mapping value must be a category string or {{category, up, unit, scale}}, got {value!r}"
    )


def read_mapping(mapping: Path) -> dict[str, MappingEntry]:
    """Read a category mapping file (CSV ``id,category[,up][,unit][,scale]``, JSON or YAML; see the module)."""
    mapping = Path(mapping)
    if not mapping.is_file():
        raise HoigenError(
            f"{mapping}: category mapping file does not exist; pass a CSV (id,category) or a YAML/JSON "
            "{name: category}"
        )
    try:
        text = mapping.read_text(encoding="utf-8")
        if mapping.suffix.lower() == ".csv":
            rows = list(csv.DictReader(io.StringIO(text)))
            key = next((k for k in ("id", "name", "path") if rows and k in rows[0]), None)
            if key is None or "category" not in (rows[0] if rows else {}):
                raise ValueError("the header row must name the columns id and category (optional: up, unit, scale)")
            data = {r[key]: {k: r.get(k) for k in MAPPING_KEYS if r.get(k)} for r in rows}
        else:
            data = json.loads(text) if mapping.suffix.lower() == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, UnicodeDecodeError, yaml.YAMLError, csv.Error) as exc:
        raise HoigenError(
            f"{mapping}: cannot read the category mapping ({exc}); write it as CSV id,category or {{name: category}}"
        ) from exc
    if not isinstance(data, dict):
        raise HoigenError(f"{mapping}: the category mapping must map names to categories")
    out: dict[str, MappingEntry] = {}
    for key, value in data.items():
        entry = _entry(value, f"{mapping} [{key}]")
        if entry.up is not None:
            parse_up(entry.up)
        if entry.unit is not None:
            check_units(entry.unit, f"{mapping} [{key}]")
        out[str(key)] = entry
        out[slugify(str(key))] = entry
    return out


def _disambiguate(found: list[tuple[str, Path, str]], root: Path) -> tuple[list[tuple[str, Path, str]], list[str]]:
    """Give files that share an id distinct, deterministic ids; return (files, warnings)."""
    by_id: dict[str, list[int]] = {}
    for i, (object_id, _, _) in enumerate(found):
        by_id.setdefault(object_id, []).append(i)
    clashing = {i for group in by_id.values() if len(group) > 1 for i in group}
    if not clashing:
        return found, []
    taken = {found[i][0] for i in range(len(found)) if i not in clashing}
    new = {i: slugify(str(found[i][1].relative_to(root).with_suffix(""))) for i in clashing}
    counts: dict[str, int] = {}
    for i in clashing:
        counts[new[i]] = counts.get(new[i], 0) + 1
    for i in clashing:
        if counts[new[i]] > 1 or new[i] in taken:
            new[i] = f"{new[i]}-{found[i][1].suffix.lower().lstrip('.')}"
    warnings = []
    out = list(found)
    for i in sorted(clashing, key=lambda k: str(found[k][1].relative_to(root))):
        candidate, n = new[i], 2
        while candidate in taken:
            candidate, n = f"{new[i]}-{n}", n + 1
        taken.add(candidate)
        others = [str(found[k][1].relative_to(root)) for k in by_id[found[i][0]] if k != i]
        warnings.append(
            f"{found[i][1]}: object id {found[i][0]!r} is also given by {', '.join(others)}; using {candidate!r}"
        )
        out[i] = (candidate, found[i][1], found[i][2])
    return out, warnings


def _find(root: Path, only: Path | None = None) -> tuple[list[tuple[str, Path, str]], list[SkippedMesh], list[str]]:
    """(id, path, name) of every object file, the files with no usable name, and rename warnings.

    ``only``: the one file to load (``--objects path/to/mesh.obj``); else every object file under ``root``
    except the meshes a URDF there uses."""
    if only is not None:
        files = [only]
    else:
        files = [p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in OBJECT_SUFFIXES]
        used = {m.resolve() for p in files if p.suffix.lower() == URDF_SUFFIX for m in referenced_meshes(p)}
        files = [p for p in files if p.resolve() not in used]
    files.sort(key=lambda p: str(p.relative_to(root)))
    if not files:
        raise HoigenError(
            f"{root}: no meshes found ({', '.join(OBJECT_SUFFIXES)}, searched recursively); "
            "point --objects at a folder of meshes"
        )
    skipped = []
    generic: dict[tuple[str, Path], Path] = {}  # (id, object folder) -> best generic variant
    explicit: list[tuple[str, Path, str]] = []
    names: dict[Path, str] = {}
    for path in files:
        name, is_generic = _object_name(path, root)
        object_id = slugify(name)
        if not object_id:
            reason = f"{path}: no usable id in the name {name!r}; rename it with letters or digits"
            skipped.append(SkippedMesh(str(path), "", reason))
            continue
        names[path] = name
        if is_generic:
            folder = next((q for q in path.parents if q.name == name), root)
            best = generic.get((object_id, folder))
            if best is None or _variant_rank(path) < _variant_rank(best):
                generic[(object_id, folder)] = path
        else:
            explicit.append((object_id, path, name))
    found = explicit + [(oid, path, names[path]) for (oid, _), path in generic.items()]
    found.sort(key=lambda t: str(t[1].relative_to(root)))
    found, warnings = _disambiguate(found, root)
    return found, skipped, warnings


def _read_file(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Vertices, faces and vertex colours (or None) of a mesh file, or ``UnusableMesh``."""
    if path.stat().st_size == 0:
        raise UnusableMesh(f"{path}: the file is empty (0 bytes); fix or remove it")
    try:
        check_mesh_file(path)  # size / declared face count, before any parser allocates for them
    except HoigenError as exc:
        raise UnusableMesh(str(exc)) from None
    try:
        loaded = trimesh.load(str(path), force="mesh", process=False)
    except Exception as exc:  # noqa: BLE001 - any parser failure is the user's file
        raise UnusableMesh(
            f"{path}: cannot be read as a mesh ({type(exc).__name__}: {exc}); fix or remove it"
        ) from exc
    if not isinstance(loaded, trimesh.Trimesh):
        raise UnusableMesh(f"{path}: holds no triangle mesh (got {type(loaded).__name__}); fix or remove it")
    v = np.asarray(loaded.vertices, dtype=np.float64).reshape(-1, 3)
    f = np.asarray(loaded.faces, dtype=np.int64).reshape(-1, 3)
    colors = mesh_colors(loaded) if len(v) else None
    if colors is not None and len(colors) != len(v):
        colors = None
    return v, f, colors


def _read_object(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, list[str]]:
    """A mesh file's, or a URDF's joined visual meshes', vertices, faces, colours and notes on what was done."""
    if path.suffix.lower() != URDF_SUFFIX:
        return (*_read_file(path), [])
    parts = [(part, _read_file(part.path)) for part in read_urdf(path)]
    offsets = np.cumsum([0] + [len(v) for _, (v, _, _) in parts])
    v = np.concatenate([part.transform(pv) for part, (pv, _, _) in parts])
    f = np.concatenate([pf + o for (_, (_, pf, _)), o in zip(parts, offsets[:-1], strict=True)])
    colors = None
    if all(c is not None for _, (_, _, c) in parts):
        colors = np.concatenate([c for _, (_, _, c) in parts])
    scales = sorted({" ".join(f"{x:g}" for x in part.scale) for part, _ in parts})
    note = f"URDF: {len(parts)} visual mesh{'es' if len(parts) > 1 else ''}, scale {', '.join(scales)}"
    return v, f, colors, [note]


def _lying_warning(path: Path, category: str, axis: str, vertices: np.ndarray, faces: np.ndarray) -> str | None:
    """One line when an upright category's mesh looks lying down (see ``hoigen.objects.frame.lying_axis``)."""
    if category not in UPRIGHT_CATEGORIES:
        return None
    k = lying_axis(vertices, faces)
    if k is None:
        return None
    source = upright_rotation(axis).T @ np.eye(3)[k]  # that mesh axis in the file's coordinates
    name = "xyz"[int(np.argmax(np.abs(source)))]
    return (
        f"{path}: this {category} looks lying down: it is round about the file's {name} axis, not about its up "
        f"axis {axis}; pass --up +{name} (or -{name}), or an up column in the mapping file, if {name} points up"
    )


def load_objects(
    root: Path,
    category: str | None = None,
    mapping: Path | None = None,
    up: str | None = None,
    face_budget: int = FACE_BUDGET,
    units: str = "auto",
    scale: float | None = None,
) -> ObjectLibrary:
    """Every usable mesh under ``root`` (a folder, or one mesh or URDF file) as an ``ObjectAsset``, sorted by id.

    See the module docstring; ``units``/``scale`` are ``--units``/``--scale`` (``hoigen.objects.units``).
    Unusable meshes are skipped with a logged one-line reason (``.skipped`` of the result); if no
    mesh is usable, a ``HoigenError`` names the folder and the first reason.
    """
    root = Path(root)
    only = None
    if root.is_file():
        if root.suffix.lower() not in OBJECT_SUFFIXES:
            raise HoigenError(
                f"{root}: not a mesh file ({', '.join(OBJECT_SUFFIXES)}); pass --objects a mesh, a URDF or a folder"
            )
        only, root = root, root.parent
    elif not root.is_dir():
        raise HoigenError(
            f"--objects {root} does not exist; pass a folder of .obj/.ply/.glb/.stl/.urdf files or one such file, "
            "or leave it out to use the embedded procedural objects"
        )
    units = check_units(units)
    scale = None if scale is None else check_scale(scale)
    if mapping is None:
        mapping = next((root / n for n in MAPPING_NAMES if (root / n).is_file()), None)
    entries = read_mapping(mapping) if mapping is not None else {}
    given_up = parse_up(up) if up is not None else None
    found, skipped, warnings = _find(root, only)
    assets = []
    for object_id, path, name in sorted(found):
        rel = path.relative_to(root)
        keys = (str(rel.as_posix()), str(rel.with_suffix("").as_posix()), object_id, name, slugify(name))
        entry = next((entries[k] for k in keys if k in entries), MappingEntry())
        cat = (
            entry.category
            or _folder_category(path, root)
            or category
            or guess_category(name)
            or "object"
        )
        axis = parse_up(entry.up or given_up or default_up(path))

        def sizer(extent: float, cat: str = cat, entry: MappingEntry = entry, name: str = str(path)):
            return choose_scale(
                extent, cat, name=name, units=units, scale=scale, mapping_unit=entry.unit, mapping_scale=entry.scale
            )

        try:
            v, f, colors, notes = _read_object(path)
            fixed = repair_mesh(v, f, colors, name=str(path), face_budget=face_budget, sizer=sizer)
        except UnusableMesh as exc:
            skipped.append(SkippedMesh(str(path), object_id, str(exc)))
            continue
        warnings += fixed.warnings
        to_mesh = mesh_from_source(axis, fixed.unit_scale)
        rot = to_mesh[:3, :3] / fixed.unit_scale  # vertices are already in metres
        remesh = fixed.remesh
        if remesh is not None:
            remesh = canonical_mesh(remesh.vertices @ rot.T, remesh.faces)
        repairs = notes + list(fixed.repairs) + ([f"turned {axis} up to +y"] if axis != "+y" else [])
        lying = _lying_warning(path, cat, axis, fixed.vertices @ rot.T, fixed.faces)
        if lying:
            warnings.append(lying)
        assets.append(
            ObjectAsset.create(
                object_id,
                cat,
                fixed.vertices @ rot.T,
                fixed.faces,
                str(path),
                unit_scale=fixed.unit_scale,
                colors=fixed.colors,
                watertight_remesh=remesh,
                up=axis,
                mesh_from_source=to_mesh,
                repairs=repairs,
                scale_from=fixed.scale_from,
            )
        )
    if not assets:  # one line, not a log line per mesh and then the error
        first = skipped[0].reason if skipped else "no meshes"
        raise HoigenError(
            f"{root}: none of the {len(skipped)} meshes could be used (first: {first}); "
            "fix the meshes or point --objects at another folder"
        )
    for line in warnings:
        log.warning(line)
    for skip in skipped:
        log.warning("skipped %s", skip.reason)
    return ObjectLibrary(assets, skipped, warnings)


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
            ("up", pa.string()),
            ("mesh_from_source", pa.list_(pa.float64(), 16)),
            ("sdf_mesh", pa.string()),
            ("remesh_sha256", pa.string()),
            ("repairs", pa.list_(pa.string())),
            ("scale_from", pa.string()),
            ("size_m", pa.float64()),
        ]
    )
    return pa.Table.from_pylist(rows, schema=schema)


def save_objects(assets: Iterable[ObjectAsset], out_dir: Path, overwrite: bool = False) -> Path:
    """Write ``out_dir/objects/<id>.ply`` and ``out_dir/objects.parquet``; return the parquet path.

    An asset with a ``watertight_remesh`` also gets ``objects/watertight/<id>.ply`` (column
    ``sdf_mesh`` = ``remesh``, its hash in ``remesh_sha256``).

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
        data = asset.ply_bytes()
        if hashlib.sha256(data).hexdigest() != asset.sha256:
            raise HoigenError(
                f"object {asset.id!r}: its sha256 does not match its mesh; build it with ObjectAsset.create"
            )
        atomic_write_bytes(mesh_dir / f"{asset.id}.ply", data)
        remesh_sha = None
        if asset.watertight_remesh is not None:
            remesh = mesh_bytes(asset.watertight_remesh)
            remesh_sha = hashlib.sha256(remesh).hexdigest()
            (mesh_dir / WATERTIGHT_DIR).mkdir(exist_ok=True)
            atomic_write_bytes(mesh_dir / WATERTIGHT_DIR / f"{asset.id}.ply", remesh)
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
            "up": asset.up,
            "mesh_from_source": np.asarray(asset.mesh_from_source, dtype=np.float64).reshape(16).tolist(),
            "sdf_mesh": asset.sdf_source,
            "remesh_sha256": remesh_sha,
            "repairs": list(asset.repairs),
            "scale_from": asset.scale_from,
            "size_m": float(np.ptp(asset.mesh.vertices, axis=0).max()),
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


def _read_ply(ply: Path, data: bytes):
    try:
        return read_ply_bytes_colors(data)
    except ValueError as exc:
        raise HoigenError(f"{ply}: {exc}; re-run the stage that wrote it") from exc


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
        v, f, colors = _read_ply(ply, data)
        remesh = None
        if row.get("remesh_sha256"):
            wt = ply.parent / WATERTIGHT_DIR / ply.name
            if not wt.is_file():
                raise HoigenError(f"{wt}: missing (listed in {parquet}); copy the objects/ folder along")
            wdata = wt.read_bytes()
            if hashlib.sha256(wdata).hexdigest() != row["remesh_sha256"]:
                raise HoigenError(f"{wt}: sha256 differs from {parquet}; the file was changed, re-run the stage")
            rv, rf, _ = _read_ply(wt, wdata)
            remesh = canonical_mesh(rv, rf)
        scale = row.get("unit_scale") or 1.0
        to_mesh = row.get("mesh_from_source")
        asset = ObjectAsset.create(
            row["id"],
            row["category"],
            v,
            f,
            row["source"],
            unit_scale=scale,
            colors=colors,
            watertight_remesh=remesh,
            up=row.get("up") or "+y",
            mesh_from_source=None if to_mesh is None else np.asarray(to_mesh, dtype=np.float64).reshape(4, 4),
            repairs=tuple(row.get("repairs") or ()),
            scale_from=row.get("scale_from") or "",
        )
        asset.nocs_from_mesh = np.asarray(row["nocs_from_mesh"], dtype=np.float64).reshape(4, 4)
        out[asset.id] = asset
    return out
