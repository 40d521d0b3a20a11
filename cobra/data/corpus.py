"""The pretraining corpus: procedurally drawn scenes of shapes, the built-in stand-in for ImageNet.

Backbones pretrained on it start CoBra with generic visual features (edges, colours, textures,
shapes, small parts and where they sit) instead of noise, which is what ImageNet weights give on
real data. It is disjoint from the segmentation set by construction: none of its categories is a
segmentation class, and it never draws their objects (kites, boats, beetles, signs), their
context (sky, water, leaves) or reads their images and masks; it shares only the drawing
primitives of `cobra.data.drawing`.

Each of the 16 shapes comes in two categories that differ only in a small part, the way
fine-grained ImageNet classes do: for half the shapes the colour of a marker (red or blue), for
the other half its place (top or bottom, colour free). Scenes hold 1-3 objects (multi-label),
mildly textured and jittered in colour, scale and position, over a smooth colour field with loose
markers. Every scene also has its category map (per pixel), for token labeling. The scenes are
kept clean on purpose: with the clutter of the segmentation set, small networks stay at chance
for the few hundred steps two CPU cores allow (measured), and clean scenes teach the same edges,
colours, shapes and parts."""

import numpy as np

from cobra.data.drawing import (
    Canvas,
    ellipse,
    jitter,
    new_canvas,
    paint,
    polygon,
    rect,
    smooth_noise,
    texture,
)

# Bump when the drawing changes: it keys the weight cache, so stale weights are not reused.
CORPUS_VERSION = 1

_RED = np.array([215, 30, 35], np.float32)
_BLUE = np.array([30, 60, 215], np.float32)
_BLACK = np.array([20, 20, 25], np.float32)


def _regular(cv: Canvas, cy: float, cx: float, r: float, n: int, phase: float) -> np.ndarray:
    angles = phase + 2 * np.pi * np.arange(n) / n
    return polygon(cv, [(cy - r * np.cos(a), cx + r * np.sin(a)) for a in angles])


def _star(cv: Canvas, cy: float, cx: float, r: float) -> np.ndarray:
    # A union of triangles from the centre keeps `polygon` (convex only) usable.
    region = _regular(cv, cy, cx, 0.45 * r, 5, 0.0)
    for k in range(5):
        a = 2 * np.pi * k / 5
        tip = (cy - r * np.cos(a), cx + r * np.sin(a))
        left = (cy - 0.45 * r * np.cos(a - 0.63), cx + 0.45 * r * np.sin(a - 0.63))
        right = (cy - 0.45 * r * np.cos(a + 0.63), cx + 0.45 * r * np.sin(a + 0.63))
        region |= polygon(cv, [tip, left, right])
    return region


def _shapes() -> dict[str, object]:
    """name → f(cv, cy, cx, r) giving the shape's region (upright, about 2r across)."""
    return {
        "disc": lambda cv, y, x, r: ellipse(cv, y, x, r, r),
        "oval": lambda cv, y, x, r: ellipse(cv, y, x, r, 0.6 * r),
        "square": lambda cv, y, x, r: rect(cv, y - 0.85 * r, x - 0.85 * r, y + 0.85 * r,
                                           x + 0.85 * r),
        "bar": lambda cv, y, x, r: rect(cv, y - r, x - 0.35 * r, y + r, x + 0.35 * r),
        "triangle": lambda cv, y, x, r: _regular(cv, y + 0.2 * r, x, 1.1 * r, 3, 0.0),
        "pentagon": lambda cv, y, x, r: _regular(cv, y, x, r, 5, 0.0),
        "hexagon": lambda cv, y, x, r: _regular(cv, y, x, r, 6, np.pi / 6),
        "star": _star,
        "ring": lambda cv, y, x, r: ellipse(cv, y, x, r, r) & ~ellipse(cv, y, x, 0.55 * r,
                                                                       0.55 * r),
        "frame": lambda cv, y, x, r: rect(cv, y - r, x - r, y + r, x + r)
        & ~rect(cv, y - 0.55 * r, x - 0.55 * r, y + 0.55 * r, x + 0.55 * r),
        "plus": lambda cv, y, x, r: rect(cv, y - r, x - 0.3 * r, y + r, x + 0.3 * r)
        | rect(cv, y - 0.3 * r, x - r, y + 0.3 * r, x + r),
        "tee": lambda cv, y, x, r: rect(cv, y - r, x - r, y - 0.45 * r, x + r)
        | rect(cv, y - r, x - 0.3 * r, y + r, x + 0.3 * r),
        "ell": lambda cv, y, x, r: rect(cv, y - r, x - 0.8 * r, y + r, x - 0.2 * r)
        | rect(cv, y + 0.4 * r, x - 0.8 * r, y + r, x + 0.8 * r),
        "crescent": lambda cv, y, x, r: ellipse(cv, y, x, r, r)
        & ~ellipse(cv, y, x + 0.5 * r, 0.85 * r, 0.85 * r),
        "hourglass": lambda cv, y, x, r: polygon(cv, [(y - r, x - 0.8 * r), (y - r, x + 0.8 * r),
                                                      (y, x)])
        | polygon(cv, [(y + r, x - 0.8 * r), (y + r, x + 0.8 * r), (y, x)]),
        "arrow": lambda cv, y, x, r: polygon(cv, [(y - r, x), (y - 0.1 * r, x - 0.8 * r),
                                                  (y - 0.1 * r, x + 0.8 * r)])
        | rect(cv, y - 0.2 * r, x - 0.3 * r, y + r, x + 0.3 * r),
    }


SHAPES = _shapes()
SHAPE_NAMES: tuple[str, ...] = tuple(SHAPES)
# The first half of the shapes is told apart by marker colour, the second by marker place.
_BY_COLOUR = SHAPE_NAMES[: len(SHAPE_NAMES) // 2]
CATEGORY_NAMES: tuple[str, ...] = tuple(
    f"{shape}_{variant}" for shape in SHAPE_NAMES
    for variant in (("red_mark", "blue_mark") if shape in _BY_COLOUR else ("mark_top",
                                                                          "mark_bottom")))


def _marker(rng: np.random.Generator, cv: Canvas, category: str, cy: float, cx: float,
            r: float) -> tuple[np.ndarray, np.ndarray]:
    """(region, colour) of the small part that tells a category from its sibling."""
    shape, _, variant = category.partition("_")
    if variant in ("red_mark", "blue_mark"):
        colour = _RED if variant == "red_mark" else _BLUE
        my, mx = cy + rng.uniform(-0.3, 0.3) * r, cx + rng.uniform(-0.3, 0.3) * r
    else:
        colour = [_RED, _BLUE, _BLACK][int(rng.integers(0, 3))]
        my, mx = cy + (-0.6 if variant == "mark_top" else 0.6) * r, cx
    size = max(0.28 * r, 1.5 * cv.u)
    return ellipse(cv, my, mx, size, size), jitter(rng, colour, 12)


def _loose_marker(rng: np.random.Generator, cv: Canvas) -> None:
    """A red, blue or black dot on the background, so a marker alone is no shortcut."""
    s, u = cv.size, cv.u
    colour = [_RED, _BLUE, _BLACK][int(rng.integers(0, 3))]
    r = rng.uniform(2.5, 4.5) * u
    paint(cv, ellipse(cv, rng.uniform(0, s), rng.uniform(0, s), r, r), jitter(rng, colour, 12))


def _backdrop(rng: np.random.Generator, cv: Canvas) -> None:
    """A smooth colour field: low-frequency noise around a random base colour."""
    base = rng.uniform(60, 200, 3).astype(np.float32)
    noise = smooth_noise(rng, cv.size, int(rng.integers(2, 5)), 3)
    cv.img[:] = np.clip(base + (noise - 0.5) * rng.uniform(30, 80), 0, 255)


def _scene(rng: np.random.Generator, size: int
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """One scene: (image (S, S, 3) uint8, multi-hot labels (K,) float32, category map (S, S)
    uint8 with 0 = background and k + 1 = category k, ok)."""
    cv = new_canvas(size)
    u, s = cv.u, float(size)
    _backdrop(rng, cv)
    for _ in range(int(rng.integers(0, 3))):
        _loose_marker(rng, cv)
    n = int(rng.choice([1, 2, 3], p=[0.45, 0.35, 0.2]))
    categories = [int(c) for c in rng.integers(0, len(CATEGORY_NAMES), n)]
    drawn = []
    for inst, cat in enumerate(categories, start=1):
        name = CATEGORY_NAMES[cat]
        r = rng.uniform(20, 36) * u
        cy, cx = rng.uniform(r, s - r), rng.uniform(r, s - r)
        body = SHAPES[name.partition("_")[0]](cv, cy, cx, r)
        fill = texture(rng, cv, rng.uniform(40, 235, 3).astype(np.float32), rng.uniform(0.0, 0.12))
        paint(cv, body, fill, cls=cat + 1, inst=inst)
        mark, colour = _marker(rng, cv, name, cy, cx, r)
        paint(cv, mark & body if name.endswith("_mark") else mark, colour, cls=cat + 1, inst=inst)
        drawn.append((inst, cat, body, mark))
    labels = np.zeros(len(CATEGORY_NAMES), np.float32)
    ok = True
    for inst, cat, body, mark in drawn:
        # The object and its telling part must stay visible after later objects occlude it.
        ok &= bool((cv.inst[body] == inst).mean() >= 0.5) if body.any() else False
        ok &= bool((cv.inst[mark] == inst).mean() >= 0.5) if mark.any() else False
        labels[cat] = 1.0
    return np.clip(np.round(cv.img), 0, 255).astype(np.uint8), labels, cv.mask, ok


def render(seed: int, split_index: int, index: int, size: int
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(S, S, 3) uint8 image, (K,) multi-hot labels and (S, S) uint8 category map (0 =
    background, k + 1 = category k) of one corpus scene, deterministic."""
    rng = np.random.default_rng([seed, 7919, split_index, index])  # 7919: not the seg set's stream
    for _ in range(50):
        image, labels, categories, ok = _scene(rng, size)
        if ok:
            return image, labels, categories
    raise RuntimeError(f"corpus scene {split_index}/{index} could not be drawn")  # a bug


def render_split(seed: int, split_index: int, count: int, size: int
                 ) -> dict[str, np.ndarray]:
    """One split: `images` (count, S, S, 3) uint8, `labels` (count, K) float32 and
    `categories` (count, S, S) uint8."""
    out = {"images": np.empty((count, size, size, 3), np.uint8),
           "labels": np.empty((count, len(CATEGORY_NAMES)), np.float32),
           "categories": np.empty((count, size, size), np.uint8)}
    for i in range(count):
        out["images"][i], out["labels"][i], out["categories"][i] = render(seed, split_index, i,
                                                                          size)
    return out
