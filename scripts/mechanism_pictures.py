#!/usr/bin/env python
"""Pictures of CoBra's mechanism from finished runs: the per-epoch diagnostics of one run, and
the seed pictures of two runs on the same images, one above the other.

    python scripts/mechanism_pictures.py FULL_RUN --compare CAM_ONLY_RUN --out docs/pictures

Writes `diagnostics.png` (selection precision, gradient ratios, CAM coverage and leakage per
epoch, from FULL_RUN's metrics.jsonl) and `seeds_<image>.png` (FULL_RUN's seed picture of each
image under COMPARE's, each labelled).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

PANELS = {
    "k± selection precision (object anchors)": [
        "diag/cap_pos_precision_fg", "diag/cap_neg_precision_fg",
        "diag/sap_pos_precision_fg", "diag/sap_neg_precision_fg"],
    "gradient on the CAM features / L_cls's": [
        "diag/ratio_cnn_cam", "diag/ratio_cnn_cap", "diag/ratio_vit_cam", "diag/ratio_vit_sap"],
    "CAM on val at the fixed background score": [
        "diag/coverage_cnn", "diag/leakage_cnn", "diag/coverage_vit", "diag/leakage_vit"],
}


def epoch_metrics(run: Path) -> list[dict[str, float]]:
    """Each epoch's metrics, in order, from the run's metrics.jsonl."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["metrics"] for r in records if r.get("kind") == "epoch"]


def draw_diagnostics(run: Path, out: Path, label: str) -> None:
    epochs = epoch_metrics(run)
    fig, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 3.6))
    for ax, (title, keys) in zip(axes, PANELS.items(), strict=True):
        for key in keys:
            points = [(i + 1, m[key]) for i, m in enumerate(epochs) if key in m]
            if points:
                epoch, value = zip(*points, strict=True)
                ax.plot(epoch, value, marker="o", label=key.removeprefix("diag/"))
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    fig.suptitle(f"mechanism diagnostics of {label}", fontsize=11)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def labelled(path: Path, label: str) -> Image.Image:
    picture = Image.open(path).convert("RGB")
    canvas = Image.new("RGB", (picture.width, picture.height + 16), "white")
    canvas.paste(picture, (0, 16))
    ImageDraw.Draw(canvas).text((4, 2), label, fill="black")
    return canvas


def stack_seed_pictures(run: Path, compare: Path, out_dir: Path, labels: tuple[str, str]
                        ) -> list[Path]:
    written = []
    for picture in sorted((run / "pictures").glob("seeds_*.png")):
        other = compare / "pictures" / picture.name
        if not other.exists():
            continue
        top, bottom = labelled(other, labels[1]), labelled(picture, labels[0])
        both = Image.new("RGB", (max(top.width, bottom.width), top.height + bottom.height),
                         "white")
        both.paste(top, (0, 0))
        both.paste(bottom, (0, top.height))
        target = out_dir / picture.name
        both.save(target)
        written.append(target)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--compare", type=Path, help="a run to show above RUN's seed pictures")
    parser.add_argument("--out", type=Path, default=Path("mechanism_pictures"))
    parser.add_argument("--labels", nargs=2, metavar=("RUN", "COMPARE"),
                        help="names written over the pictures (default: the run directories')")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    draw_diagnostics(args.run, args.out / "diagnostics.png",
                     args.labels[0] if args.labels else args.run.name)
    print(args.out / "diagnostics.png")
    if args.compare:
        labels = args.labels or (args.run.name, args.compare.name)
        for path in stack_seed_pictures(args.run, args.compare, args.out, labels):
            print(path)


if __name__ == "__main__":
    main()
