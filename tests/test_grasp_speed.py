"""The grasp speed-ups (issue 22) compute what the slower code computed: SDF lookups and their
gradients, the skinning's Rodrigues, the self-collision pairs, the optimiser's numpy energy and
hand-written gradient (against the torch autograd formulation and finite differences), the hold
test's hand file, and synthesis stays deterministic within a process."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from hoigen.objects.sdf import SDFGrid


@pytest.fixture(scope="module")
def grid() -> SDFGrid:
    box = trimesh.creation.box((0.06, 0.1, 0.04))
    return SDFGrid.from_mesh(box, resolution=24)


def _points(grid: SDFGrid, n: int = 4000, seed: int = 0) -> torch.Tensor:
    """Points over the grid and a margin beyond it (outside-the-grid queries included)."""
    rng = np.random.default_rng(seed)
    lo = grid.origin - 0.02
    hi = grid.origin + grid.spacing * (np.asarray(grid.shape) - 1) + 0.02
    return torch.as_tensor(rng.uniform(lo, hi, size=(n, 3)), dtype=torch.float32)


def test_trilinear_query_matches_grid_sample_values_and_gradients(grid) -> None:
    pts = _points(grid).requires_grad_(True)
    ours = grid.query(pts)
    ref = grid.query_grid_sample(pts)
    assert ours.shape == ref.shape == (len(pts),)
    assert torch.allclose(ours, ref, atol=1e-6)
    (g_ours,) = torch.autograd.grad(ours.sum(), pts)
    (g_ref,) = torch.autograd.grad(ref.sum(), pts)
    inside_cells = ((pts.detach() - torch.as_tensor(grid.origin, dtype=torch.float32)) / grid.spacing).frac().abs()
    regular = ((inside_cells > 1e-3) & (inside_cells < 1 - 1e-3)).all(dim=1)  # away from cell faces (kinks)
    assert regular.sum() > 0.9 * len(pts)
    assert torch.allclose(g_ours[regular], g_ref[regular], atol=1e-3)
    assert g_ours.abs().max() > 0.5  # a real gradient (the SDF's slope is about 1)


def test_trilinear_gradient_matches_finite_differences(grid) -> None:
    pts = _points(grid, n=300, seed=1).double()
    eps = 1e-5
    fd = torch.stack(
        [
            (grid.query((pts + eps * e).float()).double() - grid.query((pts - eps * e).float()).double()) / (2 * eps)
            for e in torch.eye(3, dtype=torch.float64)
        ],
        dim=-1,
    )
    p = pts.float().requires_grad_(True)
    (analytic,) = torch.autograd.grad(grid.query(p).sum(), p)
    # float32 lookups make the differences noisy and a few points straddle a cell face: compare medians
    assert (fd - analytic.double()).abs().median() < 2e-3


def test_query_keeps_batch_shapes_and_no_grad_values_equal(grid) -> None:
    pts = _points(grid, n=60).view(3, 4, 5, 3)
    with torch.no_grad():
        plain = grid.query(pts)
    tracked = grid.query(pts.clone().requires_grad_(True))
    assert plain.shape == (3, 4, 5)
    assert torch.equal(plain, tracked.detach())
    assert np.array_equal(grid.query_np(pts.view(-1, 3).numpy()), plain.view(-1).double().numpy())


def test_rodrigues_matches_smplx() -> None:
    from smplx.lbs import batch_rodrigues

    from hoigen.grasp.skin import rodrigues

    v = torch.as_tensor(np.random.default_rng(0).normal(0, 1.5, (500, 3)), dtype=torch.float32)
    v[:3] = 0.0  # the identity, through the same 1e-8 guard
    assert torch.allclose(rodrigues(v), batch_rodrigues(v), atol=2e-6)
    r = rodrigues(v)
    assert torch.allclose(r @ r.transpose(1, 2), torch.eye(3).expand(500, 3, 3), atol=2e-6)


def test_self_collision_pairs_equal_the_all_pairs_formula() -> None:
    from hoigen.grasp.optimize import SPHERE_R, EnergyWeights, GraspProblem
    from hoigen.hand import load_hand

    hand = load_hand("right")
    box = trimesh.creation.box((0.05, 0.1, 0.05))
    problem = GraspProblem(hand, SDFGrid.from_mesh(box, resolution=24), np.zeros(3), 0.07)
    rng = np.random.default_rng(2)
    b = 5
    rot = np.tile(np.eye(3)[:, :2].T.reshape(1, 6), (b, 1)).astype(np.float32)
    transl = rng.normal(0, 0.01, (b, 3)).astype(np.float32)
    angles = rng.normal(0.0, 0.8, (b, 15, 3)).astype(np.float32)  # fingers cross each other
    _, terms = problem.energy(rot, transl, angles, EnergyWeights())
    # reference: every ordered pair of spheres on different fingers, halved
    with torch.no_grad():
        pts, joints16 = problem.skin(torch.as_tensor(problem.to_pose(angles)))
    sph = problem.sphere_map @ np.concatenate([joints16.numpy(), pts[:, : problem.n_tips].numpy()], axis=1)
    dist = np.linalg.norm(sph[:, :, None] - sph[:, None], axis=-1)
    other = problem.sphere_owner[:, None] != problem.sphere_owner[None, :]
    ref = (np.maximum(2 * SPHERE_R - dist, 0) * other).sum(axis=(1, 2)) / 2
    assert (ref > 0).sum() >= 2  # crossed fingers touch: the comparison is not of zeros
    assert np.allclose(terms["self_collision"], ref, atol=1e-5)


def test_hand_file_holds_every_vertex_as_the_same_float32_and_each_piece_in_order() -> None:
    from hoigen.grasp.simulate import _pieces_obj, hand_pieces
    from hoigen.hand import load_hand

    hand = load_hand("right")
    verts = hand.forward(hand_pose=hand.curl_pose(0.5)[None]).vertices[0].astype(np.float64) + 0.123456789
    pieces = hand_pieces(hand.faces, hand.vertex_bones)
    text = _pieces_obj(verts, pieces)
    assert _pieces_obj(verts, pieces) == text  # the cached face block
    lines = text.splitlines()
    written = np.array([[float(x) for x in line.split()[1:]] for line in lines if line.startswith("v ")])
    # every hand vertex once, read back to exactly its float32
    assert np.array_equal(written.astype(np.float32), verts.astype(np.float32))
    groups = text.split("\no ")[1:]
    assert len(groups) == len(pieces) and not any("\nv " in g for g in groups)  # vertices first, then groups
    for ids, group in zip(pieces, groups, strict=True):
        # the faces reference the piece's vertices, in order (the last triple padded with its last):
        # pybullet adds them to the group's hull in that order, as from a copy of the piece's vertices
        refs = [int(x) - 1 for line in group.splitlines() if line.startswith("f ") for x in line.split()[1:]]
        assert refs[: len(ids)] == ids.tolist() and set(refs[len(ids) :]) <= {int(ids[-1])}
        assert len(refs) % 3 == 0 and len(refs) - len(ids) < 3


def test_synthesis_is_deterministic_within_a_process() -> None:
    from hoigen.grasp.synth import synthesize_grasps
    from hoigen.hand import load_hand

    hand = load_hand("right")
    mesh = trimesh.creation.cylinder(radius=0.03, height=0.12)
    mesh.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0]))
    runs = [
        synthesize_grasps(mesh, hand, np.random.default_rng(5), 2, category="can", candidates=8)
        for _ in range(2)
    ]
    (first, r1), (second, r2) = runs
    assert r1.evaluated == r2.evaluated and r1.accepted == r2.accepted
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        assert np.array_equal(a.pose.rotation, b.pose.rotation)
        assert np.array_equal(a.pose.translation, b.pose.translation)
        assert np.array_equal(a.pose.hand_pose, b.pose.hand_pose)
        assert a.metrics == b.metrics


def _rotation_from_6d_torch(x: torch.Tensor) -> torch.Tensor:
    a, b = x.split(3, dim=1)
    e1 = a / a.norm(dim=1, keepdim=True).clamp(min=1e-8)
    b = b - (e1 * b).sum(1, keepdim=True) * e1
    e2 = b / b.norm(dim=1, keepdim=True).clamp(min=1e-8)
    return torch.stack([e1, e2, torch.cross(e1, e2, dim=1)], dim=2)


def _reference_energy(problem, rot6, transl, angles, w):
    """The grasp energy as the optimiser computed it in torch with autograd before its hand-written
    gradient (point-major skinning by HandSkin, lookups by SDFGrid.query), for comparison."""
    from hoigen.grasp.optimize import DEPTH, SPHERE_R, TABLE_GAP

    def const(x):
        return torch.as_tensor(np.asarray(x), dtype=rot6.dtype)

    pts, joints16 = problem.skin(problem.space.to_pose(angles), _rotation_from_6d_torch(rot6), transl)
    contacts = pts[:, : problem.n_tips + 1]
    probes = (contacts[..., None, :] + const(problem.normal_step)).reshape(pts.shape[0], -1, 3)
    both = problem.sdf.query(torch.cat([pts, probes], dim=1))
    d = both[:, : pts.shape[1]]
    grad = both[:, pts.shape[1] :].reshape(*contacts.shape[:2], 6)
    grad = grad[..., :3] - grad[..., 3:]
    inward = grad / grad.norm(dim=-1, keepdim=True).clamp(min=1e-8)
    tips = pts[:, : problem.n_tips]
    terms = {
        "contact": (d[:, : problem.n_tips] - DEPTH).abs().sum(1),
        "palm": (d[:, problem.n_tips] - DEPTH).abs(),
        "penetration": torch.relu(d[:, problem.n_tips + 1 :] - const(problem.slack)).sum(1) / 10.0,
        "limit": problem.space.violation(angles),
        "prior": ((angles - const(problem.prior)) ** 2).sum(dim=(1, 2)),
    }
    b = joints16.shape[0]
    key = torch.cat([joints16, tips], dim=1).permute(1, 0, 2).reshape(21, b * 3)
    pair_map = problem.sphere_map[problem.pairs[0]] - problem.sphere_map[problem.pairs[1]]
    gap = (const(pair_map) @ key).view(-1, b, 3)
    dist = (gap * gap).sum(-1).clamp(min=1e-12).sqrt()
    terms["self_collision"] = torch.relu(2 * SPHERE_R - dist).sum(0)
    arm = (contacts - const(problem.centre)) / problem.radius
    torque = torch.cross(arm, inward, dim=-1).sum(1)
    terms["force_closure"] = (inward.sum(1) ** 2).sum(1) + (torque**2).sum(1)
    if problem.support is not None:
        terms["penetration"] = terms["penetration"] + torch.relu(problem.support + TABLE_GAP - pts[..., 1]).sum(1) / 10
    return sum(getattr(w, k) * v for k, v in terms.items()), terms


@pytest.fixture(scope="module")
def problems():
    """Grasp problems of a box: the embedded hand (no pose blend shapes) and the same hand given random
    pose blend shapes (real MANO has them), each without and with a table just below the box."""
    from hoigen.grasp.optimize import GraspProblem
    from hoigen.hand import load_hand

    hand = load_hand("right")
    sdf = SDFGrid.from_mesh(trimesh.creation.box((0.05, 0.08, 0.05)), resolution=24)
    out = {}
    for support in (None, -0.03):
        out["embedded", support] = GraspProblem(hand, sdf, np.zeros(3), 0.06, support=support)
    blend = type(hand)(hand.source, hand.side)  # a hand of its own: problems share what they make of a hand
    posedirs = blend._mano.posedirs
    posedirs.data = torch.as_tensor(np.random.default_rng(0).normal(0, 2e-3, posedirs.shape), dtype=posedirs.dtype)
    for support in (None, -0.03):
        out["blend", support] = GraspProblem(blend, sdf, np.zeros(3), 0.06, support=support)
    assert not out["embedded", None].skin.has_blend and out["blend", None].skin.has_blend
    return out


def _inputs(b: int, seed: int, dtype=np.float32):
    rng = np.random.default_rng(seed)
    rot = np.linalg.qr(rng.normal(size=(b, 3, 3)))[0]
    rot6 = rot[:, :, :2].transpose(0, 2, 1).reshape(b, 6) * rng.uniform(0.8, 1.2, (b, 6))  # not orthonormal
    transl = rng.normal(0, 0.03, (b, 3))  # hands through the box
    angles = rng.normal(0.3, 0.5, (b, 15, 3))  # past the limits, fingers crossing
    return [x.astype(dtype) for x in (rot6, transl, angles)]


CASES = [("embedded", None), ("embedded", -0.03), ("blend", None), ("blend", -0.03)]


@pytest.mark.parametrize("case", CASES)
def test_energy_and_gradient_equal_the_torch_autograd_formulation(problems, case) -> None:
    from hoigen.grasp.optimize import TERMS, EnergyWeights

    problem = problems[case]
    inputs = _inputs(6, 4)
    total, terms, grads = problem.energy_and_grad(*inputs, EnergyWeights())
    assert total.dtype == np.float32 and all(g.dtype == np.float32 for g in grads)
    leaves = [torch.as_tensor(x).clone().requires_grad_(True) for x in inputs]
    ref_total, ref_terms = _reference_energy(problem, *leaves, EnergyWeights())
    ref_grads = torch.autograd.grad(ref_total.sum(), leaves)
    for name in TERMS:
        ref = ref_terms[name].detach().numpy()
        assert np.allclose(terms[name], ref, rtol=1e-5, atol=1e-6 * max(1.0, np.abs(ref).max())), name
    assert ref_terms["penetration"].min() > 0 and ref_terms["self_collision"].max() > 0  # not zeros
    assert np.allclose(total, ref_total.detach().numpy(), rtol=1e-5)
    for g, ref in zip(grads, ref_grads, strict=True):
        assert g.shape == ref.shape
        assert np.allclose(g, ref.numpy(), rtol=1e-4, atol=1e-5 * np.abs(ref.numpy()).max())


def _lookup64(grid: SDFGrid):
    """The grid's trilinear lookup (value and gradient, the linear fall-off outside the grid) in float64,
    for finite differences of the energy without float32 noise."""
    values = grid.values.astype(np.float64)
    upper = (np.asarray(grid.shape) - 1.0)[:, None]
    last = np.maximum(upper - 1.0, 0.0)
    corners = [(dx, dy, dz) for dx in (0, 1) for dy in (0, 1) for dz in (0, 1)]

    def lookup(rows: np.ndarray, with_grad: bool):
        u = (rows - grid.origin[:, None]) / grid.spacing
        uc = np.clip(u, 0.0, upper)
        off = u - uc
        outside = np.sqrt((off * off).sum(0))
        cell = np.minimum(np.floor(uc), last)
        f = uc - cell
        c = cell.astype(np.int64)
        v = {k: values[c[0] + k[0], c[1] + k[1], c[2] + k[2]] for k in corners}
        weight = [1.0 - f, f]  # weight[d][axis]: of corner offset d along the axis
        value = sum(v[k] * weight[k[0]][0] * weight[k[1]][1] * weight[k[2]][2] for k in corners)
        value = value - outside * grid.spacing
        if not with_grad:
            return value, None
        sign = [-1.0, 1.0]
        grad = np.stack([
            sum(v[k] * sign[k[0]] * weight[k[1]][1] * weight[k[2]][2] for k in corners),
            sum(v[k] * weight[k[0]][0] * sign[k[1]] * weight[k[2]][2] for k in corners),
            sum(v[k] * weight[k[0]][0] * weight[k[1]][1] * sign[k[2]] for k in corners),
        ])  # fmt: skip
        grad = grad * (off == 0) / grid.spacing - off / np.maximum(outside, 1e-12)
        return value, grad

    return lookup


def test_float64_lookup_is_the_grids(grid) -> None:
    pts = _points(grid, n=2000, seed=8)
    value, grad = _lookup64(grid)(pts.numpy().T.astype(np.float64), True)
    p = pts.clone().requires_grad_(True)
    ref = grid.query(p)
    (ref_grad,) = torch.autograd.grad(ref.sum(), p)
    assert np.allclose(value, ref.detach().numpy(), atol=2e-6)
    assert np.median(np.abs(grad.T - ref_grad.numpy())) < 1e-4 and np.abs(grad).max() > 0.5


@pytest.mark.parametrize("case", CASES)
def test_gradient_of_every_term_equals_finite_differences(problems, case) -> None:
    """In float64: each term's analytic gradient (the others weighted 0) and the total's against central
    differences over every parameter of three candidates."""
    from hoigen.grasp.optimize import TERMS, EnergyWeights

    problem = problems[case]
    lookup = problem.lookup
    problem.lookup = _lookup64(problem.sdf)
    try:
        inputs = _inputs(3, 9, np.float64)
        _, terms = problem.energy(*inputs, EnergyWeights())
        assert all(terms[name].dtype == np.float64 for name in TERMS)
        assert terms["penetration"].sum() > 0 and terms["self_collision"].sum() > 0 and terms["limit"].sum() > 0
        eps = 1e-7
        fd = {name: [np.zeros_like(x) for x in inputs] for name in (*TERMS, "total")}
        for i, x in enumerate(inputs):
            for idx in np.ndindex(x.shape):
                sides = []
                for step in (eps, -eps):
                    moved = [y.copy() for y in inputs]
                    moved[i][idx] += step
                    sides.append(problem.energy(*moved, EnergyWeights()))
                (t_plus, plus), (t_minus, minus) = sides
                for name in TERMS:
                    fd[name][i][idx] = (plus[name].sum() - minus[name].sum()) / (2 * eps)
                fd["total"][i][idx] = (t_plus.sum() - t_minus.sum()) / (2 * eps)
        for name in (*TERMS, "total"):
            weights = EnergyWeights() if name == "total" else EnergyWeights(**{k: float(k == name) for k in TERMS})
            _, _, grads = problem.energy_and_grad(*inputs, weights)
            for g, ref in zip(grads, fd[name], strict=True):
                scale = max(np.abs(ref).max(), 1e-3)
                assert np.abs(g - ref).max() < 1e-5 * scale, (name, np.abs(g - ref).max(), scale)
    finally:
        problem.lookup = lookup


@pytest.mark.parametrize("case", CASES)
def test_skipped_sphere_pairs_do_not_touch_and_skipping_them_changes_no_bit(problems, case) -> None:
    """The bone-level bound only skips pairs that are 2 r apart, and the energy, its terms and its gradient
    are bit for bit those over all 810 pairs."""
    from hoigen.grasp.optimize import SPHERE_R, TERMS, EnergyWeights, GraspProblem

    problem = problems[case]
    rng = np.random.default_rng(12)
    b = 24
    rot6, transl, angles = _inputs(b, 12)
    angles = (angles - 0.3 + rng.normal(0, 0.3, angles.shape)).astype(np.float32)  # fingers crossing
    seen = []
    near_pairs = problem._near_pairs

    def spy(centres, b):
        seen.append((centres.copy(), near_pairs(centres, b)))
        return seen[-1][1]

    problem._near_pairs = spy
    try:
        total, terms, grads = problem.energy_and_grad(rot6, transl, angles, EnergyWeights())
        problem._near_pairs = lambda centres, b: np.arange(problem.pairs.shape[1])
        all_total, all_terms, all_grads = problem.energy_and_grad(rot6, transl, angles, EnergyWeights())
    finally:
        del problem._near_pairs
    assert isinstance(problem._near_pairs.__self__, GraspProblem)
    centres, near = seen[0]
    c = centres.reshape(-1, 3, b)
    gap = np.linalg.norm(c[problem.pairs[0]] - c[problem.pairs[1]], axis=1)  # (pairs, B)
    touching = np.flatnonzero((gap < 2 * SPHERE_R + 5e-5).any(1))
    assert 0 < len(touching) and np.isin(touching, near).all()  # none skipped that (nearly) touches
    assert len(near) < 0.8 * problem.pairs.shape[1]  # and some are skipped
    assert total.tobytes() == all_total.tobytes()
    assert all(terms[name].tobytes() == all_terms[name].tobytes() for name in TERMS)
    assert all(g.tobytes() == h.tobytes() for g, h in zip(grads, all_grads, strict=True))


def test_numpy_rodrigues_and_rotation_equal_the_torch_ones() -> None:
    from hoigen.grasp.optimize import _rodrigues_forward, rotation_from_6d
    from hoigen.grasp.skin import rodrigues

    rng = np.random.default_rng(10)
    v = rng.normal(0, 1.5, (200, 3)).astype(np.float32)
    v[:3] = 0.0
    rot, _ = _rodrigues_forward(np.ascontiguousarray(v.T))
    assert np.allclose(rot.transpose(2, 0, 1), rodrigues(torch.as_tensor(v)).numpy(), atol=1e-6)
    x = rng.normal(size=(20, 6)).astype(np.float32)
    assert np.allclose(rotation_from_6d(x), _rotation_from_6d_torch(torch.as_tensor(x)).numpy(), atol=1e-6)


def test_skin_places_rigidly_and_its_blend_path_equals_the_product() -> None:
    from hoigen.grasp.skin import HandSkin
    from hoigen.hand import load_hand

    hand = load_hand("right")
    skin = HandSkin(hand, np.arange(0, hand.num_vertices, 5))
    rng = np.random.default_rng(6)
    pose = torch.as_tensor(rng.normal(0, 0.4, (4, 45)), dtype=torch.float32)
    rot = torch.as_tensor(np.linalg.qr(rng.normal(size=(4, 3, 3)))[0], dtype=torch.float32)
    transl = torch.as_tensor(rng.normal(0, 0.05, (4, 3)), dtype=torch.float32)
    pts, joints = skin(pose, rot, transl)
    assert pts.shape == (4, len(skin.points), 3)
    assert torch.allclose(pts[0], torch.as_tensor(skin(pose[:1])[0][0]) @ rot[0].T + transl[0], atol=1e-6)
    skin.has_blend = True  # the pose-blend-shape path (real MANO; the embedded hand's blend shapes are zero)
    blended, joints2 = skin(pose, rot, transl)
    assert torch.allclose(blended, pts, atol=1e-6) and torch.equal(joints, joints2)


def test_adam_matches_the_per_tensor_update() -> None:
    from hoigen.grasp.optimize import _Adam

    rng = np.random.default_rng(7)
    params = [rng.normal(size=s).astype(np.float32) for s in ((4, 6), (4, 3), (4, 15, 3))]
    lrs = [0.03, 0.003, 0.05]
    ours = _Adam([(p.copy(), lr) for p, lr in zip(params, lrs, strict=True)])
    views = ours.params
    ref = [p.copy() for p in params]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    for t in range(1, 4):
        grads = [rng.normal(size=p.shape).astype(np.float32) for p in params]
        ours.step(grads)
        c1, c2 = 1 - 0.9**t, 1 - 0.999**t
        for p, lr, g, mi, vi in zip(ref, lrs, grads, m, v, strict=True):
            mi *= 0.9
            mi += (1 - 0.9) * g
            vi *= 0.999
            vi += (1 - 0.999) * (g * g)
            p -= lr * (mi / c1) / (np.sqrt(vi / c2) + 1e-8)
    assert all(p.dtype == np.float32 for p in ours.params)
    assert all(np.allclose(p, q, rtol=1e-6, atol=1e-7) for p, q in zip(views, ref, strict=True))
    assert not np.allclose(views[2], params[2])  # it moved
