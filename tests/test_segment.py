"""Stage `segment` building blocks: any-size smp models, mask crops, training, inference, mIoU."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from torch import nn

from cobra.config import SegmentConfig, load_config
from cobra.data import build_source
from cobra.data.synthetic import write_synthetic
from cobra.errors import ConfigError, NonFiniteLossError, StageInputError
from cobra.metrics import miou_from_counts
from cobra.pictures import save_label_png
from cobra.segmenter import (
    MaskDataset,
    build_segmenter,
    predict,
    predict_and_score,
    train_segmenter,
)

SYNTH = ["data.synthetic.num_train=6", "data.synthetic.num_val=4",
         "data.synthetic.image_size=64"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """(train source, val source, mask dir): tiny synthetic set, its GT masks as "pseudo" masks."""
    cfg = load_config(None, SYNTH)
    root = write_synthetic(tmp_path_factory.mktemp("seg") / "synthetic", cfg.data.synthetic)
    cfg = load_config(None, [*SYNTH, f"data.root={root}"])
    return build_source(cfg, "train"), build_source(cfg, "val"), root / "SegmentationClass"


def _cfg(**kw) -> SegmentConfig:
    base = dict(arch="deeplabv3plus", encoder="resnet18", encoder_weights=None, crop=64,
                resize_long=[64, 64], batch_size=3, epochs=2, lr=0.01, scales=[1.0], flip=False,
                crf=False)
    base.update(kw)
    return SegmentConfig(**base)


@pytest.mark.parametrize("arch,encoder", [("deeplabv3plus", "tu-resnet18"),
                                          ("segformer", "mit_b0")])
def test_build_segmenter_any_size(arch, encoder):
    torch.manual_seed(0)
    model = build_segmenter(_cfg(arch=arch, encoder=encoder), num_classes=3).eval()
    with torch.no_grad():
        for h, w in [(64, 64), (50, 70)]:  # 50 and 70 are not multiples of 32
            assert model(torch.randn(2, 3, h, w)).shape == (2, 4, h, w)


@pytest.mark.parametrize("stride", [8, 16])
def test_deeplab_takes_the_configured_stride_and_rates(stride):
    model = build_segmenter(_cfg(encoder="tu-resnet18", output_stride=stride,
                                 atrous_rates=[2, 3, 5]), num_classes=3)
    assert model.net.encoder.output_stride == stride
    aspp = model.net.decoder.aspp[0].convs  # [1x1, one conv per rate, pooling]
    assert [branch[0][0].dilation[0] for branch in aspp[1:4]] == [2, 3, 5]


def test_build_segmenter_errors(monkeypatch):
    with pytest.raises(ConfigError, match="segment.encoder"):
        build_segmenter(_cfg(encoder="no_such_net"), 3)
    with pytest.raises(ConfigError, match="segment.encoder"):
        build_segmenter(_cfg(encoder="tu-no_such_net"), 3)

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    # smp fetches weights through this name; failing it stands in for an offline machine.
    import segmentation_models_pytorch.encoders as smp_encoders
    monkeypatch.setattr(smp_encoders, "hf_hub_download", offline)
    with pytest.raises(ConfigError, match="segment.encoder_weights=null"):
        build_segmenter(_cfg(encoder_weights="imagenet"), 3)


def test_mask_dataset_crops_and_padding(data, tmp_path):
    train, _, mask_dir = data
    ds = MaskDataset(train, mask_dir, train.ids[:3], crop=48, resize_long=(40, 60))
    torch.manual_seed(0)
    item = ds[0]
    assert item["image"].shape == (3, 48, 48) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (48, 48) and item["mask"].dtype == torch.int64
    assert item["id"] == train.ids[0]
    values = set(item["mask"].unique().tolist())
    assert values <= set(range(train.num_classes + 1)) | {255}

    # Hand-written all-class-1 masks: after shrinking to 32 px in a 48 crop, 255 is exactly the pad.
    for image_id in train.ids[:2]:
        h, w = train.load_image(image_id).shape[:2]
        save_label_png(tmp_path / f"{image_id}.png", np.ones((h, w), np.uint8))
    ds = MaskDataset(train, lambda i: tmp_path / f"{i}.png", train.ids[:2], crop=48,
                     resize_long=(32, 32))
    item = ds[1]
    pad = item["mask"] == 255
    assert int(pad.sum()) == 48 * 48 - 32 * 32
    assert set(item["mask"][~pad].unique().tolist()) == {1}
    assert torch.all(item["image"][:, pad] == 0)

    # Same torch seed -> same crop (all randomness from torch's RNG).
    torch.manual_seed(3)
    a = MaskDataset(train, mask_dir, train.ids, 48, (40, 80))[2]
    torch.manual_seed(3)
    b = MaskDataset(train, mask_dir, train.ids, 48, (40, 80))[2]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])


def test_mask_dataset_bad_masks(data, tmp_path):
    train, _, _ = data
    ds = MaskDataset(train, tmp_path / "missing", train.ids[:1], crop=32, resize_long=(32, 32))
    with pytest.raises(StageInputError, match="run stage 'masks' first") as err:
        ds[0]
    assert f"{train.ids[0]}.png" in str(err.value)

    Image.new("RGB", (64, 64)).save(tmp_path / f"{train.ids[0]}.png")
    with pytest.raises(StageInputError, match="palette"):
        MaskDataset(train, tmp_path, train.ids[:1], crop=32, resize_long=(32, 32))[0]

    save_label_png(tmp_path / f"{train.ids[0]}.png", np.full((64, 64), 99, np.uint8))
    with pytest.raises(StageInputError, match="class 99"):
        MaskDataset(train, tmp_path, train.ids[:1], crop=32, resize_long=(32, 32))[0]


def test_train_predict_evaluate(data, tmp_path):
    train, val, mask_dir = data
    torch.manual_seed(0)
    cfg = _cfg(arch="segformer", encoder="mit_b0", epochs=4, batch_size=3, lr=0.02)
    model = build_segmenter(cfg, train.num_classes)
    ds = MaskDataset(train, mask_dir, train.ids, cfg.crop, tuple(cfg.resize_long))
    losses: list[float] = []
    out = train_segmenter(model, ds, cfg, "cpu", progress=False,
                          on_epoch=lambda e, m: losses.append(m["seg_loss"]))
    assert len(losses) == cfg.epochs and out["seg_loss"] == losses[-1]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]

    image = val.load_image(val.ids[0])
    probs = predict(model, image, scales=[0.5, 1.0, 1.25], flip=True)
    assert probs.shape == (train.num_classes + 1, *image.shape[:2]) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-4)

    calls: list[int] = []

    def crf(img: np.ndarray, p: np.ndarray) -> np.ndarray:
        calls.append(1)
        return p

    result = predict_and_score(model, val, val.ids, cfg, tmp_path / "pred", crf_fn=crf, progress=False)
    assert result["num_images"] == len(val.ids) == len(calls)
    assert 0.0 <= result["seg_miou"] <= 100.0
    # each image's counts, summed, give the score (what the interval over images resamples)
    counts = result["image_counts"]
    assert counts.shape == (len(val.ids), 3, train.num_classes + 1)
    assert miou_from_counts(counts.sum(0)) == pytest.approx(result["seg_miou"])
    assert list(result["per_class"]) == val.class_names
    assert all(v is None or 0.0 <= v <= 100.0 for v in result["per_class"].values())
    for image_id in val.ids:
        png = Image.open(tmp_path / "pred" / f"{image_id}.png")
        assert png.mode == "P" and png.size == val.load_image(image_id).shape[1::-1]


class _NaNNet(nn.Module):
    def __init__(self, num_labels: int) -> None:
        super().__init__()
        self.encoder = nn.Conv2d(3, num_labels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x) * float("nan")


def test_train_non_finite_loss(data):
    train, _, mask_dir = data
    ds = MaskDataset(train, mask_dir, train.ids[:2], 32, (32, 32))
    with pytest.raises(NonFiniteLossError, match="segment.lr"):
        train_segmenter(_NaNNet(train.num_classes + 1), ds, _cfg(epochs=1, batch_size=2), "cpu", progress=False)


def test_builtin_encoder_weights_are_copied_into_a_timm_encoder(tmp_path):
    from safetensors.torch import save_file

    from cobra.segmenter.model import builtin_encoder_name, load_builtin_encoder

    torch.manual_seed(0)
    source = timm.create_model("test_resnet", num_classes=0)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()},
              str(tmp_path / "test_resnet.safetensors"))
    cfg = SegmentConfig(encoder="tu-test_resnet", encoder_weights="builtin")
    assert builtin_encoder_name(cfg) == "test_resnet"
    model = build_segmenter(cfg, num_classes=3)
    load_builtin_encoder(model, tmp_path / "test_resnet.safetensors")
    loaded = model.encoder.model.state_dict()
    for key, value in loaded.items():
        torch.testing.assert_close(value, source.state_dict()[key], msg=key)
    other = build_segmenter(SegmentConfig(encoder="tu-resnet18", encoder_weights=None), 3)
    with pytest.raises(ConfigError, match="another timm model"):
        load_builtin_encoder(other, tmp_path / "test_resnet.safetensors")
    with pytest.raises(ConfigError, match="tu-"):
        builtin_encoder_name(SegmentConfig(encoder="resnet18", encoder_weights="builtin"))


@pytest.mark.parametrize("name,kind", [("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW)])
def test_segment_optimizer_warmup_then_poly(data, name, kind):
    """segment.optimizer picks the optimizer; segment.warmup_epochs ramps every group's lr
    linearly (encoder lr, head lr × head_lr_mult) before the poly decay."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    train, _, mask_dir = data
    cfg = _cfg(encoder="tu-test_resnet", optimizer=name, epochs=2, batch_size=3, lr=0.01,
               head_lr_mult=10.0, warmup_epochs=1.0, crop=32, resize_long=[32, 32])
    model = build_segmenter(cfg, train.num_classes)
    seen: list[tuple[type, list[float]]] = []
    handle = register_optimizer_step_pre_hook(
        lambda opt, args, kwargs: seen.append((type(opt), [g["lr"] for g in opt.param_groups])))
    try:
        train_segmenter(model, MaskDataset(train, mask_dir, train.ids, 32, (32, 32)), cfg, "cpu",
                        progress=False)
    finally:
        handle.remove()
    # 6 images, batches of 3: 2 steps an epoch, 4 in all, the first 2 warming up
    expected = [0.005, 0.01, 0.01 * 0.5 ** 0.9, 0.01 * 0.25 ** 0.9]
    assert [t for t, _ in seen] == [kind] * 4
    np.testing.assert_allclose([lrs[0] for _, lrs in seen], expected, rtol=1e-6)
    np.testing.assert_allclose([lrs[1] for _, lrs in seen], [10 * e for e in expected], rtol=1e-6)
