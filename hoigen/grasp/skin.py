"""A light, batched linear-blend skinning of chosen hand points in torch, for the grasp metrics.

``HandModel.forward_torch`` poses all vertices with MANO's pose blend shapes; the grasp energy needs
only a few hundred points, and the penetration-volume metric needs points that are not vertices
at all (the hand's interior voxels). :class:`HandSkin` takes the MANO buffers of a loaded
:class:`~hoigen.hand.model.HandModel` (``betas`` fixed at zero) and skins any set of rest-pose
points with given skinning weights, exactly as ``smplx.lbs`` does for vertices (pose blend shapes
included for vertices, none for interior points).

The hand is articulated at zero global orientation and translation (the canonical frame used by
:class:`~hoigen.grasp.trajectory.HandPose`); the caller places it rigidly with ``R p + T``.

The kinematic chain is walked one tree level at a time (MANO: three levels of five joints) instead
of joint by joint, and when the model has no pose blend shapes (the embedded hand) every skinned
point is one fixed linear function of the joints' transforms, so skinning is a single matrix product
``W (P, 16*4) @ A (16*4, B*3)`` with ``W[p, 4j + k] = w[p, j] * (x_p, 1)[k]``.

The grasp optimiser skins its points with its own numpy forward and hand-written backward
(:meth:`hoigen.grasp.optimize.GraspProblem.energy_and_grad`); it reuses this class's precomputed
buffers (``levels``, ``level_parent``, ``order``, ``bone``, ``joints_rest_level``, ``weights_level``,
``posedirs_level``, ``lbs_matrix``), while the torch forward here serves the metrics
(:func:`vertex_skin`, :func:`interior_skin`, no autograd).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

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
        self.has_blend = bool(self.num_vertices) and bool(posedirs.abs().max() > 0)
        # the chain one tree level at a time: levels[d] = joints at depth d + 1 (the root is depth 0).
        # Joints are kept in *level order* (the root, then each level's joints) so that every level is a
        # contiguous slice; the skinning weights and blend shapes are permuted to match once, here.
        parents = self.parents.tolist()
        depth = [0] * len(parents)
        for j in range(1, len(parents)):
            depth[j] = depth[parents[j]] + 1
        if parents[0] >= 0 or depth.count(0) != 1:
            raise ValueError("HandSkin: the kinematic tree needs joint 0 as its only root")
        self.levels = [[j for j in range(len(parents)) if depth[j] == d] for d in range(1, max(depth) + 1)]
        order = [0] + [j for level in self.levels for j in level]
        self.order = torch.as_tensor(order)
        self.unorder = torch.argsort(self.order)  # level order -> MANO joint order
        # per level: where each joint's parent sits within the previous level (None: the same order)
        self.level_parent: list[torch.Tensor | None] = []
        prev = [0]
        for level in self.levels:
            sel = [prev.index(parents[j]) for j in level]
            same = sel == list(range(len(prev))) or len(prev) == 1  # a single parent broadcasts
            self.level_parent.append(None if same else torch.as_tensor(sel))
            prev = level
        self._pose_order = torch.as_tensor([j - 1 for j in order[1:]])  # joints 1..15 of hand_pose, level order
        bone = self.joints_rest - self.joints_rest[self.parents.clamp(min=0)]  # rest offset from the parent
        self.bone = bone[self.order]
        self.joints_rest_level = self.joints_rest[self.order]
        self.weights_level = self.weights[:, self.order]
        self.posedirs_level = self.posedirs.view(15, 9, -1)[self._pose_order].reshape(135, -1)
        if not self.has_blend:
            xh = torch.cat([self.points, torch.ones(len(self.points), 1)], dim=1)  # (P, 4)
            self.lbs_matrix = (self.weights_level[:, :, None] * xh[:, None, :]).reshape(len(self.points), -1)  # (P, 64)

    def __call__(
        self, hand_pose: torch.Tensor, rotation: torch.Tensor | None = None, translation: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Points (B, P, 3) and MANO's 16 joints (B, 16, 3) for ``hand_pose`` (B, 45) at zero orient and
        transl, then placed rigidly by ``rotation`` (B, 3, 3) and ``translation`` (B, 3) when given
        (folded into the joints' transforms, which is cheaper than moving the points)."""
        a, joints, rot = self._transforms(hand_pose, rotation, translation)
        b = hand_pose.shape[0]
        if not self.has_blend:
            out = self.lbs_matrix @ a.permute(1, 3, 0, 2).reshape(-1, b * 3)  # (P, B*3)
            return out.view(-1, b, 3).transpose(0, 1), joints
        return self._blend(a, rot), joints

    def _transforms(
        self, hand_pose: torch.Tensor, rotation: torch.Tensor | None, translation: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The joints' transforms (B, 16, 3, 4) in level order, the joints (B, 16, 3) in MANO order and
        the local rotations (B, 15, 3, 3) in level order."""
        b = hand_pose.shape[0]
        pose = hand_pose.reshape(b, 15, 3).index_select(1, self._pose_order)
        rot = rodrigues(pose.reshape(-1, 3)).view(b, 15, 3, 3)  # joints 1..15 in level order
        # global rotations and joint positions, one tree level at a time (the root stays at rest)
        g_rot: list[torch.Tensor] = []
        g_pos = [self.joints_rest_level[:1].expand(b, 1, 3)]
        start = 1  # where the level starts in level order (0: the root)
        for level, parent in zip(self.levels, self.level_parent, strict=True):
            n = len(level)
            local, bone = rot[:, start - 1 : start - 1 + n], self.bone[start : start + n]
            if not g_rot:  # the first level hangs from the root, whose rotation is the identity
                g_rot.append(local)
                g_pos.append(g_pos[0] + bone)
            else:
                p_rot, p_pos = g_rot[-1], g_pos[-1]
                if parent is not None:
                    p_rot, p_pos = p_rot.index_select(1, parent), p_pos.index_select(1, parent)
                g_rot.append(p_rot @ local)
                g_pos.append(p_pos + (p_rot @ bone[..., None]).squeeze(-1))
            start += n
        eye = torch.eye(3, dtype=rot.dtype).expand(b, 1, 3, 3)
        g_rot = torch.cat([eye, *g_rot], dim=1)  # (B, 16, 3, 3), level order
        joints = torch.cat(g_pos, dim=1)  # (B, 16, 3)
        # the transform taking a rest-pose point to its posed place along joint j: x -> R_j x + t_j
        shift = joints - (g_rot @ self.joints_rest_level[..., None]).squeeze(-1)
        if rotation is not None:
            r = rotation[:, None]
            g_rot = r @ g_rot
            moved = (r @ torch.stack([joints, shift], dim=-1)) + translation[:, None, :, None]
            joints, shift = moved.unbind(-1)
        a = torch.cat([g_rot, shift[..., None]], dim=-1)  # (B, 16, 3, 4)
        return a, joints.index_select(1, self.unorder), rot

    def _blend(self, a: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
        """Points (B, P, 3) with pose blend shapes from the transforms and local rotations of
        :meth:`_transforms`."""
        b = a.shape[0]
        feature = (rot - torch.eye(3, dtype=rot.dtype)).reshape(b, -1)
        offsets = (feature @ self.posedirs_level).view(b, -1, 3)  # pose blend shapes of the vertices only
        extra = len(self.points) - self.num_vertices
        if extra:
            offsets = torch.cat([offsets, offsets.new_zeros(b, extra, 3)], dim=1)
        posed = self.points + offsets
        t = (self.weights_level @ a.reshape(b, 16, 12)).view(b, -1, 3, 4)
        return (t[..., :3] @ posed[..., None]).squeeze(-1) + t[..., 3]


# K_flat = r @ _CROSS: the cross-product matrix [r]x of a 3-vector r, flattened row-major
_CROSS = torch.zeros(3, 9)
for _row, _col, _k, _sign in ((0, 1, 2, -1), (0, 2, 1, 1), (1, 0, 2, 1), (1, 2, 0, -1), (2, 0, 1, -1), (2, 1, 0, 1)):
    _CROSS[_k, 3 * _row + _col] = _sign
_EYE_FLAT = torch.eye(3).reshape(9)


def rodrigues(rot_vecs: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (N, 3, 3) of axis-angle vectors (N, 3): ``cos I + sin [r]x + (1 - cos) r r^T``.

    The same formula and the same 1e-8 guard as ``smplx.lbs.batch_rodrigues`` in a third of the torch
    operations (it runs at every optimiser step)."""
    angle = torch.norm(rot_vecs + 1e-8, dim=1, keepdim=True)
    r = rot_vecs / angle
    cos, sin = torch.cos(angle), torch.sin(angle)
    outer = (r[:, :, None] * r[:, None, :]).reshape(-1, 9)
    flat = cos * _EYE_FLAT + sin * (r @ _CROSS) + (1.0 - cos) * outer
    return flat.view(-1, 3, 3)


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


@functools.lru_cache(maxsize=4)
def interior_skin(hand) -> tuple[HandSkin, float]:
    """A :class:`HandSkin` of the hand's interior voxels (no vertices) and the voxel edge length (m),
    cached (its ~15k x 64 skinning matrix was rebuilt for every object's evaluator, 2-4 ms each)."""
    centres, weights, pitch = _interior(hand)
    return HandSkin(hand, vertex_ids=np.zeros(0, np.int64), extra_points=centres, extra_weights=weights), pitch


@functools.lru_cache(maxsize=4)
def vertex_skin(hand) -> HandSkin:
    """A :class:`HandSkin` of all the hand's vertices (as ``hand.forward`` with zero betas), cached."""
    return HandSkin(hand)
