"""Drawing primitives shared by the procedural generators (the segmentation set and the
pretraining corpus): boolean (S, S) regions on pixel-centre coordinates, colour fields, and a
cluttered background. Pure numpy, deterministic for a given random generator."""

from dataclasses import dataclass

import numpy as np


@dataclass
class Canvas:
    yy: np.ndarray  # (S, S) float32 row coordinate of pixel centres
    xx: np.ndarray  # (S, S) float32 column coordinate
    img: np.ndarray  # (S, S, 3) float32 in [0, 255]
    mask: np.ndarray  # (S, S) uint8 class indices
    inst: np.ndarray  # (S, S) int16 instance index, 0 = none (to check part visibility)
    size: int

    @property
    def u(self) -> float:
        """Length unit: shapes are designed at 128 px and scale with the image."""
        return self.size / 128.0


def new_canvas(size: int) -> Canvas:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    return Canvas(yy, xx, np.zeros((size, size, 3), np.float32),
                   np.zeros((size, size), np.uint8), np.zeros((size, size), np.int16), size)


def ellipse(cv: Canvas, cy: float, cx: float, ry: float, rx: float, angle: float = 0.0
             ) -> np.ndarray:
    dy, dx = cv.yy - cy, cv.xx - cx
    c, s = np.cos(angle), np.sin(angle)
    v, w = c * dy - s * dx, s * dy + c * dx
    return (v / ry) ** 2 + (w / rx) ** 2 <= 1.0


def rect(cv: Canvas, y0: float, x0: float, y1: float, x1: float) -> np.ndarray:
    return (cv.yy >= y0) & (cv.yy < y1) & (cv.xx >= x0) & (cv.xx < x1)


def polygon(cv: Canvas, pts: list[tuple[float, float]]) -> np.ndarray:
    """Convex polygon given as (y, x) vertices in either winding order."""
    pos = np.ones(cv.yy.shape, bool)
    neg = np.ones(cv.yy.shape, bool)
    for (y0, x0), (y1, x1) in zip(pts, pts[1:] + pts[:1], strict=True):
        cross = (x1 - x0) * (cv.yy - y0) - (y1 - y0) * (cv.xx - x0)
        pos &= cross >= 0
        neg &= cross <= 0
    return pos | neg


def segment(cv: Canvas, p0: tuple[float, float], p1: tuple[float, float], width: float
             ) -> np.ndarray:
    """Pixels within width/2 of the segment p0-p1 ((y, x) points)."""
    (y0, x0), (y1, x1) = p0, p1
    dy, dx = y1 - y0, x1 - x0
    t = ((cv.yy - y0) * dy + (cv.xx - x0) * dx) / max(dy * dy + dx * dx, 1e-6)
    t = np.clip(t, 0.0, 1.0)
    return (cv.yy - y0 - t * dy) ** 2 + (cv.xx - x0 - t * dx) ** 2 <= (width / 2) ** 2


def smooth_noise(rng: np.random.Generator, size: int, cells: int, channels: int = 1
                  ) -> np.ndarray:
    """(size, size, channels) float32 in [0, 1]: a random grid upsampled with smoothstep."""
    grid = rng.random((cells + 1, cells + 1, channels), dtype=np.float32)
    t = (np.arange(size, dtype=np.float32) + 0.5) / size * cells
    i = np.minimum(t.astype(np.int64), cells - 1)
    f = t - i
    f = f * f * (3 - 2 * f)
    rows = grid[i] * (1 - f)[:, None, None] + grid[i + 1] * f[:, None, None]
    return rows[:, i] * (1 - f)[None, :, None] + rows[:, i + 1] * f[None, :, None]


def jitter(rng: np.random.Generator, color: np.ndarray, amount: float = 18.0) -> np.ndarray:
    """A colour with brightness and per-channel jitter, so no class has one exact colour."""
    c = color * rng.uniform(0.85, 1.15) + rng.uniform(-amount, amount, 3)
    return np.clip(c, 0, 255).astype(np.float32)


def texture(rng: np.random.Generator, cv: Canvas, color: np.ndarray, strength: float
             ) -> np.ndarray:
    """(S, S, 3) colour field around `color`: stripes or blotches, for object and clutter fill."""
    if rng.random() < 0.5:
        angle, period = rng.uniform(0, np.pi), rng.uniform(3, 8) * cv.u
        wave = np.sin(2 * np.pi * (cv.yy * np.cos(angle) + cv.xx * np.sin(angle)) / period)
        mod = 1.0 + strength * wave[..., None]
    else:
        mod = 1.0 + strength * 2 * (smooth_noise(rng, cv.size, int(rng.integers(4, 10))) - 0.5)
    return np.clip(color * mod, 0, 255)


def paint(cv: Canvas, region: np.ndarray, fill: np.ndarray, cls: int | None = None,
           inst: int = 0) -> None:
    """Fill a region with a colour (3,) or colour field (S, S, 3); cls None = background."""
    # Flat pixel indices into (S*S, 3) views: faster than boolean or `where=` masked copies.
    idx = np.flatnonzero(region)
    cv.img.reshape(-1, 3)[idx] = fill.reshape(-1, 3)[idx] if fill.ndim == 3 else fill
    # Context drawn later (a second beetle's leaf) occludes earlier objects: label 0 then.
    cv.mask.reshape(-1)[idx] = cls or 0
    cv.inst.reshape(-1)[idx] = inst if cls else 0


def background(rng: np.random.Generator, cv: Canvas) -> None:
    """Low-frequency colour noise, sometimes a texture, and 0-3 textured ellipses: clutter that
    looks like objects but is labelled background."""
    base = rng.uniform(60, 200, 3).astype(np.float32)
    noise = smooth_noise(rng, cv.size, int(rng.integers(3, 8)), 3)
    cv.img[:] = np.clip(base + (noise - 0.5) * rng.uniform(40, 110), 0, 255)
    if rng.random() < 0.5:
        region = np.ones((cv.size, cv.size), bool)
        paint(cv, region, texture(rng, cv, cv.img.mean((0, 1)), rng.uniform(0.1, 0.3)))
        cv.img[:] = 0.5 * cv.img + 0.5 * np.clip(base + (noise - 0.5) * 80, 0, 255)
    for _ in range(int(rng.integers(0, 4))):
        s = cv.size
        region = ellipse(cv, rng.uniform(0, s), rng.uniform(0, s), rng.uniform(4, 18) * cv.u,
                          rng.uniform(4, 18) * cv.u, rng.uniform(0, np.pi))
        paint(cv, region, texture(rng, cv, rng.uniform(30, 230, 3), rng.uniform(0.0, 0.3)))
