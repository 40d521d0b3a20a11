"""Where training runs: the device named by `train.device`, checked before any work."""

from __future__ import annotations

import torch

from cobra.errors import ConfigError


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
