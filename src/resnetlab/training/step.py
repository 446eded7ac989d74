"""The step, model- and data-agnostic: one optimiser step on a batch (``TrainStep``: transform,
mixing, forward pass and loss, backward pass, clipping, update) with the running sums of its
epoch (``EpochTally``), and the forward passes that predict over batches (``predict``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from resnetlab.runtime.compiled import FirstCallTimed, compile_frozen, compile_static
from resnetlab.runtime.precision import Precision
from resnetlab.training.batches import TensorBatches, make_loader
from resnetlab.training.metrics import classification_report

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Reduce = Callable[[torch.Tensor], torch.Tensor]  # e.g. a sum over a run's processes
Mix = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class Transform(Protocol):
    """Model input from a raw batch, in two parts: ``draw``, the batch's random numbers (a
    function of its samples' dataset indices and the epoch alone), and ``apply``, made of
    tensor operations only, so that it can be compiled."""

    def draw(self, indices: torch.Tensor, epoch: int, shape: torch.Size) -> Any:
        """The random numbers for a batch of ``shape`` of the samples ``indices``."""
        ...

    def apply(self, x: torch.Tensor, draws: Any) -> torch.Tensor:
        """The transformed batch (float32), given ``draw``'s numbers."""
        ...


class Normalizer:
    """Standardise batches with the training split's per-channel (or per-feature) statistics
    (a ``Transform`` without random numbers)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], input_shape: Sequence[int]):
        view = (1, -1, *([1] * (len(input_shape) - 1)))
        self.mean = torch.tensor(mean, dtype=torch.float32).view(view)
        self.std = torch.tensor(std, dtype=torch.float32).view(view)

    def draw(self, indices: torch.Tensor, epoch: int, shape: torch.Size) -> None:
        """Nothing: normalisation draws no random numbers."""
        return None

    def apply(self, x: torch.Tensor, draws: None = None) -> torch.Tensor:
        """``(x - mean) / std`` in float32; uint8 images are first scaled to [0, 1]."""
        return self(x)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / std`` in float32; uint8 images are first scaled to [0, 1]."""
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


def make_loss(
    kind: str, label_smoothing: float = 0.0, class_weight: torch.Tensor | None = None
) -> LossFn:
    """Cross-entropy ``-sum_c q_c log p_c(x)`` over labels ``q`` (optionally smoothed), or,
    for a single-logit head, binary cross-entropy ``-[y log s(z) + (1-y) log(1-s(z))]``; each
    sample weighted by its class's ``class_weight`` if given (the mean of the weighted losses,
    as scikit-learn weighs samples: a batch's loss times its size adds up over batches, so a
    split's mean loss does not depend on how it is batched). Regression: the mean squared
    error (``mse``) or Huber loss (``huber``, quadratic within 1) of the single output."""
    if kind in ("mse", "huber"):
        error = F.mse_loss if kind == "mse" else F.huber_loss

        def regression(output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return error(output.squeeze(1).float(), y.float())

        return regression
    if kind == "bce":

        def bce(output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            target = y.float() * (1 - label_smoothing) + label_smoothing / 2
            weight = None if class_weight is None else class_weight[y.long()]
            return F.binary_cross_entropy_with_logits(
                output.squeeze(1).float(), target, weight=weight
            )

        return bce
    if class_weight is None:
        return nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def weighted_ce(output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            output, y, weight=class_weight, label_smoothing=label_smoothing, reduction="none"
        ).mean()

    return weighted_ce


class EpochTally:
    """Running sums of one training epoch, kept on the device and read back once per epoch (or
    when the run's state is saved): the loss over the samples whose loss was finite, correct
    predictions, non-finite losses (the first one's step and lr) and, with gradient clipping,
    gradient norms. ``steps``/``samples`` count on the host. A ``regression`` run counts no
    correct predictions (its training accuracy is None)."""

    def __init__(self, device: torch.device, regression: bool = False) -> None:
        self.regression = regression
        self.loss_sum = torch.zeros((), device=device)
        self.loss_samples = torch.zeros((), dtype=torch.int64, device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.nonfinite = torch.zeros((), dtype=torch.int64, device=device)
        self.first_nonfinite = torch.full((), -1, dtype=torch.int64, device=device)
        self.first_nonfinite_lr = torch.zeros((), dtype=torch.float64, device=device)
        self.grad_norm_sum = torch.zeros((), device=device)
        self.clipped = torch.zeros((), dtype=torch.int64, device=device)
        self.steps = self.samples = self.skipped = 0
        self.seconds = 0.0
        self.lr = 0.0  # the latest step's

    def add(
        self, loss: torch.Tensor, output: torch.Tensor, y: torch.Tensor, lr: float
    ) -> torch.Tensor:
        """Count one step's batch, trained at ``lr``; return whether its loss is finite (on the
        device)."""
        self.lr = lr
        finite = torch.isfinite(loss.detach())
        self.nonfinite += ~finite
        first = (self.first_nonfinite < 0) & ~finite
        self.first_nonfinite = torch.where(first, self.steps, self.first_nonfinite)
        self.first_nonfinite_lr = torch.where(first, lr, self.first_nonfinite_lr)
        self.loss_sum += torch.where(finite, loss.detach().float(), 0.0) * len(y)
        self.loss_samples += finite * len(y)
        if not self.regression:
            hard = y.argmax(1) if y.ndim == 2 else y
            self.correct += (class_logits(output.detach()).argmax(1) == hard).sum()
        self.samples += len(y)
        self.steps += 1
        return finite

    def state_dict(self) -> dict[str, torch.Tensor | int | float]:
        """Plain data for the run's training state (tensors on the CPU)."""
        return {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in vars(self).items()}

    def load_state_dict(self, state: dict[str, torch.Tensor | int | float]) -> None:
        """Continue from ``state_dict()``'s sums."""
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                value = value.to(getattr(self, key).device)
            setattr(self, key, value)

    def summary(self, total: Reduce | None = None) -> dict[str, float | int | None]:
        """Mean (finite) loss, accuracy (%), samples/s and, if any, the steps skipped; with
        ``total`` (a sum over the processes of a run), over every process's samples."""
        sums = torch.stack(
            [self.loss_sum.double(), self.loss_samples.double(), self.correct.double()]
        ).cpu()
        sums = torch.cat([sums, torch.tensor([self.samples, self.skipped], dtype=torch.double)])
        loss_sum, loss_samples, correct, samples, skipped = (total or _same)(sums).tolist()
        summary: dict[str, float | int | None] = {
            "train_loss": loss_sum / max(loss_samples, 1),
            "train_acc": None if self.regression else 100 * correct / max(samples, 1),
            "samples_per_s": samples / max(self.seconds, 1e-9),
        }
        if skipped:
            summary["skipped_steps"] = int(skipped)
        return summary

    def gradient_summary(self) -> dict[str, float]:
        """Mean gradient norm (before clipping) and the share of steps that were clipped."""
        steps = max(self.steps, 1)
        return {
            "grad_norm": float(self.grad_norm_sum) / steps,
            "clipped_frac": int(self.clipped) / steps,
        }


def _same(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


@dataclass(frozen=True)
class StepOptions:
    """How each training step runs: batch mixing, gradient clipping and what a non-finite loss
    does (``skip_nonfinite``: the step changes nothing; else it is counted, for the caller to
    stop the run, without a host sync per step)."""

    mix: Mix | None = None
    clip_grad: float | None = None
    skip_nonfinite: bool = False
    any_process: Reduce | None = None  # under torchrun: a maximum over the processes


class TrainStep:
    """One optimiser step on one batch: transform, mixing, forward pass and loss, backward
    pass, clipping and update, with no read back to the host (unless ``--on-nan skip`` asks).

    With ``compile``, the transform's tensor part and the forward pass with its loss (so also
    the backward pass) run as ``torch.compile`` graphs of static shape; the first step, which
    compiles them, reports its time through ``report``.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: LossFn,
        precision: Precision,
        transform: Transform,
        *,
        scaler: torch.amp.GradScaler,
        options: StepOptions = StepOptions(),
        compile: bool = False,
        report: Callable[[str], None] = print,
    ) -> None:
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.precision, self.transform, self.scaler, self.options = (
            precision, transform, scaler, options
        )  # fmt: skip
        self._apply: Callable[[torch.Tensor, Any], torch.Tensor] = transform.apply
        self._forward = self._forward_loss
        self._train = FirstCallTimed(self._train_on, "the training step", report)
        if compile:
            self._apply = compile_static(transform.apply)
            self._forward = compile_static(self._forward_loss)
        else:
            self._train.seconds = 0.0  # nothing to compile, nothing to report

    def _forward_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss and the model's output for model input ``x`` and targets ``y``."""
        x = self.precision.batch(x)
        with self.precision.autocast():
            output = self.model(x)
            loss = self.loss_fn(output, y)
        return loss, output

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, indices: torch.Tensor, epoch: int,
        tally: EpochTally,
    ) -> float:  # fmt: skip
        """Train on the batch ``(x, y)`` of the samples ``indices`` in ``epoch``, counted in
        ``tally``; return the seconds this call spent compiling (only the first, compiled). A
        step whose loss is non-finite and skipped changes nothing (the forward pass's
        BatchNorm statistics are put back)."""
        compiling = self._train.seconds is None
        self._train(x, y, indices, epoch, tally)
        return (self._train.seconds or 0.0) if compiling else 0.0

    def _train_on(
        self, x: torch.Tensor, y: torch.Tensor, indices: torch.Tensor, epoch: int,
        tally: EpochTally,
    ) -> None:  # fmt: skip
        options = self.options
        device = self.precision.device
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        x = self._apply(x, self.transform.draw(indices, epoch, x.shape))
        if options.mix is not None:
            x, y = options.mix(x, y)
        buffers = [b.clone() for b in self.model.buffers()] if options.skip_nonfinite else []
        loss, output = self._forward(x, y)
        finite = tally.add(loss, output, y, self.optimizer.param_groups[0]["lr"])
        self.optimizer.zero_grad(set_to_none=True)
        if options.any_process is not None and options.skip_nonfinite:  # all skip, or none
            finite = options.any_process((~finite).int()) == 0
        if options.skip_nonfinite and not bool(finite):  # a host sync, asked for by --on-nan skip
            for buffer, saved in zip(self.model.buffers(), buffers, strict=True):
                buffer.copy_(saved)
            tally.skipped += 1
            return
        self.scaler.scale(loss).backward()
        if options.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            norm = nn.utils.clip_grad_norm_(params, options.clip_grad)
            tally.grad_norm_sum += norm.float()
            tally.clipped += norm > options.clip_grad
        self.scaler.step(self.optimizer)
        self.scaler.update()


class InferenceModel:
    """A model ready to predict: in eval mode and, with ``compile``, compiled with freezing
    (``compile_frozen``; the first call, which compiles it, reports its time through
    ``report``). A compiled model takes batches of one size: ``predict`` pads the last."""

    def __init__(
        self, model: nn.Module, compile: bool = False, report: Callable[[str], None] = print
    ) -> None:
        self.model, self.compiled = model.eval(), compile
        self._forward: Callable[[torch.Tensor], torch.Tensor] = model
        if compile:
            self._forward = FirstCallTimed(compile_frozen(model), "the model for inference", report)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(x)


@torch.inference_mode()
def predict(
    model: nn.Module | InferenceModel,
    loader: TensorBatches | DataLoader,
    precision: Precision,
    normalize: Normalizer,
    loss_fn: LossFn | None = None,
    tta: bool = False,
    regression: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Class logits (fp32, CPU) and targets for every sample, plus the mean loss if asked;
    ``regression``: the single output (N,) instead of logits.

    With ``tta``, logits are averaged over the image and its horizontal mirror.
    """
    forward = model if isinstance(model, InferenceModel) else InferenceModel(model)
    logits, targets, total_loss, size = [], [], 0.0, 0
    for x, y, _ in loader:
        size = size or len(x)
        x = precision.batch(normalize(x.to(precision.device, non_blocking=True)))
        if forward.compiled:
            x = padded(x, size)
        with precision.autocast():
            output = forward(x)
            if tta:
                output = (output + forward(x.flip(-1))) / 2
        output = output[: len(y)].float()
        if loss_fn is not None:
            total_loss += float(loss_fn(output, y.to(output.device))) * len(y)
        logits.append((output[:, 0] if regression else class_logits(output)).cpu())
        targets.append(y.cpu())
    y_all = torch.cat(targets)
    return torch.cat(logits), y_all, total_loss / max(len(y_all), 1)


def padded(x: torch.Tensor, size: int) -> torch.Tensor:
    """``x`` with its last sample repeated up to ``size`` samples (a static batch shape)."""
    if len(x) >= size:
        return x
    return torch.cat([x, x[-1:].expand(size - len(x), *x.shape[1:])])


def evaluate_model(
    model: nn.Module,
    dataset: Dataset,
    classes: list[str],
    precision: Precision,
    normalize: Normalizer,
    batch_size: int = 256,
    workers: int = 0,
    tta: bool = False,
    compile: bool = False,
) -> dict:
    """Top-1/top-5, per-class accuracy and confusion matrix of ``model`` on ``dataset`` (with
    ``compile``, the model compiled with freezing)."""
    loader = make_loader(dataset, batch_size, workers=workers, device=precision.device)
    forward = InferenceModel(model, compile)
    logits, targets, _ = predict(forward, loader, precision, normalize, tta=tta)
    return classification_report(logits, targets, classes)
