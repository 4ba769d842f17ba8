"""A picture of the embedded assets: the hand in a few poses and one object of each procedural category.

:func:`assets_picture` renders each item alone (pyrender, EGL, a headlight plus ambient light,
skin-coloured hand, grey objects) from a fixed three-quarter view that frames its bounding
sphere, labels it, and tiles the results into one RGB image; :func:`write_assets_picture` saves it
as a PNG. Hand poses: flat, half curl, fist (from the joint limits' fist), two samples of the hand's
pose PCA (coefficients at +-1.5 sd), and the left hand half curled. Objects: every category that
:data:`hoigen.objects.PROCEDURAL_CATEGORIES` lists, in its mesh frame (y up).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import trimesh

from hoigen.errors import HoigenError

HAND_RGB = (0.80, 0.56, 0.44)
OBJECT_RGB = (0.60, 0.62, 0.66)
COLUMNS = 6
LABEL_H = 22


@dataclass
class Item:
    """One tile: a mesh (vertices, faces), its colour, its label and the view direction (toward the
    camera, world frame)."""

    label: str
    vertices: np.ndarray
    faces: np.ndarray
    rgb: tuple[float, float, float]
    view: tuple[float, float, float] = (0.5, 0.8, 1.0)


def hand_items(mano_dir: str | Path | None = None) -> list[Item]:
    """Tiles of the hand (embedded unless ``mano_dir``) in a few poses. The hand is shown palm down
    in MANO's frame, seen from the palm's side and a little from the thumb."""
    from hoigen.hand import load_hand
    from hoigen.hand.limits import JointSpace
    from hoigen.hand.model import load_mano_pickle

    right = load_hand("right", mano_dir)
    left = load_hand("left", mano_dir)
    space = JointSpace.from_hand(right)
    data = load_mano_pickle(right.source)
    comps = np.asarray(data["hands_components"], dtype=np.float64)
    mean = np.asarray(data["hands_mean"], dtype=np.float64).reshape(45)
    sd = np.asarray(data.get("hands_components_sd", np.full(45, 0.5)), dtype=np.float64)
    pca = [mean + (c * sd[:6]) @ comps[:6] for c in (np.array([1.5, -1.5, 1.0, 0, 0, 0]),
                                                     np.array([-1.0, 1.5, -1.5, 1.0, 0, 0]))]  # fmt: skip
    poses = [
        ("flat", right, np.zeros(45)),
        ("half curl", right, right.curl_pose(0.5)),
        ("fist (limits)", right, space.to_pose(space.fist_angles())),
        ("PCA sample 1", right, pca[0]),
        ("PCA sample 2", right, pca[1]),
        ("left, half curl", left, left.curl_pose(0.5)),
    ]
    items = []
    for label, hand, pose in poses:
        v = hand.forward(hand_pose=pose).vertices[0].astype(np.float64)
        view = (0.25 if hand.side == "right" else -0.25, -1.0, 0.45)  # the palm's side, a little from the thumb
        items.append(Item(label, v, hand.faces, HAND_RGB, view=view))
    items[0].label = f"{right.name}: flat"
    return items


def object_items(seed: int = 0) -> list[Item]:
    """One tile per procedural object category (whatever the module lists)."""
    from hoigen.objects import PROCEDURAL_CATEGORIES, procedural_objects

    out = []
    for asset in procedural_objects(list(PROCEDURAL_CATEGORIES), seed=seed):
        mesh = asset.mesh
        size = np.ptp(np.asarray(mesh.bounds), axis=0) * 100
        label = f"{asset.category} {size[0]:.0f}x{size[1]:.0f}x{size[2]:.0f} cm"
        out.append(Item(label, np.asarray(mesh.vertices), np.asarray(mesh.faces), OBJECT_RGB))
    return out


def render_tiles(items: list[Item], tile: int = 256) -> list[np.ndarray]:
    """Each item rendered alone into a ``tile`` x ``tile`` RGB image (uint8) with its label."""
    from hoigen.render.backend import import_pyrender
    from hoigen.render.cameras import look_at, pyrender_pose

    pr = import_pyrender()
    renderer = _offscreen(tile)
    tiles = []
    for item in items:
        v = np.asarray(item.vertices, dtype=np.float64)
        centre = (v.min(axis=0) + v.max(axis=0)) / 2
        radius = float(np.linalg.norm(v - centre, axis=1).max())
        fov = np.deg2rad(35.0)
        view = np.asarray(item.view, dtype=np.float64)
        eye = centre + view / np.linalg.norm(view) * radius / np.sin(fov / 2) * 1.05
        up = (0.0, 1.0, 0.0) if abs(view[1]) < 0.9 * np.linalg.norm(view) else (-1.0, 0.0, 0.0)
        scene = pr.Scene(bg_color=(1.0, 1.0, 1.0, 1.0), ambient_light=(0.3, 0.3, 0.3))
        material = pr.MetallicRoughnessMaterial(baseColorFactor=(*item.rgb, 1.0), metallicFactor=0.0,
                                                roughnessFactor=0.7)  # fmt: skip
        mesh = trimesh.Trimesh(v, np.asarray(item.faces), process=False)
        scene.add(pr.Mesh.from_trimesh(mesh, material=material, smooth=True))
        cam_pose = pyrender_pose(look_at(eye, centre, up))
        cam = scene.add(pr.PerspectiveCamera(yfov=fov, znear=0.01, zfar=10.0), pose=cam_pose)
        scene.add(pr.DirectionalLight(color=np.ones(3), intensity=3.0), parent_node=cam)
        color, _ = renderer.render(scene)
        img = np.ascontiguousarray(color[..., :3])
        cv2.putText(img, item.label, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        tiles.append(img)
    return tiles


@functools.cache  # never deleted: deleting a pyrender EGL renderer terminates the shared EGL display
def _offscreen(size: int):
    from hoigen.render.backend import import_pyrender

    return import_pyrender().OffscreenRenderer(size, size)


def assets_picture(tile: int = 256, mano_dir: str | Path | None = None, seed: int = 0) -> np.ndarray:
    """The whole picture (RGB uint8): a row of hand poses, then rows of object categories."""
    hands = render_tiles(hand_items(mano_dir), tile)
    objects = render_tiles(object_items(seed), tile)
    rows = []
    for group in (hands, objects):
        for i in range(0, len(group), COLUMNS):
            row = group[i : i + COLUMNS]
            row += [np.full((tile, tile, 3), 255, np.uint8)] * (COLUMNS - len(row))
            rows.append(np.concatenate(row, axis=1))
    picture = np.concatenate(rows, axis=0)
    for r in range(1, len(rows)):  # thin grey lines between the rows
        picture[r * tile, :] = 200
    return picture


def picture_size(tile: int = 256) -> tuple[int, int]:
    """(width, height) of :func:`assets_picture` for ``tile``, given today's categories."""
    from hoigen.objects import PROCEDURAL_CATEGORIES

    rows = -(-6 // COLUMNS) + -(-len(PROCEDURAL_CATEGORIES) // COLUMNS)
    return COLUMNS * tile, rows * tile


def write_assets_picture(out: str | Path, tile: int = 256, mano_dir: str | Path | None = None,
                         seed: int = 0) -> Path:  # fmt: skip
    """Render :func:`assets_picture` and write it to ``out`` (PNG)."""
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise HoigenError(f"{out}: the picture is written as PNG; give a path ending in .png")
    picture = assets_picture(tile, mano_dir, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR)):
        raise HoigenError(f"{out}: could not write the picture; check the folder is writable")
    return out
