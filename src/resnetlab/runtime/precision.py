"""Device, numeric precision and memory format for a run."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from resnetlab.errors import ResnetlabError
from resnetlab.runtime.matmul import cpu_bf16_faster

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; anything else must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ResnetlabError(f"--device: unknown device {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ResnetlabError(f"--device {name}: no CUDA device is available here")
    return device


def bf16_supported(device: torch.device) -> bool:
    """Whether ``device`` computes in bf16 natively: a GPU of compute capability 8.0 (Ampere)
    or later (``torch.cuda.is_bf16_supported()`` also counts the emulation of older ones), a
    CPU with AVX-512 BF16 or AMX."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


@dataclass(frozen=True)
class Precision:
    """The autocast dtype (None for fp32) and memory format used for one run."""

    device: torch.device
    dtype: torch.dtype | None
    channels_last: bool
    tf32: bool = False  # fp32 matmuls and convolutions in TF32 (a GPU from Ampere on)

    @property
    def name(self) -> str:
        """``bf16``, ``fp16`` or ``fp32``."""
        return {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}[self.dtype]

    def __str__(self) -> str:
        """Device, precision and memory format: ``cpu bf16, channels-last``."""
        memory = ", channels-last" if self.channels_last else ""
        tf32 = ", tf32 matmuls" if self.tf32 else ""
        return f"{self.device.type} {self.name}{memory}{tf32}"

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast context for forward passes (a no-op in fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """Move ``model`` to the device (and channels-last for 2-D convnets); allow TF32 where
        asked (a setting of the whole process)."""
        if self.tf32:
            torch.set_float32_matmul_precision("high")
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def batch(self, x: torch.Tensor) -> torch.Tensor:
        """Move an input batch to the device, in the model's memory format."""
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def resolve_precision(name: str, device: torch.device, data_kind: str) -> Precision:
    """Resolve ``--precision``. ``auto`` trains tabular models in fp32 (their tiny matrices
    gain nothing from bf16), and convnets

    - on a GPU, in bf16 autocast where it has bf16 natively, else in fp16 autocast (with a
      grad scaler), TF32 allowed for what stays fp32 where the GPU has it;
    - on a CPU, in bf16 autocast where the CPU has it natively and its bf16 matmuls measure
      clearly faster than its fp32 ones (``runtime/matmul.py``), else in fp32; clips always in
      fp32, as a bf16 training step of ``r3d_10_small`` ran 7 times slower than an fp32 one (a
      3-D convolution's forward pass over 100 times; PyTorch 2.14, AMD EPYC).

    Channels-last memory is for 2-D images only (for clips, channels-last-3d sped R3D up and
    slowed R(2+1)D and f-R2D down)."""
    tf32 = False
    if name == "auto":
        name = _auto(device, data_kind)
        tf32 = device.type == "cuda" and bf16_supported(device)  # both came with Ampere
    if name == "bf16" and not bf16_supported(device):
        raise ResnetlabError(f"--precision bf16: this {device.type} device has no native bf16")
    return Precision(device, _DTYPES[name], channels_last=data_kind == "image", tf32=tf32)


def _auto(device: torch.device, data_kind: str) -> str:
    """What ``--precision auto`` means for ``data_kind`` on ``device`` (see above)."""
    if data_kind == "tabular":
        return "fp32"
    if device.type == "cuda":
        return "bf16" if bf16_supported(device) else "fp16"
    if device.type != "cpu" or data_kind == "video" or not bf16_supported(device):
        return "fp32"
    return "bf16" if cpu_bf16_faster() else "fp32"
