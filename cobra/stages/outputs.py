"""Readers of what one stage writes and a later stage reads: seed files, IR labels and the
trained boundary network. They live here, not in the stage that writes them, so that no stage
module imports another (each stage depends on its inputs' files, not on its producer's code)."""

import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cobra.checkpoint import checkpoint_config, load_checkpoint
from cobra.data.source import LabelFileError, read_label_png
from cobra.errors import StageInputError
from cobra.layout import RunLayout
from cobra.models.irn import BoundaryNet
from cobra.ops.cams import fuse


def read_seed_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every named array of one seed file (no pickles); a damaged file is named."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise StageInputError(f"seed file '{path}' is damaged ({type(exc).__name__}); make "
                              f"the seeds again: `launch.py stage seeds --force --run-dir "
                              f"{path.parent.parent}`") from None


def fuse_seed(arrays: dict[str, np.ndarray], fusion: str) -> dict[str, np.ndarray]:
    """`keys`, `cam` (fused per `fusion`), `a_obj` (None for CNN-only runs) from a seed file's
    arrays. A run with one branch has only that branch's CAM, used whatever `fusion` says."""
    cnn, tran = arrays.get("cam_cnn"), arrays.get("cam_tran")
    if cnn is not None and tran is not None:
        cam = fuse(cnn, tran, fusion)
    else:
        cam = cnn if cnn is not None else tran
    return {"keys": arrays["keys"], "cam": cam, "a_obj": arrays.get("a_obj")}


def load_seed(path: Path, fusion: str) -> dict[str, np.ndarray]:
    """Read one seed file: `keys`, `cam` (fused per `fusion`), `a_obj`."""
    return fuse_seed(read_seed_arrays(path), fusion)


def read_ir_label(layout: RunLayout, image_id: str) -> np.ndarray:
    """(H, W) uint8 IR label (palette indices; 255 unknown)."""
    path = layout.ir_label_file(image_id)
    try:
        return read_label_png(path)
    except LabelFileError as exc:
        raise StageInputError(f"IR label {exc}; run stage 'ir_labels' again") from None


def load_weights(model: nn.Module, weights: dict, mismatch: str) -> None:
    """Load a checkpoint's weights into the model its config describes; a mismatch (an older
    code version, a hand-edited config) is one line saying what to redo, not a traceback."""
    try:
        model.load_state_dict(weights)
    except RuntimeError:
        raise StageInputError(mismatch) from None


def load_boundary_net(layout: RunLayout, device: torch.device) -> BoundaryNet:
    """The trained boundary net, built as its own checkpoint's config says."""
    state = load_checkpoint(layout.irn_checkpoint, map_location=device)
    irn = checkpoint_config(state).masks.irn
    net = BoundaryNet(irn.backbone, False, irn.freeze_backbone, layout=irn.layout)
    load_weights(net, state["model"],
                 f"boundary network '{layout.irn_checkpoint}' does not match its config (made "
                 f"before masks.irn.layout existed?); rerun stage 'irn' with --force")
    return net.to(device).eval()
