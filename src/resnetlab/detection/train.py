"""`detect train`'s loop: seeded batches, SGD/AdamW with warmup and cosine decay, mAP on the
validation split each epoch, checkpoints and a training state that resumes bit for bit.

Under torchrun each process trains on its share of every global batch (images ``rank``,
``rank + size``, ...) in DistributedDataParallel; rank 0 alone validates, tests and writes.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from resnetlab.checkpoints.state import capture_rng, load_state, restore_rng, save_state
from resnetlab.detection.checkpoint import save_detector
from resnetlab.detection.config import DetectConfig
from resnetlab.detection.data import (
    DetectionSet,
    detector_inputs,
    device_of,
    num_batches,
    targets_on,
    training_batches,
)
from resnetlab.detection.figures import draw_samples, plot_detection_curves
from resnetlab.detection.metrics import evaluate_detector
from resnetlab.errors import ResnetlabError
from resnetlab.runtime.distributed import World
from resnetlab.training.optim import lr_factor
from resnetlab.training.rundir import RunDir

STATE_KEYS = frozenset(
    {"config", "spec", "model", "optimizer", "scheduler", "epoch", "step", "loss_sum",
     "history", "best", "rng", "elapsed_s"}
)  # fmt: skip
SAMPLES = 8  # test images drawn with their predictions
DATA_KEYS = ("data", "seed", "val_fraction", "test_fraction")  # what rebuilds the splits


@dataclass
class Progress:
    """Where a run stands: the next epoch and step within it, the epoch's loss so far."""

    epoch: int = 0
    step: int = 0
    loss_sum: float = 0.0
    best: float = -1.0
    elapsed_s: float = 0.0


def make_optimizer(cfg: DetectConfig, model: nn.Module, total_steps: int):
    """SGD (momentum 0.9) or AdamW on the trainable parameters; a linear warmup over
    ``warmup_steps``, then cosine decay to zero at ``total_steps``."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    else:
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def factor(step: int) -> float:
        return lr_factor("cosine", step, total_steps, cfg.warmup_steps)

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def fit(
    cfg: DetectConfig,
    model: nn.Module,
    spec: dict[str, Any],
    splits: dict[str, DetectionSet],
    run: RunDir,
    world: World,
    state: dict[str, Any] | None = None,
    limit_steps: int | None = None,
) -> dict[str, float]:
    """Train ``model`` for ``cfg.epochs`` (from ``state`` where resumed) on the processes of
    ``world`` and test the best epoch's weights; return the test metrics. ``limit_steps``
    stops after that many steps of this call, with the state saved (for tests of resuming)."""
    train = splits["train"]
    steps_per_epoch = num_batches(train, cfg.batch_size)
    optimizer, scheduler = make_optimizer(cfg, model, cfg.epochs * steps_per_epoch)
    progress, history = Progress(), []
    device = device_of(model)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        progress = Progress(
            state["epoch"], state["step"], state["loss_sum"], state["best"], state["elapsed_s"]
        )
        history = state["history"]
        restore_rank_rng(state["rng"], world, device)
    run.rewrite_metrics(history)
    trained = world.wrap(model)  # averages the gradients over the processes

    def save(epoch: int, step: int, elapsed_s: float) -> None:
        rng = world.gather(capture_rng(device))  # every process's: each draws its own proposals
        if not world.is_main:
            return
        save_state(
            run.file("state.pt"),
            {
                "config": cfg.as_dict(), "spec": spec, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "epoch": epoch, "step": step, "loss_sum": progress.loss_sum,
                "history": history, "best": progress.best, "rng": rng,
                "elapsed_s": elapsed_s,
            },
        )  # fmt: skip

    steps_this_call = 0
    for epoch in range(progress.epoch, cfg.epochs):
        model.train()
        start, images_seen, epoch_s = time.perf_counter(), 0, 0.0
        batches = training_batches(train, cfg.batch_size, cfg.seed, epoch, progress.step)
        share = slice(world.rank, None, world.size)
        for step, (images, targets) in enumerate(batches, start=progress.step):
            losses = trained(
                detector_inputs(images[share], device), targets_on(targets[share], device)
            )
            loss = sum(losses.values())
            loss_value = float(world.sum(loss.detach().clone())) / world.size
            if not math.isfinite(loss_value):  # every process sees the same sum and stops
                raise non_finite(losses, epoch, step, optimizer)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            progress.loss_sum += loss_value
            images_seen += len(images)
            steps_this_call += 1
            done = step + 1
            if done % cfg.save_every == 0 or steps_this_call == limit_steps:
                epoch_s += time.perf_counter() - start
                start = time.perf_counter()
                save(epoch, done, progress.elapsed_s + epoch_s)
            if steps_this_call == limit_steps:
                return {}
        epoch_s += time.perf_counter() - start
        progress.elapsed_s += epoch_s
        world.average_batchnorm(model)  # --norm bn: each process saw other images
        scores = world.broadcast(evaluate_detector(model, splits["val"]) if world.is_main else None)
        record = {
            "epoch": epoch + 1,
            "train_loss": progress.loss_sum / steps_per_epoch,
            "val_map_50": scores["map_50"],
            "val_map": scores["map"],
            # the lr of the epoch's last step (the optimiser holds the next one's)
            "lr": scheduler.base_lrs[0] * scheduler.lr_lambdas[0](scheduler.last_epoch - 1),
            "images_per_s": images_seen / epoch_s,
            "train_s": epoch_s,
        }
        history.append(record)
        run.append_metrics(record)
        run.print(
            f"Epoch [{epoch + 1}/{cfg.epochs}], Loss: {record['train_loss']:.4f}, "
            f"mAP@0.5: {scores['map_50']:.3f}, mAP@[.5:.95]: {scores['map']:.3f}, "
            f"LR: {record['lr']:.4g}, {record['images_per_s']:.2f} images/s, "
            f"{_clock(progress.elapsed_s)}"
        )
        header = {
            "epoch": epoch + 1,
            "metrics": {k: record[k] for k in ("val_map_50", "val_map")},
            "data": {key: getattr(cfg, key) for key in DATA_KEYS},
        }
        best = scores["map_50"] > progress.best
        progress.best = max(progress.best, scores["map_50"])
        if world.is_main:
            save_detector(run.file("last.safetensors"), model, spec, header)
            if best:
                save_detector(run.file("best.safetensors"), model, spec, header)
            plot_detection_curves(history, run.file("curves.png"), spec["model"])
        progress.step, progress.loss_sum = 0, 0.0
        save(epoch + 1, 0, progress.elapsed_s)
    scores = test_best(model, splits["test"], run, spec) if world.is_main else None
    return world.broadcast(scores)


def test_best(
    model: nn.Module, test: DetectionSet, run: RunDir, spec: dict[str, Any]
) -> dict[str, float]:
    """mAP of the best epoch's weights on the test split; drawings of the first images."""
    from resnetlab.detection.checkpoint import load_detector_state

    model.load_state_dict(load_detector_state(run.file("best.safetensors")))
    scores = evaluate_detector(model, test)
    run.print(f"Test mAP@0.5: {scores['map_50']:.3f}, mAP@[.5:.95]: {scores['map']:.3f}")
    run.write_json("test.json", scores)
    draw_samples(model, test, run.file("predictions"), spec["classes"], SAMPLES)
    return scores


def non_finite(
    losses: dict[str, torch.Tensor], epoch: int, step: int, optimizer: torch.optim.Optimizer
) -> ResnetlabError:
    """The error that stops a run at a non-finite loss, before the update that would spread it
    into the weights (the checkpoints and state on disk stay good): which losses, and where."""
    parts = ", ".join(name for name, value in losses.items() if not torch.isfinite(value).all())
    return ResnetlabError(
        f"non-finite loss ({parts or 'on another process'}) at epoch {epoch + 1}, step "
        f"{step + 1} (lr {optimizer.param_groups[0]['lr']:.4g}); the run stopped before the "
        "update, its files hold the last good weights (a lower --lr or more --warmup-steps may "
        "help)"
    )


def restore_rank_rng(
    saved: list[dict[str, Any]] | dict[str, Any], world: World, device: torch.device
) -> None:
    """Continue this process's random streams from the state's (one per process; a single
    one in states written before detection ran under torchrun)."""
    streams = saved if isinstance(saved, list) else [saved]
    if len(streams) != world.size:
        warnings.warn(
            f"--resume: {world.size} processes, the run had {len(streams)}; the images each "
            "process sees change, so the run will not match an uninterrupted one",
            stacklevel=2,
        )
    restore_rng(streams[world.rank % len(streams)], device)


def read_state(folder: str) -> dict[str, Any]:
    """A detection run's training state."""
    return load_state(f"{folder}/state.pt", STATE_KEYS)


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"
