"""A training run's state: loaders, precision, epochs in phases, checkpoints and the final test."""

from __future__ import annotations

import time
import warnings
from datetime import timedelta
from functools import partial
from typing import Any

import torch
from torch import nn

from resnetlab.data.augment import BatchAugment
from resnetlab.data.bundle import DataBundle
from resnetlab.data.streaming import mixup_cutmix
from resnetlab.engine.checkpoint import load_checkpoint, save_checkpoint
from resnetlab.engine.config import TrainConfig
from resnetlab.engine.loop import (
    Normalizer,
    evaluate_model,
    is_in_memory,
    make_loader,
    make_loss,
    predict,
    train_one_epoch,
)
from resnetlab.engine.metrics import topk_accuracy
from resnetlab.engine.plots import plot_confusion, plot_curves
from resnetlab.engine.precision import resolve_device, resolve_precision
from resnetlab.engine.rundir import RunDir, progress_enabled


def epoch_line(record: dict[str, Any], epochs: int) -> str:
    """The article's ``Epoch [e/N], Loss: x.xxxx`` line, then val accuracy, lr, speed, time."""
    parts = [f"Epoch [{record['epoch']}/{epochs}], Loss: {record['train_loss']:.4f}"]
    if record["val_acc"] is not None:
        parts.append(f"Val acc: {record['val_acc']:.2f}%")
    parts.append(f"LR: {record['lr']:.4g}")
    parts.append(f"{record['samples_per_s']:.0f} samples/s")
    parts.append(str(timedelta(seconds=round(record["elapsed_s"]))))
    return ", ".join(parts)


def batch_augment(cfg: TrainConfig, bundle: DataBundle) -> BatchAugment | None:
    """Batched crop/flip/cutout for images held in memory, or None (nothing asked, or the
    images stream through per-image transforms instead)."""
    wanted = cfg.crop_padding or cfg.flip or cfg.flip_alternate or cfg.cutout
    if not wanted or bundle.kind != "image" or not is_in_memory(bundle.train):
        return None
    return BatchAugment(
        bundle.mean, bundle.std, crop_padding=cfg.crop_padding, padding_mode=cfg.padding_mode,
        flip=cfg.flip, flip_alternate=cfg.flip_alternate, cutout=cfg.cutout, seed=cfg.seed,
    )  # fmt: skip


class Trainer:
    """Trains one model on one DataBundle, epoch by epoch, possibly in several phases
    (each with its own optimiser), keeping ``best``/``last`` checkpoints in the run folder."""

    def __init__(
        self,
        model: nn.Module,
        bundle: DataBundle,
        cfg: TrainConfig,
        run: RunDir,
        header: dict[str, Any],
    ) -> None:
        self.bundle, self.cfg, self.run, self.header = bundle, cfg, run, header
        self.precision = resolve_precision(cfg.precision, resolve_device(cfg.device), bundle.kind)
        self.model = self.precision.prepare(model)
        self.normalize = Normalizer(bundle.mean, bundle.std, bundle.input_shape)
        self.augment = batch_augment(cfg, bundle)
        self.mix = mixup_cutmix(bundle.num_classes, cfg.mixup, cfg.cutmix)
        self.loss_fn = make_loss(cfg.loss, cfg.label_smoothing)
        self.train_loader = make_loader(
            bundle.train, self._train_batch_size(), shuffle=True, seed=cfg.seed,
            workers=cfg.workers, drop_last=True,
        )  # fmt: skip
        self.val_loader = None
        if bundle.val is not None:
            self.val_loader = make_loader(
                bundle.val, 2 * cfg.batch_size, shuffle=False, workers=cfg.workers
            )
        self.scaler = torch.amp.GradScaler(
            self.precision.device.type, enabled=self.precision.name == "fp16"
        )
        self.history: list[dict[str, Any]] = []
        self.best_score, self.best_epoch, self.steps_done = float("-inf"), 0, 0
        self.start = time.perf_counter()

    def _train_batch_size(self) -> int:
        """``--batch-size``, or the whole training split where that is smaller (with a warning):
        training drops an incomplete last batch, and would otherwise have no step at all."""
        samples = len(self.bundle.train)
        if self.cfg.batch_size <= samples:
            return self.cfg.batch_size
        warnings.warn(
            f"--batch-size {self.cfg.batch_size} is larger than the training split of "
            f"--data {self.cfg.data} ({samples} samples); training with batches of {samples}",
            stacklevel=2,
        )
        return samples

    @property
    def steps_per_epoch(self) -> int:
        """Optimiser steps in one pass over the training split."""
        return len(self.train_loader)

    def total_steps(self, epochs: int) -> int:
        """Steps in ``epochs`` epochs, capped by ``--limit-steps`` over the whole run."""
        steps = epochs * self.steps_per_epoch
        if self.cfg.limit_steps is not None:
            steps = min(steps, self.cfg.limit_steps - self.steps_done)
        return max(steps, 1)

    @property
    def out_of_steps(self) -> bool:
        """Whether ``--limit-steps`` has been reached."""
        return self.cfg.limit_steps is not None and self.steps_done >= self.cfg.limit_steps

    def fit(
        self,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        epochs: int,
    ) -> None:
        """Train ``epochs`` more epochs with ``optimizer``; log, validate and checkpoint each."""
        show_bar = progress_enabled(self.cfg.quiet)
        for _ in range(epochs):
            if self.out_of_steps:
                return
            epoch = len(self.history) + 1
            transform = self.normalize
            if self.augment is not None:
                transform = partial(self.augment, epoch=epoch)
            budget = (
                None if self.cfg.limit_steps is None else self.cfg.limit_steps - self.steps_done
            )
            stats = train_one_epoch(
                self.model, self.train_loader, optimizer, scheduler, self.loss_fn,
                self.precision, transform,
                scaler=self.scaler,
                mix=self.mix,
                max_steps=budget,
                progress=f"epoch {epoch}/{self.cfg.epochs}" if show_bar else None,
            )  # fmt: skip
            self.steps_done += stats.steps
            record = {
                "epoch": epoch,
                "step": self.steps_done,
                "train_loss": stats.loss,
                "train_acc": stats.accuracy,
                "lr": optimizer.param_groups[0]["lr"],
                "samples_per_s": stats.samples_per_second,
                "elapsed_s": time.perf_counter() - self.start,
                "val_loss": None,
                "val_acc": None,
            }
            if self.val_loader is not None:
                logits, targets, record["val_loss"] = predict(
                    self.model,
                    self.val_loader,
                    self.precision,
                    self.normalize,
                    self.loss_fn,
                )
                record["val_acc"] = topk_accuracy(logits, targets, 1)
            self._end_epoch(record)

    def _end_epoch(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        self.run.append_metrics(record)
        self.run.print(epoch_line(record, self.cfg.epochs))
        header = {**self.header, "epoch": record["epoch"], "metrics": record}
        state = self.model.state_dict()
        save_checkpoint(self.run.file("last.safetensors"), state, header)
        score = record["val_acc"] if record["val_acc"] is not None else -record["train_loss"]
        if score > self.best_score:
            self.best_score, self.best_epoch = score, record["epoch"]
            save_checkpoint(self.run.file("best.safetensors"), state, header)

    def finish(self, title: str) -> dict[str, Any] | None:
        """Plot the curves, reload the best weights and test them (or validate, without a test
        split); write confusion.json/png and print the article's final accuracy line."""
        plot_curves(self.history, self.run.file("curves.png"), title)
        bundle = self.bundle
        split_name = "test" if bundle.test is not None else "validation"
        dataset = bundle.test if bundle.test is not None else bundle.val
        if dataset is None or not self.history:
            return None
        state, _ = load_checkpoint(self.run.file("best.safetensors"))
        self.model.load_state_dict(state)
        report = evaluate_model(
            self.model, dataset, bundle.classes, self.precision, self.normalize,
            batch_size=2 * self.cfg.batch_size, workers=self.cfg.workers,
            tta=self.cfg.tta == "flip",
        )  # fmt: skip
        report["split"] = split_name
        self.run.write_json("confusion.json", report)
        plot_confusion(
            report["confusion"], bundle.classes, self.run.file("confusion.png"),
            f"{title}, {split_name} split ({report['accuracy']:.1f}%)",
        )  # fmt: skip
        self.run.print(f"Best epoch: {self.best_epoch} (best.safetensors)")
        self.run.print(
            f"Accuracy of the network on the {split_name} images: {report['accuracy']:.1f}%"
        )
        return report
