"""What the machine is: its name (its matmul ceiling is measured by ``runtime/matmul.py``)."""

from __future__ import annotations

import torch

from resnetlab.runtime.matmul import cpu_name


def machine_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name (from /proc/cpuinfo where there is one)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()
