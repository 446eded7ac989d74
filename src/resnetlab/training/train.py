"""`resnetlab train`: preprocess -> build -> train -> validate -> test, in one run folder."""

from __future__ import annotations

import time
from pathlib import Path

from resnetlab.config.train import AUTO_MODEL, TrainConfig
from resnetlab.runtime.distributed import joined
from resnetlab.training.claim import open_run_dir, run_name
from resnetlab.training.run import TrainResult, check_on_main, single_phase, start_run, train_in_run


def train(cfg: TrainConfig) -> TrainResult:
    """Train ``cfg.model`` on ``cfg.data``; write checkpoints, metrics and figures to the run.

    With ``cfg.weights`` the model starts from that file (see ``training.start``), and the
    checkpoints record its name and sha256. With ``cfg.resume`` (see ``resume_config``) it
    continues the run in that folder from its training state. A new run's ``cfg.out`` must
    hold no earlier run (see ``training.claim``), unless ``cfg.overwrite``, which removes it first.
    """
    began = time.perf_counter()
    with joined(cfg.device, cfg.dist_timeout) as world:
        cfg, weights = check_on_main(cfg, world)
        name = Path(cfg.weights).stem if cfg.weights and cfg.model == AUTO_MODEL else cfg.model
        with open_run_dir(
            cfg.out,
            run_name(name, cfg.data),
            world=world,
            resume=cfg.resume,
            overwrite=cfg.overwrite,
        ) as run:
            return train_in_run(start_run(cfg, weights), run, single_phase(cfg), began=began)
