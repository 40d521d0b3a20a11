"""Every loss against a slow loop that follows the paper's equation letter by letter (SPEC Eq. 1–4),
plus the one-way gradient rule and numerical stability."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cobra import losses


@pytest.fixture(autouse=True)
def float64():
    """Parity at 1e-9 needs double precision; restored afterwards for the rest of the suite."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def unit(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g), dim=-1)


# ------------------------------------------------------------------------------------------------
# Slow references


def ref_anchor_loss(z_i, positives, negatives, tau, neg_exp_over_tau=False):
    """ℓ_i = (1/|P⁺|) Σ_j −log( e^{z_i·z_j/τ} / (e^{z_i·z_j/τ} + Σ_k e^{z_i·z_k/τ}) )."""
    total = 0.0
    for z_j in positives:
        num = math.exp(float(z_i @ z_j) / tau)
        if neg_exp_over_tau:
            neg = sum(math.exp(float(z_i @ z_k)) / tau for z_k in negatives)
        else:
            neg = sum(math.exp(float(z_i @ z_k) / tau) for z_k in negatives)
        total += -math.log(num / (num + neg))
    return total / len(positives)


def ranked(values, k, largest, skip=None):
    order = sorted(range(len(values)), key=lambda j: float(values[j]), reverse=largest)
    return [j for j in order if j != skip][:k]


def ref_cap(z, affinity, k_pos, k_neg, tau, exclude_self=False):
    b_count, m, _ = z.shape
    total = 0.0
    for b in range(b_count):
        for i in range(m):
            pos = ranked(affinity[b, i], k_pos, True, skip=i if exclude_self else None)
            neg = ranked(affinity[b, i], k_neg, False)
            total += ref_anchor_loss(z[b, i], [z[b, j] for j in pos], [z[b, k] for k in neg], tau)
    return total / (b_count * m)


def ref_pseudo_class(cam_b, labels_b, i, absent):
    """argmax over classes of softmax(M_cnn at patch i) over background + present classes."""
    scores = cam_b.flatten(1)[:, i]
    present = [0] + [c + 1 for c in range(len(labels_b)) if labels_b[c] > 0.5]
    if absent == "mask":
        exps = {c: math.exp(float(scores[c])) for c in present}
    else:  # the authors' code: absent classes zeroed, still candidates
        exps = {c: math.exp(float(scores[c]) if c in present else 0.0)
                for c in range(len(scores))}
    norm = sum(exps.values())
    return max(exps, key=lambda c: exps[c] / norm)


def ref_sap(z, cam, labels, k_pos, k_neg, tau, absent="mask", exclude_self=False,
            neg_exp_over_tau=False):
    b_count, m, _ = z.shape
    total = 0.0
    for b in range(b_count):
        for i in range(m):
            c = ref_pseudo_class(cam[b], labels[b], i, absent)
            class_scores = cam[b, c].flatten()
            pos = ranked(class_scores, k_pos, True, skip=i if exclude_self else None)
            neg = ranked(class_scores, k_neg, False)
            total += ref_anchor_loss(z[b, i], [z[b, j] for j in pos], [z[b, k] for k in neg],
                                     tau, neg_exp_over_tau)
    return total / (b_count * m)


# ------------------------------------------------------------------------------------------------
# Parity


def test_info_nce_matches_the_per_anchor_formula():
    z = unit(2, 9, 5)
    g = torch.Generator().manual_seed(1)
    pos = torch.randint(0, 9, (2, 9, 3), generator=g)
    neg = torch.randint(0, 9, (2, 9, 4), generator=g)
    expected = sum(ref_anchor_loss(z[b, i], z[b, pos[b, i]], z[b, neg[b, i]], 0.2)
                   for b in range(2) for i in range(9)) / 18
    assert losses.info_nce(z, pos, neg, 0.2).item() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("exclude_self", [False, True])
def test_cap_loss_matches_reference(exclude_self):
    z = unit(2, 16, 8)
    affinity = torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(3))
    fast = losses.cap_loss(z, affinity, 3, 5, 0.1, exclude_self=exclude_self)
    slow = ref_cap(z, affinity, 3, 5, 0.1, exclude_self=exclude_self)
    assert fast.item() == pytest.approx(slow, rel=1e-9)


def test_cap_loss_accepts_projection_maps():
    z = unit(2, 16, 8)
    maps = z.transpose(1, 2).reshape(2, 8, 4, 4)
    affinity = torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(3))
    assert losses.cap_loss(maps, affinity, 3, 5, 0.1).item() == pytest.approx(
        losses.cap_loss(z, affinity, 3, 5, 0.1).item(), rel=1e-12)


@pytest.mark.parametrize(("absent", "exclude_self", "bug"),
                         [("mask", False, False), ("mask", True, False), ("zero", False, True)])
def test_sap_loss_matches_reference(absent, exclude_self, bug):
    g = torch.Generator().manual_seed(5)
    z = unit(3, 16, 8, seed=4)
    cam = torch.randn(3, 5, 4, 4, generator=g)  # C = 4 foreground classes + background
    labels = torch.tensor([[1, 0, 0, 1], [0, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.float64)
    fast = losses.sap_loss(z, cam, labels, 4, 3, 0.1, absent=absent, exclude_self=exclude_self,
                           neg_exp_over_tau=bug)
    slow = ref_sap(z, cam, labels, 4, 3, 0.1, absent, exclude_self, bug)
    assert fast.item() == pytest.approx(slow, rel=1e-9)


def test_absent_classes_only_win_in_the_code_fidelity_mode():
    # One patch where every present score is negative: zeroing (authors' code) lets the absent
    # class 2 (score 0) win the argmax, masking (paper) does not.
    cam = torch.full((1, 3, 1, 2), -1.0)
    cam[0, 2] = 5.0  # class 2 is absent from the image but scores high
    labels = torch.tensor([[1.0, 0.0]])
    masked = losses.sap_pseudo_labels(cam, labels, "mask")
    zeroed = losses.sap_pseudo_labels(cam, labels, "zero")
    assert set(masked.flatten().tolist()) <= {0, 1}
    assert (zeroed == 2).all()


def test_classification_loss_is_multilabel_soft_margin():
    logits = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    labels = (torch.rand(4, 6, generator=torch.Generator().manual_seed(1)) > 0.5).double()
    expected = 0.0
    for b in range(4):
        row = 0.0
        for c in range(6):
            p = 1 / (1 + math.exp(-float(logits[b, c])))
            y = float(labels[b, c])
            row += -(y * math.log(p) + (1 - y) * math.log(1 - p))
        expected += row / 6
    assert losses.classification_loss(logits, labels).item() == pytest.approx(expected / 4)


def test_cam_consistency_matches_reference():
    g = torch.Generator().manual_seed(2)
    cnn, vit = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 3, 3, generator=g)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    size = (12, 12)
    up_c = F.interpolate(cnn, size=size, mode="bilinear", align_corners=False)
    up_v = F.interpolate(vit, size=size, mode="bilinear", align_corners=False)
    all_terms, fg_terms = [], []
    for b in range(2):
        for c in range(4):
            d = float((up_c[b, c] - up_v[b, c]).abs().mean())
            all_terms.append(d)
            if c > 0 and labels[b, c - 1] > 0.5:
                fg_terms.append(d)
    expected = sum(all_terms) / len(all_terms) + sum(fg_terms) / len(fg_terms)
    got = losses.cam_consistency_loss(cnn, vit, labels, size)
    assert got.item() == pytest.approx(expected, rel=1e-9)


def ref_bilinear_corners(m, out_h, out_w):
    """Bilinear upsampling with align_corners=True, pixel by pixel: output pixel i sits at input
    coordinate i·(in − 1)/(out − 1), so the corner pixels of both grids coincide."""
    in_h, in_w = m.shape
    out = [[0.0] * out_w for _ in range(out_h)]
    for i in range(out_h):
        y = i * (in_h - 1) / (out_h - 1)
        y0 = min(int(y), in_h - 2)
        for j in range(out_w):
            x = j * (in_w - 1) / (out_w - 1)
            x0 = min(int(x), in_w - 2)
            dy, dx = y - y0, x - x0
            out[i][j] = ((1 - dy) * (1 - dx) * float(m[y0, x0]) + (1 - dy) * dx * float(m[y0, x0 + 1])
                         + dy * (1 - dx) * float(m[y0 + 1, x0]) + dy * dx * float(m[y0 + 1, x0 + 1]))
    return out


def test_cam_consistency_code_form_is_the_authors_term():
    """The authors' loss_interCAM1: mean |up(M_cnn) − up(M_tran)| over every batch, channel and
    pixel, both upsampled to the input size with align_corners=True; no positive-class term."""
    g = torch.Generator().manual_seed(7)
    cnn, vit = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 3, 3, generator=g)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    h, w = 10, 13
    total = 0.0
    for b in range(2):
        for c in range(4):
            up_c, up_v = ref_bilinear_corners(cnn[b, c], h, w), ref_bilinear_corners(vit[b, c], h, w)
            total += sum(abs(up_c[i][j] - up_v[i][j]) for i in range(h) for j in range(w))
    expected = total / (2 * 4 * h * w)
    got = losses.cam_consistency_loss(cnn, vit, labels, (h, w), form="code")
    assert got.item() == pytest.approx(expected, rel=1e-9)
    paper = losses.cam_consistency_loss(cnn, vit, labels, (h, w))
    assert paper.item() > 1.5 * got.item()  # the paper's reading adds the positive-class term


def test_cam_form_follows_fidelity_unless_set():
    from cobra.config import load_config
    from cobra.models.output import CoBraOutput
    from cobra.objective import compute_losses

    g = torch.Generator().manual_seed(8)
    cnn, vit = torch.randn(1, 3, 2, 2, generator=g), torch.randn(1, 3, 2, 2, generator=g)
    out = CoBraOutput(logits_cnn=None, logits_vit=None, cam_cnn=cnn, cam_vit=vit, proj_cnn=None,
                      proj_vit=None, attention=None, affinity=None, a_obj=None)
    labels = torch.tensor([[1.0, 0.0]])

    def l_cam(*overrides: str) -> float:
        cfg = load_config(None, ["loss.cam_start_epoch=0", "loss.use_cap=false",
                                 "loss.use_sap=false", *overrides]).loss
        return compute_losses(out, labels, cfg, epoch=0, input_size=(8, 8)).cam.item()

    paper = losses.cam_consistency_loss(cnn, vit, labels, (8, 8), form="paper").item()
    code = losses.cam_consistency_loss(cnn, vit, labels, (8, 8), form="code").item()
    assert paper != pytest.approx(code)
    assert l_cam() == pytest.approx(paper)
    assert l_cam("loss.fidelity=code") == pytest.approx(code)
    assert l_cam("loss.fidelity=code", "loss.cam_form=paper") == pytest.approx(paper)


# ------------------------------------------------------------------------------------------------
# Gradient flow and stability


def test_guiding_sides_are_detached():
    z = unit(1, 16, 8).requires_grad_()
    affinity = torch.rand(1, 16, 16).requires_grad_()
    losses.cap_loss(z, affinity, 2, 3, 0.1).backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert affinity.grad is None

    z = unit(1, 16, 8).requires_grad_()
    cam = torch.randn(1, 3, 4, 4).requires_grad_()
    losses.sap_loss(z, cam, torch.tensor([[1.0, 1.0]]), 2, 3, 0.1).backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert cam.grad is None


def test_info_nce_is_stable_at_tiny_temperature():
    z = unit(2, 32, 4)
    g = torch.Generator().manual_seed(0)
    pos = torch.randint(0, 32, (2, 32, 5), generator=g)
    neg = torch.randint(0, 32, (2, 32, 5), generator=g)
    value = losses.info_nce(z.float(), pos, neg, 1e-3)
    assert torch.isfinite(value) and value >= 0


def test_k_larger_than_the_grid_is_a_clear_error():
    from cobra.errors import ConfigError

    with pytest.raises(ConfigError, match="k_pos=17 but the patch grid has only 16"):
        losses.cap_loss(unit(1, 16, 4), torch.rand(1, 16, 16), 17, 2, 0.1)


def test_sap_threshold_background_follows_the_max_normalised_class_scores():
    """`bg=t`: a patch is background exactly where every present class's score, ReLU'd and
    divided by that class's image maximum, is below t; background rows rank patches by how far
    their best class score is from any class."""
    cam = torch.zeros(1, 3, 1, 4)
    cam[0, 0] = torch.tensor([9.0, 9.0, 9.0, 9.0])  # a background channel that would win anywhere
    cam[0, 1] = torch.tensor([4.0, 1.0, -2.0, 0.4])  # max 4 → 1.0, 0.25, 0, 0.1
    cam[0, 2] = torch.tensor([5.0, 5.0, 5.0, 5.0])  # an absent class never wins
    labels = torch.tensor([[1.0, 0.0]])
    assert losses.sap_pseudo_labels(cam, labels).tolist() == [[0, 0, 0, 0]]  # the channel
    assert losses.sap_pseudo_labels(cam, labels, bg=0.2).tolist() == [[1, 1, 0, 0]]
    rows = losses.sap_scores(cam, labels, bg=0.2)
    class_row = torch.tensor([1.0, 0.25, 0.0, 0.1])
    bg_row = 2 * 0.2 - class_row
    torch.testing.assert_close(rows[0], torch.stack([class_row, class_row, bg_row, bg_row]))


def test_token_affinity_is_the_cosine_similarity_of_every_patch_pair():
    torch.manual_seed(0)
    patches = torch.randn(2, 5, 3, 4)  # (B, E, N_h, N_w)
    got = losses.token_affinity(patches)
    tokens = patches.flatten(2)
    for b in range(2):
        for i in range(12):
            for j in range(12):
                want = F.cosine_similarity(tokens[b, :, i], tokens[b, :, j], dim=0)
                assert got[b, i, j].item() == pytest.approx(want.item(), abs=1e-5)


def test_token_affinity_stays_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    patches = torch.randn(1, 8, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = losses.token_affinity(patches.bfloat16())
    assert got.dtype == torch.float32
    want = losses.token_affinity(patches.bfloat16().float())
    torch.testing.assert_close(got, want)


def test_seed_space_is_the_vector_a_seed_is_the_argmax_of():
    """`loss.proj_space: seed`: background 2t − max_c s_c, each present class's max-normalised
    ReLU'd map, absent classes 0; its argmax is the seed rule (a class where its score ≥ t)."""
    cam = torch.zeros(1, 3, 1, 4)
    cam[0, 0] = 9.0  # the class map's own background channel is not read
    cam[0, 1] = torch.tensor([4.0, 1.0, -2.0, 0.4])  # → 1.0, 0.25, 0.0, 0.1
    cam[0, 2] = 5.0  # absent
    got = losses.seed_space(cam, torch.tensor([[1.0, 0.0]]), bg=0.2)
    s = torch.tensor([1.0, 0.25, 0.0, 0.1])
    want = torch.stack([2 * 0.2 - s, s, torch.zeros(4)])[None, :, None, :]
    torch.testing.assert_close(got, want)
    assert got.argmax(dim=1).flatten().tolist() == [1, 1, 0, 0]


def test_seed_space_contrast_moves_only_what_a_seed_reads():
    """Through the seed space, L_cap's gradient reaches the present classes' channels and none of
    the class map's background or absent-class channels; the raw class map (`proj_head: cam`)
    lets the contrast move those too."""
    from cobra.config import load_config
    from cobra.models.output import CoBraOutput
    from cobra.objective import compute_losses

    torch.manual_seed(0)
    labels = torch.tensor([[1.0, 0.0, 1.0]])
    vit_tokens = torch.randn(1, 6, 4, 4)

    def cam_grad(*overrides: str) -> torch.Tensor:
        cam_cnn = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(1))
        cam_cnn.requires_grad_()
        out = CoBraOutput(logits_cnn=None, logits_vit=None, cam_cnn=cam_cnn,
                          cam_vit=torch.randn(1, 4, 4, 4), proj_cnn=F.normalize(cam_cnn, dim=1),
                          proj_vit=None, attention=None, affinity=None, a_obj=None,
                          features_vit=vit_tokens)
        cfg = load_config(None, ["model.proj_head=cam", "loss.cap_affinity=tokens",
                                 "loss.use_sap=false", "loss.use_cam=false", "loss.sap_bg=0.3",
                                 "loss.k_cap_pos=3", "loss.k_cap_neg=3", *overrides]).loss
        compute_losses(out, labels, cfg, epoch=1, input_size=(16, 16)).cap.backward()
        return cam_cnn.grad.abs().sum(dim=(0, 2, 3))  # per channel: bg, class 1, 2, 3

    seed = cam_grad("loss.proj_space=seed")
    assert seed[0] == 0 and seed[2] == 0  # background channel, absent class 2
    assert seed[1] > 0 and seed[3] > 0
    whole_map = cam_grad()
    assert whole_map[0] > 0 and whole_map[2] > 0


def test_seed_space_needs_a_background_score_and_no_head():
    from cobra.config import load_config
    from cobra.errors import ConfigError

    with pytest.raises(ConfigError, match="set loss.sap_bg"):
        load_config(None, ["loss.proj_space=seed", "model.proj_head=cam"])
    with pytest.raises(ConfigError, match="model.proj_head: cam"):
        load_config(None, ["loss.proj_space=seed", "loss.sap_bg=0.35"])
    cfg = load_config(None, ["loss.proj_space=seed", "loss.sap_bg=0.35", "model.proj_head=cam"])
    assert cfg.loss.proj_space == "seed"
