"""The loops `resnetlab bench` compares resnetlab with: what a PyTorch user would write.

- ``seed_style_step``: the tutorial's loop (fp32, NCHW, eager, inputs normalised beforehand,
  the running loss read with ``.item()`` after every step).
- ``user_train_step``: torchvision's model (resnetlab's where torchvision has none) with the two
  lines that make a CPU fast, bf16 autocast and channels-last, in a plain eager loop: SGD with
  momentum on a uint8 batch already in memory, normalised on the fly, nothing read back. Every
  loop runs on the device that its model and batch are on, with that device's autocast.
- ``user_infer_step``: the same model predicting a uint8 batch under ``inference_mode``.

Each returns a function that runs one step on a fixed batch. Run this file alone to time the
user's training loop:  python benchmarks/user_loop.py --model resnet18 --batch 16 --size 224
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    mean_t = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
    return (images.float() / 255 - mean_t) / std_t


def seed_style_step(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
) -> Callable[[], None]:
    """One step of the tutorial's loop: ``optimizer.zero_grad(); loss.backward();
    optimizer.step(); running_loss += loss.item()``."""
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    inputs = _normalize(images, mean, std)  # the tutorial's DataLoader yields normalised floats
    model.train()
    running_loss = 0.0

    def step() -> None:
        nonlocal running_loss
        outputs = model(inputs)
        loss = criterion(outputs, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        running_loss += loss.item()

    return step


def user_train_step(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    bf16: bool = True,
) -> Callable[[], None]:
    """One training step as a user who read PyTorch's CPU performance guide would write it."""
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    model.train()

    def step() -> None:
        x = _normalize(images, mean, std).contiguous(memory_format=torch.channels_last)
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def user_infer_step(
    model: nn.Module,
    images: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    bf16: bool = True,
    channels_last: bool = True,
) -> Callable[[], None]:
    """One batch of predictions, eager, under ``inference_mode``."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=layout).eval()
    device = images.device.type

    def step() -> None:
        with torch.inference_mode(), torch.autocast(device, torch.bfloat16, enabled=bf16):
            model(_normalize(images, mean, std).contiguous(memory_format=layout)).float()

    return step


def main() -> None:
    import torchvision

    parser = argparse.ArgumentParser(description="Time the user's training loop alone.")
    parser.add_argument("--model", default="resnet18", help="a torchvision classification model")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    args = parser.parse_args()
    model = getattr(torchvision.models, args.model)(num_classes=10)
    images = torch.randint(0, 256, (args.batch, 3, args.size, args.size), dtype=torch.uint8)
    labels = torch.randint(0, 10, (args.batch,))
    step = user_train_step(model, images, labels, [0.5] * 3, [0.25] * 3, bf16=not args.fp32)
    step()  # warm-up
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    print(f"{args.model}: {args.batch * args.steps / (time.perf_counter() - start):.1f} img/s")


if __name__ == "__main__":
    main()
