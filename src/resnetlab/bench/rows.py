"""The rows of `resnetlab bench`: each runs one round of a fixed number of steps of one way to
train (or run) the model, on random uint8 images already in memory."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch
import torchvision
from torch import nn

from resnetlab.config.train import TrainConfig
from resnetlab.data.augment import BatchAugment
from resnetlab.errors import ResnetlabError
from resnetlab.models import create_model, get_model_spec
from resnetlab.runtime.precision import Precision, bf16_supported, resolve_precision
from resnetlab.training.batches import BatchOrder, TensorBatches
from resnetlab.training.optim import build_optimizer, build_scheduler
from resnetlab.training.run import train_one_epoch
from resnetlab.training.step import (
    EpochTally,
    InferenceModel,
    Normalizer,
    TrainStep,
    make_loss,
    predict,
)

# the user's loops, in a resnetlab checkout (src/resnetlab/bench/rows.py -> benchmarks/)
USER_LOOP = Path(__file__).resolve().parents[3] / "benchmarks" / "user_loop.py"
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


@dataclass
class Row:
    """One way to run the model: ``run`` does one round of ``images`` images."""

    name: str
    what: str  # how it runs, for the table's notes
    precision: str
    run: Callable[[], None]
    images: int
    compiled: bool = False


@dataclass(frozen=True)
class Workload:
    """What every row of one bench runs: the model, its input and the round's length."""

    model: str
    batch: int
    input_size: int | None
    steps: int  # per round
    device: torch.device

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        spec = get_model_spec(self.model)
        if spec.data_kind != "image":
            raise ResnetlabError(f"--model {self.model}: bench measures image models")
        channels, height, _ = spec.input_shape
        size = self.input_size or height
        return channels, size, size

    @property
    def num_classes(self) -> int:
        """The model's default number of classes."""
        return get_model_spec(self.model).num_classes

    def images(self, batches: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``batches`` batches of random uint8 images and labels, seeded."""
        generator = torch.Generator().manual_seed(0)
        shape = (batches * self.batch, *self.input_shape)
        x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
        y = torch.randint(0, self.num_classes, (len(x),), generator=generator)
        return x.to(self.device), y.to(self.device)

    def resnetlab_model(self) -> nn.Module:
        """resnetlab's own model, seeded."""
        torch.manual_seed(0)
        return create_model(self.model, in_chans=self.input_shape[0])

    def user_model(self) -> tuple[nn.Module, str]:
        """torchvision's model of the same name where there is one, else resnetlab's; and
        which it is."""
        torch.manual_seed(0)
        spec = get_model_spec(self.model)
        builder = getattr(torchvision.models, self.model, None)
        if spec.family == "imagenet" and builder is not None and self.input_shape[0] == 3:
            return builder(num_classes=self.num_classes), f"torchvision {self.model}"
        return self.resnetlab_model(), f"resnetlab {self.model}"


def load_user_loops(path: str | None) -> ModuleType | None:
    """The module of the user's loops (``benchmarks/user_loop.py`` of a checkout, or
    ``path``); None where resnetlab is installed without its checkout and no path is given."""
    file = Path(path) if path else USER_LOOP
    if not file.is_file():
        if path:
            raise ResnetlabError(f"--user-loop {path}: no such file")
        return None
    spec = importlib.util.spec_from_file_location("resnetlab_user_loop", file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # a user's file: any error it raises is its own
        raise ResnetlabError(f"--user-loop {file}: {type(exc).__name__}: {exc}") from None
    return module


def _repeat(step: Callable[[], None], times: int) -> Callable[[], None]:
    def run() -> None:
        for _ in range(times):
            step()

    return run


def training_rows(
    work: Workload, loops: ModuleType | None, compile: bool, report: Callable[[str], None]
) -> list[Row]:
    """seed-style and the user's loop (when ``loops`` is there), resnetlab's training step
    as `train` runs it, and the same compiled (with ``compile``)."""
    x, y = work.images(1)
    rows = []
    if loops is not None:
        model, which = work.user_model()
        seed = loops.seed_style_step(model.to(work.device), x, y, MEAN, STD)
        rows.append(Row("seed-style", f"{which}, fp32 NCHW eager", "fp32", seed, work.batch))
        bf16 = bf16_supported(work.device)  # a user turns it on where it is native
        model, which = work.user_model()
        user = loops.user_train_step(model.to(work.device), x, y, MEAN, STD, bf16=bf16)
        label = "bf16" if bf16 else "fp32"
        rows.append(Row("user", f"{which}, {label} + channels-last eager", label, user,
                        work.batch))  # fmt: skip
    variants = [False, True] if compile else [False]
    for compiled in variants:
        run, precision = _engine_training(work, compiled, report)
        name = "resnetlab --compile" if compiled else "resnetlab"
        what = f"resnetlab {work.model}, `train`'s step, batched crop + flip"
        rows.append(
            Row(name, what, precision.name, run, work.steps * work.batch, compiled=compiled)
        )
    if loops is not None:  # the same round length for every row
        for row in rows[:2]:
            row.run, row.images = _repeat(row.run, work.steps), work.steps * work.batch
    return rows


def _engine_training(
    work: Workload, compile: bool, report: Callable[[str], None]
) -> tuple[Callable[[], None], Precision]:
    """One epoch of ``work.steps`` batches of `train`'s own step (``train_one_epoch``), fed
    from in-memory uint8 images with the batched augmentation, per call."""
    precision = resolve_precision("auto", work.device, "image")
    model = precision.prepare(work.resnetlab_model())
    recipe = TrainConfig(model=work.model, batch_size=work.batch, crop_padding=4, flip=True)
    optimizer = build_optimizer(model, recipe)
    scheduler = build_scheduler(optimizer, recipe, 10**6, work.steps)
    x, y = work.images(work.steps)
    order = BatchOrder(len(x), work.batch, shuffle=True, drop_last=True)
    batches = TensorBatches(x, y, order)
    augment = BatchAugment(MEAN, STD, crop_padding=4, flip=True)
    step = TrainStep(
        model, optimizer, make_loss("ce"), precision, augment,
        scaler=torch.amp.GradScaler(work.device.type, enabled=False), compile=compile,
        report=report,
    )  # fmt: skip

    def run() -> None:
        order.set_epoch(order.epoch + 1)
        tally = EpochTally(work.device)
        train_one_epoch(step, batches, scheduler, epoch=order.epoch, tally=tally)

    return run, precision


def inference_rows(
    work: Workload, loops: ModuleType | None, compile: bool, report: Callable[[str], None]
) -> list[Row]:
    """seed-style (fp32 NCHW eager) and the user's eager loop (when ``loops`` is there), then
    resnetlab's `eval` path (``predict``, normalisation included), eager and compiled with
    freezing."""
    rows = []
    if loops is not None:
        x, _ = work.images(1)
        model, which = work.user_model()
        plain = loops.user_infer_step(
            model.to(work.device), x, MEAN, STD, bf16=False, channels_last=False
        )
        rows.append(Row("seed-style", f"{which}, fp32 NCHW eager", "fp32", plain, work.batch))
        bf16 = bf16_supported(work.device)  # a user turns it on where it is native
        model, which = work.user_model()
        user = loops.user_infer_step(model.to(work.device), x, MEAN, STD, bf16=bf16)
        label = "bf16" if bf16 else "fp32"
        rows.append(Row("user", f"{which}, {label} + channels-last", label, user, work.batch))
        for row in rows:
            row.run, row.images = _repeat(row.run, work.steps), work.steps * work.batch
    for compiled in [False, True] if compile else [False]:
        run, precision = _engine_inference(work, compiled, report)
        name = "resnetlab --compile" if compiled else "resnetlab"
        what = f"resnetlab {work.model}, `eval`'s predict" + (" with freezing" if compiled else "")
        rows.append(
            Row(name, what, precision.name, run, work.steps * work.batch, compiled=compiled)
        )
    if work.device.type == "cpu" and importlib.util.find_spec("onnxruntime") is not None:
        rows.append(_int8_row(work))
    return rows


def _int8_row(work: Workload) -> Row:
    """`resnetlab quantize`'s network (onnxruntime, static int8, per-channel weights),
    calibrated on random inputs (speed only), fed through the same ``predict``."""
    from resnetlab.inference.int8 import int8_network

    network = int8_network(work.resnetlab_model().eval(), work.input_shape, batch_size=work.batch)
    x, y = work.images(work.steps)
    batches = TensorBatches(x, y, BatchOrder(len(x), work.batch))
    normalize = Normalizer(MEAN, STD, work.input_shape)
    precision = Precision(work.device, None, channels_last=False)

    def run() -> None:
        predict(network, batches, precision, normalize)

    what = f"resnetlab {work.model}, `quantize`'s int8 network (onnxruntime)"
    return Row("resnetlab int8", what, "int8", run, work.steps * work.batch)


def _engine_inference(
    work: Workload, compile: bool, report: Callable[[str], None]
) -> tuple[Callable[[], None], Precision]:
    """``predict`` over ``work.steps`` batches of in-memory uint8 images, per call; compiled,
    the model is compiled once, on the first call."""
    precision = resolve_precision("auto", work.device, "image")
    model = precision.prepare(work.resnetlab_model())
    x, y = work.images(work.steps)
    batches = TensorBatches(x, y, BatchOrder(len(x), work.batch))
    normalize = Normalizer(MEAN, STD, work.input_shape)
    forward = InferenceModel(model, compile, report)

    def run() -> None:
        predict(forward, batches, precision, normalize)

    return run, precision
