"""The model- and data-agnostic training and inference loops."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset
from tqdm import tqdm

from resnetlab.engine.metrics import classification_report
from resnetlab.engine.precision import Precision

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # inputs, targets, sample indices
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Transform = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (inputs, indices) -> inputs
Mix = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class TensorBatches:
    """Batches straight from in-memory tensors: no per-sample Python calls. Each batch is
    ``(x, y, indices)``, the indices being the samples' positions in the dataset."""

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        shuffle: bool,
        seed: int,
        drop_last: bool = False,
    ) -> None:
        self.x, self.y, self.batch_size, self.shuffle = x, y, batch_size, shuffle
        self.drop_last = drop_last
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        n = len(self.y)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        n = len(self.y)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            idx = order[start : start + self.batch_size]
            yield self.x[idx], self.y[idx], idx


class Indexed(Dataset):
    """``(x, y, index)`` for each ``(x, y)`` of ``dataset``, so that batches carry the
    positions of their samples."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        x, y = self.dataset[index]
        return x, y, index


def _as_tensors(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The (x, y) tensors behind a TensorDataset or a Subset of one, else None."""
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[0], dataset.tensors[1]
    if isinstance(dataset, Subset):
        inner = _as_tensors(dataset.dataset)
        if inner is not None:
            idx = torch.as_tensor(dataset.indices)
            return inner[0][idx], inner[1][idx]
    return None


def is_in_memory(dataset: Dataset) -> bool:
    """Whether ``dataset`` is (a subset of) in-memory tensors, batched without a DataLoader."""
    return _as_tensors(dataset) is not None


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    workers: int = 0,
    drop_last: bool = False,
) -> TensorBatches | DataLoader:
    """A seeded iterator of ``(x, y, indices)`` batches: a fast tensor path for in-memory data,
    else a DataLoader. Training drops an incomplete last batch (``drop_last``), so that every
    step sees a full batch (a batch of one breaks BatchNorm); evaluation keeps every sample."""
    tensors = _as_tensors(dataset)
    if tensors is not None:
        return TensorBatches(*tensors, batch_size, shuffle, seed, drop_last)
    return DataLoader(
        Indexed(dataset),
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),
        generator=torch.Generator().manual_seed(seed),
    )


class Normalizer:
    """Standardise batches with the training split's per-channel (or per-feature) statistics."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], input_shape: Sequence[int]):
        view = (1, -1, *([1] * (len(input_shape) - 1)))
        self.mean = torch.tensor(mean, dtype=torch.float32).view(view)
        self.std = torch.tensor(std, dtype=torch.float32).view(view)

    def __call__(self, x: torch.Tensor, indices: torch.Tensor | None = None) -> torch.Tensor:
        """``(x - mean) / std`` in float32; uint8 images are first scaled to [0, 1]. The
        samples' ``indices`` are not needed (``Transform``'s signature)."""
        if self.mean.device != x.device:
            self.mean, self.std = self.mean.to(x.device), self.std.to(x.device)
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
        return (x - self.mean) / self.std


def class_logits(output: torch.Tensor) -> torch.Tensor:
    """Per-class logits: a single-logit (binary cross-entropy) head becomes ``[0, z]``,
    whose softmax is ``[1 - sigmoid(z), sigmoid(z)]``."""
    if output.shape[1] == 1:
        return torch.cat([torch.zeros_like(output), output], dim=1)
    return output


def make_loss(kind: str, label_smoothing: float = 0.0) -> LossFn:
    """Cross-entropy ``-sum_c q_c log p_c(x)`` over labels ``q`` (optionally smoothed), or,
    for a single-logit head, binary cross-entropy ``-[y log s(z) + (1-y) log(1-s(z))]``."""
    if kind == "bce":

        def bce(output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            target = y.float() * (1 - label_smoothing) + label_smoothing / 2
            return F.binary_cross_entropy_with_logits(output.squeeze(1).float(), target)

        return bce
    return nn.CrossEntropyLoss(label_smoothing=label_smoothing)


@dataclass
class EpochStats:
    """Mean loss and accuracy (%) over one pass, with throughput."""

    loss: float
    accuracy: float
    samples: int
    seconds: float
    steps: int

    @property
    def samples_per_second(self) -> float:
        """Training throughput."""
        return self.samples / max(self.seconds, 1e-9)


def train_one_epoch(
    model: nn.Module,
    loader: TensorBatches | DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loss_fn: LossFn,
    precision: Precision,
    transform: Transform,
    *,
    scaler: torch.amp.GradScaler,
    mix: Mix | None = None,
    max_steps: int | None = None,
    progress: str | None = None,
) -> EpochStats:
    """One pass over ``loader`` (or ``max_steps`` optimiser steps, whichever ends first).

    ``transform`` turns a raw batch on the device and its samples' indices into model input
    (normalisation, and batch augmentation); ``mix`` (MixUp/CutMix) then mixes images and turns
    labels into soft targets.
    """
    model.train()
    total_loss = torch.zeros(())
    correct = samples = steps = 0
    start = time.perf_counter()
    bar = tqdm(loader, desc=progress, leave=False, disable=progress is None, unit="batch")
    for x, y, indices in bar:
        if max_steps is not None and steps >= max_steps:
            break
        x, y = x.to(precision.device, non_blocking=True), y.to(precision.device, non_blocking=True)
        x = transform(x, indices)
        if mix is not None:
            x, y = mix(x, y)
        x = precision.batch(x)
        with precision.autocast():
            output = model(x)
            loss = loss_fn(output, y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        total_loss += loss.detach().float().cpu() * len(y)
        hard = y.argmax(1) if y.ndim == 2 else y
        correct += int((class_logits(output.detach()).argmax(1) == hard).sum())
        samples += len(y)
        steps += 1
    bar.close()
    seconds = time.perf_counter() - start
    return EpochStats(
        float(total_loss) / max(samples, 1),
        100 * correct / max(samples, 1),
        samples,
        seconds,
        steps,
    )


@torch.inference_mode()
def predict(
    model: nn.Module,
    loader: TensorBatches | DataLoader,
    precision: Precision,
    normalize: Normalizer,
    loss_fn: LossFn | None = None,
    tta: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Class logits (fp32, CPU) and targets for every sample, plus the mean loss if asked.

    With ``tta``, logits are averaged over the image and its horizontal mirror.
    """
    model.eval()
    logits, targets, total_loss = [], [], 0.0
    for x, y, _ in loader:
        x = precision.batch(normalize(x.to(precision.device, non_blocking=True)))
        with precision.autocast():
            output = model(x)
            if tta:
                output = (output + model(x.flip(-1))) / 2
        if loss_fn is not None:
            total_loss += float(loss_fn(output.float(), y.to(output.device))) * len(y)
        logits.append(class_logits(output.float()).cpu())
        targets.append(y.cpu())
    y_all = torch.cat(targets)
    return torch.cat(logits), y_all, total_loss / max(len(y_all), 1)


def evaluate_model(
    model: nn.Module,
    dataset: Dataset,
    classes: list[str],
    precision: Precision,
    normalize: Normalizer,
    batch_size: int = 256,
    workers: int = 0,
    tta: bool = False,
) -> dict:
    """Top-1/top-5, per-class accuracy and confusion matrix of ``model`` on ``dataset``."""
    loader = make_loader(dataset, batch_size, shuffle=False, workers=workers)
    logits, targets, _ = predict(model, loader, precision, normalize, tta=tta)
    return classification_report(logits, targets, classes)
