"""cobra.data: synthetic writer, VOC and COCO readers, datasets, transforms and their errors."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cobra.config import SyntheticConfig, load_config
from cobra.data import (
    build_eval_dataset,
    build_source,
    build_train_dataset,
    normalize_image,
    resolve_train_split,
)
from cobra.data.synthetic import CLASS_NAMES, ensure_synthetic, write_synthetic
from cobra.data.transforms import random_crop, random_resize_long
from cobra.data.voc import VOC_CLASSES, voc_palette
from cobra.errors import ConfigError, DataError

TINY = SyntheticConfig(num_train=12, num_val=6, image_size=64, seed=0)


def _cfg(root: Path | str | None, *extra: str):
    over = ["data.dataset=voc", "data.image_size=64", "data.resize_long=[48, 96]", *extra]
    if root is not None:
        over.append(f"data.root={root}")
    return load_config(None, over)


@pytest.fixture(scope="module")
def syn_root(tmp_path_factory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("syn") / "ds", TINY)


@pytest.fixture
def syn_copy(syn_root, tmp_path) -> Path:
    """A private copy to damage."""
    return Path(shutil.copytree(syn_root, tmp_path / "ds"))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


# ----------------------------------------------------------------------------------------------
# Synthetic writer read back through the VOC reader


def test_synthetic_reads_back_through_voc_reader(syn_root):
    src = build_source(_cfg(syn_root), "train")
    assert src.ids == [f"train_{i:05d}" for i in range(12)]
    assert build_source(_cfg(syn_root), "val").ids == [f"val_{i:05d}" for i in range(6)]
    assert src.class_names == list(CLASS_NAMES) and src.class_names[0] == "background"
    assert src.num_classes == len(CLASS_NAMES) - 1
    assert src.has_masks
    for image_id in src.ids:
        assert src.image_path(image_id).suffix == ".png"
        image, mask = src.load_image(image_id), src.load_mask(image_id)
        labels = src.labels(image_id)
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        assert mask.shape == (64, 64) and mask.dtype == np.uint8
        values = set(np.unique(mask).tolist())
        assert values <= set(range(src.num_classes + 1)) | {255}
        assert labels.dtype == np.float32 and labels.shape == (src.num_classes,)
        present = sorted(v for v in values if v not in (0, 255))
        assert (np.flatnonzero(labels) + 1).tolist() == present
        assert labels.sum() >= 1, "every synthetic image holds a foreground class"
        assert 255 in values, "objects carry a VOC-style ignore border"


def test_synthetic_masks_are_palette_pngs(syn_root):
    with Image.open(syn_root / "SegmentationClass" / "train_00000.png") as img:
        assert img.mode == "P"
        assert img.getpalette()[:6] == voc_palette().reshape(-1).tolist()[:6]
    meta = json.loads((syn_root / "synthetic.json").read_text())
    assert meta["seed"] == 0 and meta["image_size"] == 64


def test_synthetic_is_deterministic(syn_root, tmp_path):
    again = write_synthetic(tmp_path / "again", TINY)
    assert _files(again) == _files(syn_root)
    other = write_synthetic(tmp_path / "other", SyntheticConfig(12, 6, 64, seed=1))
    a, b = _files(other), _files(syn_root)
    assert a.keys() == b.keys()
    assert a["JPEGImages/train_00000.png"] != b["JPEGImages/train_00000.png"]


def test_demo_shape_pixels_and_cache_key_are_pinned():
    """The demo's numbers depend on its dataset: the default shape's pixels and its cache key
    are what they were before the voc shape existed (recorded from generator version 2)."""
    import hashlib

    from cobra.data import synthetic

    digest = hashlib.sha256()
    for split in (0, 1):
        for i in range(12):
            image, mask = synthetic.render_image(0, split, i, 128)
            digest.update(image.tobytes())
            digest.update(mask.tobytes())
    assert digest.hexdigest() == ("70fb939179b46a68dbb318f0b1d0d86c"
                                  "474146d7b4fef3ae69f10ac82098441a")
    assert synthetic.GENERATOR_VERSION == 2
    keys = {}
    for name, path in (("default", None), ("demo", Path("configs/demo.yaml"))):
        params = synthetic.synthetic_params(load_config(path, []).data.synthetic)
        keys[name] = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    assert keys == {"default": "e321d4f65054", "demo": "a1f4b2a3c046"}


VOC_TINY = SyntheticConfig(num_train=3, num_val=2, seed=0, shape="voc", long_side=160,
                           num_train_aug=5)


def test_voc_shape_writes_voc_layout_with_train_aug(tmp_path):
    root = write_synthetic(tmp_path / "voc", VOC_TINY)
    assert sorted(p.name for p in (root / "JPEGImages").iterdir())[0].endswith(".jpg")
    assert (root / "SegmentationClassAug" / "aug_00001.png").is_file()
    assert not (root / "SegmentationClass" / "aug_00000.png").exists()  # SBD's masks apart
    cfg = load_config(None, ["data.dataset=voc", f"data.root={root}"])
    assert resolve_train_split(cfg) == "train_aug"
    aug = build_source(cfg, "train_aug")
    assert aug.ids == [f"train_{i:05d}" for i in range(3)] + ["aug_00000", "aug_00001"]
    assert aug.num_classes == 20 and len(set(aug.class_names)) == 21
    sizes = set()
    for image_id in aug.ids:
        image, mask = aug.load_image(image_id), aug.load_mask(image_id)
        assert image.shape[:2] == mask.shape
        assert max(image.shape[:2]) <= 160 and aug.labels(image_id).sum() >= 1
        assert set(np.unique(mask)) <= set(range(21)) | {255}
        sizes.add(image.shape[:2])
    assert any(h != w for h, w in sizes), "VOC's images are not square"
    assert build_source(cfg, "val").ids == ["val_00000", "val_00001"]


def test_voc_shape_sizes_follow_voc():
    """Most voc-shape images are long_side x 3/4 landscape, some portrait, none larger."""
    from cobra.data.synthetic import voc_image_shape

    shapes = [voc_image_shape(0, 0, i, 500) for i in range(400)]
    assert all(max(s) == 500 for s in shapes)
    assert 0.35 < shapes.count((375, 500)) / 400 < 0.65
    assert 0.1 < sum(h > w for h, w in shapes) / 400 < 0.4


def test_voc_shape_options_are_checked():
    with pytest.raises(ConfigError, match="num_train_aug"):
        load_config(None, ["data.synthetic.num_train_aug=10"])  # demo shape
    with pytest.raises(ConfigError, match="num_train_aug"):
        load_config(None, ["data.synthetic.shape=voc", "data.synthetic.num_train=20",
                           "data.synthetic.num_train_aug=10"])


def test_synthetic_classes_all_appear(syn_root):
    src = build_source(_cfg(syn_root), "train")
    seen = sum(src.labels(i) for i in src.ids)
    assert (seen > 0).sum() >= 6  # 12 images of 1-3 objects cover most of the 8 classes


def test_write_synthetic_reuses_and_refuses(syn_root, tmp_path):
    assert write_synthetic(syn_root, TINY) == syn_root  # complete with the same params: reused
    with pytest.raises(DataError, match="other settings"):
        write_synthetic(syn_root, SyntheticConfig(12, 6, 64, seed=3))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty") as err:
        write_synthetic(foreign, TINY)
    assert "\n" not in str(err.value) and str(foreign) in str(err.value)
    assert (foreign / "notes.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (write_synthetic(empty, TINY) / "synthetic.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp dirs cleaned up"


def test_ensure_synthetic_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("COBRA_CACHE", str(tmp_path / "cache"))
    cfg = SyntheticConfig(num_train=3, num_val=2, image_size=32, seed=5)
    first = ensure_synthetic(cfg)
    assert first.parent == tmp_path / "cache" / "synthetic"
    stamp = (first / "synthetic.json").stat().st_mtime_ns
    assert ensure_synthetic(cfg) == first
    assert (first / "synthetic.json").stat().st_mtime_ns == stamp
    assert ensure_synthetic(SyntheticConfig(3, 2, 32, seed=6)) != first
    source = build_source(load_config(None, ["data.synthetic.num_train=3",
                                             "data.synthetic.num_val=2",
                                             "data.synthetic.image_size=32",
                                             "data.synthetic.seed=5"]), "val")
    assert source.root == first and len(source.ids) == 2


# ----------------------------------------------------------------------------------------------
# Splits


def test_resolve_train_split(syn_copy):
    assert resolve_train_split(_cfg(syn_copy)) == "train"
    assert resolve_train_split(_cfg(syn_copy, "data.train_split=val")) == "val"
    (syn_copy / "SegmentationClassAug").mkdir()
    assert resolve_train_split(_cfg(syn_copy)) == "train_aug"


def test_train_aug_uses_aug_masks_and_list_lines(syn_copy):
    aug = syn_copy / "SegmentationClassAug"
    aug.mkdir()
    shutil.copy(syn_copy / "SegmentationClass/train_00001.png", aug / "train_00001.png")
    lst = syn_copy / "ImageSets/Segmentation/train_aug.txt"
    lst.write_text("/JPEGImages/train_00001.jpg /SegmentationClassAug/train_00001.png\n"
                   "train_00002\n")
    src = build_source(_cfg(syn_copy), "train_aug")
    assert src.ids == ["train_00001", "train_00002"]
    assert src.mask_path("train_00001").parent.name == "SegmentationClassAug"
    assert src.mask_path("train_00002").parent.name == "SegmentationClass"  # fallback


def test_classes_txt_absent_gives_voc_names(syn_copy):
    (syn_copy / "classes.txt").unlink()
    assert build_source(_cfg(syn_copy), "train").class_names == list(VOC_CLASSES)


# ----------------------------------------------------------------------------------------------
# Datasets and transforms


def test_train_dataset_items_and_reproducibility(syn_root):
    ds = build_train_dataset(_cfg(syn_root), "train")
    assert len(ds) == 12 and ds.num_classes == len(CLASS_NAMES) - 1
    torch.manual_seed(0)
    a = [ds[i] for i in range(4)]
    torch.manual_seed(0)
    b = [ds[i] for i in range(4)]
    for x, y in zip(a, b, strict=True):
        assert x["image"].shape == (3, 64, 64) and x["image"].dtype == torch.float32
        assert x["label"].shape == (ds.num_classes,) and x["label"].dtype == torch.float32
        assert isinstance(x["id"], str) and x["id"] == y["id"]
        assert torch.equal(x["image"], y["image"])
    torch.manual_seed(1)
    c = [ds[i] for i in range(4)]
    assert any(not torch.equal(x["image"], z["image"]) for x, z in zip(a, c, strict=True))


def test_train_loader_reproducible_with_seeded_generator(syn_root):
    ds = build_train_dataset(_cfg(syn_root), "train")

    def batches(seed: int) -> list[torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        loader = torch.utils.data.DataLoader(ds, batch_size=4, shuffle=True, generator=g)
        return [b["image"] for b in loader]

    assert all(torch.equal(x, y) for x, y in zip(batches(3), batches(3), strict=True))


def test_eval_dataset_is_deterministic(syn_root):
    ds = build_eval_dataset(_cfg(syn_root, "data.image_size=48"), "val")
    assert len(ds) == 6 and ds.num_classes == len(CLASS_NAMES) - 1
    torch.manual_seed(0)
    a = ds[2]
    torch.manual_seed(99)
    b = ds[2]
    assert a["image"].shape == (3, 48, 48)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])


def test_normalize_image():
    mean = np.array([0.485, 0.456, 0.406]) * 255
    image = np.broadcast_to(np.round(mean).astype(np.uint8), (5, 7, 3)).copy()
    out = normalize_image(image)
    assert out.shape == (3, 5, 7) and out.dtype == torch.float32
    assert out.abs().max() < 0.01
    white = normalize_image(np.full((2, 2, 3), 255, np.uint8))
    assert torch.allclose(white[:, 0, 0], torch.tensor([(1 - 0.485) / 0.229,
                                                        (1 - 0.456) / 0.224,
                                                        (1 - 0.406) / 0.225]), atol=1e-4)


def test_random_resize_long_keeps_aspect_within_range():
    torch.manual_seed(0)
    sides = set()
    for _ in range(20):
        out = random_resize_long(torch.rand(3, 40, 80), 50, 60)
        assert 50 <= out.shape[2] <= 60 and abs(out.shape[1] - out.shape[2] / 2) <= 1
        sides.add(out.shape[2])
    assert len(sides) > 3


def test_random_crop_pads_small_images_with_zero():
    torch.manual_seed(0)
    out = random_crop(torch.ones(3, 10, 30), 20)
    assert out.shape == (3, 20, 20)
    assert out.sum() == 3 * 10 * 20  # all 10 rows kept, 20 of 30 columns, rest zero padding


# ----------------------------------------------------------------------------------------------
# Errors


def test_missing_root_is_one_line_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist") as err:
        build_source(_cfg(tmp_path / "nope"), "train")
    assert str(tmp_path / "nope") in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(DataError, match="data.root"):
        build_source(_cfg(None), "train")


def test_missing_split_file(syn_root):
    with pytest.raises(DataError, match="trainval.txt") as err:
        build_source(_cfg(syn_root), "trainval")
    assert "found: train, val" in str(err.value)


def test_empty_split(syn_copy):
    (syn_copy / "ImageSets/Segmentation/empty.txt").write_text("\n")
    with pytest.raises(DataError, match="lists no images"):
        build_source(_cfg(syn_copy), "empty")


def test_corrupt_image_fails_at_load_or_is_skipped(syn_copy, capsys):
    bad = syn_copy / "JPEGImages" / "train_00003.png"
    bad.write_bytes(b"this is not an image")
    # fail mode reading files: lazy, construction is cheap (the decoded cache, which decodes
    # every image up front, fails at construction: tests/test_data_decoded_cache.py)
    ds = build_train_dataset(_cfg(syn_copy, "data.decoded_cache=false"), "train")
    assert len(ds) == 12
    with pytest.raises(DataError, match="cannot be read") as err:
        ds[3]
    assert str(bad) in str(err.value) and "on_bad_file=skip" in str(err.value)

    ds = build_eval_dataset(_cfg(syn_copy, "data.on_bad_file=skip"), "train")
    assert len(ds) == 11 and "train_00003" not in ds.ids
    assert "skipped 1 unreadable" in capsys.readouterr().err


def test_missing_image_detected_at_construction(syn_copy):
    (syn_copy / "JPEGImages" / "train_00005.png").unlink()
    with pytest.raises(DataError, match="train_00005"):
        build_train_dataset(_cfg(syn_copy), "train")
    ds = build_train_dataset(_cfg(syn_copy, "data.on_bad_file=skip"), "train")
    assert len(ds) == 11


# ----------------------------------------------------------------------------------------------
# COCO


def _write_coco(root: Path) -> None:
    (root / "annotations").mkdir(parents=True)
    (root / "val2014").mkdir()
    for name, (w, h) in (("COCO_val2014_000000000001.jpg", (40, 30)),
                         ("COCO_val2014_000000000002.jpg", (20, 20)),
                         ("COCO_val2014_000000000003.jpg", (10, 10))):
        Image.new("RGB", (w, h), (120, 30, 200)).save(root / "val2014" / name)

    def box(x0, y0, x1, y1):
        return [[x0, y0, x1, y0, x1, y1, x0, y1]]

    data = {
        "images": [
            {"id": 1, "file_name": "COCO_val2014_000000000001.jpg", "width": 40, "height": 30},
            {"id": 2, "file_name": "COCO_val2014_000000000002.jpg", "width": 20, "height": 20},
            {"id": 3, "file_name": "COCO_val2014_000000000003.jpg", "width": 10, "height": 10},
        ],
        "categories": [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"},
                       {"id": 3, "name": "car"}],
        "annotations": [
            # small person listed first, big dog second: the small one must stay on top
            {"id": 10, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 25.0,
             "bbox": [10, 10, 5, 5], "segmentation": box(10, 10, 15, 15)},
            {"id": 11, "image_id": 1, "category_id": 18, "iscrowd": 0, "area": 600.0,
             "bbox": [0, 0, 30, 20], "segmentation": box(0, 0, 30, 20)},
            {"id": 12, "image_id": 2, "category_id": 3, "iscrowd": 0, "area": 36.0,
             "bbox": [0, 0, 6, 6], "segmentation": box(0, 0, 6, 6)},
            {"id": 13, "image_id": 2, "category_id": 1, "iscrowd": 1, "area": 50.0,
             "bbox": [10, 10, 8, 8], "segmentation": box(10, 10, 18, 18)},
        ],
    }
    (root / "annotations" / "instances_val2014.json").write_text(json.dumps(data))


def test_coco_reader(tmp_path):
    _write_coco(tmp_path / "coco")
    overrides = ["data.dataset=coco", f"data.root={tmp_path / 'coco'}", "data.image_size=32"]
    cfg = load_config(None, overrides)
    src = build_source(cfg, "val")
    assert src.class_names == ["background", "person", "car", "dog"] and src.num_classes == 3
    assert src.ids == ["COCO_val2014_000000000001", "COCO_val2014_000000000002"]  # 3: no labels
    assert src.load_image(src.ids[0]).shape == (30, 40, 3)

    m1 = src.load_mask(src.ids[0])
    assert m1.shape == (30, 40) and m1.dtype == np.uint8
    assert m1[12, 12] == 1 and m1[2, 2] == 3 and m1[25, 35] == 0
    assert src.labels(src.ids[0]).tolist() == [1.0, 0.0, 1.0]

    m2 = src.load_mask(src.ids[1])
    assert m2[2, 2] == 2 and m2[14, 14] == 255
    assert src.labels(src.ids[1]).tolist() == [0.0, 1.0, 0.0]  # crowd people are not a label

    ds = build_eval_dataset(cfg, "val")
    assert ds[1]["image"].shape == (3, 32, 32) and ds.num_classes == 3
    with pytest.raises(DataError, match="instances_train2014.json"):
        build_source(cfg, "train")
    # a listed image that is gone: one line naming it, or skipped when the config says so
    next((tmp_path / "coco" / "val2014").glob("*000000000002*")).unlink()
    with pytest.raises(DataError, match=r"000000000002\.jpg' listed in .* does not exist"):
        build_source(cfg, "val")
    skipping = load_config(None, [*overrides, "data.on_bad_file=skip"])
    assert build_source(skipping, "val").ids == ["COCO_val2014_000000000001"]


@pytest.mark.parametrize("race_at", ["rmdir", "rename"])
def test_a_parallel_writer_that_finished_first_wins_without_a_crash(tmp_path, monkeypatch,
                                                                    race_at):
    # Two trials write the same dataset at once: the other one renames its complete copy into
    # place just before this one's rmdir (-> "Directory not empty") or rename (-> name taken).
    from cobra.data import synthetic

    out = tmp_path / "ds"
    out.mkdir()
    params = synthetic.synthetic_params(TINY)
    real_rmdir, real_rename = Path.rmdir, os.rename

    def other_process_wins():
        winner = tmp_path / "winner"
        synthetic._write_all(winner, TINY, params)
        with contextlib.suppress(FileNotFoundError):
            real_rmdir(out)
        real_rename(winner, out)

    def rmdir(self):
        if self == out and race_at == "rmdir":
            other_process_wins()
        return real_rmdir(self)

    def rename(src, dst):
        if Path(dst) == out and race_at == "rename":
            other_process_wins()
        return real_rename(src, dst)

    monkeypatch.setattr(Path, "rmdir", rmdir)
    monkeypatch.setattr(os, "rename", rename)
    assert write_synthetic(out, TINY) == out
    monkeypatch.undo()
    assert synthetic._read_marker(out) == params
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no temp copy left behind
