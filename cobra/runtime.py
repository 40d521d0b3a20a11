"""What every trainer shares (CoBra, the boundary network, the segmentation network): the
device named by `train.device`, checked before any work; the warm-up + poly schedule; and one
epoch of training that reads its losses without stalling the device."""

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from tqdm import tqdm

from cobra.errors import ConfigError, NonFiniteLossError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name} but no CUDA device is visible; use auto or cpu")
    device = torch.device(name)
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"train.device={name} but only {torch.cuda.device_count()} CUDA "
                          f"device(s) are visible; use cuda:0..cuda:"
                          f"{torch.cuda.device_count() - 1} or auto")
    return device


class LossMeter:
    """Sums of an epoch's loss terms kept on the device, and the first step whose loss was not
    finite. Reading a loss (`.item()`, or `if not torch.isfinite(...)`) waits for the device to
    finish the step, so a loop that does it every step cannot queue the next step's work; this
    meter is read every `CHECK_EVERY` steps and at the epoch's end instead. The sums are float64,
    added in step order: the same numbers as summing each step's `.item()` in Python."""

    CHECK_EVERY = 20

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.names: list[str] = []
        self.sums: torch.Tensor | None = None
        self.steps = 0  # steps added (a trainer may skip a batch with nothing to learn)
        self.first_bad_step = torch.full((), -1, dtype=torch.int64, device=device)

    def add(self, step: int, terms: Mapping[str, torch.Tensor], total: torch.Tensor) -> None:
        values = torch.stack([t.detach().float() for t in terms.values()]).double()
        if self.sums is None:
            self.names = list(terms)
            self.sums = torch.zeros_like(values)
        self.sums += values
        self.steps += 1
        bad = torch.logical_not(torch.isfinite(total.detach())) & (self.first_bad_step < 0)
        self.first_bad_step = torch.where(bad, step, self.first_bad_step)

    def check(self, what: str, epoch: int, hint: str) -> None:
        """Raise NonFiniteLossError if any step so far had a NaN/inf loss (one device sync)."""
        step = int(self.first_bad_step)
        if step >= 0:
            sums = self.sums.tolist() if self.sums is not None else []
            parts = ", ".join(n for n, v in zip(self.names, sums, strict=True)
                              if not math.isfinite(v))
            raise NonFiniteLossError(f"non-finite {what} at epoch {epoch} step {step}"
                                     f"{f' ({parts})' if parts else ''}; {hint}")

    def means(self) -> dict[str, float]:
        if self.sums is None:
            return {}
        return {name: total / self.steps
                for name, total in zip(self.names, self.sums.tolist(), strict=True)}


def poly_lr(base: float, step: int, total: int, power: float, warmup: int = 0) -> float:
    """Linear warm-up over `warmup` steps, then poly decay to zero at `total`."""
    if step < warmup:
        return base * (step + 1) / warmup
    return base * (1.0 - min(step, total) / max(total, 1)) ** power


class PolyLR(torch.optim.lr_scheduler.LRScheduler):
    """poly_lr for every parameter group from its base lr (the group's lr when the schedule is
    made), stepped once per iteration; its state (the step) is saved with the checkpoint. The
    closed form, not torch's PolynomialLR: that one multiplies the previous lr by a ratio every
    step, which drifts from the closed form in the last bits, and has no warm-up."""

    def __init__(self, optimizer: torch.optim.Optimizer, total: int, power: float,
                 warmup: int = 0) -> None:
        self.total, self.power, self.warmup = total, power, warmup
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        return [poly_lr(base, self.last_epoch, self.total, self.power, self.warmup)
                for base in self.base_lrs]


# (total loss to backpropagate, the named terms to average) for a batch, or None to skip it
LossFn = Callable[[dict], tuple[torch.Tensor, dict[str, torch.Tensor]] | None]


@dataclass(frozen=True)
class EpochInfo:
    """Where an epoch sits: its index, the global step it starts at, and what its messages say."""

    epoch: int
    first_step: int
    what: str  # "loss", "IRN loss", ...: named in the non-finite error
    hint: str  # what to change when the loss is not finite
    desc: str  # the progress bar's label


def train_one_epoch(batches: Iterable[dict], loss_fn: LossFn, optimizer: torch.optim.Optimizer,
                    schedule: PolyLR, device: torch.device, info: EpochInfo,
                    progress: bool = False, total: int | None = None) -> dict[str, float]:
    """One pass over `batches` (the model already in train mode): schedule, loss, backward, step.
    Returns each named term's mean over the steps trained; raises NonFiniteLossError before the
    caller can save a diverged epoch. Losses stay on the device (LossMeter)."""
    meter = LossMeter(device)
    bar = tqdm(batches, total=total, disable=not progress, leave=False, desc=info.desc)
    for step, batch in enumerate(bar):
        # to this step's lr (kept as the optimizer's after the epoch): PolyLR() sets step 0's; a
        # checkpoint from before the schedule was saved resumes at 0 and catches up here
        while schedule.last_epoch < info.first_step + step:
            schedule.step()
        losses = loss_fn(batch)
        if losses is None:
            continue
        loss, terms = losses
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        meter.add(step, terms, loss)
        if (step + 1) % meter.CHECK_EVERY == 0:  # not every step: a read stalls the device queue
            meter.check(info.what, info.epoch, info.hint)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    meter.check(info.what, info.epoch, info.hint)
    return meter.means()
