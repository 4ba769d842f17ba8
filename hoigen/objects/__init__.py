"""Objects: mesh loading (folders, YCB layout), the canonical NOCS frame, procedural categories.

An ``ObjectAsset`` is a canonical triangle mesh (metres, y-up, its own mesh frame) with an id that
is safe in WebDataset keys, a category, the sha256 of its PLY bytes and its NOCS transform.
"""

from __future__ import annotations

from hoigen.objects.asset import ObjectAsset, nocs_transform, slugify
from hoigen.objects.geometry import MeshQuery, sample_surface, signed_distance
from hoigen.objects.library import load_objects, read_objects, save_objects
from hoigen.objects.procedural import PROCEDURAL_CATEGORIES, procedural_objects

__all__ = [
    "PROCEDURAL_CATEGORIES",
    "MeshQuery",
    "ObjectAsset",
    "load_objects",
    "nocs_transform",
    "procedural_objects",
    "read_objects",
    "sample_surface",
    "save_objects",
    "signed_distance",
    "slugify",
]
