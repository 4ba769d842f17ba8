"""The frame description and result types shared by both renderers (:mod:`hoigen.render.renderer`,
:mod:`hoigen.render.pyrender_renderer`), and their common base :class:`RendererBase`; their
conventions are in :mod:`hoigen.render.renderer`."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Self

import cv2
import numpy as np
import trimesh

from hoigen.data.contract import (
    MAX_DISTRACTORS,
    NORMAL_BACKGROUND,
    SEG_FIRST_DISTRACTOR,
    SEG_HAND,
    SEG_OBJECT,
    SEG_TABLE,
    amodal_bits,
)
from hoigen.errors import HoigenError
from hoigen.render.annotate import mask_bbox
from hoigen.render.cameras import Camera

HAND_COLOR = (0.80, 0.56, 0.44)  # linear RGB base colour of the shaded hand
OBJECT_COLOR = (0.55, 0.55, 0.58)  # linear RGB base colour of the shaded objects (grasped and distractors)
TABLE_COLOR = (0.42, 0.33, 0.24)  # linear RGB base colour of the shaded table (seg id SEG_TABLE)
MAX_SEG_ID = SEG_FIRST_DISTRACTOR + MAX_DISTRACTORS - 1


@dataclass(frozen=True)
class Light:
    """A directional light of the shade pass, in the camera frame (OpenCV: x right, y down, z forward)."""

    direction: tuple[float, float, float] = (0.0, 0.0, 1.0)  # the way the light travels (default: from the camera)
    color: tuple[float, float, float] = (0.75, 0.75, 0.75)  # linear RGB intensity


DEFAULT_LIGHTS = (Light(),)


def sample_lights(rng: np.random.Generator) -> tuple[Light, ...]:
    """1-3 directional lights (``--lights random``): each travels away from the camera side within
    60 deg of the view axis, with a seeded direction, intensity and a mild colour tint; their
    intensities share about one white light's worth, so exposure stays similar."""
    count = int(rng.integers(1, 4))
    lights = []
    for _ in range(count):
        polar, azimuth = np.deg2rad(rng.uniform(0.0, 60.0)), rng.uniform(0.0, 2 * np.pi)
        direction = (np.sin(polar) * np.cos(azimuth), np.sin(polar) * np.sin(azimuth), np.cos(polar))
        strength = rng.uniform(0.55, 1.0) / np.sqrt(count)
        tint = 1.0 + rng.uniform(-0.15, 0.15, 3)
        lights.append(Light(tuple(float(x) for x in direction), tuple(float(x) for x in strength * tint)))
    return tuple(lights)


@dataclass(frozen=True)
class Instance:
    """One more mesh in a frame besides the hand and the grasped object (the table, a distractor).

    ``seg_id`` is its ``seg.png`` id (:data:`hoigen.data.contract.SEG_TABLE` or a distractor's id,
    unique in the frame); ``nocs_from_mesh`` None gives it no NOCS (the table). ``mesh_key`` is the
    cache key of its GL meshes (None: the mesh object itself; see the module docstring)."""

    mesh: trimesh.Trimesh  # in its mesh frame
    pose: np.ndarray  # (4,4) mesh -> world
    seg_id: int
    nocs_from_mesh: np.ndarray | None = None  # (4,4) similarity mesh -> NOCS
    mesh_key: Hashable | None = None


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
    extras: tuple[Instance, ...] = ()  # more instances: the table, distractors
    lights: tuple[Light, ...] | None = None  # shade pass lights (1..3); None: the renderer's default


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
    mask_hand_full: np.ndarray = field(repr=False, default=None)  # type: ignore[assignment]
    mask_object_full: np.ndarray = field(repr=False, default=None)  # type: ignore[assignment]
    joints_self_occluded: np.ndarray = field(repr=False, default=None)  # type: ignore[assignment]
    full_masks: dict[int, np.ndarray] = field(repr=False, default_factory=dict)  # seg id -> amodal mask

    @property
    def empty(self) -> bool:
        """True when neither the hand nor the grasped object covers any pixel (the table and
        distractors do not count: the frame shows nothing of the grasp)."""
        return not (self.mask_hand_full.any() or self.mask_object_full.any())

    @property
    def amodal(self) -> np.ndarray:
        """``amodal.png`` (:func:`hoigen.data.contract.amodal_bits`): bit ``seg_id - 1`` per instance
        covering the pixel (amodal); uint8 while every seg id <= 8, else uint16."""
        extras = {k: m for k, m in self.full_masks.items() if k not in (SEG_HAND, SEG_OBJECT)}
        return amodal_bits(self.mask_hand_full, self.mask_object_full, extras)

    def instance_boxes(self) -> dict[int, dict[str, Any]]:
        """Per seg id (hand, object and every extra instance): ``bbox`` (amodal, clipped to the
        image) and ``bbox_visible`` as :func:`hoigen.render.annotate.mask_bbox` boxes, ``[0, 0, 0, 0]``
        when empty, and the pixel counts ``px_visible`` and ``px_full``."""
        full = self.full_masks or {SEG_HAND: self.mask_hand_full, SEG_OBJECT: self.mask_object_full}
        out = {}
        for seg_id, mask in full.items():
            visible = self.seg == seg_id
            out[seg_id] = {
                "bbox": mask_bbox(mask) or [0, 0, 0, 0],
                "bbox_visible": mask_bbox(visible) or [0, 0, 0, 0],
                "px_visible": int(visible.sum()),
                "px_full": int(mask.sum()),
            }
        return out

    def bboxes(self) -> dict[str, list[int] | None]:
        """Boxes ``[x0, y0, x1, y1]`` (x1, y1 exclusive) of the visible and full masks, None if empty."""
        return {
            "hand": mask_bbox(self.mask_hand_full),
            "hand_visible": mask_bbox(self.mask_hand),
            "object": mask_bbox(self.mask_object_full),
            "object_visible": mask_bbox(self.mask_object),
        }


def area_downsample(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean over factor x factor blocks (cv2 INTER_AREA is an exact block mean for integer factors)."""
    h, w = image.shape[0] // factor, image.shape[1] // factor
    return cv2.resize(image.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)




def check_supersample(value: int) -> int:
    """``supersample`` as an int in 1..8, else a :class:`HoigenError`."""
    ss = int(value)
    if ss < 1 or ss > 8:
        raise HoigenError(f"render: supersample={value} is outside 1..8; use 1 (off) to 4")
    return ss


def check_extras(extras: tuple[Instance, ...]) -> None:
    """Every extra instance has its own seg id in SEG_TABLE..MAX_SEG_ID (one amodal bit each)."""
    seen = {SEG_HAND, SEG_OBJECT}
    for inst in extras:
        if not SEG_TABLE <= int(inst.seg_id) <= MAX_SEG_ID or int(inst.seg_id) in seen:
            raise HoigenError(
                f"render: extra instance seg id {inst.seg_id} is taken or outside {SEG_TABLE}..{MAX_SEG_ID}; "
                "give the table and each distractor its own id (hoigen.data.contract)"
            )
        seen.add(int(inst.seg_id))


class RendererBase:
    """What every renderer backend shares: its settings, the frame checks and the lifecycle.

    A backend (:class:`hoigen.render.renderer.Renderer`, raw GL; the pyrender path) implements
    :meth:`_is_open`, :meth:`_release`, :meth:`_frame` (a context around one frame's GL work),
    :meth:`_render` and :meth:`_shade_only`, and :meth:`lights_record`."""

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
        self_occlusion_tolerance: float = 0.015,
        hand_color: tuple[float, float, float] = HAND_COLOR,
        object_color: tuple[float, float, float] = OBJECT_COLOR,
        table_color: tuple[float, float, float] = TABLE_COLOR,
        normal_background: tuple[int, int, int] = NORMAL_BACKGROUND,
        ambient: float = 0.25,
        skeleton_line_width: int | None = None,
        cache_size: int = 32,
    ) -> None:
        self.width, self.height = int(width), int(height)
        if self.width < 1 or self.height < 1:
            raise HoigenError(f"render: image size {width}x{height} is empty; use a positive size")
        self.supersample = check_supersample(supersample)
        self.crease_deg = crease_deg
        self.znear, self.zfar = float(znear), float(zfar)
        self.visibility_tolerance = float(visibility_tolerance)
        self.self_occlusion_tolerance = float(self_occlusion_tolerance)
        self.normal_background = np.asarray(normal_background, dtype=np.float64)
        self.skeleton_line_width = skeleton_line_width
        self.cache_size = max(1, int(cache_size))
        self.colors = {"hand": hand_color, "object": object_color, "table": table_color}
        self.ambient = float(ambient)
        self.renders = 0

    # ------------------------------------------------------------------ backend hooks
    def _is_open(self) -> bool:
        raise NotImplementedError

    def _release(self) -> None:
        """Free the backend's GL resources (called once by :meth:`close`)."""
        raise NotImplementedError

    def _frame(self) -> AbstractContextManager[Any]:
        """The context one frame's GL work runs in (e.g. making a shared context current)."""
        return nullcontext()

    def _render(self, spec: SceneSpec, cam: Camera, ss: int) -> RenderResult:
        raise NotImplementedError

    def _shade_only(self, spec: SceneSpec, cam: Camera) -> np.ndarray:
        raise NotImplementedError

    def lights_record(self, lights: tuple[Light, ...] | None) -> dict[str, Any]:
        """ann.json ``lights``: what lit ``shade.png`` of a frame drawn with ``lights`` (None: the default)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ public
    def render(self, spec: SceneSpec, supersample: int | None = None) -> RenderResult:
        """Render all maps and annotations of one frame (see the backend's module docstring)."""
        cam = self._check(spec)
        ss = self.supersample if supersample is None else check_supersample(supersample)
        with self._frame():
            return self._render(spec, cam, ss)

    def shade_only(self, spec: SceneSpec) -> np.ndarray:
        """Only the plain shaded colour render (H,W,3) uint8 of a frame (one pass: the bare pass that
        ``make bench`` compares the full set of passes with)."""
        cam = self._check(spec)
        with self._frame():
            return self._shade_only(spec, cam)

    def _result(
        self, spec: SceneSpec, cam: Camera, maps: dict[str, np.ndarray], full_masks: dict[int, np.ndarray],
        depth_at: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
    ) -> RenderResult:  # fmt: skip
        """The frame's annotations from its maps: 2D joints, their visibility and the skeleton.

        ``maps``: normal, seg, depth, depth_m, nocs, shade; ``depth_at(row, col)``: the nearest
        non-hand and hand surface depth at joint pixels (:func:`hoigen.render.annotate.joint_visibility`)."""
        from hoigen.hand.skeleton import draw_skeleton
        from hoigen.render.annotate import joint_clearance, joint_visibility
        from hoigen.render.cameras import project

        joints3d = np.asarray(spec.joints3d, dtype=np.float64).reshape(-1, 3)
        joints2d, joints_z = project(joints3d, cam.K, cam.world_to_cam)
        unhidden, self_occluded = joint_visibility(
            joints2d, joints_z, cam, depth_at, joint_clearance(joints3d, spec.hand_vertices), znear=self.znear,
            visibility_tolerance=self.visibility_tolerance, self_occlusion_tolerance=self.self_occlusion_tolerance,
        )  # fmt: skip
        seg = maps["seg"]
        self.renders += 1
        return RenderResult(
            **maps,
            skeleton=draw_skeleton(joints2d, unhidden, self.width, self.height, self.skeleton_line_width),
            joints2d=joints2d,
            joints_visible=unhidden & ~self_occluded,
            mask_hand=seg == SEG_HAND,
            mask_object=seg == SEG_OBJECT,
            camera=cam,
            mask_hand_full=full_masks[SEG_HAND],
            mask_object_full=full_masks[SEG_OBJECT],
            joints_self_occluded=self_occluded,
            full_masks=full_masks,
        )

    def _check(self, spec: SceneSpec) -> Camera:
        if not self._is_open():
            raise HoigenError("render: the Renderer was closed; create a new Renderer")
        cam = spec.camera
        if (cam.width, cam.height) != (self.width, self.height):
            raise HoigenError(
                f"render: camera is {cam.width}x{cam.height} but the Renderer is {self.width}x{self.height}; "
                "use a Renderer of the camera's size"
            )
        return cam

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Free the renderer's GL resources. Safe to call twice."""
        if self._is_open():
            self._release()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass
