"""Helpers shared by the experiments: network names, training on loaded data, tables."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import torch

from resnetlab.config.train import TrainConfig
from resnetlab.data.bundle import DataBundle
from resnetlab.errors import ResnetlabError
from resnetlab.models import get_model_spec
from resnetlab.training.claim import open_run_dir
from resnetlab.training.run import Start, TrainResult, single_phase, train_in_run
from resnetlab.training.rundir import RunDir
from resnetlab.training.start import build_for_data, checkpoint_header, resolve_for_data

FAMILIES = {"plain": "plain", "cifar": "residual"}  # registry family -> experiment family


def describe_network(name: str, flag: str = "--networks") -> tuple[str, int]:
    """``("plain" | "residual", depth)`` of a CIFAR network; an error naming ``flag`` else."""
    spec = get_model_spec(name)
    depth = re.search(r"\d+$", name)
    if spec.family not in FAMILIES or depth is None:
        raise ResnetlabError(
            f"{flag}: {name!r} is not a CIFAR network; use plain<depth> or resnet<depth> "
            "(e.g. plain20, resnet56)"
        )
    return FAMILIES[spec.family], int(depth.group())


def train_on_bundle(cfg: TrainConfig, bundle: DataBundle, title: str) -> TrainResult:
    """Train ``cfg.model`` on data that is already loaded, as `resnetlab train` does: in run
    folder ``cfg.out`` with config, log, metrics, checkpoints, curves and a final evaluation."""
    cfg.validate()
    cfg = resolve_for_data(cfg, bundle)
    with open_run_dir(cfg.out, cfg.model) as run:
        torch.manual_seed(cfg.seed)
        start = Start(cfg, bundle, build_for_data(cfg, bundle), checkpoint_header(cfg, bundle))
        return train_in_run(start, run, single_phase(cfg), title=title)


def network_params(cfg: TrainConfig, bundle: DataBundle) -> int:
    """Parameters of ``cfg.model`` sized for ``bundle``, counted on the "meta" device."""
    with torch.device("meta"):
        return sum(p.numel() for p in build_for_data(cfg, bundle).parameters())


def experiment_dir(out: str | None, name: str, overwrite: bool) -> RunDir:
    """The experiment's folder: ``out`` (holding no earlier run, unless ``overwrite``, which
    removes it and its runs' folders first) or a new ``runs/<date-time>-<name>``."""
    return open_run_dir(out, name, overwrite=overwrite, nested=True)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table; numbers are expected to be formatted already."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def duration(seconds: float) -> str:
    """``h:mm:ss``."""
    return str(timedelta(seconds=round(seconds)))
