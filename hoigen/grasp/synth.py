"""Grasp synthesis without learned weights: place the palm on the surface, close the fingers.

For each grasp, candidates are drawn from surface points (side surfaces preferred, so bodies are
grasped rather than rims). For a candidate point ``p`` with outward normal ``n`` the palm is turned
to face the surface (palm normal = ``-n``) with the fingers along the horizontal tangent (turned
by a random angle about ``n``) and placed ``PALM_GAP`` off the surface. The fingers then close:
a batch of curl amounts from open to fist is posed once, and each finger stops at the first amount
where any of its vertices (a subsample) reaches the surface. The candidate with the most
fingertip contacts and the least penetration wins. This is the walking-skeleton heuristic; an
optimisation-based synthesiser (contact, penetration, joint-limit and force-closure energies)
replaces it later.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hoigen.grasp.metrics import grasp_metrics
from hoigen.grasp.trajectory import HandPose
from hoigen.objects.geometry import sample_surface, signed_distance

TIPS_21 = (4, 8, 12, 16, 20)  # thumb, index, middle, ring, pinky tips in the common 21 order
PALM_GAP = 0.006
CURL_STEPS = 16
PROBE_STRIDE = 3  # every third finger vertex is tested for contact while closing
TOUCH_M = 0.004


@dataclass
class GraspResult:
    pose: HandPose  # in the object's mesh frame
    approach_dir: np.ndarray  # outward surface normal at the contact: the start pose lies along it
    metrics: dict


def align_frames(src_a: np.ndarray, src_b: np.ndarray, dst_a: np.ndarray, dst_b: np.ndarray) -> np.ndarray:
    """The rotation taking direction ``src_a`` to ``dst_a`` and (the part of) ``src_b`` to ``dst_b``."""

    def basis(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        e1 = a / np.linalg.norm(a)
        e2 = b - e1 * np.dot(b, e1)
        e2 /= np.linalg.norm(e2)
        return np.stack([e1, e2, np.cross(e1, e2)], axis=1)

    return basis(dst_a, dst_b) @ basis(src_a, src_b).T


def tangent_direction(normal: np.ndarray, rng: np.random.Generator, up=(0.0, 1.0, 0.0)) -> np.ndarray:
    """A horizontal tangent at a surface point, turned by a random angle about the normal."""
    t = np.cross(normal, up)
    if np.linalg.norm(t) < 1e-3:
        t = np.cross(normal, (1.0, 0.0, 0.0))
    t /= np.linalg.norm(t)
    b = np.cross(normal, t)
    angle = rng.uniform(-0.5, 0.5) + (np.pi if rng.random() < 0.5 else 0.0)
    return np.cos(angle) * t + np.sin(angle) * b


def synthesize_grasp(mesh, hand, rng: np.random.Generator, candidates: int = 6) -> GraspResult:
    """One grasp of ``mesh`` (a trimesh in its mesh frame) by ``hand`` (a HandModel)."""
    betas = np.zeros(10)
    centre, palm_normal, forward = hand.palm_frame(betas)
    points, normals = sample_surface(mesh, 512, rng)
    weight = 1.0 - 0.8 * np.abs(normals[:, 1])
    picks = rng.choice(len(points), size=candidates, replace=False, p=weight / weight.sum())

    amounts = np.linspace(0.0, 1.0, CURL_STEPS)
    curls = np.stack([hand.curl_pose(float(a)) for a in amounts])
    zeros = np.zeros((CURL_STEPS, 3))
    canon = hand.forward(zeros, curls, np.tile(betas, (CURL_STEPS, 1)), zeros)
    fingers = hand.vertex_fingers
    probe = np.flatnonzero(fingers >= 0)[::PROBE_STRIDE]
    owner = fingers[probe]

    best: GraspResult | None = None
    best_score = -np.inf
    for i in picks:
        p, n = points[i], normals[i] / np.linalg.norm(normals[i])
        rot = align_frames(palm_normal, forward, -n, tangent_direction(n, rng))
        trans = p + n * PALM_GAP - rot @ centre
        probes = canon.vertices[:, probe] @ rot.T + trans
        near = signed_distance(mesh, probes.reshape(-1, 3)).reshape(CURL_STEPS, len(probe)) > -TOUCH_M
        touch = np.stack([near[:, owner == k].any(axis=1) for k in range(5)], axis=1)
        stop = np.where(touch.any(axis=0), touch.argmax(axis=0), CURL_STEPS - 1)
        pose45 = hand.curl_pose(amounts[stop])
        out = hand.forward(np.zeros(3), pose45, betas, np.zeros(3))
        verts = out.vertices[0] @ rot.T + trans
        metrics = grasp_metrics(mesh, verts, out.joints[0, list(TIPS_21)] @ rot.T + trans)
        score = metrics["contact_fingers"] - 2.0 * metrics["penetration_depth_cm"]
        if score > best_score:
            best_score = score
            best = GraspResult(HandPose(rot, trans, pose45, betas), n, metrics)
    assert best is not None
    return best
