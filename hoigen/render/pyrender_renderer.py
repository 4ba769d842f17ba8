"""The pyrender path of the renderer (``HOIGEN_GL=pyrender``, and the baseline pass of ``make bench``).

The maps and their conventions are those of :mod:`hoigen.render.renderer`; this path builds them
from face ids and exact float64 ray-triangle hits (:mod:`hoigen.render.surface`).

This module holds the GL state and passes; the exact surface maths behind the maps is
:mod:`hoigen.render.surface` (no GL), joint visibility and boxes are :mod:`hoigen.render.annotate`,
and the map encodings are the shard contract's (:mod:`hoigen.data.contract`).

Passes (pyrender, one ``OffscreenRenderer`` for the renderer's lifetime):

1. *face-id passes* (flat, unlit, no MSAA, both faces drawn), one per mesh instance alone (the
   grasped object, the hand, and every ``SceneSpec.extras`` instance: table, distractors): every
   triangle gets a unique 24-bit colour (:mod:`hoigen.render.surface`); face ids span every mesh
   of the frame (object 1..F_o, then the extras in order, then the hand). From them, per pixel,
   the exact hit point on that triangle is computed by intersecting the pixel's ray with the
   triangle's plane. Each pass alone gives its mesh's amodal (full) mask; per pixel the nearest of
   the exact hits is the visible surface (the depth test done in float64 instead of the depth
   buffer; ties: object, hand, extras in that order). ``seg``, ``depth``, ``nocs`` and ``normal``
   all come from these hits, so they agree with each other and with the meshes to float
   precision, and each mesh's own exact depth gives joint visibility (a joint is hidden by any
   non-hand surface). No depth buffer is read back.
2. (with supersampling only) a face-id pass of both meshes at s times the size, for the normals.
3. *shade pass*: lit colour render (hand skin colour, object grey, a directional light at the
   camera looking along its axis, plus ambient light), black background.

Maps in :class:`RenderResult` (H, W = camera size; pixel centres at integer coordinates):

- ``seg`` uint8: 0 background, 1 hand, 2 object, else the extra instance's ``seg_id`` (visible
  surface only; ids as :mod:`hoigen.data.contract` says).
- ``depth_m`` float32 metres = camera-frame z of the visible surface, 0 where none;
  ``depth`` uint16 = round(depth_m * 1000) millimetres (clipped at 65535), 0 = no surface.
- ``nocs`` uint8 RGB = round((nocs_xyz + 0.5) * 255) of the visible surface point of an object
  instance (grasped or distractor), with nocs_xyz = its ``nocs_from_mesh`` applied to the point in
  its mesh frame; 0 where no instance with NOCS is visible (background, hand, table). ``seg`` is
  authoritative for validity.
- ``normal`` uint8 RGB, the ControlNet v1.1 "normalbae" convention: R = left, G = up,
  B = toward the viewer, i.e. with n the unit normal in the OpenCV camera frame (x right, y down,
  z forward) turned to face the camera (n . ray < 0), RGB = round((0.5 - 0.5 * n) * 255).
  A surface facing the camera squarely is (128, 128, 255). Background = ``normal_background``,
  default (0, 0, 0) (a "zero condition", and distinguishable from any surface, whose B >= 128).
  Normals are smooth shading normals (area-weighted, split at edges sharper than ``crease_deg``),
  interpolated barycentrically at the exact hit point; ``crease_deg=None`` gives flat face normals.
  Back faces are flipped, and interpolated normals that would point away from the camera near
  silhouettes are bent just enough to face it.
- ``shade`` uint8 RGB plain shaded render; its silhouette equals ``seg != 0`` at supersample 1.
- ``skeleton`` uint8 RGB, :func:`hoigen.hand.skeleton.draw_skeleton` of the visible joints.
- ``joints2d`` (21,2) float64 pixels = :func:`hoigen.render.cameras.project` of ``joints3d``.
- ``joints_visible`` (21,) bool: inside the image, in front of the camera, not behind the object's
  surface at the joint's pixel by more than ``visibility_tolerance`` (default 1 cm), and not
  self-occluded; ``joints_self_occluded`` (21,) bool (rules in :mod:`hoigen.render.annotate`).
- ``mask_hand``, ``mask_object`` (H,W) bool = ``seg == 1``, ``seg == 2`` (visible surface).
- ``mask_hand_full``, ``mask_object_full`` (H,W) bool: amodal masks, every pixel the mesh covers
  when rendered alone (so ``mask_hand`` is a subset of ``mask_hand_full``); same rasteriser, same
  pixel-centre sampling as ``seg``.
- ``full_masks`` {seg id: amodal mask} for every instance (hand and object included);
  ``amodal`` packs them (:func:`hoigen.data.contract.amodal_bits`); :meth:`RenderResult.instance_boxes`
  gives per seg id the amodal and visible boxes and pixel counts.
- :meth:`RenderResult.bboxes`: :func:`hoigen.render.annotate.mask_bbox` boxes ``[x0, y0, x1, y1]``
  (x1, y1 exclusive), None for an empty mask; visible boxes from the visible masks, amodal boxes
  from the full masks (clipped to the image).

The skeleton is drawn for joints in the image and not hidden by the object; self-occluded joints
are drawn too (the skeleton conditions the hand's pose, which a curled finger still has).

Supersampling (``supersample=s``): ``normal`` and ``shade`` are rendered at s times the size and
area-averaged down (anti-aliased edges blend toward the background). ``seg``, masks, ``depth``,
``nocs`` and visibility are exact point samples at the native pixel centres (their own pass at
native size), never blended.

Caching: rigid meshes' pyrender meshes and geometry (object, extras) are kept (LRU, ``cache_size``)
keyed by ``mesh_key`` (of the SceneSpec or the Instance) or, if None, by the mesh object itself
(``id`` plus an identity check), and by their first face id.
Do not modify a cached ``trimesh.Trimesh`` in place; pass a new mesh or a new key instead. The
hand mesh is rebuilt every call.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np
import trimesh

from hoigen.data.contract import SEG_HAND, SEG_OBJECT, SEG_TABLE
from hoigen.errors import HoigenError
from hoigen.render.backend import import_pyrender, install_raw_readback
from hoigen.render.cameras import Camera, gl_intrinsics, pyrender_pose
from hoigen.render.scene import (
    RendererBase,
    RenderResult,
    SceneSpec,
    area_downsample,
    check_extras,
)
from hoigen.render.surface import (
    MAX_FACE_ID,
    MeshSurface,
    Part,
    composite,
    decode_ids,
    encode_ids,
    mesh_surface,
    normal_image,
    pixel_hits,
    visible_maps,
)


@dataclass
class _Geometry:
    """One mesh's exact surface (CPU side) plus its two pyrender meshes."""

    surface: MeshSurface  # in the mesh's own frame
    id_mesh: Any
    shade_mesh: Any
    source: Any = None  # keeps a cached trimesh alive so its id() stays unique
    first_id: int = 1  # face ids first_id .. first_id + F - 1


@dataclass
class _Placed:
    """One mesh instance of the current frame: geometry, mesh -> world pose, seg id, NOCS transform."""

    geo: _Geometry
    pose: np.ndarray
    seg_id: int
    nocs_from_mesh: np.ndarray | None


class PyrenderRenderer(RendererBase):
    """The pyrender path (``HOIGEN_GL=pyrender``): renders :class:`SceneSpec` frames at a fixed size
    with one reused offscreen pyrender context; same maps as :class:`hoigen.render.renderer.Renderer`
    (settings as :class:`hoigen.render.scene.RendererBase`, plus the camera light's intensity)."""

    def __init__(self, width: int, height: int, *, light_intensity: float = 3.0, **settings: Any) -> None:
        super().__init__(width, height, **settings)
        self.light_intensity = float(light_intensity)
        pr = self._pr = import_pyrender()
        self._offscreen = pr.OffscreenRenderer(self.width, self.height)
        self._readback = install_raw_readback(self._offscreen)
        a = self.ambient
        self._scene = pr.Scene(bg_color=(0.0, 0.0, 0.0, 0.0), ambient_light=(a, a, a))
        self._camera = pr.IntrinsicsCamera(1.0, 1.0, 0.0, 0.0, znear=self.znear, zfar=self.zfar)
        self._camera_node = self._scene.add(self._camera)
        light = pr.DirectionalLight(color=np.ones(3), intensity=self.light_intensity)
        self._scene.add(light, parent_node=self._camera_node)
        rough = {"hand": 0.7, "object": 0.6, "table": 0.8}
        self._materials = {
            kind: pr.MetallicRoughnessMaterial(baseColorFactor=(*color, 1.0), metallicFactor=0.0,
                                               roughnessFactor=rough[kind])
            for kind, color in self.colors.items()
        }  # fmt: skip
        self._objects: OrderedDict[Hashable, _Geometry] = OrderedDict()
        self._placed: dict[Hashable, tuple[_Geometry, tuple[Any, Any]]] = {}  # slot -> geometry, scene nodes

    # ------------------------------------------------------------------ lifecycle
    @property
    def offscreen(self) -> Any:
        """The one ``pyrender.OffscreenRenderer`` this renderer uses (None after :meth:`close`)."""
        return self._offscreen

    @property
    def context(self) -> Any:
        """The GL context this renderer uses: its ``OffscreenRenderer`` (None after :meth:`close`)."""
        return self._offscreen

    def _is_open(self) -> bool:
        return getattr(self, "_offscreen", None) is not None

    def _release(self) -> None:
        self._offscreen.delete()
        self._offscreen = None
        self._objects.clear()

    # ------------------------------------------------------------------ meshes
    def _geometry(self, vertices: np.ndarray, faces: np.ndarray, first_id: int, kind: str) -> _Geometry:
        pr = self._pr
        faces = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
        vertices = np.asarray(vertices, dtype=np.float64).reshape(-1, 3)
        if len(faces) and (faces.min() < 0 or faces.max() >= len(vertices)):
            raise HoigenError(f"render: {kind} faces index vertices out of range; check the {kind} mesh")
        if first_id + len(faces) > MAX_FACE_ID:
            raise HoigenError(
                f"render: {kind} mesh too large ({len(faces)} faces, {MAX_FACE_ID} in all); simplify it"
            )
        surface = mesh_surface(vertices, faces, self.crease_deg)
        positions = surface.triangles.reshape(-1, 3).astype(np.float32)
        ids = encode_ids(np.arange(first_id, first_id + len(faces)))
        id_mesh = pr.Mesh([pr.Primitive(positions=positions, color_0=np.repeat(ids, 3, axis=0))])
        shade_mesh = pr.Mesh(
            [
                pr.Primitive(
                    positions=positions,
                    normals=surface.shading.reshape(-1, 3).astype(np.float32),
                    material=self._materials[kind],
                )
            ]
        )
        return _Geometry(surface, id_mesh, shade_mesh, first_id=first_id)

    def _mesh_geometry(self, mesh: trimesh.Trimesh, key: Hashable | None, first_id: int, kind: str) -> _Geometry:
        """A rigid mesh's geometry from the LRU cache (keyed by ``key`` or the mesh itself, the first
        face id and the material), built on a miss."""
        cache_key = (key if key is not None else ("id", id(mesh)), first_id, kind)
        geo = self._objects.get(cache_key)
        if geo is not None and (key is not None or geo.source is mesh):
            self._objects.move_to_end(cache_key)
            return geo
        if len(mesh.faces) == 0:
            raise HoigenError(f"render: the {kind} mesh has no faces; check the {kind} file")
        geo = self._geometry(mesh.vertices, mesh.faces, first_id, kind)
        geo.source = mesh
        self._objects[cache_key] = geo
        while len(self._objects) > self.cache_size:
            self._objects.popitem(last=False)
        return geo

    def _set_node(self, slot: Hashable, geo: _Geometry, pose: np.ndarray | None) -> None:
        """Put ``geo`` in the scene at ``slot`` (reposition it when it is already there)."""
        placed = self._placed.get(slot)
        if placed is not None and placed[0] is geo and pose is not None:
            for node in placed[1]:
                self._scene.set_pose(node, pose)
            return
        if placed is not None:
            for node in placed[1]:
                self._scene.remove_node(node)
        kw = {} if pose is None else {"pose": pose}
        self._placed[slot] = (geo, (self._scene.add(geo.id_mesh, **kw), self._scene.add(geo.shade_mesh, **kw)))

    def _place(self, spec: SceneSpec) -> list[_Placed]:
        """Put every mesh of the frame in the scene; returns them in compositing order (object,
        hand, extras). Face ids: object 1..F_o, then the extras in order, then the hand."""
        check_extras(tuple(spec.extras))
        pose = np.asarray(spec.object_pose, dtype=np.float64).reshape(4, 4)
        obj = self._mesh_geometry(spec.object_mesh, spec.mesh_key, 1, "object")
        self._set_node("object", obj, pose)
        placed = [_Placed(obj, pose, SEG_OBJECT, np.asarray(spec.nocs_from_mesh, dtype=np.float64).reshape(4, 4))]
        next_id = 1 + len(obj.surface.triangles)
        for k, inst in enumerate(spec.extras):
            kind = "table" if int(inst.seg_id) == SEG_TABLE else "object"
            geo = self._mesh_geometry(inst.mesh, inst.mesh_key, next_id, kind)
            inst_pose = np.asarray(inst.pose, dtype=np.float64).reshape(4, 4)
            self._set_node(("extra", k), geo, inst_pose)
            nocs = None if inst.nocs_from_mesh is None else np.asarray(inst.nocs_from_mesh, dtype=np.float64)
            placed.append(_Placed(geo, inst_pose, int(inst.seg_id), None if nocs is None else nocs.reshape(4, 4)))
            next_id += len(geo.surface.triangles)
        for slot in [s for s in self._placed if isinstance(s, tuple) and s[1] >= len(spec.extras)]:
            for node in self._placed.pop(slot)[1]:
                self._scene.remove_node(node)
        hand = self._geometry(spec.hand_vertices, spec.hand_faces, next_id, "hand")
        self._set_node("hand", hand, None)
        placed.insert(1, _Placed(hand, np.eye(4), SEG_HAND, None))
        return placed

    # ------------------------------------------------------------------ passes
    def _pass(self, camera: Camera, placed: list[_Placed], ids_of: list[_Placed] | None) -> Any:
        """One pass: the face ids of ``ids_of`` (flat, unlit), or the shaded colour of every mesh (None)."""
        pr = self._pr
        self._offscreen.viewport_width, self._offscreen.viewport_height = camera.width, camera.height
        fx, fy, cx, cy = gl_intrinsics(camera.K)
        self._camera.fx, self._camera.fy, self._camera.cx, self._camera.cy = fx, fy, cx, cy
        self._scene.set_pose(self._camera_node, pyrender_pose(camera.world_to_cam))
        drawn = {id(p.geo) for p in ids_of or ()}
        for p in placed:
            p.geo.id_mesh.is_visible = id(p.geo) in drawn
            p.geo.shade_mesh.is_visible = ids_of is None
        self._readback.depth = False  # exact depth comes from the face ids (module docstring)
        self._readback.rgba = ids_of is not None
        flags = pr.RenderFlags.SKIP_CULL_FACES
        if ids_of is not None:
            return self._offscreen.render(self._scene, flags | pr.RenderFlags.FLAT)[0]
        return self._offscreen.render(self._scene, flags)[0]

    @staticmethod
    def _parts(placed: list[_Placed]) -> list[Part]:
        parts = []
        for p in placed:
            frame_from_world = np.eye(4) if p.seg_id == SEG_HAND else np.linalg.inv(p.pose)
            parts.append(Part(p.geo.surface, p.geo.first_id, frame_from_world, p.seg_id, p.nocs_from_mesh))
        return parts

    # ------------------------------------------------------------------ main entry
    def _shade_only(self, spec: SceneSpec, cam: Camera) -> np.ndarray:
        return np.ascontiguousarray(self._pass(cam, self._place(spec), None))

    def lights_record(self, lights: Any = None) -> dict[str, Any]:
        """ann.json ``lights``: this path always shades with pyrender's metallic-roughness model, one
        directional light along the camera axis and ambient light (``lights`` asked for are ignored)."""
        i = self.light_intensity
        return {"shading": "pyrender", "ambient": self.ambient, "direction": [[0.0, 0.0, 1.0]], "color": [[i, i, i]]}

    def _render(self, spec: SceneSpec, cam: Camera, ss: int) -> RenderResult:
        placed = self._place(spec)
        parts = self._parts(placed)
        h, w = self.height, self.width

        if ss > 1:  # anti-aliased normal and shade maps from a larger image
            big = cam.scaled(ss)
            color_big = self._pass(big, placed, placed)
            surf_big = pixel_hits(decode_ids(color_big), big, parts, want_nocs=False)
            normal_big = normal_image(surf_big, big.height, big.width, np.float32, self.normal_background)
            normal = np.clip(np.round(area_downsample(normal_big, ss)), 0, 255).astype(np.uint8)
            shade = np.clip(np.round(area_downsample(self._pass(big, placed, None), ss)), 0, 255)
            shade = shade.astype(np.uint8)

        # each mesh alone: amodal coverage and exact hits; the nearest exact hit is the visible one
        alone = [decode_ids(self._pass(cam, placed, [p])) for p in placed]
        surf = composite(
            [pixel_hits(ids, cam, [part], want_nocs=True) for ids, part in zip(alone, parts, strict=True)], h * w
        )
        seg, depth_m, depth, nocs = visible_maps(
            surf, [p.seg_id for p in parts], [p.nocs_from_mesh is not None for p in parts], h, w
        )
        if ss == 1:
            normal = normal_image(surf, h, w, np.uint8, self.normal_background)
            shade = np.ascontiguousarray(self._pass(cam, placed, None))

        t_hand = surf["t"][1].reshape(h, w)  # compositing order: object, hand, extras
        t_other = np.min(np.delete(surf["t"], 1, axis=0), axis=0).reshape(h, w)  # any non-hand surface
        full_masks = {p.seg_id: ids.reshape(h, w) > 0 for p, ids in zip(parts, alone, strict=True)}
        maps = {"normal": normal, "seg": seg, "depth": depth, "depth_m": depth_m, "nocs": nocs, "shade": shade}
        return self._result(spec, cam, maps, full_masks, lambda row, col: (t_other[row, col], t_hand[row, col]))
