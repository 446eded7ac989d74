"""`resnetlab bench`'s configuration: one dataclass whose fields are its flags
(``resnetlab.settings``; free of torch, so that ``--help`` stays instant)."""

from __future__ import annotations

from dataclasses import dataclass

from resnetlab.config.train import TrainConfig
from resnetlab.settings import at_least_one, check_settings, setting, shared

MODES = ("train", "infer")
DEFAULT_BATCH = {"train": 128, "infer": 32}


@dataclass
class BenchConfig:
    """Flags of `resnetlab bench`."""

    model: str = setting("resnet20", help="any image model of the registry")
    mode: str = setting("train", choices=MODES)
    batch: int | None = setting(
        None,
        help=f"batch size (default: {DEFAULT_BATCH['train']} train, {DEFAULT_BATCH['infer']} "
        "infer)",
        check=at_least_one,
        error="{flag} must be at least 1",
    )
    input_size: int | None = setting(
        None,
        help="square image size (default: the model's own)",
        check=lambda size: size >= 8,
        error="{flag} must be >= 8",
    )
    steps: int = setting(  # steps (batches) per round
        4,
        help="steps per round (default: %(default)s)",
        check=at_least_one,
        error="{flag} must be at least 1",
    )
    rounds: int = setting(
        5,
        help="timed rounds per row (default: %(default)s)",
        check=at_least_one,
        error="{flag} must be at least 1",
    )
    compile: bool = setting(True, flag="--no-compile", help="leave out the compiled row")
    device: str = shared(TrainConfig, "device")
    user_loop: str | None = setting(
        None,
        metavar="FILE",
        help="the user's loops (default: benchmarks/user_loop.py of a resnetlab checkout)",
    )
    json: str | None = setting(None, metavar="FILE", help="also write the results as JSON")

    def validate(self) -> None:
        """Raise ResnetlabError naming the first bad flag."""
        check_settings(self)
