"""Pinhole cameras: intrinsics, look-at poses, random viewpoints around a grasp, projection.

Conventions (the shard contract's):

- World frame is y-up, metres.
- Camera frame is OpenCV: x right, y down, z forward (into the scene). ``world_to_cam`` is a 4x4
  rigid transform taking world points into that frame.
- Pixels: OpenCV convention, pixel *centres* at integer coordinates. Pixel (row r, column c) covers
  the square [c-0.5, c+0.5] x [r-0.5, r+0.5], so the image spans u in [-0.5, W-0.5]. The image
  centre is ((W-1)/2, (H-1)/2), which is where :func:`intrinsics` puts the principal point.

pyrender uses OpenGL cameras (x right, y up, z backward) and samples pixel centres at
``integer + 0.5`` in its own window coordinates. :func:`pyrender_pose` and :func:`gl_intrinsics`
convert; together they make pixel (r, c) of a pyrender image show exactly the ray through
u = c, v = r of :func:`project` (checked in tests/test_render.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from hoigen.errors import HoigenError
from hoigen.options import REAL_SIZE

# OpenCV camera axes -> OpenGL camera axes (and back): flip y and z.
CV_TO_GL = np.diag([1.0, -1.0, -1.0, 1.0])


@dataclass
class Camera:
    """A pinhole camera: intrinsics ``K`` (3,3), extrinsics ``world_to_cam`` (4,4), image size."""

    K: np.ndarray
    world_to_cam: np.ndarray
    width: int
    height: int

    def __post_init__(self) -> None:
        self.K = np.asarray(self.K, dtype=np.float64).reshape(3, 3)
        self.world_to_cam = np.asarray(self.world_to_cam, dtype=np.float64).reshape(4, 4)
        self.width = int(self.width)
        self.height = int(self.height)

    @property
    def cam_to_world(self) -> np.ndarray:
        """Inverse of ``world_to_cam``."""
        return np.linalg.inv(self.world_to_cam)

    @property
    def center(self) -> np.ndarray:
        """Camera centre in world coordinates (3,)."""
        R, t = self.world_to_cam[:3, :3], self.world_to_cam[:3, 3]
        return -R.T @ t

    def scaled(self, factor: int) -> Camera:
        """The same camera at ``factor`` times the resolution (used for supersampling).

        With pixel centres at integers, u' = factor * u + (factor - 1) / 2.
        """
        s = int(factor)
        S = np.array([[s, 0.0, (s - 1) / 2.0], [0.0, s, (s - 1) / 2.0], [0.0, 0.0, 1.0]])
        return Camera(S @ self.K, self.world_to_cam.copy(), self.width * s, self.height * s)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields as named in ``ann.json`` (``camera.*``)."""
        return {
            "K": self.K.tolist(),
            "world_to_cam": self.world_to_cam.tolist(),
            "width": self.width,
            "height": self.height,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Camera:
        """Inverse of :meth:`to_dict`."""
        return cls(np.asarray(data["K"]), np.asarray(data["world_to_cam"]), data["width"], data["height"])


def intrinsics(width: int, height: int, fov_deg: float) -> np.ndarray:
    """K for square pixels with horizontal field of view ``fov_deg`` and the principal point at the
    image centre ((W-1)/2, (H-1)/2) (pixel centres at integers)."""
    if not 0.0 < fov_deg < 180.0:
        raise HoigenError(f"camera: field of view {fov_deg} deg is outside (0, 180); use e.g. 50")
    f = (width / 2.0) / np.tan(np.deg2rad(fov_deg) / 2.0)
    return np.array([[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


@dataclass(frozen=True)
class CameraPreset:
    """Intrinsics of a real camera at its native image size (OpenCV pixel centres at integers)."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    source: str


# Intrinsics of the cameras whose data hoigen's output is meant to sit beside.
CAMERA_PRESETS: dict[str, CameraPreset] = {
    # NOCS CAMERA (synthetic) split, as in the NOCS release and its evaluation code.
    "nocs-camera": CameraPreset(577.5, 577.5, 319.5, 239.5, 640, 480, "NOCS CAMERA intrinsics"),
    # NOCS REAL275 (Structure Sensor), as in the NOCS release and its evaluation code.
    "nocs-real275": CameraPreset(591.0125, 590.16775, 322.525, 244.11084, 640, 480, "NOCS REAL275 intrinsics"),
    # DexYCB RealSense D415 serial 836212060125 at 640x480 (calibration/intrinsics of the DexYCB
    # release; the sample printed in the dex-ycb-toolkit README).
    "dexycb": CameraPreset(
        616.640869140625, 616.2581787109375, 308.548095703125, 248.52310180664062, 640, 480,
        "DexYCB camera 836212060125",
    ),
}
CAMERA_CHOICES = ("random", *CAMERA_PRESETS)  # equal to hoigen.render.options.CAMERA_CHOICES (tested)


def preset_intrinsics(name: str, size: int | None = None) -> tuple[np.ndarray, int, int]:
    """(K, width, height) of preset ``name``.

    ``size=None`` keeps the native image (e.g. 640x480). ``size=S`` gives an S x S image: the
    largest centred square of the native frame (480x480 of 640x480) scaled to S, so the focal
    lengths scale by S / side and pixels stay square. With pixel centres at integers a native
    pixel coordinate u maps to u' = s * (u - offset + 0.5) - 0.5.
    """
    if name not in CAMERA_PRESETS:
        raise HoigenError(f"--camera: unknown camera {name!r}; use one of {', '.join(CAMERA_CHOICES)}")
    p = CAMERA_PRESETS[name]
    K = np.array([[p.fx, 0.0, p.cx], [0.0, p.fy, p.cy], [0.0, 0.0, 1.0]])
    if size is None:
        return K, p.width, p.height
    side = min(p.width, p.height)
    s = int(size) / side
    off_x, off_y = (p.width - side) / 2.0, (p.height - side) / 2.0
    K = np.array(
        [
            [s * p.fx, 0.0, s * (p.cx - off_x + 0.5) - 0.5],
            [0.0, s * p.fy, s * (p.cy - off_y + 0.5) - 0.5],
            [0.0, 0.0, 1.0],
        ]
    )
    return K, int(size), int(size)


def camera_size(name: str, size: int | None, default: int = REAL_SIZE) -> tuple[int, int]:
    """Image (width, height) for ``--camera name --size size`` (None: 512 for random, else native)."""
    if name == "random":
        side = default if size is None else int(size)
        return side, side
    _, width, height = preset_intrinsics(name, size)
    return width, height


def look_at(
    eye: np.ndarray, target: np.ndarray, up: tuple[float, float, float] = (0.0, 1.0, 0.0)
) -> np.ndarray:
    """world_to_cam (4,4), OpenCV axes, for a camera at ``eye`` looking at ``target``.

    Image "up" (-y_cam) is as close to ``up`` as possible. If the view direction is parallel to
    ``up``, the world z axis is used as up instead.
    """
    eye = np.asarray(eye, dtype=np.float64)
    forward = np.asarray(target, dtype=np.float64) - eye
    norm = np.linalg.norm(forward)
    if norm < 1e-12:
        raise HoigenError("camera: eye and target coincide; place the camera away from the target")
    z = forward / norm
    up_v = np.asarray(up, dtype=np.float64)
    x = np.cross(z, up_v)
    if np.linalg.norm(x) < 1e-9 * max(np.linalg.norm(up_v), 1e-12):
        x = np.cross(z, np.array([0.0, 0.0, 1.0]))
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    T = np.eye(4)
    T[:3, :3] = np.stack([x, y, z])
    T[:3, 3] = -T[:3, :3] @ eye
    return T


def _roll(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    T = np.eye(4)
    T[:2, :2] = [[c, -s], [s, c]]
    return T


def sample_camera(
    center: np.ndarray,
    rng: np.random.Generator,
    width: int,
    height: int,
    distance: tuple[float, float] = (0.45, 0.7),
    elevation_deg: tuple[float, float] = (10.0, 60.0),
    azimuth_deg: tuple[float, float] = (0.0, 360.0),
    roll_deg: tuple[float, float] = (-10.0, 10.0),
    fov_deg: tuple[float, float] = (45.0, 55.0),
    K: np.ndarray | None = None,
) -> Camera:
    """A random camera looking at ``center`` from a sphere cap (each range sampled uniformly).

    Elevation is measured from the world's horizontal plane (y-up); azimuth 0 looks from +z. Roll
    turns the camera about its viewing axis. Draw order: distance, elevation, azimuth, roll, fov.
    With ``K`` given (a preset's intrinsics) the fov is still drawn, and ignored, so that one seed
    gives the same viewpoint whatever the intrinsics; ``center`` then projects to (K[0,2], K[1,2]).
    """
    d = rng.uniform(*distance)
    el = np.deg2rad(rng.uniform(*elevation_deg))
    az = np.deg2rad(rng.uniform(*azimuth_deg))
    roll = np.deg2rad(rng.uniform(*roll_deg))
    fov = rng.uniform(*fov_deg)
    center = np.asarray(center, dtype=np.float64)
    eye = center + d * np.array([np.cos(el) * np.sin(az), np.sin(el), np.cos(el) * np.cos(az)])
    world_to_cam = _roll(roll) @ look_at(eye, center)
    return Camera(intrinsics(width, height, fov) if K is None else K, world_to_cam, width, height)


def camera_sampler(name: str, size: int | None, **ranges: Any) -> Callable[[np.ndarray, np.random.Generator], Camera]:
    """``sample(center, rng) -> Camera`` for ``--camera name`` (``random`` or a preset) and ``--size``."""
    width, height = camera_size(name, size)
    K = None if name == "random" else preset_intrinsics(name, size)[0]

    def sample(center: np.ndarray, rng: np.random.Generator) -> Camera:
        return sample_camera(center, rng, width, height, K=K, **ranges)

    return sample


def in_view(points_world: np.ndarray, camera: Camera, znear: float = 0.01, zfar: float = 10.0) -> np.ndarray:
    """(N,) bool: the point is in front of the camera within [znear, zfar] and inside the image."""
    uv, z = project(points_world, camera.K, camera.world_to_cam)
    ok = (z > znear) & (z < zfar) & np.all(np.isfinite(uv), axis=1)
    u, v = np.where(ok[:, None], uv, -1.0).T
    return ok & (u >= -0.5) & (u < camera.width - 0.5) & (v >= -0.5) & (v < camera.height - 0.5)


def project(
    points_world: np.ndarray, K: np.ndarray, world_to_cam: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Project world points (N,3): pixels (N,2) (u right, v down, centres at integers), depth (N,).

    Depth is the camera-frame z (metres); points with depth <= 0 get non-finite or mirrored pixels,
    so check depth before using them.
    """
    p = np.asarray(points_world, dtype=np.float64).reshape(-1, 3)
    cam = p @ world_to_cam[:3, :3].T + world_to_cam[:3, 3]
    z = cam[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uvw = cam @ np.asarray(K, dtype=np.float64).T
        uv = uvw[:, :2] / uvw[:, 2:3]
    return uv, z


def pixel_rays(K: np.ndarray, width: int, height: int) -> np.ndarray:
    """Camera-frame ray directions (H,W,3) with z = 1 through every pixel centre."""
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    uv1 = np.stack([u, v, np.ones_like(u)], axis=-1)
    return uv1 @ np.linalg.inv(K).T


def pyrender_pose(world_to_cam: np.ndarray) -> np.ndarray:
    """pyrender camera node pose (OpenGL camera -> world) for an OpenCV ``world_to_cam``."""
    return np.linalg.inv(world_to_cam) @ CV_TO_GL


def gl_intrinsics(K: np.ndarray) -> tuple[float, float, float, float]:
    """(fx, fy, cx, cy) for ``pyrender.IntrinsicsCamera`` so its pixels match :func:`project`.

    pyrender samples pixel c at u = c + 0.5 relative to its cx, so cx, cy are shifted by +0.5.
    Skew (K[0,1]) is not supported by pyrender and must be 0.
    """
    K = np.asarray(K, dtype=np.float64)
    if abs(K[0, 1]) > 1e-9:
        raise HoigenError("camera: K has skew; pyrender cannot render skewed intrinsics, set K[0,1] = 0")
    return float(K[0, 0]), float(K[1, 1]), float(K[0, 2] + 0.5), float(K[1, 2] + 0.5)
