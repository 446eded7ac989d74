"""Optimisers and learning-rate schedules, stepped once per optimiser step."""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from resnetlab.config.train import TrainConfig


def parameter_groups(
    model: nn.Module, weight_decay: float, decay_norm_and_bias: bool
) -> list[dict]:
    """Trainable parameters in two groups: norm weights and biases (1-D) skip weight decay."""
    params = [p for p in model.parameters() if p.requires_grad]
    if decay_norm_and_bias:
        return [{"params": params, "weight_decay": weight_decay}]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_optimizer(groups: list[dict[str, Any]], cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov) or AdamW over ``groups``, at ``cfg.lr`` unless a
    group sets its own lr."""
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov) or AdamW over ``model``'s trainable parameters."""
    return make_optimizer(parameter_groups(model, cfg.weight_decay, cfg.decay_norm_and_bias), cfg)


def lr_factor(schedule: str, step: int, total: int, warmup: int) -> float:
    """Multiplier of the base (peak) lr at optimiser step ``step`` of ``total``.

    ``step`` divides by 10 at 50% and 75% of training (the paper's schedule, He et al. 2015
    sec. 4.2, expressed as fractions of the run); ``cosine`` anneals to zero; ``onecycle``
    (Smith 2018) rises linearly from 1/25 of the peak over the first 25% of steps (or the
    warmup), then anneals to zero on a cosine. Other schedules warm up linearly over
    ``warmup`` steps first.
    """
    if schedule == "onecycle":
        rise = warmup or max(1, round(0.25 * total))
        if step < rise:
            return 1 / 25 + (1 - 1 / 25) * step / rise
        return _cosine(step - rise, total - rise)
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "step":
        return 0.1 ** sum(step >= total * f for f in (0.5, 0.75))
    if schedule == "cosine":
        return _cosine(step - warmup, total - warmup)
    return 1.0


def _cosine(step: int, steps: int) -> float:
    """Half a cosine from 1 down to 0 over ``steps`` steps."""
    return 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(1, steps))))


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    cfg: TrainConfig,
    total_steps: int,
    steps_per_epoch: int,
    last_step: int = -1,
) -> LambdaLR:
    """The schedule named by ``cfg.schedule``, over ``total_steps`` optimiser steps; given the
    ``last_step`` taken, it sets the lr of the next one. A warmup as long as the run (the
    lr would never decay) gets a warning."""
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    if warmup >= total_steps:
        warnings.warn(
            f"--warmup-epochs {cfg.warmup_epochs:g} ({warmup} steps) is not shorter than the "
            f"run ({total_steps} steps): the lr would only rise",
            stacklevel=2,
        )
    return LambdaLR(
        optimizer,
        lambda step: lr_factor(cfg.schedule, step, total_steps, warmup),
        last_epoch=last_step,
    )
