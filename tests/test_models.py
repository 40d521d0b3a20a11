"""CoBra model: shapes from the backbones and the input (two sizes, train and eval), attention
bookkeeping, every trainable parameter reached by the loss and the optimizer, local weights."""

from __future__ import annotations

import pytest
import torch

from cobra.config import load_config
from cobra.models import build_model
from cobra.objective import compute_losses

TINY = ["model.cnn=resnet18", "model.vit=deit_tiny_patch16_224", "model.pretrained=false",
        "model.embed_dim=8", "loss.k_sap_pos=2", "loss.k_sap_neg=2", "loss.k_cap_pos=2",
        "loss.k_cap_neg=2", "loss.cam_start_epoch=0", "loss.proj_start_epoch=0"]
C = 5


def tiny_model(*extra: str):
    cfg = load_config(None, [*TINY, *extra])
    torch.manual_seed(0)
    return cfg, build_model(cfg.model, C)


@pytest.mark.parametrize("size", [(64, 64), (96, 80)])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_output_shapes_follow_the_input(size, mode):
    _, model = tiny_model()
    model.train(mode == "train")
    h, w = size
    nh, nw = -(-h // 16), -(-w // 16)
    m = nh * nw
    with torch.set_grad_enabled(mode == "train"):
        out = model(torch.randn(2, 3, h, w))
    layers = len(model.vit.backbone.blocks)
    assert out.logits_cnn.shape == out.logits_vit.shape == (2, C)
    assert out.cam_cnn.shape == out.cam_vit.shape == (2, C + 1, nh, nw)
    assert out.proj_cnn.shape == out.proj_vit.shape == (2, m, 8)
    assert out.attention.shape == (2, layers, m + 1, m + 1)
    assert out.affinity.shape == (2, m, m)
    assert out.a_obj.shape == (2, nh, nw)
    torch.testing.assert_close(out.proj_cnn.norm(dim=2), torch.ones(2, m))
    torch.testing.assert_close(out.proj_vit.norm(dim=2), torch.ones(2, m))
    # head-averaged softmax rows sum to 1 per layer, so the row sums of the layer-summed
    # attention equal L: affinity + A_obj's column together cover them
    torch.testing.assert_close(out.attention.sum(-1), torch.ones(2, layers, m + 1))
    torch.testing.assert_close(out.logits_cnn, out.cam_cnn[:, 1:].mean((2, 3)))


@pytest.mark.parametrize("vit", ["deit_tiny_patch16_224", "cobra_vit_c8_micro"])
def test_class_row_forward_matches_the_full_attention_forward(vit):
    """The seed pass's forward (fused attention, the class token's row rebuilt from q and k)
    gives what the full forward gives, and a full forward after it is full again."""
    _, model = tiny_model(f"model.vit={vit}")
    model.eval()
    x = torch.randn(2, 3, 70, 90)
    with torch.no_grad():
        full = model(x)
        rows = model(x, affinity=False)
        again = model(x)
    layers, tokens = full.attention.shape[1], full.attention.shape[-1]
    assert rows.attention.shape == (2, layers, 1, tokens) and rows.affinity is None
    torch.testing.assert_close(rows.attention, full.attention[:, :, :1], rtol=1e-5, atol=1e-6)
    for name in ("a_obj", "cam_cnn", "cam_vit", "proj_vit", "logits_vit"):
        torch.testing.assert_close(getattr(rows, name), getattr(full, name), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(again.attention, full.attention, rtol=0, atol=0)
    torch.testing.assert_close(again.affinity, full.affinity, rtol=0, atol=0)


def test_non_multiple_of_patch_input_is_padded():
    _, model = tiny_model()
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 70, 50))
    assert out.cam_vit.shape[-2:] == out.cam_cnn.shape[-2:] == (5, 4)


@pytest.mark.parametrize("branches", ["cnn", "vit"])
def test_single_branch_models(branches):
    _, model = tiny_model(f"model.branches={branches}")
    out = model(torch.randn(1, 3, 64, 64))
    present = out.cam_cnn if branches == "cnn" else out.cam_vit
    absent = out.cam_vit if branches == "cnn" else out.cam_cnn
    assert present.shape == (1, C + 1, 4, 4) and absent is None


def test_every_trainable_parameter_gets_a_gradient_and_an_optimizer_slot():
    cfg, model = tiny_model("model.freeze_bn=false", "model.freeze_stem=false")
    # timm zero-initialises each residual block's last BatchNorm scale, which blocks gradients
    # into that block at random init only; give them the non-zero scale trained weights have.
    for module in model.cnn.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.ones_(module.weight)
    model.train()
    labels = torch.zeros(2, C)
    labels[0, 1] = labels[1, 3] = 1
    x = torch.randn(2, 3, 64, 64)
    terms = compute_losses(model(x), labels, cfg.loss, epoch=0, input_size=(64, 64))
    terms.total.backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing = [n for n, p in trainable.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing
    groups = model.param_groups(0.1, 10.0, 1e-4)
    in_optimizer = [id(p) for g in groups for p in g["params"]]
    assert len(in_optimizer) == len(set(in_optimizer))
    assert set(in_optimizer) == {id(p) for p in trainable.values()}
    heads = {id(p) for p in groups[1]["params"]}
    assert id(model.cnn.proj_head.weight) in heads and id(model.vit.cam_head.weight) in heads


def _names(model, params) -> set[str]:
    ids = {id(p) for p in params}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def test_code_param_groups_are_the_authors_optimizers():
    _, model = tiny_model()
    backbone, heads = model.param_groups(0.1, 10.0, 1e-4, groups="code")
    assert heads["lr"] == pytest.approx(1.0) and backbone["lr"] == pytest.approx(0.1)
    # CNN: classifier at 10×, projection head in no group; ViT: the last two registered
    # tensors of their model (head.bias, embed.weight) at 10×, the CAM-head weight at 1×
    assert _names(model, heads["params"]) == {"cnn.cam_head.weight", "vit.cam_head.bias",
                                              "vit.proj_head.weight"}
    assert "vit.cam_head.weight" in _names(model, backbone["params"])
    grouped = _names(model, backbone["params"]) | _names(model, heads["params"])
    assert {n for n, p in model.named_parameters() if p.requires_grad} - grouped == {
        "cnn.proj_head.weight"}
    with pytest.raises(ValueError, match="groups"):
        model.param_groups(0.1, 10.0, 1e-4, groups="codes")


def test_train_param_groups_follow_fidelity():
    from cobra.config import load_config, switch

    assert switch(load_config(None, ["loss.fidelity=code"]), "train.param_groups") == "code"
    paper = load_config(None, ["loss.fidelity=code", "train.param_groups=paper"])
    assert switch(paper, "train.param_groups") == "paper"


def _bn_params(module) -> list[torch.nn.Parameter]:
    return [p for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)
            for p in m.parameters()]


def test_freeze_bn_freezes_statistics_but_trains_scale_and_shift():
    _, model = tiny_model("model.freeze_bn=true", "model.freeze_stem=true")
    model.train()
    cnn = model.cnn.backbone
    bns = [m for m in cnn.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(not m.training for m in bns)
    # the stem (conv1 + its BN) is frozen whole; every other BN trains its affine parameters
    assert not any(p.requires_grad for p in cnn["conv1"].parameters())
    assert not any(p.requires_grad for p in cnn["bn1"].parameters())
    outside_stem = [p for name in ("layer1", "layer2", "layer3", "layer4")
                    for p in _bn_params(cnn[name])]
    assert len(outside_stem) == 2 * (len(bns) - 1) > 0
    assert all(p.requires_grad for p in outside_stem)
    stats = {k: v.clone() for k, v in cnn.state_dict().items() if "running" in k}
    scale = bns[-1].weight.detach().clone()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(torch.randn(2, 3, 64, 64)).logits_cnn.square().sum().backward()
    optimizer.step()
    for key, value in cnn.state_dict().items():
        if key in stats:
            torch.testing.assert_close(value, stats[key], rtol=0, atol=0)
    assert not torch.equal(bns[-1].weight, scale)


def test_detach_stage2_leaves_the_first_two_stages_without_gradient():
    _, model = tiny_model("model.detach_stage2=true", "model.freeze_stem=false")
    model.train()
    model(torch.randn(2, 3, 64, 64)).logits_cnn.sum().backward()
    cnn = model.cnn.backbone
    for name in ("conv1", "layer1", "layer2"):
        assert all(p.grad is None for p in cnn[name].parameters()), name
    assert any(p.grad is not None and p.grad.abs().sum() > 0
               for p in cnn["layer3"].parameters())
    _, attached = tiny_model("model.detach_stage2=false", "model.freeze_stem=false")
    attached.train()
    attached(torch.randn(2, 3, 64, 64)).logits_cnn.sum().backward()
    assert any(p.grad is not None for p in attached.cnn.backbone["layer1"].parameters())


def test_detach_stage2_default_is_on_for_pretrained_backbones_only():
    from cobra.config import load_config
    from cobra.models.cnn import detaches_stage2

    def detaches(*overrides: str) -> bool:
        return detaches_stage2(load_config(None, list(overrides)).model)

    assert detaches("model.pretrained=true") and detaches("model.pretrained=/weights")
    assert not detaches("model.pretrained=false")
    assert not detaches("model.pretrained=true", "model.detach_stage2=false")
    assert detaches("model.pretrained=false", "model.detach_stage2=true")


def test_vit_cam_head_bias_switch():
    _, with_bias = tiny_model()
    assert with_bias.vit.cam_head.bias is not None  # the authors' head, the default
    _, without = tiny_model("model.vit_cam_bias=false")
    assert without.vit.cam_head.bias is None


@pytest.mark.parametrize(("layout", "levels", "last"), [("irn", 5, 4), ("native", 4, 2)])
def test_boundary_net_layouts(layout, levels, last):
    from cobra.models.irn import BoundaryNet

    torch.manual_seed(0)
    net = BoundaryNet("resnet18", False, True, layout=layout).eval()
    assert len(net.squeeze) == levels
    with torch.no_grad():
        feats = net.backbone(torch.randn(1, 3, 64, 64))
        out = net(torch.randn(2, 3, 64, 72))
    assert feats[-1].shape[-1] == last  # IRN's last stage at stride 16, not 32
    assert net.squeeze[0][0].in_channels == 64  # irn: the stem; native: layer1, also 64 wide
    assert out.shape == (2, 16, 18) and ((out >= 0) & (out <= 1)).all()


def test_stride_and_dilation_reach_the_same_grid():
    _, strided = tiny_model("model.cnn_downsample=stride")
    _, dilated = tiny_model("model.cnn_downsample=dilate")
    x = torch.randn(1, 3, 96, 64)
    assert strided.cnn(x)[0].shape == dilated.cnn(x)[0].shape == (1, C + 1, 6, 4)


def test_local_weights_directory_is_loaded(tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(123)
    for name in ("resnet18", "deit_tiny_patch16_224"):
        source = timm.create_model(name, pretrained=False)
        save_file({k: v.contiguous() for k, v in source.state_dict().items()},
                  tmp_path / f"{name}.safetensors")
        if name == "resnet18":
            expected_cnn = source.layer3[0].conv1.weight.detach().clone()
        else:
            expected_vit = source.blocks[0].attn.qkv.weight.detach().clone()
    _, model = tiny_model(f"model.pretrained={tmp_path}")
    torch.testing.assert_close(model.cnn.backbone["layer3"][0].conv1.weight, expected_cnn)
    torch.testing.assert_close(model.vit.backbone.blocks[0].attn.qkv.weight, expected_vit)


def test_bad_backbone_name_and_missing_weights_are_config_errors(tmp_path):
    from cobra.errors import ConfigError

    with pytest.raises(ConfigError, match="not a timm model"):
        tiny_model("model.cnn=resnet_does_not_exist")
    with pytest.raises(ConfigError, match="holds no weights"):
        tiny_model(f"model.pretrained={tmp_path}")


def test_conv_stem_vit_is_a_plain_timm_vit_on_a_patch_8_grid():
    _, model = tiny_model("model.vit=cobra_vit_c8_micro", "model.cnn=test_resnet")
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 70, 50))  # padded to 72 x 56: a 9 x 7 grid of 8 px cells
    m = 9 * 7
    assert model.patch_size == 8
    assert out.cam_vit.shape == out.cam_cnn.shape == (2, C + 1, 9, 7)  # the CNN follows the grid
    assert out.attention.shape[-1] == m + 1 and out.a_obj.shape == (2, 9, 7)
    stem = model.vit.backbone.patch_embed.proj
    strides = [layer.stride[0] for layer in stem if isinstance(layer, torch.nn.Conv2d)]
    assert strides == [2, 2, 2, 1]  # three stride-2 3x3 convolutions, then a 1x1 projection


def test_adamw_and_warm_up_schedule():
    from cobra.runtime import poly_lr
    from cobra.stages.train import build_optimizer

    cfg, model = tiny_model("train.optimizer=adamw", "train.lr=0.001", "train.head_lr_mult=5")
    optimizer = build_optimizer(model, cfg)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert [g["lr"] for g in optimizer.param_groups] == [0.001, 0.005]
    assert isinstance(build_optimizer(model, tiny_model()[0]), torch.optim.SGD)
    # linear warm-up to the base lr over 4 steps, then the poly decay from the base
    ramp = [poly_lr(1.0, s, 20, 0.9, warmup=4) for s in range(4)]
    assert ramp == [0.25, 0.5, 0.75, 1.0]
    assert poly_lr(1.0, 10, 20, 0.9, warmup=4) == pytest.approx(0.5**0.9)


def test_a_cam_projection_is_the_normalised_class_map_and_adds_no_head():
    _, model = tiny_model("model.proj_head=cam")
    _, paper = tiny_model()
    assert model.cnn.proj_head is None and model.vit.proj_head is None
    assert sum(p.numel() for p in paper.parameters()) - sum(
        p.numel() for p in model.parameters()) == sum(
        p.numel() for b in (paper.cnn, paper.vit) for p in b.proj_head.parameters())
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 48))
    for cam, proj in ((out.cam_cnn, out.proj_cnn), (out.cam_vit, out.proj_vit)):
        want = torch.nn.functional.normalize(cam, dim=1).flatten(2).transpose(1, 2)
        torch.testing.assert_close(proj, want)


@pytest.mark.parametrize("downsample", ["stride", "dilate"])
def test_cnn_stride_8_puts_the_cnn_on_an_8_px_vit_grid(downsample):
    _, model = tiny_model("model.vit=cobra_vit_c8_micro", "model.cnn=test_resnet",
                          "model.cnn_stride=8", f"model.cnn_downsample={downsample}")
    model.eval()
    with torch.no_grad():
        cam, _, feats = model.cnn(torch.randn(1, 3, 72, 56))
    assert feats.shape[-2:] == cam.shape[-2:] == (9, 7)  # the CNN's own grid, not upsampled
