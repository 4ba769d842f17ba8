"""A light, batched linear-blend skinning of chosen hand points, for grasp optimisation and metrics.

``HandModel.forward_torch`` poses all vertices with MANO's pose blend shapes; the grasp energy needs
only a few hundred points, and the penetration-volume metric needs points that are not vertices
at all (the hand's interior voxels). :class:`HandSkin` takes the MANO buffers of a loaded
:class:`~hoigen.hand.model.HandModel` (``betas`` fixed at zero) and skins any set of rest-pose
points with given skinning weights, exactly as ``smplx.lbs`` does for vertices (pose blend shapes
included for vertices, none for interior points).

The hand is articulated at zero global orientation and translation (the canonical frame used by
:class:`~hoigen.grasp.trajectory.HandPose`); the caller places it rigidly with ``R p + T``.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from smplx.lbs import batch_rigid_transform, batch_rodrigues

INTERIOR_RESOLUTION = 72  # cells along the flat hand's longest side (~3 mm voxels)


class HandSkin:
    """Skin rest-pose points of ``hand``: ``vertex_ids`` (with pose blend shapes) and extra points."""

    def __init__(
        self,
        hand,
        vertex_ids: np.ndarray | None = None,
        extra_points: np.ndarray | None = None,
        extra_weights: np.ndarray | None = None,
    ) -> None:
        m = hand._mano
        with torch.no_grad():
            v_shaped = m.v_template.detach().float()  # betas = 0
            self.joints_rest = (m.J_regressor.float() @ v_shaped).detach()  # (16, 3)
        self.parents = m.parents.detach().clone()
        ids = np.arange(hand.num_vertices) if vertex_ids is None else np.asarray(vertex_ids, dtype=np.int64)
        self.vertex_ids = ids
        idx = torch.as_tensor(ids)
        weights = m.lbs_weights.detach().float()[idx]
        points = v_shaped[idx]
        posedirs = m.posedirs.detach().float().view(m.posedirs.shape[0], -1, 3)[:, idx].reshape(m.posedirs.shape[0], -1)
        self.num_vertices = len(ids)
        if extra_points is not None:
            ep = torch.as_tensor(np.asarray(extra_points), dtype=torch.float32)
            ew = torch.as_tensor(np.asarray(extra_weights), dtype=torch.float32)
            points = torch.cat([points, ep])
            weights = torch.cat([weights, ew])
        self.points = points
        self.weights = weights
        self.posedirs = posedirs

    def __call__(self, hand_pose: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Points (B, P, 3) and MANO's 16 joints (B, 16, 3) for ``hand_pose`` (B, 45), zero orient/transl."""
        b = hand_pose.shape[0]
        full = torch.cat([torch.zeros(b, 3, dtype=hand_pose.dtype), hand_pose], dim=1)
        rot = batch_rodrigues(full.reshape(-1, 3)).view(b, -1, 3, 3)
        ident = torch.eye(3, dtype=rot.dtype)
        feature = (rot[:, 1:] - ident).reshape(b, -1)
        offsets = (feature @ self.posedirs).view(b, -1, 3)  # pose blend shapes of the vertices only
        extra = len(self.points) - self.num_vertices
        if extra:
            offsets = torch.cat([offsets, offsets.new_zeros(b, extra, 3)], dim=1)
        posed = self.points + offsets
        joints, a = batch_rigid_transform(rot, self.joints_rest.expand(b, -1, -1), self.parents)
        t = torch.matmul(self.weights, a.reshape(b, -1, 16)).view(b, -1, 4, 4)
        out = (t[..., :3, :3] * posed.unsqueeze(-2)).sum(-1) + t[..., :3, 3]
        return out, joints


@functools.lru_cache(maxsize=4)
def _interior(hand) -> tuple[np.ndarray, np.ndarray, float]:
    """Interior voxel centres (P, 3) of the flat hand, their skinning weights (P, 16) and the voxel size.

    The voxel centres lie on a regular grid (``INTERIOR_RESOLUTION`` cells along the flat hand's
    longest side) and are kept when the exact signed distance to the hand mesh is positive."""
    import trimesh
    from scipy.spatial import cKDTree

    from hoigen.objects.geometry import MeshQuery

    out = hand.forward()
    verts = out.vertices[0].astype(np.float64)
    mesh = trimesh.Trimesh(verts, hand.faces, process=False)
    lo, hi = mesh.bounds
    pitch = float((hi - lo).max() / INTERIOR_RESOLUTION)
    axes = [np.arange(a + pitch / 2, b, pitch) for a, b in zip(lo, hi, strict=True)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    centres = grid[MeshQuery(mesh).signed_distance(grid) > 0]
    _, nearest = cKDTree(verts).query(centres)  # skinning weights of the nearest vertex
    weights = hand._mano.lbs_weights.detach().cpu().numpy()[nearest]
    return centres, weights, pitch


def interior_skin(hand) -> tuple[HandSkin, float]:
    """A :class:`HandSkin` of the hand's interior voxels (no vertices) and the voxel edge length (m)."""
    centres, weights, pitch = _interior(hand)
    return HandSkin(hand, vertex_ids=np.zeros(0, np.int64), extra_points=centres, extra_weights=weights), pitch


@functools.lru_cache(maxsize=4)
def vertex_skin(hand) -> HandSkin:
    """A :class:`HandSkin` of all the hand's vertices (as ``hand.forward`` with zero betas), cached."""
    return HandSkin(hand)
