"""`resnetlab finetune`: start from pretrained weights and train them on new data, by strategy."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from resnetlab.commands.train import (
    TrainResult,
    checkpoint_header,
    describe_run,
    load_for_weights,
)
from resnetlab.engine.config import AUTO_MODEL, TrainConfig
from resnetlab.engine.finetune import (
    BN_POLICIES,
    STRATEGIES,
    Phase,
    fit_phases,
    freeze_batchnorm,
    plan_phases,
)
from resnetlab.engine.rundir import RunDir, default_run_dir
from resnetlab.engine.state_dicts import WeightsFile, read_weights
from resnetlab.engine.trainer import Trainer
from resnetlab.errors import ResnetlabError


@dataclass
class FinetuneConfig(TrainConfig):
    """A training run that starts from ``weights``. The defaults suit a small dataset: the
    ``gradual`` strategy (fastai's ``fine_tune``) over 20 epochs, AdamW with fastai's base lr
    2e-3, the backbone at half the head's lr (see ``resnetlab.engine.finetune``); on the
    CIFAR-10 transfer benchmark (``benchmarks/finetune_transfer.py``) these beat the lower
    backbone lrs usual for ImageNet weights, since a small net's features must move more."""

    data: str = ""
    model: str = AUTO_MODEL  # the weights' architecture: header, else inferred from the keys
    strategy: str = "gradual"
    bn: str = "train"
    head_epochs: int | None = None  # gradual: 1, lp-ft: half of epochs
    backbone_lr_mult: float = 0.5
    stage_decay: float = 1.0  # lr factor per stage towards the stem (1: none)
    epochs: int = 20
    batch_size: int = 64
    optimizer: str = "adamw"
    lr: float = 2e-3
    weight_decay: float = 0.01

    def validate(self) -> None:
        """Raise ResnetlabError naming the flag of the first invalid value (reads no file)."""
        if not self.weights:
            raise ResnetlabError("finetune needs --weights FILE")
        super().validate()
        checks = [
            (bool(self.data), "finetune needs --data (a built-in name, a CSV file or a folder)"),
            (self.strategy in STRATEGIES, f"--strategy must be one of {', '.join(STRATEGIES)}"),
            (self.bn in BN_POLICIES, f"--bn must be one of {', '.join(BN_POLICIES)}"),
            (
                self.backbone_lr_mult > 0,
                f"--backbone-lr-mult must be positive (got {self.backbone_lr_mult}; "
                "--strategy linear-probe freezes the backbone)",
            ),
            (
                0 < self.stage_decay <= 1,
                f"--stage-decay must be in (0, 1] (got {self.stage_decay})",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ResnetlabError(message)
        self.phases()

    def phases(self) -> list[Phase]:
        """The strategy's phases over ``epochs`` (an error for impossible ``head_epochs``)."""
        return plan_phases(
            self.strategy, self.epochs, self.lr, self.backbone_lr_mult, self.head_epochs
        )


def finetune(cfg: FinetuneConfig) -> TrainResult:
    """Fine-tune the model of ``cfg.weights`` on ``cfg.data``; the checkpoints record the
    source file's name and sha256, the strategy and its phases. A missing or damaged weights
    file fails before the run folder is made."""
    cfg.validate()
    weights = read_weights(cfg.weights)
    name = f"finetune-{Path(cfg.weights).stem}"
    with RunDir(cfg.out or default_run_dir(name, cfg.data)) as run:
        return _finetune(cfg, run, weights)


def _finetune(cfg: FinetuneConfig, run: RunDir, weights: WeightsFile) -> TrainResult:
    phases = cfg.phases()
    cfg, bundle, model, report = load_for_weights(cfg, weights)
    run.print(report.summary())
    if cfg.bn == "frozen":
        freeze_batchnorm(model)
    header = {
        **checkpoint_header(cfg, bundle),
        "weights": report.provenance(),
        "finetune": {
            "strategy": cfg.strategy,
            "bn": cfg.bn,
            "phases": [asdict(phase) for phase in phases],
        },
    }
    trainer = Trainer(model, bundle, cfg, run, header)
    run.write_config(cfg.to_dict())
    run.print(describe_run(cfg, trainer.model, bundle, trainer.precision))
    run.print(f"run folder: {run.path}")
    run.print(f"data pipeline: {bundle.pipeline}")
    fit_phases(trainer, phases, cfg.bn, cfg.stage_decay)
    test_report = trainer.finish(f"{cfg.model} fine-tuned ({cfg.strategy}) on {bundle.name}")
    return TrainResult(run.path, trainer.history, trainer.best_epoch, test_report)
