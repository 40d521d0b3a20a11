"""What the seed stage draws: a strip per image for the first few images, and the threshold
curve."""

from pathlib import Path

from cobra.config import Config
from cobra.data.source import Source
from cobra.layout import RunLayout
from cobra.ops.cams import cams_to_label
from cobra.pictures import colorize, heatmap, save_strip
from cobra.reporting import Reporter
from cobra.stages.common import NUM_PICTURES
from cobra.stages.outputs import fuse_seed, read_seed_arrays


def save_pictures(cfg: Config, layout: RunLayout, source: Source, ids: list[str], threshold: float,
                  reporter: Reporter) -> None:
    """image | CNN CAM | ViT CAM | fused | seed | ground truth, for the first few images."""
    for image_id in ids[:NUM_PICTURES]:
        image = source.load_image(image_id)
        arrays = read_seed_arrays(layout.seed_file(image_id))
        seed = fuse_seed(arrays, cfg.seeds.fusion)
        panels, titles = [image], ["image"]
        for key, title in (("cam_cnn", "CNN CAM"), ("cam_tran", "ViT CAM x A_obj")):
            if key in arrays and arrays[key].shape[0]:
                panels.append(heatmap(arrays[key].max(0), image))
                titles.append(title)
        if seed["cam"].shape[0]:
            panels.append(heatmap(seed["cam"].max(0), image))
            titles.append(f"fused ({cfg.seeds.fusion})")
        label = cams_to_label(seed["cam"], seed["keys"], threshold)
        panels += [colorize(label), colorize(source.load_mask(image_id))]
        titles += [f"seed (bg {threshold:.2f})", "ground truth"]
        path = layout.pictures / f"seeds_{image_id}.png"
        save_strip(path, panels, titles)
        reporter.log_artifact(path, "pictures")


def save_threshold_curve(fixed: dict, path: Path) -> None:
    """Seed mIoU against the background threshold, the chosen one marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    thresholds = sorted(fixed["curve"])
    fig, ax = plt.subplots(figsize=(5, 3.2))
    try:
        ax.plot(thresholds, [fixed["curve"][t] for t in thresholds], marker="o")
        ax.axvline(fixed["threshold"], color="grey", linestyle="--",
                   label=f"chosen {fixed['threshold']:.2f} (on the scored images)")
        ax.set_xlabel("background threshold")
        ax.set_ylabel("seed mIoU (%)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
