"""Where training runs (the device named by `train.device`, checked before any work), and what
a training loop keeps per epoch without stalling the device."""

from __future__ import annotations

from collections.abc import Mapping

import torch

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
        self.first_bad_step = torch.full((), -1, dtype=torch.int64, device=device)

    def add(self, step: int, terms: Mapping[str, torch.Tensor], total: torch.Tensor) -> None:
        values = torch.stack([t.detach().float() for t in terms.values()]).double()
        if self.sums is None:
            self.names = list(terms)
            self.sums = torch.zeros_like(values)
        self.sums += values
        bad = torch.logical_not(torch.isfinite(total.detach())) & (self.first_bad_step < 0)
        self.first_bad_step = torch.where(bad, step, self.first_bad_step)

    def due(self, step: int) -> bool:
        return (step + 1) % self.CHECK_EVERY == 0

    def check(self, what: str, epoch: int, hint: str) -> None:
        """Raise NonFiniteLossError if any step so far had a NaN/inf loss (one device sync)."""
        step = int(self.first_bad_step)
        if step >= 0:
            sums = self.sums.tolist() if self.sums is not None else []
            parts = ", ".join(n for n, v in zip(self.names, sums, strict=True)
                              if not torch.isfinite(torch.tensor(v)))
            raise NonFiniteLossError(f"non-finite {what} at epoch {epoch} step {step}"
                                     f"{f' ({parts})' if parts else ''}; {hint}")

    def means(self, steps: int) -> dict[str, float]:
        if self.sums is None:
            return {}
        return {name: total / steps
                for name, total in zip(self.names, self.sums.tolist(), strict=True)}
