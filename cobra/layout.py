"""Where every stage reads and writes: the on-disk contract of a run directory, in one place.

    RUN/
      config.yaml            resolved config of the run
      metrics.jsonl          the file reporter's log (one JSON object a line)
      summary.json           headline metrics of every stage that finished
      status.json            how the last command on the run ended: FINISHED or FAILED
      error.log              traceback of an unexpected error (the `error:` line names it)
      .lock                  held (flock) by the command working on the run (`cobra.locks`)
      checkpoints/last.pt    CoBra checkpoint (weights, optimizer, epoch, config)
      seeds/<id>.npz         per-image CAMs (stage `seeds`)
      seeds/eval.json        seed mIoU per threshold protocol
      ir_labels/<id>.png     IR labels, palette PNG, 255 = unknown (stage `ir_labels`)
      irn/model.pt           refinement network (stage `irn`)
      masks/rw/<id>.npz      random-walk class probabilities (stage `masks`)
      masks/png/<id>.png     pseudo masks (stage `masks`)
      segment/model.pt       segmentation network (stage `segment`)
      segment/pred/<id>.png  segmentation predictions
      image_counts/<stage>.npz  each scored image's (3, K) IoU counts behind the stage's
                             headline score (seeds, masks, segment)
      pictures/*.png         overlays for humans"""

import errno
import json
import os
import re
import secrets
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cobra.errors import CobraError

# Each image's IoU counts behind a headline score, by metric: a path of the run directory and,
# the same, of its MLflow run's artifacts (what the sweep's paired test over images reads).
# Not inside seeds/ or masks/, whose *.npz are one image each.
IMAGE_COUNTS_DIR = "image_counts"
IMAGE_COUNTS = {"seed_miou": f"{IMAGE_COUNTS_DIR}/seeds.npz",
                "mask_miou": f"{IMAGE_COUNTS_DIR}/masks.npz",
                "seg_miou": f"{IMAGE_COUNTS_DIR}/segment.npz"}


@dataclass(frozen=True)
class RunLayout:
    root: Path

    # --- files of the run as a whole
    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def status(self) -> Path:
        return self.root / "status.json"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    @property
    def error_log(self) -> Path:
        return self.root / "error.log"

    @property
    def pictures(self) -> Path:
        return self.root / "pictures"

    # --- stage `train`
    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.pt"

    # --- stage `seeds`
    @property
    def seeds(self) -> Path:
        return self.root / "seeds"

    def seed_file(self, image_id: str) -> Path:
        return self.seeds / f"{image_id}.npz"

    @property
    def seeds_eval(self) -> Path:
        return self.seeds / "eval.json"

    @property
    def seed_image_counts(self) -> Path:
        return self.root / IMAGE_COUNTS["seed_miou"]

    # --- stage `ir_labels`
    @property
    def ir_labels(self) -> Path:
        return self.root / "ir_labels"

    def ir_label_file(self, image_id: str) -> Path:
        return self.ir_labels / f"{image_id}.png"

    # --- stage `irn`
    @property
    def irn(self) -> Path:
        return self.root / "irn"

    @property
    def irn_checkpoint(self) -> Path:
        return self.irn / "model.pt"

    # --- stage `masks`
    @property
    def masks(self) -> Path:
        return self.root / "masks"

    def rw_file(self, image_id: str) -> Path:
        return self.masks / "rw" / f"{image_id}.npz"

    def mask_file(self, image_id: str) -> Path:
        return self.masks / "png" / f"{image_id}.png"

    @property
    def mask_image_counts(self) -> Path:
        return self.root / IMAGE_COUNTS["mask_miou"]

    # --- stage `segment`
    @property
    def segment(self) -> Path:
        return self.root / "segment"

    @property
    def segment_checkpoint(self) -> Path:
        return self.segment / "model.pt"

    @property
    def seg_image_counts(self) -> Path:
        return self.root / IMAGE_COUNTS["seg_miou"]

    # --- helpers
    def directories(self) -> tuple[Path, ...]:
        """Every directory a stage writes into."""
        return (self.checkpoints, self.seeds, self.ir_labels, self.irn, self.masks,
                self.masks / "rw", self.masks / "png", self.segment, self.segment / "pred",
                self.pictures)

    def read_summary(self) -> dict[str, Any]:
        return json.loads(self.summary.read_text()) if self.summary.exists() else {}

    def update_summary(self, metrics: dict[str, Any]) -> None:
        """Merge `metrics` into summary.json (atomically, so a crash never leaves half a file)."""
        merged = {**self.read_summary(), **metrics}
        atomic_write_text(self.summary, json.dumps(merged, indent=2, sort_keys=True))

    def write_status(self, status: str, error: str | None = None) -> None:
        """Record how the last command on this run ended (atomically: never half a file)."""
        record = {"status": status, "time": round(time.time(), 3)}
        if error is not None:
            record["error"] = error
        atomic_write_text(self.status, json.dumps(record, indent=2))


# What a run name must not hold: it is one directory under run.dir, so no path separator (an
# absolute path or `../x` would leave run.dir) and no control character.
NOT_IN_RUN_NAME = re.compile(r"[/\\\x00-\x1f\x7f]")


def check_run_name(name: str, parent: Path) -> None:
    """Refuse a run name that would not be one new directory inside `parent`."""
    if not name.strip() or name in (".", "..") or NOT_IN_RUN_NAME.search(name):
        raise CobraError(f"run name {name!r} must be one directory name (no '/', '\\', "
                         f"control characters, '.' or '..'): it is made under run.dir; "
                         f"choose another --name (run.name)")
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent  # run.dir is made later: ask the filesystem it will be on
    try:
        limit = os.pathconf(parent, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    if len(name.encode()) > limit:
        raise CobraError(f"run name is {len(name.encode())} bytes but the filesystem of "
                         f"'{parent}' allows {limit}; choose a shorter --name (run.name)")


def new_run(parent: str | Path, name: str | None, *, stamp_if_taken: bool = False) -> RunLayout:
    """Create a fresh run directory that this process alone owns.

    The directory is made with an exclusive `mkdir` (no exist-check beforehand), so two
    processes can never share one: with an explicit `name` the second one is refused (or, with
    `stamp_if_taken`, gets the name plus a timestamp and a random suffix: a command the user
    cannot name, such as `final`); a default (timestamped) name gets a random suffix and a
    fresh one on the rare collision."""
    parent = Path(parent).expanduser().resolve()
    if name is not None:
        check_run_name(name, parent)
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CobraError(f"cannot create run.dir '{parent}' ({exc.strerror}); set run.dir to "
                         f"a writable directory") from None
    for attempt in range(100):
        stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
        if name is None:
            root = parent / stamp
        else:
            root = parent / (name if attempt == 0 else f"{name}-{stamp}")
        try:
            root.mkdir()
        except FileExistsError:
            if name and not stamp_if_taken:
                raise CobraError(f"run directory '{root}' already exists; choose another "
                                 f"--name (run.name) or pass --resume to continue it") from None
            continue
        except OSError as exc:
            if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC):
                raise
            raise CobraError(f"cannot create run directory '{root}' ({exc.strerror}); set "
                             f"run.dir to a writable directory") from None
        return RunLayout(root)
    raise CobraError(f"could not find a free run directory name under '{parent}'; pass --name")


def open_run(path: str | Path) -> RunLayout:
    """An existing run directory (one with a config.yaml)."""
    root = Path(path).expanduser().resolve()
    if not (root / "config.yaml").is_file():
        raise CobraError(f"'{root}' is not a run directory (no config.yaml); "
                         f"run `launch.py train` first or check the path")
    layout = RunLayout(root)
    for directory in layout.directories():
        if directory.exists() and not directory.is_dir():
            raise CobraError(f"'{directory}' is a file where the run keeps a directory; move "
                             f"it out of the run directory")
    return layout


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temp file in the same directory + fsync + rename: all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())
