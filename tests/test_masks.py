"""Tests for cobra.ops: CRF, IR labels, pair labels / affinity loss, random walk, mask rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cobra.ops.affinity import affinity_loss, pair_labels
from cobra.ops.confidence import aobj_thresholds, ir_label, ir_label_quality
from cobra.ops.crf import crf_label, crf_probs
from cobra.ops.random_walk import (
    affinity,
    masks_from_rw,
    neighbour_offsets,
    path_max,
    random_walk,
    relative_labels,
    segment_pixels,
)


def _two_colour_image(h: int = 24, w: int = 24, edge: int = 12) -> np.ndarray:
    img = np.zeros((h, w, 3), dtype=np.uint8)
    img[:, :edge] = (220, 30, 30)
    img[:, edge:] = (30, 30, 220)
    return img


# ---------------------------------------------------------------- CRF


def test_crf_label_moves_boundary_to_colour_edge():
    img = _two_colour_image()
    truth = np.zeros((24, 24), dtype=np.int64)
    truth[:, 12:] = 1
    labels = np.zeros((24, 24), dtype=np.int64)
    labels[:, 9:] = 1  # boundary 3 px left of the colour edge
    out = crf_label(img, labels, 2)
    assert out.shape == (24, 24) and out.dtype == np.int64
    assert (out != truth).sum() < (labels != truth).sum()


def test_crf_label_single_label_and_range_check():
    img = _two_colour_image(8, 8, 4)
    assert not crf_label(img, np.zeros((8, 8), dtype=np.int64), 1).any()
    with pytest.raises(ValueError):
        crf_label(img, np.full((8, 8), 2), 2)


def test_crf_probs_is_a_distribution_and_keeps_clear_labels():
    img = _two_colour_image(12, 12, 6)
    probs = np.zeros((2, 12, 12), dtype=np.float32)
    probs[0, :, :6], probs[1, :, :6] = 0.9, 0.1
    probs[0, :, 6:], probs[1, :, 6:] = 0.1, 0.9
    q = crf_probs(img, probs, iters=5)
    assert q.shape == (2, 12, 12)
    np.testing.assert_allclose(q.sum(axis=0), 1.0, atol=1e-4)
    np.testing.assert_array_equal(q.argmax(axis=0), probs.argmax(axis=0))


# ---------------------------------------------------------------- IR labels


def test_ir_label_three_way_split():
    # One colour per block: on a flat image the wide bilateral kernel lets the plurality label
    # swallow the rest, so the blocks' labels must agree with colour edges to survive the CRF.
    img = np.zeros((16, 16, 3), dtype=np.uint8)
    img[:8, :8], img[:8, 8:] = (200, 40, 40), (40, 200, 40)
    img[8:, :8], img[8:, 8:] = (40, 40, 200), (200, 200, 40)
    cam = np.zeros((2, 16, 16), dtype=np.float32)
    cam[:, :, :] = 0.01  # bottom-right block: confident background
    cam[0, :8, :8] = 0.9  # class 3, confident
    cam[1, :8, 8:] = 0.8  # class 7, confident
    cam[0, 8:, :8] = 0.15  # between conf_bg and conf_fg: unknown
    out = ir_label(img, cam, np.array([3, 7]), conf_fg=0.3, conf_bg=0.05, crf={"gt_prob": 0.7})
    assert out.dtype == np.uint8
    assert (out[:8, :8] == 3).all()
    assert (out[:8, 8:] == 7).all()
    assert (out[8:, :8] == 255).all()
    assert (out[8:, 8:] == 0).all()


def test_ir_label_quality_counts():
    ir = np.array([[1, 255, 0], [2, 0, 255]], dtype=np.uint8)
    gt = np.array([[1, 1, 255], [1, 0, 0]], dtype=np.uint8)
    # valid: 5 pixels; confident among them: (0,0),(1,0),(1,1) → 3; correct: (0,0),(1,1) → 2
    assert ir_label_quality(ir, gt) == (3, 2, 5)


def ref_authors_thresholds(p: float) -> tuple[float, float]:
    """The authors' `get_bounds` + `cam_to_ir_label`, from their description: round p to the
    nearest multiple r of 0.05; the bracket is [r − 0.05, r] when p ≤ r (both neighbours of r
    when p = r), else [r, r + 0.05]; conf_bg is its lower end, conf_fg = conf_bg + 0.5."""
    rounded = round(p * 20) / 20
    low = rounded - 0.05 if p <= rounded else rounded
    return low + 0.5, low


def test_aobj_thresholds_hand_computed():
    # 0, 0.005, ..., 0.495: the 93rd percentile is 0.46035 (index 92.07), in the bracket
    # [0.45, 0.50), so conf_bg = 0.45 and conf_fg = 0.95
    ramp = np.arange(100).reshape(10, 10) / 200
    assert aobj_thresholds(ramp, 93, 0.05, 0.5) == pytest.approx((0.95, 0.45))
    # exactly on a multiple: the bracket below (the authors' get_bounds), 0.35 → 0.30
    assert aobj_thresholds(np.full((4, 4), 0.35), 93, 0.05, 0.5) == pytest.approx((0.8, 0.3))
    assert aobj_thresholds(np.full((4, 4), 0.02), 93, 0.05, 0.5) == pytest.approx((0.5, 0.0))
    # nothing is clipped: a high percentile leaves no map above conf_fg
    assert aobj_thresholds(np.full((4, 4), 0.81), 93, 0.05, 0.5) == pytest.approx((1.3, 0.8))
    for p in [*np.linspace(0.003, 0.997, 211), *(k / 20 for k in range(1, 20))]:
        got = aobj_thresholds(np.full((2, 2), p), 93, 0.05, 0.5)
        assert got == pytest.approx(ref_authors_thresholds(float(p)), abs=1e-9), p


def test_aobj_thresholds_follow_fidelity_unless_set():
    from cobra.config import load_config
    from cobra.stages.ir_labels import thresholds

    a_obj = np.arange(100).reshape(10, 10) / 200
    assert thresholds(load_config(None, []), a_obj) == (0.30, 0.05)  # IRN's fixed pair
    code = load_config(None, ["loss.fidelity=code"])
    assert thresholds(code, a_obj) == pytest.approx((0.95, 0.45))
    fixed = load_config(None, ["loss.fidelity=code", "masks.ir_labels.threshold_source=fixed"])
    assert thresholds(fixed, a_obj) == (0.30, 0.05)


# ---------------------------------------------------------------- random walk


def test_neighbour_offsets_symmetric_and_in_radius():
    offs = neighbour_offsets(3)
    assert (0, 0) not in offs
    assert all(0 < dy * dy + dx * dx < 9 for dy, dx in offs)
    assert set(offs) == {(-dy, -dx) for dy, dx in offs}
    assert len(offs) == 24  # the 5×5 box minus its centre: the corners (d² = 8 < 9) are in
    assert len(neighbour_offsets(2)) == 8  # 3×3 box: d² ≤ 2 < 4


def _slow_path_max(b: np.ndarray, y: int, x: int, dy: int, dx: int) -> float:
    h, w = b.shape
    if not (0 <= y + dy < h and 0 <= x + dx < w):
        return 1.0
    n = max(abs(dy), abs(dx)) + 1
    vals = [b[round(y + t * dy), round(x + t * dx)] for t in np.linspace(0, 1, n)]
    return float(max(vals))


def test_path_max_matches_slow_loop():
    rng = np.random.default_rng(0)
    b = rng.random((9, 11)).astype(np.float32)
    # offsets whose sample points never fall on an exact half pixel
    offs = [(0, 3), (-3, 0), (2, 2), (3, 1), (-1, -3), (1, -3), (-4, 4)]
    out = path_max(torch.from_numpy(b), offs).numpy()
    assert out.shape == (len(offs), 9, 11)
    for i, (dy, dx) in enumerate(offs):
        for y, x in [(0, 0), (4, 5), (8, 10), (2, 9), (6, 1)]:
            assert out[i, y, x] == pytest.approx(_slow_path_max(b, y, x, dy, dx)), (dy, dx, y, x)


def test_path_max_symmetric_and_batched_with_grad():
    assert {(1, 0), (1, 1)} <= set(segment_pixels(2, 1))  # exact half: both pixels
    rng = np.random.default_rng(1)
    b = torch.from_numpy(rng.random((2, 7, 7)).astype(np.float32)).requires_grad_(True)
    offs = neighbour_offsets(4)
    out = path_max(b, offs)
    assert out.shape == (2, len(offs), 7, 7)
    with torch.no_grad():
        np.testing.assert_array_equal(out.detach().numpy()[1], path_max(b[1], offs).numpy())
    # p→p+o equals (p+o)→p
    i, j = offs.index((2, -1)), offs.index((-2, 1))
    assert torch.equal(out[:, i, 1:5, 2:6], out[:, j, 3:7, 1:5])
    out.sum().backward()
    assert b.grad is not None and b.grad.sum() > 0


def test_affinity_rows_sum_to_one_and_symmetric():
    rng = np.random.default_rng(2)
    b = torch.from_numpy(rng.random((6, 7)).astype(np.float32))
    rows, cols, vals = affinity(b, radius=3, beta=2.0)
    n = 42
    sums = torch.zeros(n).index_add_(0, rows, vals)
    torch.testing.assert_close(sums, torch.ones(n))
    t = torch.zeros(n, n)
    t[rows, cols] = vals
    assert (t.diagonal() > 0).all()  # self-loops
    # T = D⁻¹A with A symmetric ⇔ T[p, q]·T[q, p]⁻¹ = d_q / d_p: check A = D·T is symmetric
    deg = 1.0 / t.diagonal()  # self-loop weight 1 → T[p, p] = 1 / d_p
    a = deg[:, None] * t
    torch.testing.assert_close(a, a.t())
    # a boundary pixel cuts every edge through it
    b2 = torch.zeros(5, 5)
    b2[2, 2] = 1.0
    r2, c2, v2 = affinity(b2, radius=3, beta=1.0)
    centre = 2 * 5 + 2
    assert torch.equal(c2[(r2 == centre) & (v2 > 0)], torch.tensor([centre]))
    # (1, 2) → (3, 2) passes through the boundary: no edge; (1, 2) → (1, 3) is open
    assert not ((r2 == 7) & (c2 == 17) & (v2 > 0)).any()
    assert ((r2 == 7) & (c2 == 8) & (v2 > 0)).any()


def test_random_walk_keeps_constant_field():
    rng = np.random.default_rng(3)
    b = torch.from_numpy(rng.random((10, 10)).astype(np.float32))
    x = torch.full((2, 10, 10), 0.7)
    out = random_walk(x, b, radius=3, beta=5.0, steps=16)
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)


def test_random_walk_stays_inside_closed_boundary():
    h = w = 20
    b = torch.zeros(h, w)
    b[5, 5:15] = b[14, 5:15] = b[5:15, 5] = b[5:15, 14] = 1.0  # closed square ring
    x = torch.zeros(1, h, w)
    x[0, 10, 10] = 1.0
    out = random_walk(x, b, radius=5, beta=10.0, steps=64)[0]
    inside = torch.zeros(h, w, dtype=torch.bool)
    inside[6:14, 6:14] = True
    outside = ~inside
    outside[5:15, 5:15] = False  # ring pixels themselves are neither
    assert out[6, 6] > 1e-4  # spread to the far corner inside the ring
    assert out[inside].sum() > 1e3 * out[outside].sum()
    # without the ring the same seed does reach the outside
    free = random_walk(x, torch.zeros(h, w), radius=5, beta=10.0, steps=64)[0]
    assert free[outside].sum() > 1e3 * out[outside].sum() + 1e-3


def _dense_walk(x: torch.Tensor, b: torch.Tensor, radius: int, beta: float,
                steps: int) -> torch.Tensor:
    """x ← T x with T = D⁻¹A as a dense matrix, step by step."""
    rows, cols, vals = affinity(b, radius, beta)
    n = b.numel()
    t = torch.zeros(n, n, dtype=torch.float64)
    t[rows, cols] = vals.double()
    v = x.double().reshape(x.shape[0], n).t()
    for _ in range(steps):
        v = t @ v
    return v.t().reshape(x.shape)


def test_walk_of_a_constant_field_with_and_without_boundary_damping():
    h = w = 8
    b = torch.zeros(h, w)
    b[:, 3] = 0.9  # a wall across the image
    b[2, 6] = 0.5
    x = torch.full((1, h, w), 0.7)
    free = random_walk(x, b, radius=3, beta=2.0, steps=6)
    torch.testing.assert_close(free, x, atol=1e-5, rtol=0)  # T keeps a constant field
    damped = random_walk(x, b, radius=3, beta=2.0, steps=6, damp_boundary=True)
    expected = _dense_walk(x * (1 - b), b, radius=3, beta=2.0, steps=6)
    torch.testing.assert_close(damped.double(), expected, atol=1e-5, rtol=0)
    # the walk conserves degree-weighted mass, so what (1 − b) removed stays removed
    rows, cols, vals = affinity(b, 3, 2.0)
    deg = 1.0 / vals[rows == cols]  # self-loops (weight 1, in pixel order): T[p, p] = 1 / d_p

    def mass(m: torch.Tensor) -> float:
        return float((deg * m.reshape(-1)).sum())

    assert mass(damped) == pytest.approx(mass(x * (1 - b)), rel=1e-4)
    assert mass(damped) < mass(free)
    assert damped[0, :, 3].max() < 0.7 and damped[0, :, 0].min() > 0.5


def test_walk_source_is_the_fused_seed_or_the_vit_side_one(tmp_path):
    from cobra.config import load_config
    from cobra.layout import RunLayout
    from cobra.stages.masks import load_walk_seed

    layout = RunLayout(tmp_path)
    layout.seeds.mkdir(parents=True)
    cnn = np.array([[[0.9, 0.1]]], dtype=np.float32)
    tran = np.array([[[0.2, 0.6]]], dtype=np.float32)
    np.savez(layout.seed_file("a"), keys=np.array([3]), cam_cnn=cnn, cam_tran=tran,
             a_obj=np.ones((1, 2), np.float32))

    def source(*overrides: str) -> np.ndarray:
        return load_walk_seed(load_config(None, list(overrides)), layout, "a")["walk"]

    np.testing.assert_allclose(source(), [[[0.55, 0.6]]])  # M_fuse = max((a + b) / 2, b)
    np.testing.assert_array_equal(source("loss.fidelity=code"), tran)
    np.testing.assert_array_equal(source("masks.walk.source=tran"), tran)
    np.testing.assert_allclose(source("loss.fidelity=code", "masks.walk.source=fuse"),
                               [[[0.55, 0.6]]])


def test_masks_from_rw_and_relative_masks():
    keys = np.array([5, 9])
    rw = np.array([[[4, 0, 1, 0, 3, 0]],
                   [[0.4, 2, 0.5, 0.4, 1.5, 1.2]]], dtype=np.float32)
    # global max 4: pixel 2 ties with the 0.25 background → background
    np.testing.assert_array_equal(masks_from_rw(rw, keys, 0.25), [[5, 9, 0, 0, 5, 9]])
    np.testing.assert_array_equal(masks_from_rw(rw, keys, 0.05), [[5, 9, 5, 9, 5, 9]])
    # thresholds: class 5 → 0.5·4 + 0 = 2; class 9 → 0.5·2 + 0.4 = 1.4 (pixel 5 at 1.2 fails,
    # which a θ·(max − min) + min reading would accept); pixel 4: both claim, larger rw wins
    out = relative_labels(rw, 0.5)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(np.array([0, *keys])[out], [[5, 9, 0, 0, 5, 0]])
    assert not relative_labels(np.zeros((0, 2, 2)), 0.5).any()


def test_relative_rule_then_hard_label_crf_on_a_hand_made_map():
    from cobra.config import load_config
    from cobra.stages.masks import rule_masks

    img = _two_colour_image()  # colour edge at column 12
    keys = np.array([4, 7])
    rw = np.zeros((2, 24, 24), dtype=np.float32)
    rw[0, :, :15] = np.linspace(1.0, 2.0, 15)  # class 4 spills 3 px over the edge
    rw[1, :, 12:] = 3.0
    rw[1, :, 12:15] = 0.5  # ... where class 7 is weak
    # thresholds: class 4 → 0.31·2 + 0 = 0.62 (its whole extent); class 7 → 0.31·3 + 0 = 0.93
    cfg = load_config(None, ["masks.rule.relative_theta=0.31", "masks.rule.crf.gt_prob=0.7"])
    plain, refined = rule_masks(cfg, "relative", img, rw, keys)
    expected = np.zeros((24, 24), dtype=np.uint8)
    expected[:, :15], expected[:, 15:] = 4, 7
    np.testing.assert_array_equal(plain, expected)
    np.testing.assert_array_equal(plain, np.array([0, *keys])[relative_labels(rw, 0.31)])
    # the hard-label CRF pulls class 4's spill back to the colour edge
    truth = np.where(np.arange(24) < 12, 4, 7)[None].repeat(24, 0)
    assert (refined != truth).sum() < (plain != truth).sum()
    assert set(np.unique(refined)) <= {0, 4, 7}
    off = load_config(None, ["masks.rule.crf.enabled=false"])
    assert all((m == plain).all() for m in rule_masks(off, "relative", img, rw, keys))
    irn_plain, _ = rule_masks(off, "irn", img, rw, keys)
    np.testing.assert_array_equal(irn_plain, masks_from_rw(rw, keys, 0.25))


# ---------------------------------------------------------------- pair labels and loss


def test_pair_labels_hand_made():
    ir = torch.tensor([[[1, 1, 0, 0],
                        [1, 1, 0, 255],
                        [2, 2, 0, 0],
                        [2, 255, 0, 0]]])
    offs = [(0, 1), (1, 0)]
    lab = pair_labels(ir, offs)
    assert set(lab) == {"pos_fg", "pos_bg", "neg"}
    assert lab["pos_fg"].shape == (1, 2, 4, 4) and lab["pos_fg"].dtype == torch.bool
    pf, pb, ng = (lab[k][0] for k in ("pos_fg", "pos_bg", "neg"))
    assert pf[0, 0, 0] and pb[0, 0, 2] and ng[0, 0, 1]  # right neighbours in row 0
    assert ng[1, 1, 0] and pf[1, 0, 0] and pb[1, 2, 3]  # down: 1→2, 1→1, 0→0
    assert not (pf[0, 1, 2] or pb[0, 1, 2] or ng[0, 1, 2])  # partner unknown
    assert not (pf[0, :, 3].any() or pb[0, :, 3].any() or ng[0, :, 3].any())  # outside
    assert not (pf[1, 3].any() or pb[1, 3].any() or ng[1, 3].any())  # outside
    total = pf.int() + pb.int() + ng.int()
    assert total.max() <= 1  # the sets are disjoint
    # right pairs: 12 in-image, minus 3 touching an unknown → 9; down pairs: 12 − 3 → 9
    assert int(total[0].sum()) == 9 and int(total[1].sum()) == 9


def test_affinity_loss_prefers_boundaries_on_label_edges():
    ir = torch.zeros(1, 8, 8, dtype=torch.long)
    ir[:, :, :4] = 1
    offs = neighbour_offsets(3)
    matched = torch.zeros(1, 8, 8)
    matched[:, :, 3:5] = 0.5
    flat = torch.full((1, 8, 8), 0.5)
    none = torch.zeros(1, 8, 8)
    l_matched = affinity_loss(matched, ir, offs)
    l_flat = affinity_loss(flat, ir, offs)
    l_none = affinity_loss(none, ir, offs)
    assert l_matched < l_flat < l_none
    # IRN's (pos + neg) / 2 with pos = (pos_fg + pos_bg) / 2: at a flat 0.2 every positive
    # pair costs −log 0.8 and every negative one −log 0.2
    l_02 = affinity_loss(torch.full((1, 8, 8), 0.2), ir, offs)
    assert float(l_02) == pytest.approx((-np.log(0.8) - np.log(0.2)) / 2, rel=1e-3)
    assert float(l_flat) == pytest.approx(np.log(2), rel=1e-3)
    # symmetric and half offset lists give the same loss
    half = [o for o in offs if o > (0, 0)]
    assert float(affinity_loss(matched, ir, half)) == pytest.approx(float(l_matched))
    b = matched.clone().requires_grad_(True)
    affinity_loss(b, ir, offs).backward()
    assert b.grad is not None and torch.isfinite(b.grad).all()


def test_rw_scale_enlarges_the_boundary_grid():
    from cobra.config import load_config
    from cobra.models.irn import BoundaryNet
    from cobra.stages.masks import boundary_map, walk

    net = BoundaryNet("test_resnet", False, True, layout="native").eval()
    image = np.zeros((40, 56, 3), np.uint8)
    assert boundary_map(net, image, torch.device("cpu")).shape == (10, 14)
    enlarged = boundary_map(net, image, torch.device("cpu"), scale=2.0)
    assert enlarged.shape == (20, 28)
    # the walk follows the boundary grid it is given; masks come back at the image's size
    cfg = load_config(None, ["masks.walk.exp_times=1"])
    rw = walk(cfg, enlarged, np.ones((1, 40, 56), np.float32))
    assert rw.shape == (1, 20, 28)


def test_only_the_stages_first_images_are_kept_for_pictures():
    from cobra.stages.common import NUM_PICTURES
    from cobra.stages.masks import _boundary_jobs

    class Images:  # a source of blank 8x8 images: only the ids matter here
        def load_image(self, image_id):
            return np.zeros((8, 8, 3), np.uint8)

    def net(x):  # a stride-4 "boundary network"
        return torch.zeros(x.shape[0], x.shape[-2] // 4, x.shape[-1] // 4)

    ids = [f"{i:05d}" for i in range(100)]
    kept = [image_id for image_id, _, keep in
            _boundary_jobs(net, Images(), ids, torch.device("cpu"), 1.0) if keep]
    assert kept == ids[:NUM_PICTURES]
