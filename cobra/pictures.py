"""Pictures for humans: label maps in the VOC palette, CAM heat maps, and side-by-side strips."""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from cobra.data.voc import voc_palette


def save_label_png(path: Path, label: np.ndarray) -> None:
    """(H, W) uint8 class indices → palette PNG (what VOC tools and the VOC server read)."""
    image = Image.fromarray(label.astype(np.uint8), mode="P")
    image.putpalette(voc_palette().reshape(-1).tolist())
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def colorize(label: np.ndarray) -> np.ndarray:
    """(H, W) class indices → (H, W, 3) RGB."""
    return voc_palette()[label.astype(np.uint8)]


def heatmap(values: np.ndarray, image: np.ndarray | None = None, alpha: float = 0.5) -> np.ndarray:
    """(H, W) values in [0, 1] → (H, W, 3) RGB (blue→red), blended over `image` if given."""
    v = np.clip(values, 0.0, 1.0)
    rgb = np.stack([np.clip(1.5 - np.abs(4 * v - 3), 0, 1),
                    np.clip(1.5 - np.abs(4 * v - 2), 0, 1),
                    np.clip(1.5 - np.abs(4 * v - 1), 0, 1)], axis=-1)
    rgb = (rgb * 255).astype(np.float32)
    if image is not None:
        rgb = alpha * rgb + (1 - alpha) * image.astype(np.float32)
    return rgb.astype(np.uint8)


def save_strip(path: Path, panels: Sequence[np.ndarray], titles: Sequence[str]) -> None:
    """Panels (H, W, 3) side by side with a title above each: image | CAMs | seed | GT."""
    h = max(p.shape[0] for p in panels)
    title_h = 14
    width = sum(p.shape[1] for p in panels) + 2 * (len(panels) - 1)
    canvas = Image.new("RGB", (width, h + title_h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    x = 0
    for panel, title in zip(panels, titles, strict=True):
        canvas.paste(Image.fromarray(panel), (x, title_h))
        draw.text((x + 2, 1), title, fill=(0, 0, 0))
        x += panel.shape[1] + 2
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
