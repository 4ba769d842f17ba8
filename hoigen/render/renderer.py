"""Render one hand-object frame into condition maps and annotations, with one reused GL context.

Passes (pyrender, one ``OffscreenRenderer`` for the renderer's lifetime):

1. *face-id pass* (flat, unlit, no MSAA, both faces drawn): every triangle of object and hand gets
   a unique 24-bit colour (:mod:`hoigen.render.surface`); object faces are ids 1..F_o, hand faces
   F_o+1..F_o+F_h. From it, per pixel, the exact hit point on that triangle is computed by
   intersecting the pixel's ray with the triangle's plane. ``seg``, ``depth``, ``nocs`` and
   ``normal`` all come from these hits, so they agree with each other and with the meshes to float
   precision.
2. *object depth pass* (depth only, the object alone): the object's surface depth also where the
   hand covers it, for joint visibility.
3. *shade pass*: lit colour render (hand skin colour, object grey, a directional light at the
   camera looking along its axis, plus ambient light), black background.

Maps in :class:`RenderResult` (H, W = camera size; pixel centres at integer coordinates):

- ``seg`` uint8: 0 background, 1 hand, 2 object (visible surface only).
- ``depth_m`` float32 metres = camera-frame z of the visible surface, 0 where none;
  ``depth`` uint16 = round(depth_m * 1000) millimetres (clipped at 65535), 0 = no surface.
- ``nocs`` uint8 RGB = round((nocs_xyz + 0.5) * 255) of the visible object surface point, with
  nocs_xyz = ``nocs_from_mesh`` applied to the point in the object's mesh frame; 0 where the object
  is not visible (background or hidden by the hand). ``mask_object`` is authoritative for validity.
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
- ``skeleton`` uint8 RGB, :func:`hoigen.render.skeleton.draw_skeleton` of the visible joints.
- ``joints2d`` (21,2) float64 pixels = :func:`hoigen.render.cameras.project` of ``joints3d``.
- ``joints_visible`` (21,) bool: inside the image (u in [-0.5, W-0.5), v likewise), in front of the
  camera, and not behind the object's surface at the joint's pixel by more than
  ``visibility_tolerance`` (default 1 cm). Occlusion by the hand itself is ignored at this stage.
- ``mask_hand``, ``mask_object`` (H,W) bool = ``seg == 1``, ``seg == 2``.

Supersampling (``supersample=s``): ``normal`` and ``shade`` are rendered at s times the size and
area-averaged down (anti-aliased edges blend toward the background). ``seg``, masks, ``depth``,
``nocs`` and visibility are exact point samples at the native pixel centres (their own pass at
native size), never blended.

Caching: the object's pyrender meshes and geometry are kept (LRU, ``cache_size``) keyed by
``SceneSpec.mesh_key`` or, if None, by the mesh object itself (``id`` plus an identity check).
Do not modify a cached ``trimesh.Trimesh`` in place; pass a new mesh or a new key instead. The
hand mesh is rebuilt every call.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import trimesh

from hoigen.errors import HoigenError
from hoigen.render.backend import import_pyrender
from hoigen.render.cameras import Camera, gl_intrinsics, project, pyrender_pose
from hoigen.render.skeleton import draw_skeleton
from hoigen.render.surface import (
    MAX_FACE_ID,
    FacePlanes,
    corner_normals,
    decode_ids,
    encode_ids,
    face_planes,
    hit_planes,
    interpolate_normals,
)

SEG_BACKGROUND, SEG_HAND, SEG_OBJECT = 0, 1, 2
HAND_COLOR = (0.80, 0.56, 0.44)  # linear RGB base colour of the shaded hand
OBJECT_COLOR = (0.55, 0.55, 0.58)  # linear RGB base colour of the shaded object
NORMAL_BACKGROUND = (0, 0, 0)
_FACING_EPS = 0.02  # minimum |cos| between a normal and the reversed view ray


@dataclass
class SceneSpec:
    """One frame to render. All poses map into the y-up world frame (metres)."""

    hand_vertices: np.ndarray  # (V,3) world
    hand_faces: np.ndarray  # (F,3)
    object_mesh: trimesh.Trimesh  # in its mesh frame
    object_pose: np.ndarray  # (4,4) mesh -> world
    nocs_from_mesh: np.ndarray  # (4,4) similarity mesh -> NOCS
    camera: Camera
    joints3d: np.ndarray  # (21,3) world, common 21 order
    mesh_key: Hashable | None = None  # cache key for the object's GL meshes; None = the mesh itself


@dataclass
class RenderResult:
    """Condition maps and annotations of one frame (conventions in the module docstring)."""

    normal: np.ndarray
    seg: np.ndarray
    depth: np.ndarray
    depth_m: np.ndarray
    nocs: np.ndarray
    shade: np.ndarray
    skeleton: np.ndarray
    joints2d: np.ndarray
    joints_visible: np.ndarray
    mask_hand: np.ndarray
    mask_object: np.ndarray
    camera: Camera = field(repr=False, default=None)  # type: ignore[assignment]


@dataclass
class _Geometry:
    """CPU-side triangles and shading normals of one mesh, plus its two pyrender meshes."""

    triangles: np.ndarray  # (F,3,3) in the mesh's own frame
    planes: FacePlanes
    corners: np.ndarray | None  # (F,3,3) shading normals per corner; None = flat
    id_mesh: Any
    shade_mesh: Any
    source: Any = None  # keeps a cached trimesh alive so its id() stays unique


def _area_downsample(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean over factor x factor blocks (cv2 INTER_AREA is an exact block mean for integer factors)."""
    h, w = image.shape[0] // factor, image.shape[1] // factor
    return cv2.resize(image.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)


class Renderer:
    """Renders :class:`SceneSpec` frames at a fixed size with one reused offscreen GL context."""

    def __init__(
        self,
        width: int,
        height: int,
        *,
        supersample: int = 1,
        crease_deg: float | None = 45.0,
        znear: float = 0.01,
        zfar: float = 10.0,
        visibility_tolerance: float = 0.01,
        hand_color: tuple[float, float, float] = HAND_COLOR,
        object_color: tuple[float, float, float] = OBJECT_COLOR,
        normal_background: tuple[int, int, int] = NORMAL_BACKGROUND,
        light_intensity: float = 3.0,
        ambient: float = 0.25,
        skeleton_line_width: int | None = None,
        cache_size: int = 8,
    ) -> None:
        self.width, self.height = int(width), int(height)
        if self.width < 1 or self.height < 1:
            raise HoigenError(f"render: image size {width}x{height} is empty; use a positive size")
        self.supersample = self._check_ss(supersample)
        self.crease_deg = crease_deg
        self.znear, self.zfar = float(znear), float(zfar)
        self.visibility_tolerance = float(visibility_tolerance)
        self.normal_background = np.asarray(normal_background, dtype=np.float64)
        self.skeleton_line_width = skeleton_line_width
        self.cache_size = max(1, int(cache_size))
        self.renders = 0
        pr = self._pr = import_pyrender()
        self._offscreen = pr.OffscreenRenderer(self.width, self.height)
        self._scene = pr.Scene(bg_color=(0.0, 0.0, 0.0, 0.0), ambient_light=(ambient, ambient, ambient))
        self._camera = pr.IntrinsicsCamera(1.0, 1.0, 0.0, 0.0, znear=self.znear, zfar=self.zfar)
        self._camera_node = self._scene.add(self._camera)
        light = pr.DirectionalLight(color=np.ones(3), intensity=light_intensity)
        self._scene.add(light, parent_node=self._camera_node)
        self._materials = {
            "hand": pr.MetallicRoughnessMaterial(
                baseColorFactor=(*hand_color, 1.0), metallicFactor=0.0, roughnessFactor=0.7
            ),
            "object": pr.MetallicRoughnessMaterial(
                baseColorFactor=(*object_color, 1.0), metallicFactor=0.0, roughnessFactor=0.6
            ),
        }
        self._objects: OrderedDict[Hashable, _Geometry] = OrderedDict()
        self._object_nodes: tuple[Any, Any] | None = None
        self._object_current: _Geometry | None = None
        self._hand_nodes: tuple[Any, Any] | None = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def offscreen(self) -> Any:
        """The one ``pyrender.OffscreenRenderer`` this renderer uses (None after :meth:`close`)."""
        return self._offscreen

    def close(self) -> None:
        """Free the GL context. Safe to call twice."""
        if self._offscreen is not None:
            self._offscreen.delete()
            self._offscreen = None
        self._objects.clear()

    def __enter__(self) -> Renderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass

    # ------------------------------------------------------------------ meshes
    @staticmethod
    def _check_ss(value: int) -> int:
        ss = int(value)
        if ss < 1 or ss > 8:
            raise HoigenError(f"render: supersample={value} is outside 1..8; use 1 (off) to 4")
        return ss

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
        triangles = vertices[faces]
        corners = corner_normals(vertices, faces, self.crease_deg)
        planes = face_planes(triangles)
        positions = triangles.reshape(-1, 3).astype(np.float32)
        ids = encode_ids(np.arange(first_id, first_id + len(faces)))
        id_mesh = pr.Mesh([pr.Primitive(positions=positions, color_0=np.repeat(ids, 3, axis=0))])
        shade_mesh = pr.Mesh(
            [
                pr.Primitive(
                    positions=positions,
                    normals=corners.reshape(-1, 3).astype(np.float32),
                    material=self._materials[kind],
                )
            ]
        )
        return _Geometry(triangles, planes, None if self.crease_deg is None else corners, id_mesh, shade_mesh)

    def _object_geometry(self, spec: SceneSpec) -> _Geometry:
        mesh = spec.object_mesh
        key = spec.mesh_key if spec.mesh_key is not None else ("id", id(mesh))
        geo = self._objects.get(key)
        if geo is not None and (spec.mesh_key is not None or geo.source is mesh):
            self._objects.move_to_end(key)
            return geo
        if len(mesh.faces) == 0:
            raise HoigenError("render: the object mesh has no faces; check the object file")
        geo = self._geometry(mesh.vertices, mesh.faces, 1, "object")
        geo.source = mesh
        self._objects[key] = geo
        while len(self._objects) > self.cache_size:
            self._objects.popitem(last=False)
        return geo

    def _place(self, spec: SceneSpec) -> tuple[_Geometry, _Geometry]:
        obj = self._object_geometry(spec)
        pose = np.asarray(spec.object_pose, dtype=np.float64).reshape(4, 4)
        if obj is not self._object_current:
            if self._object_nodes is not None:
                for node in self._object_nodes:
                    self._scene.remove_node(node)
            self._object_nodes = (
                self._scene.add(obj.id_mesh, pose=pose),
                self._scene.add(obj.shade_mesh, pose=pose),
            )
            self._object_current = obj
        else:
            for node in self._object_nodes:
                self._scene.set_pose(node, pose)
        hand = self._geometry(spec.hand_vertices, spec.hand_faces, 1 + len(obj.triangles), "hand")
        if self._hand_nodes is not None:
            for node in self._hand_nodes:
                self._scene.remove_node(node)
        self._hand_nodes = (self._scene.add(hand.id_mesh), self._scene.add(hand.shade_mesh))
        return obj, hand

    # ------------------------------------------------------------------ passes
    def _pass(self, camera: Camera, obj: _Geometry, hand: _Geometry, kind: str) -> Any:
        pr = self._pr
        self._offscreen.viewport_width, self._offscreen.viewport_height = camera.width, camera.height
        fx, fy, cx, cy = gl_intrinsics(camera.K)
        self._camera.fx, self._camera.fy, self._camera.cx, self._camera.cy = fx, fy, cx, cy
        self._scene.set_pose(self._camera_node, pyrender_pose(camera.world_to_cam))
        obj.id_mesh.is_visible = kind in ("ids", "object_depth")
        hand.id_mesh.is_visible = kind == "ids"
        obj.shade_mesh.is_visible = hand.shade_mesh.is_visible = kind == "shade"
        flags = pr.RenderFlags.SKIP_CULL_FACES
        if kind == "ids":
            return self._offscreen.render(self._scene, flags | pr.RenderFlags.FLAT)
        if kind == "object_depth":
            return self._offscreen.render(self._scene, flags | pr.RenderFlags.DEPTH_ONLY)
        return self._offscreen.render(self._scene, flags)[0]

    def _surface(
        self,
        ids: np.ndarray,
        gl_depth: np.ndarray,
        camera: Camera,
        spec: SceneSpec,
        obj: _Geometry,
        hand: _Geometry,
        want_nocs: bool,
    ) -> dict[str, np.ndarray]:
        """Exact per-pixel depth, camera-frame normals (and NOCS) from a face-id image.

        ``gl_depth`` (the pass's depth buffer) stands in only where a ray grazes its triangle's plane.
        """
        h, w = ids.shape
        n_obj = len(obj.triangles)
        K_inv = np.linalg.inv(camera.K)
        R, center = camera.world_to_cam[:3, :3], camera.center
        flat = ids.reshape(-1)
        depth = np.zeros(h * w)
        normal = np.zeros((h * w, 3))
        nocs = np.zeros((h * w, 3)) if want_nocs else None
        pose = np.asarray(spec.object_pose, dtype=np.float64).reshape(4, 4)
        parts = [
            (np.flatnonzero((flat >= 1) & (flat <= n_obj)), obj, 1, np.linalg.inv(pose)),
            (np.flatnonzero(flat > n_obj), hand, 1 + n_obj, np.eye(4)),
        ]
        for pix, geo, first, frame_from_world in parts:
            if len(pix) == 0:
                continue
            face = flat[pix] - first
            rays = np.stack([pix % w, pix // w, np.ones(len(pix))], axis=1).astype(np.float64) @ K_inv.T
            A, b = frame_from_world[:3, :3], frame_from_world[:3, 3]
            origin = A @ center + b
            dirs = rays @ (A @ R.T).T  # camera ray -> world -> this mesh's frame
            t, bary, facing = hit_planes(origin, dirs, geo.planes, face)
            bad = ~np.isfinite(t) | (t <= 0)
            if np.any(bad):
                t[bad] = gl_depth.reshape(-1)[pix[bad]]
            depth[pix] = t
            if geo.corners is None:
                n_frame = facing
            else:
                n_frame = interpolate_normals(geo.corners[face], bary)
                side = np.einsum("ij,ij->i", n_frame, facing)
                n_frame *= np.where(side < 0, -1.0, 1.0)[:, None]
                degenerate = side == 0
                if np.any(degenerate):
                    n_frame[degenerate] = facing[degenerate]
            # mesh frame -> world by the inverse transpose (A^T), then world -> camera (R)
            n_cam = n_frame @ (R @ A.T).T
            n_cam /= np.maximum(np.sqrt(np.einsum("ij,ij->i", n_cam, n_cam)), 1e-12)[:, None]
            ray = rays / np.sqrt(np.einsum("ij,ij->i", rays, rays))[:, None]
            cos = np.einsum("ij,ij->i", n_cam, ray)
            bend = cos > -_FACING_EPS
            if np.any(bend):
                n_cam[bend] -= (cos[bend] + _FACING_EPS)[:, None] * ray[bend]
                n_cam[bend] /= np.linalg.norm(n_cam[bend], axis=1, keepdims=True)
            normal[pix] = n_cam
            if want_nocs and geo is obj:
                points = origin + t[:, None] * dirs
                nocs_T = np.asarray(spec.nocs_from_mesh, dtype=np.float64).reshape(4, 4)
                nocs[pix] = points @ nocs_T[:3, :3].T + nocs_T[:3, 3]
        out = {"depth": depth.reshape(h, w), "normal": normal.reshape(h, w, 3)}
        if want_nocs:
            out["nocs"] = nocs.reshape(h, w, 3)
        return out

    def _encode_normals(self, normal: np.ndarray, covered: np.ndarray) -> np.ndarray:
        rgb = normal.astype(np.float32)
        rgb *= -127.5
        rgb += 127.5
        np.copyto(rgb, self.normal_background.astype(np.float32), where=~covered[..., None])
        return rgb

    # ------------------------------------------------------------------ main entry
    def render(self, spec: SceneSpec, supersample: int | None = None) -> RenderResult:
        """Render all maps and annotations of one frame (see the module docstring)."""
        if self._offscreen is None:
            raise HoigenError("render: the Renderer was closed; create a new Renderer")
        cam = spec.camera
        if (cam.width, cam.height) != (self.width, self.height):
            raise HoigenError(
                f"render: camera is {cam.width}x{cam.height} but the Renderer is {self.width}x{self.height}; "
                "use a Renderer of the camera's size"
            )
        ss = self.supersample if supersample is None else self._check_ss(supersample)
        obj, hand = self._place(spec)

        if ss > 1:  # anti-aliased normal and shade maps from a larger image
            big = cam.scaled(ss)
            color_big, gl_depth_big = self._pass(big, obj, hand, "ids")
            ids_big = decode_ids(color_big)
            surf_big = self._surface(ids_big, gl_depth_big, big, spec, obj, hand, want_nocs=False)
            normal_f = _area_downsample(self._encode_normals(surf_big["normal"], ids_big > 0), ss)
            shade_f = _area_downsample(self._pass(big, obj, hand, "shade"), ss)

        color, gl_depth = self._pass(cam, obj, hand, "ids")
        ids = decode_ids(color)
        n_obj = len(obj.triangles)
        seg = np.full(ids.shape, SEG_HAND, dtype=np.uint8)
        seg[ids <= n_obj] = SEG_OBJECT
        seg[ids == 0] = SEG_BACKGROUND
        mask_hand, mask_object = seg == SEG_HAND, seg == SEG_OBJECT
        surf = self._surface(ids, gl_depth, cam, spec, obj, hand, want_nocs=True)
        depth_m = np.where(seg > 0, surf["depth"], 0.0).astype(np.float32)
        depth = np.clip(np.round(depth_m.astype(np.float64) * 1000.0), 0, 65535).astype(np.uint16)
        nocs = np.where(mask_object[..., None], np.clip(np.round((surf["nocs"] + 0.5) * 255.0), 0, 255), 0)
        if ss == 1:
            normal_f = self._encode_normals(surf["normal"], seg > 0)
            shade_f = self._pass(cam, obj, hand, "shade")

        joints3d = np.asarray(spec.joints3d, dtype=np.float64).reshape(-1, 3)
        joints2d, joints_z = project(joints3d, cam.K, cam.world_to_cam)
        visible = self._joint_visibility(joints2d, joints_z, cam, obj, hand)
        skeleton = draw_skeleton(joints2d, visible, self.width, self.height, self.skeleton_line_width)
        self.renders += 1
        return RenderResult(
            normal=np.clip(np.round(normal_f), 0, 255).astype(np.uint8).reshape(self.height, self.width, 3),
            seg=seg,
            depth=depth,
            depth_m=depth_m,
            nocs=nocs.astype(np.uint8),
            shade=np.clip(np.round(shade_f), 0, 255).astype(np.uint8).reshape(self.height, self.width, 3),
            skeleton=skeleton,
            joints2d=joints2d,
            joints_visible=visible,
            mask_hand=mask_hand,
            mask_object=mask_object,
            camera=cam,
        )

    def _joint_visibility(
        self, joints2d: np.ndarray, joints_z: np.ndarray, cam: Camera, obj: _Geometry, hand: _Geometry
    ) -> np.ndarray:
        finite = np.all(np.isfinite(joints2d), axis=1)
        u, v = np.where(finite[:, None], joints2d, -1e9).T
        inside = (
            finite
            & (joints_z > self.znear)
            & (u >= -0.5) & (u < cam.width - 0.5)
            & (v >= -0.5) & (v < cam.height - 0.5)
        )
        if not inside.any():
            return inside
        object_depth = self._pass(cam, obj, hand, "object_depth")
        col = np.clip(np.round(u[inside]).astype(np.int64), 0, cam.width - 1)
        row = np.clip(np.round(v[inside]).astype(np.int64), 0, cam.height - 1)
        surface = object_depth[row, col]
        free = (surface <= 0) | (joints_z[inside] <= surface + self.visibility_tolerance)
        visible = inside.copy()
        visible[inside] = free
        return visible
