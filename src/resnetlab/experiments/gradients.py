"""Gradient flow: the gradient norm of every layer of plain and residual networks, at
initialisation and after some training (the article's first FAQ, answered with numbers).

He et al. 2015 (sec. 4.1) trained their plain networks with batch normalisation, "which
ensures forward propagated signals to have non-zero variances", and argue that degradation is
not simply vanishing gradients. This experiment measures ``||dL/dW||`` per layer on one fixed
batch, in fp32, so that the claim can be checked rather than repeated.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from resnetlab.config.train import TrainConfig
from resnetlab.data import load_data
from resnetlab.errors import ResnetlabError
from resnetlab.experiments.common import describe_network, experiment_dir, markdown_table
from resnetlab.experiments.config import GradientConfig
from resnetlab.experiments.figures import plot_gradients
from resnetlab.models import create_model
from resnetlab.runtime.precision import Precision, resolve_device, resolve_precision
from resnetlab.training.batches import BatchOrder, make_loader
from resnetlab.training.optim import build_optimizer, build_scheduler
from resnetlab.training.run import train_one_epoch
from resnetlab.training.rundir import RunDir
from resnetlab.training.step import EpochTally, LossFn, Normalizer, TrainStep, make_loss

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class GradientProfile:
    """One network's per-layer gradient norms at initialisation and after training."""

    name: str
    layers: list[str]
    init: list[float]
    trained: list[float]
    ratio_init: float = field(init=False)
    ratio_trained: float = field(init=False)

    def __post_init__(self) -> None:
        self.ratio_init = first_last_ratio(self.init)
        self.ratio_trained = first_last_ratio(self.trained)


@dataclass
class GradientResult:
    """Every network's profile; the figure, table and JSON are in ``out``."""

    out: Path
    steps: int
    profiles: dict[str, GradientProfile]


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every convolution and linear layer, named, in the order the model defines them
    (input to output for the CIFAR networks)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]


def layer_gradient_norms(model: nn.Module, batch: Batch, loss_fn: LossFn) -> list[float]:
    """``||dL/dW||`` (Frobenius) of every conv/linear weight for one batch, in train mode
    (batch-norm statistics of the batch, as in a training step)."""
    model.train()
    model.zero_grad(set_to_none=True)
    x, y = batch
    loss_fn(model(x), y).backward()
    norms = [float(layer.weight.grad.norm()) for _, layer in weight_layers(model)]
    model.zero_grad(set_to_none=True)
    return norms


def first_last_ratio(norms: list[float]) -> float:
    """Gradient norm of the first layer over that of the last: far below 1 means vanishing
    gradients towards the input, far above 1 exploding ones."""
    return norms[0] / norms[-1] if norms[-1] else math.inf


def run_gradients(cfg: GradientConfig) -> GradientResult:
    """Measure every network of ``cfg`` at init and after ``cfg.steps`` SGD steps; write
    ``gradients.png`` (log scale), ``gradients.md`` and ``gradients.json``."""
    cfg.validate()
    for name in cfg.network_names:
        describe_network(name)
    with experiment_dir(cfg.out, "gradients", cfg.overwrite) as log:
        return _run(cfg, log)


def _run(cfg: GradientConfig, log: RunDir) -> GradientResult:
    bundle = load_data(cfg.data, val_fraction=0.0, test_fraction=0.0, seed=cfg.seed)
    if bundle.kind != "image":
        raise ResnetlabError(f"--data {cfg.data}: the gradient experiment needs images")
    precision = resolve_precision("fp32", resolve_device(cfg.device), bundle.kind)
    normalize = Normalizer(bundle.mean, bundle.std, bundle.input_shape)
    order = BatchOrder(len(bundle.train), cfg.batch_size, shuffle=True, seed=cfg.seed)
    x, y, _ = next(iter(make_loader(bundle.train, order)))
    batch = (normalize(precision.batch(x)), y.to(precision.device))
    names = cfg.network_names
    log.print(
        f"gradients: {', '.join(names)} on {bundle.name} ({len(bundle.train)} samples), "
        f"one fixed batch of {len(y)}, at init and after {cfg.steps} steps"
    )
    result = GradientResult(log.path, cfg.steps, {})
    loss_fn = make_loss("ce")
    for name in names:
        torch.manual_seed(cfg.seed)
        model = precision.prepare(
            create_model(name, num_classes=bundle.num_classes, in_chans=bundle.input_shape[0])
        )
        init = layer_gradient_norms(model, batch, loss_fn)
        _train(model, bundle.train, cfg, precision, normalize, loss_fn)
        trained = layer_gradient_norms(model, batch, loss_fn)
        layers = [layer_name for layer_name, _ in weight_layers(model)]
        profile = GradientProfile(name, layers, init, trained)
        result.profiles[name] = profile
        log.print(
            f"{name}: first/last gradient norm {profile.ratio_init:.3g} at init, "
            f"{profile.ratio_trained:.3g} after {cfg.steps} steps"
        )
    _write(result, bundle.name, log)
    return result


def _train(
    model: nn.Module,
    dataset: Dataset,
    cfg: GradientConfig,
    precision: Precision,
    normalize: Normalizer,
    loss_fn: LossFn,
) -> None:
    """``cfg.steps`` steps of SGD with a constant learning rate, with the engine's loop."""
    recipe = TrainConfig(
        lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, schedule="constant"
    )
    optimizer = build_optimizer(model, recipe)
    scheduler = build_scheduler(optimizer, recipe, cfg.steps, steps_per_epoch=1)
    order = BatchOrder(len(dataset), cfg.batch_size, shuffle=True, seed=cfg.seed)
    loader = make_loader(dataset, order)
    scaler = torch.amp.GradScaler(precision.device.type, enabled=False)
    step = TrainStep(model, optimizer, loss_fn, precision, normalize, scaler=scaler)
    done = 0
    while done < cfg.steps:
        order.set_epoch(order.epoch + 1)
        tally = train_one_epoch(
            step, loader, scheduler, epoch=order.epoch, tally=EpochTally(precision.device),
            max_steps=cfg.steps - done,
        )  # fmt: skip
        done += tally.steps


def _write(result: GradientResult, data_name: str, log: RunDir) -> None:
    """The figure, the table of ratios (also printed) and the JSON of every norm."""
    after = f"after {result.steps} steps"
    plot_gradients(
        {n: {"at initialisation": p.init, after: p.trained} for n, p in result.profiles.items()},
        log.file("gradients.png"),
        f"Gradient norm per layer on {data_name} (one fixed batch, fp32)",
    )
    rows = [
        [name, len(p.layers), f"{p.init[0]:.3g}", f"{p.init[-1]:.3g}", f"{p.ratio_init:.3g}",
         f"{p.ratio_trained:.3g}"]
        for name, p in result.profiles.items()
    ]  # fmt: skip
    headers = ["network", "layers", "first (init)", "last (init)", "first/last (init)"]
    table = markdown_table([*headers, f"first/last ({after})"], rows)
    log.file("gradients.md").write_text(
        f"# Gradient norm per layer ({data_name})\n\n{table}\n\n![gradients](gradients.png)\n"
    )
    for line in table.splitlines():
        log.print(line)
    payload = {
        "experiment": "gradients",
        "data": data_name,
        "steps": result.steps,
        "networks": {name: asdict(p) for name, p in result.profiles.items()},
    }
    log.write_json("gradients.json", payload)
