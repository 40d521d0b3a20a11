"""Decoded images shared by every process on a node: `data.decoded_cache`.

Each trial of a sweep, and each epoch of a trial, would otherwise decode the same image files
again. The first dataset built over a split decodes every image once into one flat uint8 array,
stored at `$COBRA_CACHE/decoded/<fingerprint>/`; every later process memory-maps it, so the page
cache holds one copy per node and a read is a copy out of it.

    pixels.npy   (sum of H*W*3,) uint8: each image's (H, W, 3) RGB pixels, one after another
    index.npz    ids (N,) str, offsets (N,) int64, shapes (N, 3) int64, fingerprint () str

The stored pixels are the decoded originals, not resized: training draws its resize relative to
each image's own size (`transforms.random_resize_long`), so anything else would change what a model
sees. The fingerprint covers what decides the pixels: the reader, the root, the split, each id's
file name, size and mtime, and the Pillow version that decodes them.

`index.npz` is renamed into place last, so its presence means the pixels beside it are complete:
a killed build leaves nothing that would be used. A lock file (flock, as `cobra.pretrain`'s) makes
concurrent builders wait for the first instead of decoding too, and lets the next builder remove a
killed one's temporary file. Readers never take the lock: a store they find is complete, and a
rename never changes what an open map holds."""

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import PIL

from cobra.data.source import Source
from cobra.data.synthetic import cache_dir
from cobra.errors import DataError
from cobra.locks import locked

# Bump when the file format or what the fingerprint covers changes: old caches are then ignored.
CACHE_VERSION = 1
PIXELS = "pixels.npy"
INDEX = "index.npz"
# Left free on the cache's filesystem: other trials write checkpoints there too.
FREE_SPACE_MARGIN = 1 << 30


def fingerprint(source: Source) -> str:
    """A key for the decoded pixels of `source`: changes when any image file may have."""
    files = []
    for image_id in source.ids:
        path = source.image_path(image_id)
        stat = path.stat()
        files.append([image_id, path.name, stat.st_size, stat.st_mtime_ns])
    key = {"version": CACHE_VERSION, "kind": type(source).__name__,
           "root": str(Path(source.root).resolve()), "split": source.split,
           "pillow": PIL.__version__, "files": files}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


class DecodedImages:
    """Read-only decoded images of one split, memory-mapped; `load_image` as `Source`'s."""

    def __init__(self, folder: Path, ids: list[str], offsets: np.ndarray,
                 shapes: np.ndarray) -> None:
        self.folder = folder
        self._where = {image_id: (int(offsets[i]), tuple(int(s) for s in shapes[i]))
                       for i, image_id in enumerate(ids)}
        self._pixels: np.ndarray | None = None

    @property
    def pixels(self) -> np.ndarray:
        # Opened on first use, so a DataLoader worker that unpickles this maps the file itself
        # (pickling an open memmap would copy every pixel into the message).
        if self._pixels is None:
            self._pixels = np.load(self.folder / PIXELS, mmap_mode="r")
        return self._pixels

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_pixels": None}

    def load_image(self, image_id: str) -> np.ndarray:
        """(H, W, 3) uint8 RGB: a writable copy, as `Source.load_image` returns."""
        try:
            offset, shape = self._where[image_id]
        except KeyError:
            raise DataError(f"image id '{image_id}' is not in the decoded cache "
                            f"'{self.folder}'; check the id") from None
        size = shape[0] * shape[1] * shape[2]
        return np.array(self.pixels[offset:offset + size]).reshape(shape)


def decoded_images(source: Source, root: Path | None = None) -> DecodedImages | None:
    """The decoded images of `source`, made on first use under `root` (default
    $COBRA_CACHE/decoded); None when the cache's filesystem has no room for them."""
    folder = (root if root is not None else cache_dir() / "decoded") / fingerprint(source)
    found = _open(folder, source.ids)
    if found is not None:
        return found
    folder.mkdir(parents=True, exist_ok=True)
    with locked(folder / ".lock"):
        # checked again under the lock: the process we waited for has likely made it
        found = _open(folder, source.ids)
        if found is not None:
            return found
        for leftover in folder.glob(".*.tmp"):  # a killed writer's: none is live under the lock
            leftover.unlink(missing_ok=True)
        if not _write(source, folder):
            return None
    found = _open(folder, source.ids)
    if found is None:  # written just now, so only another writer's bug could cause this
        raise DataError(f"decoded cache '{folder}' was written but does not read back; "
                        f"delete it, or set data.decoded_cache=false")
    return found


def _open(folder: Path, ids: list[str]) -> DecodedImages | None:
    """The store in `folder` if complete and for exactly these ids, else None."""
    try:
        with np.load(folder / INDEX) as index:
            stored_ids = index["ids"].tolist()
            offsets, shapes = index["offsets"], index["shapes"]
            stored_fingerprint = str(index["fingerprint"])
            written = index["pixels_stat"].tolist() if "pixels_stat" in index.files else None
        pixels = np.load(folder / PIXELS, mmap_mode="r")
    except (OSError, ValueError, KeyError):
        return None
    total = int(offsets[-1] + np.prod(shapes[-1])) if len(offsets) else 0
    if stored_fingerprint != folder.name or stored_ids != ids or pixels.shape != (total,):
        return None
    if written is not None and written != _stat(folder / PIXELS):
        # the pixels were written over since (same size, other bytes): made again, not used
        print(f"warning: decoded cache '{folder / PIXELS}' changed after it was written; "
              f"decoding the images again", file=sys.stderr)
        return None
    return DecodedImages(folder, stored_ids, offsets, shapes)


def _write(source: Source, folder: Path) -> bool:
    """Decode every image of `source` into `folder`; False (and a warning) when it would not
    fit on the filesystem with FREE_SPACE_MARGIN left over."""
    shapes = np.array([(*source.image_size(i), 3) for i in source.ids], dtype=np.int64)
    sizes = shapes.prod(axis=1)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    total = int(sizes.sum())
    free = shutil.disk_usage(folder).free
    if total + FREE_SPACE_MARGIN > free:
        print(f"warning: the decoded cache of split '{source.split}' needs {total / 2**30:.1f} "
              f"GiB but '{folder}' has {free / 2**30:.1f} GiB free; decoding image files "
              f"instead (free space, or point COBRA_CACHE elsewhere)", file=sys.stderr)
        return False
    print(f"decoding {len(source.ids)} images of split '{source.split}' into '{folder}' "
          f"({total / 2**20:.0f} MiB, once)", file=sys.stderr)
    with _temporary(folder, PIXELS) as tmp:
        pixels = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(total,))
        for image_id, offset, size, shape in zip(source.ids, offsets, sizes, shapes, strict=True):
            image = source.load_image(image_id)
            if image.shape != tuple(shape):
                raise DataError(f"image '{source.image_path(image_id)}' decodes to "
                                f"{image.shape} but its header says {tuple(shape)}; set "
                                f"data.decoded_cache=false to read it from the file")
            pixels[offset:offset + size] = image.reshape(-1)
        pixels.flush()
        del pixels
        _fsync(tmp)
        os.replace(tmp, folder / PIXELS)
    # The index goes last: its presence is what says the pixels are complete.
    with _temporary(folder, INDEX) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, ids=np.array(source.ids), offsets=offsets, shapes=shapes,
                     fingerprint=np.array(folder.name),
                     pixels_stat=np.array(_stat(folder / PIXELS), dtype=np.int64))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, folder / INDEX)
    return True


@contextlib.contextmanager
def _temporary(folder: Path, name: str) -> Iterator[Path]:
    """A fresh temporary path beside `folder / name`, removed unless renamed away."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _stat(path: Path) -> list[int]:
    """Size and modification time (ns) of a file: recorded with the pixels, checked at every
    open (cheap, unlike hashing gigabytes), so pixels overwritten in place are not used. An index
    written before this record was kept has none and is trusted as before."""
    info = path.stat()
    return [info.st_size, info.st_mtime_ns]


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
