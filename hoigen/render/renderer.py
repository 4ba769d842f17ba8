"""Render one hand-object frame into condition maps and annotations, with one reused GL context.

The default path rasterises with raw OpenGL (:mod:`hoigen.render.gl`: moderngl over EGL, headless;
Mesa llvmpipe on CPU-only machines); ``HOIGEN_GL=pyrender`` (or osmesa, pyglet: pyrender on that
PyOpenGL platform) selects the older pyrender path
(:mod:`hoigen.render.pyrender_renderer`: face ids plus exact float64 ray-triangle hits), which
gives the same maps (checks in tests/test_render_gl.py). :func:`make_renderer` picks one. Joint
visibility and boxes are :mod:`hoigen.render.annotate`; the map encodings are the shard contract's
(:mod:`hoigen.data.contract`).

A frame (:class:`SceneSpec`) holds the hand, the grasped object and ``extras``
(:class:`Instance`: the table, distractors). Two passes per frame (:mod:`hoigen.render.gl`):

1. *visible pass* (depth test on a 32-bit float depth buffer; no MSAA; both faces drawn): per
   pixel centre the nearest surface (ties: object, hand, extras in that order); the rasteriser
   interpolates the camera-frame position, shading normal and NOCS coordinate at the pixel centre
   (exact ray-triangle values up to float32 rounding: affine over each triangle), and writes the
   shaded colour, seg id, encoded normal and NOCS, and the camera z.
2. *amodal pass* (no depth test): each instance's full coverage (its pixels if it were drawn
   alone: same rasteriser, same pixel-centre rule), and the nearest depth of the hand and of the
   other instances at the joints' pixels (joint visibility).

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
  interpolated barycentrically at the hit point; ``crease_deg=None`` gives flat face normals.
  Back faces are flipped, and interpolated normals that would point away from the camera near
  silhouettes are bent just enough to face it.
- ``shade`` uint8 RGB plain shaded render: the mesh's texture, vertex or face colours, else a
  colour per kind (hand, object, table), times (ambient + Lambert of ``SceneSpec.lights``, default
  one light from the camera: a surface facing the camera squarely shows its colour); with the
  default colours (ambient light keeps them above zero) its silhouette equals ``seg != 0`` at
  supersample 1.
- ``skeleton`` uint8 RGB, :func:`hoigen.hand.skeleton.draw_skeleton` of the visible joints.
- ``joints2d`` (21,2) float64 pixels = :func:`hoigen.render.cameras.project` of ``joints3d``.
- ``joints_visible`` (21,) bool: inside the image, in front of the camera, not behind any non-hand
  surface (object, table, distractor) at the joint's pixel by more than ``visibility_tolerance``
  (default 1 cm), and not self-occluded; ``joints_self_occluded`` (21,) bool (rules in
  :mod:`hoigen.render.annotate`).
- ``mask_hand``, ``mask_object`` (H,W) bool = ``seg == 1``, ``seg == 2`` (visible surface).
- ``full_masks`` {seg id: amodal mask} for every instance (hand and object included), every
  pixel the mesh covers when rendered alone; ``mask_hand_full``, ``mask_object_full`` are the
  first two; ``amodal`` packs them (:func:`hoigen.data.contract.amodal_bits`).
- :meth:`RenderResult.instance_boxes` per seg id: amodal and visible boxes and pixel counts;
  :meth:`RenderResult.bboxes`: :func:`hoigen.render.annotate.mask_bbox` boxes ``[x0, y0, x1, y1]``
  (x1, y1 exclusive), None for an empty mask, of the hand and the object.

The skeleton is drawn for joints in the image and not hidden by another surface; self-occluded
joints are drawn too (the skeleton conditions the hand's pose, which a curled finger still has).

Supersampling (``supersample=s``): ``normal`` and ``shade`` are rendered at s times the size and
area-averaged down (anti-aliased edges blend toward the background). ``seg``, masks, ``depth``,
``nocs`` and visibility are exact point samples at the native pixel centres (their own pass at
native size), never blended.

Caching: rigid meshes (object, extras) are uploaded once and kept (LRU, ``cache_size``) keyed by
``mesh_key`` (of the SceneSpec or the Instance) or, if None, by the mesh object itself (``id`` plus
an identity check). Do not modify a cached ``trimesh.Trimesh`` in place; pass a new mesh or a new
key instead. The hand's vertex buffer is rewritten every frame (its edge topology is cached per
face array).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np
import trimesh

from hoigen.data.contract import (
    SEG_HAND,
    SEG_OBJECT,
    SEG_TABLE,
)
from hoigen.errors import HoigenError
from hoigen.render.cameras import Camera
from hoigen.render.scene import (
    DEFAULT_LIGHTS,
    MAX_SEG_ID,
    Instance,
    Light,
    RendererBase,
    RenderResult,
    SceneSpec,
    area_downsample,
    check_extras,
)
from hoigen.render.surface import Topology, mesh_normals, mesh_topology

__all__ = ["Instance", "Light", "RenderResult", "Renderer", "SceneSpec", "make_renderer"]


def _check_mesh(vertices: np.ndarray, faces: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    faces = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    vertices = np.asarray(vertices, dtype=np.float64).reshape(-1, 3)
    if len(faces) == 0:
        raise HoigenError(f"render: the {kind} mesh has no faces; check the {kind} file")
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise HoigenError(f"render: {kind} faces index vertices out of range; check the {kind} mesh")
    return vertices, faces


def mesh_appearance(mesh: trimesh.Trimesh, faces: np.ndarray) -> tuple[Any, Any, Any]:
    """(uv per corner (F,3,2), sRGB colour per corner (F,3,3) in [0, 1], texture image) of a mesh's
    visuals: a texture (``TextureVisuals`` with uv and an image), else vertex or face colours, else
    nothing (None each: the renderer's colour for the kind)."""
    visual = getattr(mesh, "visual", None)
    kind = getattr(visual, "kind", None)
    if kind == "texture":
        uv = getattr(visual, "uv", None)
        material = getattr(visual, "material", None)
        image = getattr(material, "image", None) if material is not None else None
        if image is None and material is not None:
            image = getattr(material, "baseColorTexture", None)
        if uv is not None and image is not None and len(uv) == len(mesh.vertices):
            rgb = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, dtype=np.uint8)
            return np.asarray(uv, dtype=np.float64)[faces], None, rgb
        return None, None, None
    if kind == "vertex":
        colors = np.asarray(visual.vertex_colors, dtype=np.float64)[:, :3] / 255.0
        return None, colors[faces], None
    if kind == "face":
        colors = np.asarray(visual.face_colors, dtype=np.float64)[:, :3] / 255.0
        return None, np.repeat(colors[:, None, :], 3, axis=1), None
    return None, None, None


def _closed(mesh: trimesh.Trimesh) -> bool:
    """True when the mesh is watertight with consistent outward winding: seen from outside, its
    back faces are always behind a front face (culling them changes no pixel, only saves work)."""
    try:
        return bool(mesh.is_watertight and mesh.is_winding_consistent and mesh.volume > 0)
    except Exception:  # noqa: BLE001 - any doubt: draw both faces
        return False


def _set(prog: Any, name: str, value: Any) -> None:
    """Set a uniform if the compiled program has it (drivers drop unused ones)."""
    if name in prog:
        prog[name].value = value


def _write(prog: Any, name: str, data: bytes) -> None:
    if name in prog:
        prog[name].write(data)


@dataclass
class _Mesh:
    """A mesh on the GPU (:class:`hoigen.render.gl.GLMesh`) and what keeps its cache entry valid."""

    gl: Any
    source: Any = None  # keeps a cached trimesh alive so its id() stays unique
    vertex_colored: bool = False
    closed: bool = False  # watertight with outward winding: back faces never show from outside


@dataclass
class _Draw:
    """One instance to draw this frame."""

    mesh: _Mesh
    pose: np.ndarray  # (4,4) mesh -> world
    seg_id: int
    nocs_from_mesh: np.ndarray | None
    kind: str  # "hand" | "object" | "table": base colour


class Renderer(RendererBase):
    """Renders :class:`SceneSpec` frames at a fixed size with one reused raw-GL context (module
    docstring); settings as :class:`hoigen.render.scene.RendererBase`."""

    def __init__(self, width: int, height: int, **settings: Any) -> None:
        from hoigen.render.gl import shared_core

        super().__init__(width, height, **settings)
        self._gl: Any = shared_core()
        self._meshes: OrderedDict[Hashable, _Mesh] = OrderedDict()
        self._hand: _Mesh | None = None
        self._hand_last: tuple[np.ndarray, Any] | None = None  # vertices and faces in the hand buffer
        self._topologies: dict[int, tuple[np.ndarray, Topology]] = {}

    # ------------------------------------------------------------------ lifecycle
    @property
    def context(self) -> Any:
        """The moderngl context this renderer uses (shared by every Renderer of the process; None
        after :meth:`close`)."""
        return None if self._gl is None else self._gl.ctx

    def _is_open(self) -> bool:
        return getattr(self, "_gl", None) is not None

    def _release(self) -> None:
        """Free this renderer's GPU meshes (the shared context stays)."""
        with self._gl.current():
            for mesh in [*self._meshes.values(), *([self._hand] if self._hand else [])]:
                mesh.gl.release()
        self._meshes.clear()
        self._hand = self._hand_last = None
        self._gl = None

    def _frame(self) -> Any:
        return self._gl.current()

    def _buffer(self, vertices: np.ndarray, faces: np.ndarray, topology: Topology | None,
                uv: np.ndarray | None = None, colors: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
        from hoigen.render.gl import corner_buffer

        triangles, corners, face_unit = mesh_normals(vertices, faces, self.crease_deg, topology)
        return corner_buffer(triangles, corners, face_unit, uv, colors)

    def _rigid(self, mesh: trimesh.Trimesh, key: Hashable | None, kind: str) -> _Mesh:
        """A rigid mesh from the LRU cache (keyed by ``key`` or the mesh itself), uploaded on a miss."""
        from hoigen.render.gl import GLMesh

        cache_key = key if key is not None else ("id", id(mesh))
        cached = self._meshes.get(cache_key)
        if cached is not None and (key is not None or cached.source is mesh):
            self._meshes.move_to_end(cache_key)
            return cached
        vertices, faces = _check_mesh(mesh.vertices, mesh.faces, kind)
        uv, colors, image = mesh_appearance(mesh, faces)
        entry = _Mesh(GLMesh(self._gl, self._buffer(vertices, faces, None, uv, colors)), mesh)
        entry.vertex_colored = colors is not None
        entry.closed = _closed(mesh)
        if image is not None:
            entry.gl.set_texture(image)
        if cached is not None:
            cached.gl.release()
        self._meshes[cache_key] = entry
        while len(self._meshes) > self.cache_size:
            self._meshes.popitem(last=False)[1].gl.release()
        return entry

    def _hand_mesh(self, vertices: np.ndarray, faces: np.ndarray) -> _Mesh:
        """The hand's buffer, rewritten in place (edge topology cached per face array)."""
        from hoigen.render.gl import GLMesh

        vertices, faces_i = _check_mesh(vertices, faces, "hand")
        last = self._hand_last
        if (self._hand is not None and last is not None and last[1] is faces
                and np.array_equal(last[0], vertices)):  # fmt: skip
            return self._hand  # the same hand again (another view of the frame): nothing to rebuild
        self._hand_last = (vertices.copy(), faces)
        topology = None
        if self.crease_deg is not None:
            cached = self._topologies.get(id(faces))
            if cached is None or cached[0] is not faces:
                cached = (faces, mesh_topology(vertices, faces_i))
                self._topologies = {id(faces): cached}
            topology = cached[1]
        data = self._buffer(vertices, faces_i, topology)
        if self._hand is None:
            self._hand = _Mesh(GLMesh(self._gl, data))
        else:
            self._hand.gl.update(data)
        return self._hand

    def _draws(self, spec: SceneSpec) -> list[_Draw]:
        """The frame's instances in drawing (tie-breaking) order: object, hand, extras."""
        extras = tuple(spec.extras)
        check_extras(extras)
        if len(extras) + 2 > MAX_SEG_ID:
            raise HoigenError(f"render: {len(extras)} extra instances; at most {MAX_SEG_ID - 2}")
        pose = np.asarray(spec.object_pose, dtype=np.float64).reshape(4, 4)
        draws = [
            _Draw(self._rigid(spec.object_mesh, spec.mesh_key, "object"), pose, SEG_OBJECT,
                  np.asarray(spec.nocs_from_mesh, dtype=np.float64).reshape(4, 4), "object"),
            _Draw(self._hand_mesh(spec.hand_vertices, spec.hand_faces), np.eye(4), SEG_HAND, None, "hand"),
        ]  # fmt: skip
        for inst in extras:
            kind = "table" if int(inst.seg_id) == SEG_TABLE else "object"
            nocs = None if inst.nocs_from_mesh is None else np.asarray(inst.nocs_from_mesh, np.float64).reshape(4, 4)
            draws.append(_Draw(self._rigid(inst.mesh, inst.mesh_key, kind),
                               np.asarray(inst.pose, dtype=np.float64).reshape(4, 4), int(inst.seg_id), nocs, kind))
        return draws

    # ------------------------------------------------------------------ passes
    def _uniforms(self, prog: Any, camera: Camera, draw: _Draw) -> None:
        mv = camera.world_to_cam @ draw.pose
        _write(prog, "mv", mv.T.astype(np.float32).tobytes())
        _write(prog, "nmat", np.linalg.inv(mv[:3, :3]).astype(np.float32).tobytes())  # (A^-1)^T, column-major
        nocs = np.eye(4) if draw.nocs_from_mesh is None else draw.nocs_from_mesh
        _write(prog, "nocs_T", nocs.T.astype(np.float32).tobytes())

    def _camera(self, prog: Any, camera: Camera) -> None:
        from hoigen.render.gl import projection

        proj, zmap = projection(camera.K, camera.width, camera.height, self.znear, self.zfar)
        _set(prog, "proj", proj)
        _set(prog, "zmap", zmap)

    def _visible(self, camera: Camera, draws: list[_Draw], lights: tuple[Light, ...], float_normal: bool) -> Any:
        """Draw the visible pass into the camera size's targets and return them."""
        gl = self._gl
        ctx, prog = gl.ctx, gl.visible
        targets = gl.targets(camera.width, camera.height, float_normal)
        targets.visible.use()
        ctx.disable(ctx.BLEND)
        ctx.enable(ctx.DEPTH_TEST)
        targets.visible.clear(0.0, 0.0, 0.0, 0.0, depth=1.0)
        self._camera(prog, camera)
        _set(prog, "round_normal", 0 if float_normal else 1)
        _set(prog, "smooth_normals", 0 if self.crease_deg is None else 1)
        _set(prog, "ambient", self.ambient)
        dirs = np.zeros((3, 3), np.float32)
        cols = np.zeros((3, 3), np.float32)
        for k, light in enumerate(lights[:3]):
            d = np.asarray(light.direction, dtype=np.float64)
            dirs[k] = d / max(np.linalg.norm(d), 1e-12)
            cols[k] = light.color
        _write(prog, "light_dir", dirs.tobytes())
        _write(prog, "light_color", cols.tobytes())
        # the hand first (usually nearest: fewer fragments shaded behind it), then the object with
        # "<=" so that it still wins exact ties with the hand, then the extras with "<" (they lose
        # ties): the tie order object, hand, extras of the module docstring
        order = [draws[1], draws[0], *draws[2:]] if len(draws) > 1 else draws
        for k, draw in enumerate(order):
            ctx.depth_func = "<=" if k == 1 else "<"
            self._cull(draw)
            self._uniforms(prog, camera, draw)
            _set(prog, "seg", float(draw.seg_id))
            _set(prog, "has_nocs", 0 if draw.nocs_from_mesh is None else 1)
            _set(prog, "base_color", tuple(float(c) ** (1 / 2.2) for c in self.colors[draw.kind]))
            texture = draw.mesh.gl.texture
            _set(prog, "textured", int(texture is not None))
            _set(prog, "vertex_colored", int(draw.mesh.vertex_colored))
            if texture is not None:
                texture.use(0)
                _set(prog, "tex", 0)
            draw.mesh.gl.vao_visible.render()
        ctx.depth_func = "<"
        ctx.disable(ctx.CULL_FACE)
        return targets

    def _amodal(self, camera: Camera, draws: list[_Draw]) -> Any:
        gl = self._gl
        ctx, prog = gl.ctx, gl.amodal
        targets = gl.targets(camera.width, camera.height, False)
        fbo = targets.amodal[(len(draws) - 1) // 4]
        fbo.use()
        ctx.disable(ctx.DEPTH_TEST)
        ctx.enable(ctx.BLEND)
        ctx.blend_equation = ctx.MAX
        fbo.clear(-1e30, -1e30, -1e30, -1e30)
        self._camera(prog, camera)
        for slot, draw in enumerate(draws):
            self._cull(draw)
            self._uniforms(prog, camera, draw)
            _set(prog, "slot", slot)
            _set(prog, "is_hand", int(draw.seg_id == SEG_HAND))
            draw.mesh.gl.vao_amodal.render()
        ctx.blend_equation = ctx.FUNC_ADD
        ctx.disable(ctx.BLEND)
        ctx.disable(ctx.CULL_FACE)
        return fbo

    def _cull(self, draw: _Draw) -> None:
        """Cull back faces of closed rigid meshes (the hand is open at the wrist: never culled).
        With the image's v axis mapped to window y, a face whose outward normal points at the
        camera winds clockwise in window coordinates."""
        ctx = self._gl.ctx
        if draw.mesh.closed and np.linalg.det(draw.pose[:3, :3]) > 0:
            ctx.enable(ctx.CULL_FACE)
            ctx.front_face = "cw"
            ctx.cull_face = "back"
        else:
            ctx.disable(ctx.CULL_FACE)

    @staticmethod
    def _read(fbo: Any, attachment: int, shape: tuple[int, ...], dtype: type, viewport: tuple | None = None) -> Any:
        """Read one attachment into a new array of ``shape`` (H, W[, C]); C may be fewer channels
        than the attachment has (GL drops the rest)."""
        out = np.empty(shape, dtype=dtype)
        comps = shape[2] if len(shape) == 3 else 1
        fbo.read_into(out, viewport=viewport, components=comps, attachment=attachment,
                      dtype="f4" if dtype == np.float32 else "f1")
        return out

    # ------------------------------------------------------------------ main entry
    @staticmethod
    def _lights(spec: SceneSpec) -> tuple[Light, ...]:
        lights = DEFAULT_LIGHTS if spec.lights is None else tuple(spec.lights)
        if not 0 < len(lights) <= 3:
            raise HoigenError(f"render: {len(lights)} lights; use 1 to 3")
        return lights

    def lights_record(self, lights: tuple[Light, ...] | None) -> dict[str, Any]:
        """ann.json ``lights`` of a frame drawn with ``lights`` (None: the default light): the shade
        pass's model, ambient term and directional lights (camera frame, the way each light travels;
        linear RGB intensity)."""
        used = DEFAULT_LIGHTS if lights is None else tuple(lights)
        return {
            "shading": "lambert",
            "ambient": self.ambient,
            "direction": [[round(float(x), 6) for x in light.direction] for light in used],
            "color": [[round(float(x), 6) for x in light.color] for light in used],
        }

    def _shade_only(self, spec: SceneSpec, cam: Camera) -> np.ndarray:
        targets = self._visible(cam, self._draws(spec), self._lights(spec), False)
        return self._read(targets.visible, 0, (cam.height, cam.width, 3), np.uint8)

    def _render(self, spec: SceneSpec, cam: Camera, ss: int) -> RenderResult:
        draws = self._draws(spec)
        lights = self._lights(spec)
        h, w = self.height, self.width

        if ss > 1:  # anti-aliased normal and shade maps from a larger image
            big = cam.scaled(ss)
            tb = self._visible(big, draws, lights, True)
            bh, bw = big.height, big.width
            normal_big = self._read(tb.visible, 1, (bh, bw, 3), np.float32) * 255.0
            if self.normal_background.any():
                normal_big[self._read(tb.visible, 4, (bh, bw), np.uint8) == 0] = self.normal_background
            normal = np.clip(np.round(area_downsample(normal_big, ss)), 0, 255).astype(np.uint8)
            shade_big = self._read(tb.visible, 0, (bh, bw, 3), np.uint8)
            shade = np.clip(np.round(area_downsample(shade_big, ss)), 0, 255).astype(np.uint8)

        tv = self._visible(cam, draws, lights, False)
        seg = self._read(tv.visible, 4, (h, w), np.uint8)
        nocs = self._read(tv.visible, 2, (h, w, 3), np.uint8)
        depth_m = self._read(tv.visible, 3, (h, w), np.float32)
        if ss == 1:
            normal = self._read(tv.visible, 1, (h, w, 3), np.uint8)
            if self.normal_background.any():
                normal[seg == 0] = self.normal_background.astype(np.uint8)
            shade = self._read(tv.visible, 0, (h, w, 3), np.uint8)
        mm = depth_m * np.float32(1000.0)  # float32 maths: depth.png = round(depth_m * 1000), 0 stays 0
        mm += np.float32(0.5)
        if self.zfar * 1000.0 >= 65535.0:
            np.minimum(mm, np.float32(65535.0), out=mm)
        depth = mm.astype(np.uint16)

        amodal = self._amodal(cam, draws)
        full_masks: dict[int, np.ndarray] = {}
        for a in range((len(draws) + 3) // 4):
            cov = self._read(amodal, 1 + a, (h, w, 4), np.uint8)
            for c, draw in enumerate(draws[4 * a : 4 * a + 4]):
                full_masks[draw.seg_id] = cov[..., c] > 0

        read = self._read

        def depth_at(row: np.ndarray, col: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            r0, c0 = int(row.min()), int(col.min())
            rh, cw = int(row.max()) - r0 + 1, int(col.max()) - c0 + 1
            negz = read(amodal, 0, (rh, cw, 2), np.float32, viewport=(c0, r0, cw, rh))[row - r0, col - c0]
            neg = negz.astype(np.float64)
            z = np.where(neg > -1e29, -neg, np.inf)
            return z[:, 1], z[:, 0]

        maps = {"normal": normal, "seg": seg, "depth": depth, "depth_m": depth_m, "nocs": nocs, "shade": shade}
        return self._result(spec, cam, maps, full_masks, depth_at)


def make_renderer(width: int, height: int, **kwargs: Any) -> Any:
    """A :class:`Renderer`, or with ``HOIGEN_GL`` = pyrender/osmesa/pyglet
    (:func:`hoigen.render.backend.renderer_kind`) a :class:`hoigen.render.pyrender_renderer.PyrenderRenderer`."""
    from hoigen.render.backend import renderer_kind

    if renderer_kind() == "pyrender":
        from hoigen.render.pyrender_renderer import PyrenderRenderer

        return PyrenderRenderer(width, height, **kwargs)
    return Renderer(width, height, **kwargs)
