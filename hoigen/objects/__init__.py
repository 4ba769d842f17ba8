"""Objects: mesh loading (folders, YCB layout), validation and repair, the canonical NOCS frame, procedural categories.

An ``ObjectAsset`` is a canonical triangle mesh (metres, y-up, its own mesh frame) with an id that
is safe in WebDataset keys, a category, the sha256 of its PLY bytes, its NOCS transform and, when
the mesh is not watertight, a watertight remesh for signed distance (``sdf_mesh``).
"""

from __future__ import annotations

from hoigen.objects.asset import ObjectAsset, nocs_transform, slugify
from hoigen.objects.frame import UP_AXES, mesh_from_source, upright_rotation
from hoigen.objects.geometry import MeshQuery, sample_surface, signed_distance
from hoigen.objects.library import ObjectLibrary, SkippedMesh, load_objects, read_mapping, read_objects, save_objects
from hoigen.objects.procedural import (
    DEFAULT_CATEGORIES,
    NOCS_CATEGORIES,
    PROCEDURAL_CATEGORIES,
    procedural_objects,
)
from hoigen.objects.repair import FACE_BUDGET, RepairedMesh, UnusableMesh, repair_mesh

__all__ = [
    "DEFAULT_CATEGORIES",
    "FACE_BUDGET",
    "NOCS_CATEGORIES",
    "PROCEDURAL_CATEGORIES",
    "UP_AXES",
    "MeshQuery",
    "ObjectAsset",
    "ObjectLibrary",
    "RepairedMesh",
    "SkippedMesh",
    "UnusableMesh",
    "load_objects",
    "mesh_from_source",
    "nocs_transform",
    "procedural_objects",
    "read_mapping",
    "read_objects",
    "repair_mesh",
    "sample_surface",
    "save_objects",
    "signed_distance",
    "slugify",
    "upright_rotation",
]
