"""A small synthetic dataset that poses the real WSSS problem, written in VOC layout.

Design (why each ingredient is there):

- **Sibling classes** differ only in a small part: `kite_red_tip` / `kite_blue_tip` (same diamond
  body, tip colour), `boat_red_flag` / `boat_blue_flag` (same hull and sail, flag colour),
  `beetle_head_spot` / `beetle_tail_spot` (same body, spot position along the body's vertical axis
  so that horizontal flips keep the label), `sign_dot` / `sign_cross` (same plate and post, mark
  shape). A classifier can separate siblings from the small part alone, so its CAMs cover the
  discriminative part and miss the body: the classic WSSS failure, measurable by seed mIoU.
- **Shared part colours** (red and blue for tips, flags and sign marks) and **part-like
  distractors** on the background (loose red/blue triangles, dots, crosses) keep the part from
  being a shortcut on its own: the classifier needs part + body, and CAMs get false positives.
- **Co-occurring context labelled background**: kites fly in a sky band (with a string), boats sit
  on a water band, beetles sit on leaves. Context appears ~90% of the time with its class and ~12%
  without, so CAMs are tempted to leak onto it.
- **Clutter**: low-frequency colour noise, stripes and blobs in the background; object bodies have
  internal texture and jittered colour, scale and position; 1-3 objects that may overlap (the later
  one occludes in image and mask alike); a 1 px ignore (255) border around object boundaries as in
  VOC. Every image holds at least one foreground class whose discriminative part is visible.

Everything is vectorized numpy on an (S, S) grid; images are PNG (lossless) so the same seed and
settings give byte-identical files. The dataset is written to a temporary sibling directory and
renamed into place, so a reader never sees half a dataset.

`data.synthetic.shape: voc` writes the same scenes at PASCAL VOC's shape (README, "Data"). The
default `demo` shape writes exactly what it wrote before the option existed (GENERATOR_VERSION 2;
tests/test_data.py pins its pixels)."""

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cobra.config import SyntheticConfig
from cobra.data.drawing import (
    Canvas,
    background,
    ellipse,
    jitter,
    new_canvas,
    paint,
    polygon,
    rect,
    segment,
    smooth_noise,
    texture,
)
from cobra.data.voc import voc_palette
from cobra.errors import ConfigError, DataError

# Bump when the drawing changes: it keys the cache, so stale cached datasets are not reused.
GENERATOR_VERSION = 2
# The same for what only the voc shape draws (its classes, sizes and crops, JPEG files).
VOC_SHAPE_VERSION = 1

_RED = np.array([215, 30, 35], np.float32)
_BLUE = np.array([30, 60, 215], np.float32)
_BLACK = np.array([20, 20, 25], np.float32)
_YELLOW = np.array([240, 220, 60], np.float32)
_WHITE = np.array([235, 235, 235], np.float32)
_CYAN = np.array([40, 200, 210], np.float32)


@dataclass(frozen=True)
class ClassSpec:
    """One foreground class: its object family and what tells it from its siblings."""

    name: str
    family: str  # kite, boat, beetle or sign
    part: np.ndarray | None = None  # the part's colour; None: a sign mark's shared colour
    spot: float = -0.5  # beetle: spot position along the body axis (-0.5 head, +0.5 tail)
    mark: str = "dot"  # sign: dot or cross


DEMO_CLASSES: tuple[ClassSpec, ...] = (
    ClassSpec("kite_red_tip", "kite", _RED), ClassSpec("kite_blue_tip", "kite", _BLUE),
    ClassSpec("boat_red_flag", "boat", _RED), ClassSpec("boat_blue_flag", "boat", _BLUE),
    ClassSpec("beetle_head_spot", "beetle", _YELLOW, spot=-0.5),
    ClassSpec("beetle_tail_spot", "beetle", _YELLOW, spot=0.5),
    ClassSpec("sign_dot", "sign", mark="dot"), ClassSpec("sign_cross", "sign", mark="cross"),
)
CLASS_NAMES: tuple[str, ...] = ("background", *(c.name for c in DEMO_CLASSES))

# VOC's 20 classes: each family in five part colours (siblings differ in the part alone). The
# beetle's spot sits on its head and the sign's mark is a dot, so the colour is the only cue.
_VOC_COLOURS = {"red": _RED, "blue": _BLUE, "yellow": _YELLOW, "white": _WHITE, "cyan": _CYAN}
_VOC_PART = {"kite": "tip", "boat": "flag", "beetle": "spot", "sign": "mark"}
VOC_SHAPE_CLASSES: tuple[ClassSpec, ...] = tuple(
    ClassSpec(f"{family}_{colour}_{part}", family, rgb)
    for family, part in _VOC_PART.items() for colour, rgb in _VOC_COLOURS.items())
# (H, W) of VOC images as fractions of the long side, and how often each occurs (most VOC images
# are 500 x 375 or 500 x 333, landscape or portrait); None: a random aspect in [0.6, 1].
_VOC_SIZES = ((0.75, 1.0), (0.666, 1.0), (1.0, 0.75), (1.0, 0.666), None)
_VOC_SIZE_P = (0.5, 0.15, 0.15, 0.05, 0.15)

MARKER = "synthetic.json"  # written last: its presence with matching params means "complete"


# ----------------------------------------------------------------------------------------------
# Scene parts


def _sky(rng: np.random.Generator, cv: Canvas, bottom: float) -> None:
    top_c = jitter(rng, np.array([110, 160, 225], np.float32), 12)
    low_c = jitter(rng, np.array([185, 210, 240], np.float32), 12)
    t = np.clip(cv.yy / max(bottom, 1.0), 0, 1)[..., None]
    sky = top_c * (1 - t) + low_c * t
    clouds = smooth_noise(rng, cv.size, int(rng.integers(3, 6)))
    sky = sky + np.clip(clouds - 0.55, 0, 1) * 2.0 * (250 - sky)
    paint(cv, cv.yy < bottom, np.clip(sky, 0, 255))


def _water(rng: np.random.Generator, cv: Canvas, top: float) -> None:
    color = jitter(rng, np.array([35, 90, 140], np.float32), 15)
    period, wl = rng.uniform(3, 6) * cv.u, rng.uniform(20, 50) * cv.u
    phase = 2 * np.pi * (cv.yy / period + 0.3 * np.sin(2 * np.pi * cv.xx / wl))
    water = color * (1.0 + 0.25 * np.sin(phase)[..., None])
    paint(cv, cv.yy >= top, np.clip(water, 0, 255))


def _leaf(rng: np.random.Generator, cv: Canvas, cy: float, cx: float, ry: float, rx: float
          ) -> None:
    angle = rng.uniform(-0.4, 0.4)
    region = ellipse(cv, cy, cx, ry, rx, angle)
    paint(cv, region, texture(rng, cv, jitter(rng, np.array([60, 140, 50], np.float32)), 0.15))
    top = (cy - ry * np.cos(angle), cx - ry * np.sin(angle))
    bot = (cy + ry * np.cos(angle), cx + ry * np.sin(angle))
    paint(cv, region & segment(cv, top, bot, 1.2 * cv.u), jitter(rng, np.array([40, 95, 35])))


def _mark_color(rng: np.random.Generator) -> np.ndarray:
    """Red, blue or black: the part colours shared by several classes and the distractors."""
    return [jitter(rng, _RED, 12), jitter(rng, _BLUE, 12), jitter(rng, _BLACK)][
        int(rng.integers(0, 3))]


def _cross(cv: Canvas, cy: float, cx: float, r: float, t: float) -> np.ndarray:
    """A plus sign of arm length r and half thickness t."""
    return rect(cv, cy - r, cx - t, cy + r, cx + t) | rect(cv, cy - t, cx - r, cy + t, cx + r)


def _distractor(rng: np.random.Generator, cv: Canvas) -> None:
    """A loose part on the background: a red/blue triangle, a dot or a cross (label 0)."""
    u, s = cv.u, cv.size
    cy, cx = rng.uniform(4 * u, s - 4 * u), rng.uniform(4 * u, s - 4 * u)
    color = _mark_color(rng)
    kind = int(rng.integers(0, 3))
    r = rng.uniform(3.0, 5.0) * u
    if kind == 0:
        region = polygon(cv, [(cy - r, cx), (cy + 0.6 * r, cx - 0.8 * r),
                               (cy + 0.6 * r, cx + 0.8 * r)])
    elif kind == 1:
        region = ellipse(cv, cy, cx, r * 0.7, r * 0.7)
    else:
        region = _cross(cv, cy, cx, r, 0.6 * u)
    paint(cv, region, color)


# ----------------------------------------------------------------------------------------------
# Objects: each paints itself (labelled with its class and instance) and returns its
# discriminative part region, to check that the part stays visible.


def _kite(rng: np.random.Generator, cv: Canvas, spec: ClassSpec, cls: int, inst: int, cy: float,
          cx: float, scale: float) -> np.ndarray:
    u = cv.u
    h, w = rng.uniform(13, 20) * u * scale, rng.uniform(8, 12) * u * scale
    pts = [(cy - h, cx), (cy - 0.2 * h, cx + w), (cy + h, cx), (cy - 0.2 * h, cx - w)]
    # The string is context: background, drawn first so the kite covers its end.
    end = (min(cy + h + rng.uniform(15, 40) * u, cv.size), cx + rng.uniform(-25, 25) * u)
    paint(cv, segment(cv, (cy + h, cx), end, 1.0 * u), jitter(rng, np.array([60, 50, 40])))
    body = polygon(cv, pts)
    hue = np.array([[240, 150, 40], [80, 180, 70], [150, 80, 170], [230, 210, 60], [150, 150, 150]],
                   np.float32)[int(rng.integers(0, 5))]
    paint(cv, body, texture(rng, cv, jitter(rng, hue), 0.2), cls, inst)
    spar = body & (segment(cv, pts[0], pts[2], 1.0 * u) | segment(cv, pts[1], pts[3], 1.0 * u))
    paint(cv, spar, jitter(rng, np.array([70, 50, 35])), cls, inst)
    tip = body & (cv.yy < cy - 0.56 * h)
    paint(cv, tip, jitter(rng, spec.part, 12), cls, inst)
    return tip


def _boat(rng: np.random.Generator, cv: Canvas, spec: ClassSpec, cls: int, inst: int, cy: float,
          cx: float, scale: float) -> np.ndarray:
    u = cv.u
    hw, hh = rng.uniform(13, 20) * u * scale, rng.uniform(4, 6) * u * scale
    hull = polygon(cv, [(cy - hh, cx - hw), (cy - hh, cx + hw), (cy + hh, cx + 0.7 * hw),
                         (cy + hh, cx - 0.7 * hw)])
    mast_h = rng.uniform(18, 26) * u * scale
    mx = cx + rng.uniform(-0.2, 0.2) * hw
    mast = rect(cv, cy - hh - mast_h, mx - 0.8 * u, cy - hh, mx + 0.8 * u)
    side = 1.0 if rng.random() < 0.5 else -1.0
    sail = polygon(cv, [(cy - hh - mast_h * 0.85, mx + side * u), (cy - hh - u, mx + side * u),
                         (cy - hh - u, mx + side * 0.8 * hw)])
    paint(cv, hull, texture(rng, cv, jitter(rng, np.array([120, 70, 40])), 0.25), cls, inst)
    paint(cv, sail, texture(rng, cv, jitter(rng, np.array([225, 220, 200])), 0.08), cls, inst)
    paint(cv, mast, jitter(rng, np.array([70, 50, 35])), cls, inst)
    fy, fl = cy - hh - mast_h, rng.uniform(6, 8.5) * u * scale
    flag = polygon(cv, [(fy, mx - side * 0.8 * u), (fy + 0.6 * fl, mx - side * 0.8 * u),
                         (fy + 0.3 * fl, mx - side * (0.8 * u + fl))])
    paint(cv, flag, jitter(rng, spec.part, 12), cls, inst)
    return flag


def _beetle(rng: np.random.Generator, cv: Canvas, spec: ClassSpec, cls: int, inst: int,
            cy: float, cx: float, scale: float) -> np.ndarray:
    u = cv.u
    ry = rng.uniform(10, 15) * u * scale
    rx = ry * rng.uniform(0.6, 0.75)
    head = ellipse(cv, cy - ry * 1.05, cx, ry * 0.3, rx * 0.5)
    legs = np.zeros_like(head)
    for k in (-0.4, 0.0, 0.4):
        legs |= segment(cv, (cy + k * ry, cx - rx * 1.35), (cy + k * ry, cx + rx * 1.35), 1.0 * u)
    body = ellipse(cv, cy, cx, ry, rx)
    dark = jitter(rng, np.array([40, 30, 25]))
    paint(cv, legs | head, dark, cls, inst)
    shells = np.array([[120, 70, 30], [40, 110, 60], [140, 40, 40]], np.float32)
    shell = shells[int(rng.integers(0, 3))]
    paint(cv, body, texture(rng, cv, jitter(rng, shell), 0.2), cls, inst)
    paint(cv, body & (np.abs(cv.xx - cx) < 0.5 * u), dark, cls, inst)
    spot = ellipse(cv, cy + spec.spot * ry, cx, 0.26 * ry + u, 0.34 * rx + u)
    paint(cv, spot, jitter(rng, spec.part, 10), cls, inst)
    return spot


def _sign(rng: np.random.Generator, cv: Canvas, spec: ClassSpec, cls: int, inst: int, cy: float,
          cx: float, scale: float) -> np.ndarray:
    u = cv.u
    hw, hh = rng.uniform(9, 14) * u * scale, rng.uniform(7, 10) * u * scale
    post = rect(cv, cy + hh, cx - 1.2 * u, cy + hh + rng.uniform(10, 18) * u * scale, cx + 1.2 * u)
    plate = rect(cv, cy - hh, cx - hw, cy + hh, cx + hw)
    paint(cv, post, jitter(rng, np.array([110, 110, 115])), cls, inst)
    color = rng.uniform(150, 245, 3).astype(np.float32)
    paint(cv, plate, texture(rng, cv, color, 0.1), cls, inst)
    rim = plate & ~rect(cv, cy - hh + u, cx - hw + u, cy + hh - u, cx + hw - u)
    paint(cv, rim, jitter(rng, np.array([60, 60, 60])), cls, inst)
    r, t = rng.uniform(3.5, 4.5) * u * scale, 1.0 * u * scale
    mark = ellipse(cv, cy, cx, 0.8 * r, 0.8 * r) if spec.mark == "dot" else _cross(cv, cy, cx, r, t)
    color = _mark_color(rng) if spec.part is None else jitter(rng, spec.part, 12)
    paint(cv, mark, color, cls, inst)
    return mark


_DRAW = {"kite": _kite, "boat": _boat, "beetle": _beetle, "sign": _sign}


# ----------------------------------------------------------------------------------------------
# One image


def _scene(rng: np.random.Generator, size: int, specs: tuple[ClassSpec, ...] = DEMO_CLASSES,
           shape: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray, bool]:
    """Draw one (size, size) scene of classes `specs` (class i + 1 is specs[i]), cropped about
    its centre to `shape` (H, W) when given; returns (image, mask, ok) where ok = every object
    is visibly labelled in what is returned."""
    cv = new_canvas(size)
    u, s = cv.u, float(size)
    n = int(rng.choice([1, 2, 3], p=[0.4, 0.35, 0.25]))
    classes = [int(c) for c in rng.integers(1, len(specs) + 1, n)]
    families = {specs[c - 1].family for c in classes}

    background(rng, cv)
    # Context mostly comes with its class and sometimes without: correlated, not identical.
    p_sky, p_water = (0.9 if fam in families else 0.12 for fam in ("kite", "boat"))
    sky_bottom = s * rng.uniform(0.4, 0.6) if rng.random() < p_sky else None
    water_top = s * rng.uniform(0.55, 0.7) if rng.random() < p_water else None
    if sky_bottom is not None:
        _sky(rng, cv, sky_bottom)
    if water_top is not None:
        _water(rng, cv, water_top)
    for _ in range(int(rng.integers(0, 2))):  # leaves without beetles: context without the class
        if rng.random() < 0.12:
            _leaf(rng, cv, rng.uniform(0, s), rng.uniform(0, s), rng.uniform(12, 22) * u,
                  rng.uniform(8, 14) * u)
    if rng.random() < 0.6:
        for _ in range(int(rng.integers(1, 4))):
            _distractor(rng, cv)

    parts: list[tuple[int, int, np.ndarray]] = []
    for k, cls in enumerate(classes, start=1):
        fam = specs[cls - 1].family
        scale = rng.uniform(1.4, 2.4)  # objects cover ~20% of the image, near VOC's share
        cx = rng.uniform(0.15, 0.85) * s
        if fam == "kite" and sky_bottom is not None:
            cy = rng.uniform(0.15 * s, max(0.16 * s, sky_bottom - 8 * u))
        elif fam == "boat" and water_top is not None:
            cy = rng.uniform(water_top, min(s - 6 * u, water_top + 10 * u))
        elif fam == "boat":
            cy = rng.uniform(0.5, 0.85) * s
        else:
            cy = rng.uniform(0.2, 0.8) * s
        if fam == "beetle" and rng.random() < 0.85:
            _leaf(rng, cv, cy + rng.uniform(-4, 4) * u, cx + rng.uniform(-4, 4) * u,
                  rng.uniform(20, 26) * u * scale, rng.uniform(14, 18) * u * scale)
        parts.append((k, cls, _DRAW[fam](rng, cv, specs[cls - 1], cls, k, cy, cx, scale)))
    return _finish(cv, parts, size, shape)


def _finish(cv: Canvas, parts: list[tuple[int, int, np.ndarray]], size: int,
            shape: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray, bool]:
    """A drawn scene's (image, mask, ok): the ignore border added, cropped about the centre to
    `shape`, and whether every object (part k of class cls) is visibly labelled in it."""
    # VOC-style ignore border: the pixel before every label change along rows and columns.
    mask = cv.mask.copy()
    edge = np.zeros(mask.shape, bool)
    edge[:, :-1] |= mask[:, :-1] != mask[:, 1:]
    edge[:-1, :] |= mask[:-1, :] != mask[1:, :]
    mask[edge] = 255

    h, w = shape or (size, size)
    top, left = (size - h) // 2, (size - w) // 2
    window = (slice(top, top + h), slice(left, left + w))
    mask, inst = mask[window], cv.inst[window]
    ok = True
    for k, cls, part in parts:
        # share of the whole part left visible (not occluded, not cropped away)
        visible = (inst[part[window]] == k).sum() / part.sum() if part.any() else 0.0
        # The discriminative part must be visible (else the label has no evidence) and the
        # object must keep labelled pixels after occlusion and the ignore border.
        ok &= bool(visible >= 0.5) and bool((mask == cls).sum() >= 4)
    image = np.clip(np.round(cv.img[window]), 0, 255).astype(np.uint8)
    return image, mask, ok


def _first_good_scene(rng: np.random.Generator, name: str, size: int,
                      specs: tuple[ClassSpec, ...] = DEMO_CLASSES,
                      shape: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    for _ in range(50):  # almost always the first scene; redraws come from the same stream
        image, mask, ok = _scene(rng, size, specs, shape)
        if ok:
            return image, mask
    raise RuntimeError(f"synthetic image {name} could not be drawn")  # a bug


def render_image(seed: int, split_index: int, index: int, size: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(S, S, 3) uint8 image and (S, S) uint8 mask of one synthetic image, deterministic."""
    rng = np.random.default_rng([seed, split_index, index])
    return _first_good_scene(rng, f"{split_index}/{index}", size)


def voc_image_shape(seed: int, split_index: int, index: int, long_side: int) -> tuple[int, int]:
    """(H, W) of one voc-shape image: VOC's common sizes scaled to `long_side`, drawn from a
    stream of its own so the scene's stream is the same whatever the size."""
    rng = np.random.default_rng([seed, split_index, index, 1])
    fractions = _VOC_SIZES[int(rng.choice(len(_VOC_SIZES), p=_VOC_SIZE_P))]
    if fractions is None:
        short = rng.uniform(0.6, 1.0)
        fractions = (short, 1.0) if rng.random() < 0.7 else (1.0, short)
    return max(1, round(fractions[0] * long_side)), max(1, round(fractions[1] * long_side))


def render_voc_image(seed: int, split_index: int, index: int, long_side: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 image and (H, W) uint8 mask of one voc-shape image (20 classes, VOC's
    sizes), deterministic."""
    shape = voc_image_shape(seed, split_index, index, long_side)
    # a stream apart from the demo's: the same index draws another scene here
    rng = np.random.default_rng([seed, split_index, index, 2])
    return _first_good_scene(rng, f"{split_index}/{index}", long_side, VOC_SHAPE_CLASSES, shape)


# ----------------------------------------------------------------------------------------------
# Writing


def synthetic_params(cfg: SyntheticConfig) -> dict[str, Any]:
    """Everything that determines the files: generator version and the config values. The demo
    shape's are what they were before the voc shape existed, so its cache key is unchanged."""
    if cfg.shape == "demo":
        return {"generator_version": GENERATOR_VERSION, "num_train": cfg.num_train,
                "num_val": cfg.num_val, "image_size": cfg.image_size, "seed": cfg.seed,
                "classes": list(CLASS_NAMES)}
    return {"generator_version": GENERATOR_VERSION, "voc_shape_version": VOC_SHAPE_VERSION,
            "shape": cfg.shape, "num_train": cfg.num_train, "num_val": cfg.num_val,
            "num_train_aug": cfg.num_train_aug, "long_side": cfg.long_side, "seed": cfg.seed,
            "classes": ["background", *(c.name for c in VOC_SHAPE_CLASSES)]}


def _read_marker(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _png(array: np.ndarray, palette: list[int] | None = None) -> bytes:
    img = Image.fromarray(array)
    if palette is not None:
        img.putpalette(palette)  # an L image becomes P, keeping the indices as pixel values
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)  # fast; still lossless and deterministic
    return buf.getvalue()


def _jpeg(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=90)  # VOC's images are JPEG
    return buf.getvalue()


def _write_all(out: Path, cfg: SyntheticConfig, params: dict[str, Any]) -> None:
    (out / "JPEGImages").mkdir(parents=True)
    (out / "SegmentationClass").mkdir()
    (out / "ImageSets" / "Segmentation").mkdir(parents=True)
    palette = voc_palette().reshape(-1).tolist()
    voc = cfg.shape == "voc"
    if cfg.num_train_aug and (not voc or cfg.num_train_aug < cfg.num_train):
        raise ConfigError(f"data.synthetic.num_train_aug={cfg.num_train_aug} needs shape=voc and "
                          f"at least num_train={cfg.num_train} images (train_aug holds train)")
    # (split, images, split index of the random streams, mask directory)
    splits = [("train", cfg.num_train, 0, "SegmentationClass"),
              ("val", cfg.num_val, 1, "SegmentationClass")]
    if cfg.num_train_aug:
        # SBD's extra images: masks in SegmentationClassAug, listed in train_aug after train's
        splits.append(("aug", cfg.num_train_aug - cfg.num_train, 2, "SegmentationClassAug"))
    listed: dict[str, list[str]] = {}
    for split, count, split_index, mask_dir in splits:
        (out / mask_dir).mkdir(exist_ok=True)
        ids = [f"{split}_{i:05d}" for i in range(count)]
        for i, image_id in enumerate(ids):
            if voc:
                image, mask = render_voc_image(cfg.seed, split_index, i, cfg.long_side)
                (out / "JPEGImages" / f"{image_id}.jpg").write_bytes(_jpeg(image))
            else:
                image, mask = render_image(cfg.seed, split_index, i, cfg.image_size)
                (out / "JPEGImages" / f"{image_id}.png").write_bytes(_png(image))
            (out / mask_dir / f"{image_id}.png").write_bytes(_png(mask, palette))
        listed[split] = ids
    if cfg.num_train_aug:
        listed["train_aug"] = listed["train"] + listed.pop("aug")
    for split, ids in listed.items():
        (out / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    (out / "classes.txt").write_text("\n".join(params["classes"]) + "\n")
    (out / MARKER).write_text(json.dumps(params, indent=2, sort_keys=True) + "\n")


def write_synthetic(out: str | Path, cfg: SyntheticConfig) -> Path:
    """Write the synthetic dataset in VOC layout at `out` (reused if already complete there)."""
    out = Path(out).expanduser()
    params = synthetic_params(cfg)
    if _read_marker(out) == params:
        return out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        found = _read_marker(out)
        what = "a synthetic dataset with other settings" if found else "other files"
        raise DataError(f"'{out}' is not empty (it holds {what}); choose a new or empty "
                        f"directory, or delete it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the dataset is an ordinary directory
        _write_all(tmp, cfg, params)
        try:
            # `out` was empty when checked; rename needs the name free on every platform
            with contextlib.suppress(FileNotFoundError):
                out.rmdir()
            os.rename(tmp, out)
        except OSError:
            # Another process (a parallel trial) may have renamed its copy into place since:
            # rmdir then finds it not empty, or rename finds the name taken. Its copy is
            # complete (the marker is written last) and the same as ours, so it wins.
            if _read_marker(out) != params:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def cache_dir() -> Path:
    """$COBRA_CACHE or ~/.cache/cobra."""
    return Path(os.environ.get("COBRA_CACHE", "~/.cache/cobra")).expanduser()


def ensure_synthetic(cfg: SyntheticConfig) -> Path:
    """The synthetic dataset for these settings in the cache, written once and then reused."""
    key = hashlib.sha256(json.dumps(synthetic_params(cfg), sort_keys=True).encode()).hexdigest()
    return write_synthetic(cache_dir() / "synthetic" / key[:12], cfg)
