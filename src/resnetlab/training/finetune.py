"""`resnetlab finetune`: start from pretrained weights and train them on new data, by strategy."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from resnetlab.checkpoints.state_dicts import WeightsFile
from resnetlab.config.finetune import FinetuneConfig
from resnetlab.runtime.distributed import joined
from resnetlab.training.claim import open_run_dir, run_name
from resnetlab.training.phases import check_resumed_phases, freeze_batchnorm
from resnetlab.training.run import TrainResult, check_on_main, start_run, train_in_run
from resnetlab.training.rundir import RunDir


def finetune(cfg: FinetuneConfig) -> TrainResult:
    """Fine-tune the model of ``cfg.weights`` on ``cfg.data``; the checkpoints record the
    source file's name and sha256, the strategy and its phases. ``cfg.overwrite``: as `train`'s."""
    with joined(cfg.device, cfg.dist_timeout) as world:
        cfg, weights = check_on_main(cfg, world)
        name = run_name(f"finetune-{Path(cfg.weights).stem}", cfg.data)
        with open_run_dir(
            cfg.out, name, world=world, resume=cfg.resume, overwrite=cfg.overwrite
        ) as run:
            return _finetune_in(cfg, weights, run)


def _finetune_in(cfg: FinetuneConfig, weights: WeightsFile | None, run: RunDir) -> TrainResult:
    """The fine-tuning run of ``cfg`` (checked) in ``run``."""
    phases = cfg.phases()
    start = start_run(cfg, weights)
    if cfg.bn == "frozen":
        freeze_batchnorm(start.model)
    if start.resume is not None:
        check_resumed_phases(start.header["finetune"]["phases"], phases, start.resume["phase"])
    start.header["finetune"] = {
        "strategy": cfg.strategy,
        "bn": cfg.bn,
        "phases": [asdict(phase) for phase in phases],
    }
    return train_in_run(
        start, run, phases,
        bn_policy=cfg.bn, stage_decay=cfg.stage_decay, announce_phases=True,
        title=f"{start.cfg.model} fine-tuned ({cfg.strategy}) on {start.bundle.name}",
    )  # fmt: skip
