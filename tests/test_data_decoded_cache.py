"""cobra.data.decoded_cache: the cache returns the decoded files' pixels bit for bit, is written
once and reused, follows changes to the files, and a killed write leaves nothing that is used."""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cobra.config import SyntheticConfig, load_config
from cobra.data import build_eval_dataset, build_source, build_train_dataset
from cobra.data import decoded_cache as dc
from cobra.data.synthetic import write_synthetic
from cobra.data.voc import VOCSource
from cobra.errors import DataError

ROOT = Path(__file__).resolve().parent.parent
TINY = SyntheticConfig(num_train=12, num_val=6, image_size=64, seed=0)


@pytest.fixture(scope="module")
def mixed_root(tmp_path_factory) -> Path:
    """The tiny synthetic set with images of other sizes and formats mixed in, as in VOC: a
    30x40 RGBA PNG, a 20x50 greyscale JPEG and a 70x33 RGB JPEG (each with a mask to match)."""
    root = write_synthetic(tmp_path_factory.mktemp("dc") / "ds", TINY)
    rng = np.random.default_rng(0)
    for image_id, (h, w), mode, ext in (("train_00001", (30, 40), "RGBA", ".png"),
                                        ("train_00004", (20, 50), "L", ".jpg"),
                                        ("val_00002", (70, 33), "RGB", ".jpg")):
        channels = {"RGBA": 4, "L": 1, "RGB": 3}[mode]
        pixels = rng.integers(0, 256, (h, w, channels), dtype=np.uint8).squeeze()
        (root / "JPEGImages" / f"{image_id}.png").unlink()
        Image.fromarray(pixels, mode).save(root / "JPEGImages" / f"{image_id}{ext}")
        mask_path = root / "SegmentationClass" / f"{image_id}.png"
        with Image.open(mask_path) as old:
            palette = old.getpalette()
        mask = Image.fromarray(np.full((h, w), 2, np.uint8), "L")
        mask.putpalette(palette)
        mask.save(mask_path)
    return root


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A private $COBRA_CACHE, so every test starts with no decoded images."""
    monkeypatch.setenv("COBRA_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "decoded"


def _cfg(root: Path, *extra: str):
    return load_config(None, ["data.dataset=voc", f"data.root={root}", "data.image_size=48",
                              "data.resize_long=[40, 96]", *extra])


def _count_decodes(source: VOCSource) -> list[str]:
    """The ids `source` decodes from here on (its own load_image, recorded)."""
    decoded: list[str] = []
    read = source.load_image

    def load_image(image_id: str) -> np.ndarray:
        decoded.append(image_id)
        return read(image_id)

    source.load_image = load_image  # type: ignore[method-assign]
    return decoded


# ----------------------------------------------------------------------------------------------
# The same pixels


@pytest.mark.parametrize("split", ["train", "val"])
def test_cached_pixels_are_the_decoded_files(mixed_root, cache, split):
    source = VOCSource(mixed_root, split)
    store = dc.decoded_images(source)
    assert store is not None and store.folder.parent == cache
    shapes = set()
    for image_id in source.ids:
        want, got = source.load_image(image_id), store.load_image(image_id)
        assert got.dtype == np.uint8 and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
        assert got.flags.writeable  # a copy, like the file reader's, not a view of the cache
        shapes.add(got.shape)
    assert len(shapes) >= 2  # sizes differ, so the offsets are exercised


def test_dataset_items_identical_with_and_without_cache(mixed_root, cache):
    """Every item of both datasets, augmented ones under the same seed, is bit-identical."""
    for build, split in ((build_eval_dataset, "val"), (build_eval_dataset, "train"),
                         (build_train_dataset, "train")):
        plain = build(_cfg(mixed_root, "data.decoded_cache=false"), split)
        cached = build(_cfg(mixed_root, "data.decoded_cache=true"), split)
        assert plain.images is plain.source
        assert isinstance(cached.images, dc.DecodedImages)
        for seed in (0, 1):
            torch.manual_seed(seed)
            want = [plain[i] for i in range(len(plain))]
            torch.manual_seed(seed)
            got = [cached[i] for i in range(len(cached))]
            for a, b in zip(want, got, strict=True):
                assert a["id"] == b["id"]
                assert torch.equal(a["image"], b["image"]), (split, seed, a["id"])
                assert torch.equal(a["label"], b["label"])


def test_decoded_cache_is_on_by_default():
    assert load_config(None, []).data.decoded_cache is True


def test_store_pickles_without_its_pixels(mixed_root, cache):
    """A spawned DataLoader worker gets the store by pickle: it must reopen the file, not carry
    a copy of every pixel."""
    source = VOCSource(mixed_root, "train")
    store = dc.decoded_images(source)
    store.load_image(source.ids[0])  # maps the file
    blob = pickle.dumps(store)
    assert len(blob) < 4096
    again = pickle.loads(blob)
    np.testing.assert_array_equal(again.load_image(source.ids[1]),
                                  source.load_image(source.ids[1]))


# ----------------------------------------------------------------------------------------------
# Written once, keyed by the files


def test_second_build_reuses_the_cache(mixed_root, cache):
    first = dc.decoded_images(VOCSource(mixed_root, "train"))
    stamps = {p.name: p.stat().st_mtime_ns for p in first.folder.iterdir()}
    source = VOCSource(mixed_root, "train")
    decoded = _count_decodes(source)
    second = dc.decoded_images(source)
    assert second.folder == first.folder
    assert decoded == []
    assert {p.name: p.stat().st_mtime_ns for p in second.folder.iterdir()} == stamps
    assert [p.name for p in cache.iterdir()] == [first.folder.name]


def test_changed_file_changes_the_fingerprint(mixed_root, cache, tmp_path):
    root = Path(shutil.copytree(mixed_root, tmp_path / "ds"))
    before = dc.fingerprint(VOCSource(root, "train"))
    path = VOCSource(root, "train").image_path("train_00007")
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched
    touched = dc.fingerprint(VOCSource(root, "train"))
    assert touched != before

    new = np.zeros((64, 64, 3), np.uint8)
    new[:, :32] = (200, 10, 90)
    Image.fromarray(new).save(path)  # rewritten with other pixels
    source = VOCSource(root, "train")
    assert dc.fingerprint(source) not in (before, touched)
    np.testing.assert_array_equal(dc.decoded_images(source).load_image("train_00007"), new)

    assert dc.fingerprint(VOCSource(root, "val")) != dc.fingerprint(source)  # split
    copy = Path(shutil.copytree(root, tmp_path / "other"))
    assert dc.fingerprint(VOCSource(copy, "train")) != dc.fingerprint(source)  # root


def test_concurrent_builders_decode_once(mixed_root, cache):
    sources = [VOCSource(mixed_root, "train") for _ in range(2)]
    decoded = [_count_decodes(s) for s in sources]
    start = threading.Barrier(2)
    stores: list[dc.DecodedImages] = []

    def build(source: VOCSource) -> None:
        start.wait()
        stores.append(dc.decoded_images(source))

    threads = [threading.Thread(target=build, args=(s,)) for s in sources]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(stores) == 2 and stores[0].folder == stores[1].folder
    assert sorted(decoded[0] + decoded[1]) == sorted(sources[0].ids)  # one of them decoded


# ----------------------------------------------------------------------------------------------
# Failures

_KILLED_WRITER = """
import sys, time
from pathlib import Path
from cobra.data.decoded_cache import decoded_images
from cobra.data.voc import VOCSource

source = VOCSource(sys.argv[1], "train")
read = source.load_image

def load_image(image_id):
    if image_id == source.ids[3]:  # a few images are in the temporary file by now
        Path(sys.argv[3]).write_text("writing")
        time.sleep(600)
    return read(image_id)

source.load_image = load_image
decoded_images(source, Path(sys.argv[2]))
"""


def test_killed_write_leaves_nothing_that_is_used(mixed_root, tmp_path):
    root, marker = tmp_path / "decoded", tmp_path / "writing"
    child = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(mixed_root), str(root),
                              str(marker)], cwd=ROOT, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert child.poll() is None, child.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the writer never reached its fourth image"
            time.sleep(0.1)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    source = VOCSource(mixed_root, "train")
    folder = root / dc.fingerprint(source)
    assert list(folder.glob(".pixels.npy.*.tmp")), "the killed writer had started its file"
    assert not (folder / dc.INDEX).exists() and not (folder / dc.PIXELS).exists()
    assert dc._open(folder, source.ids) is None

    store = dc.decoded_images(source, root)  # the next process writes it afresh
    assert sorted(p.name for p in folder.iterdir()) == [".lock", dc.INDEX, dc.PIXELS]
    for image_id in source.ids:
        np.testing.assert_array_equal(store.load_image(image_id), source.load_image(image_id))


def test_pixels_without_index_are_not_used(mixed_root, cache):
    """Killed between the two renames: complete pixels, no index. Not used; rewritten."""
    source = VOCSource(mixed_root, "val")
    folder = dc.decoded_images(source).folder
    (folder / dc.INDEX).unlink()
    assert dc._open(folder, source.ids) is None
    decoded = _count_decodes(source)
    assert dc.decoded_images(source) is not None
    assert decoded == source.ids


def test_no_room_reads_the_files(mixed_root, cache, monkeypatch, capsys):
    monkeypatch.setattr(dc, "FREE_SPACE_MARGIN", 1 << 62)  # as if the disk were nearly full
    ds = build_eval_dataset(_cfg(mixed_root), "val")
    assert ds.images is ds.source
    assert "decoding image files instead" in capsys.readouterr().err
    assert not list(cache.glob("*/*.npy")) and not list(cache.glob("*/*.npz"))


def test_corrupt_image_fails_when_the_cache_is_built(mixed_root, cache, tmp_path):
    root = Path(shutil.copytree(mixed_root, tmp_path / "ds"))
    bad = root / "JPEGImages" / "train_00003.png"
    bad.write_bytes(b"this is not an image")
    with pytest.raises(DataError, match="cannot be read") as err:
        build_train_dataset(_cfg(root), "train")
    assert str(bad) in str(err.value)
    ds = build_train_dataset(_cfg(root, "data.on_bad_file=skip"), "train")
    assert "train_00003" not in ds.ids and isinstance(ds.images, dc.DecodedImages)
    assert len(build_source(_cfg(root, "data.on_bad_file=skip"), "train").ids) == len(ds)
