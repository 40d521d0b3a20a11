"""Device fast paths, each a no-op where it does not apply, so CPU runs stay as they were.

bf16 autocast (`train.amp`), channels_last for the CNN branch, cuDNN autotuning and pinned host
memory on CUDA. tests/test_accel.py checks on CPU that the autocast and channels_last paths
give the losses of the plain path within tolerance."""

import contextlib

import torch
from torch import nn

AMP_DTYPES = {"bf16": torch.bfloat16}


def configure_backend(device: torch.device) -> None:
    """Per-process settings for fast kernels: cuDNN picks the fastest algorithm per shape (the
    training crop is fixed, so the search is paid once)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """Mixed precision for the forward pass and the losses (`amp`: bf16 or none). bf16 needs no
    loss scaling: its exponent range is fp32's."""
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp])


def slow_amp_warning(amp: str, device: torch.device) -> str | None:
    """A warning when bf16 autocast would run on a CPU that emulates bf16 (no AVX512-BF16, no
    AMX): there every bf16 matmul and convolution converts, and the run is slower than fp32."""
    if amp != "bf16" or device.type != "cpu":
        return None
    native = [getattr(torch.cpu, probe, lambda: False)()
              for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if any(native):
        return None
    return ("warning: train.amp=bf16 on a CPU without native bf16 (AVX512-BF16 or AMX) runs "
            "slower than fp32; set train.amp=none")


def use_channels_last(model: nn.Module, device: torch.device, enabled: bool | None = None) -> bool:
    """Store the CNN branch's weights NHWC (cuDNN's and Tensor Cores' native layout); `None`
    means on CUDA only. The ViT is left alone: its patch embedding reads either layout."""
    enabled = device.type == "cuda" if enabled is None else enabled
    cnn = getattr(model, "cnn", None)
    if enabled and cnn is not None:
        cnn.to(memory_format=torch.channels_last)
    return enabled and cnn is not None


def to_device(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """A batch onto the device (asynchronously from pinned memory), NHWC when the CNN is."""
    images = images.to(device, non_blocking=device.type == "cuda")
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


def loader_options(device: torch.device) -> dict:
    """DataLoader settings: pinned host memory when copying to a GPU."""
    return {"pin_memory": device.type == "cuda"}
