"""``torch.compile`` for training steps and inference, and when ``--compile auto`` uses it.

Graphs are compiled for static shapes (training drops an incomplete last batch, inference pads
it), so a run compiles once. Inductor keeps what it compiled in a cache folder,
``$TORCHINDUCTOR_CACHE_DIR`` or else ``inductor/`` under resnetlab's cache folder, so a second
run of the same model compiles faster.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from resnetlab.config.train import AUTO_MIN_STEPS
from resnetlab.data.cache import default_cache_dir

F = TypeVar("F", bound=Callable[..., Any])

logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "No CUDA runtime"


def use_inductor_cache() -> None:
    """Point Inductor's cache at resnetlab's cache folder, unless $TORCHINDUCTOR_CACHE_DIR
    says where it is."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(default_cache_dir()) / "inductor"))


def compile_static(fn: F) -> F:
    """``fn`` compiled by Inductor for the shapes it first sees (no dynamic shapes)."""
    use_inductor_cache()
    return torch.compile(fn, dynamic=False)  # type: ignore[return-value]


def compile_frozen(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model`` in eval mode, compiled for inference with freezing: the weights become
    constants, BatchNorm folds into the convolutions and oneDNN prepacks their weights. Its
    weights must not change afterwards."""
    use_inductor_cache()
    model.eval()
    return torch.compile(model, dynamic=False, options={"freezing": True})


class FirstCallTimed:
    """``fn``, reporting once how long its first call took (that is, compiling ``what``) and
    how many graphs came from Inductor's cache; ``seconds`` holds that time."""

    def __init__(self, fn: Callable[..., Any], what: str, report: Callable[[str], None]):
        self.fn, self.what, self.report = fn, what, report
        self.seconds: float | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.seconds is not None:
            return self.fn(*args, **kwargs)
        hits_before = _cache_hits()
        started = time.perf_counter()
        result = self.fn(*args, **kwargs)
        self.seconds = time.perf_counter() - started
        hits = _cache_hits() - hits_before
        cached = f", {hits} graph(s) from the Inductor cache" if hits else ""
        self.report(f"compiled {self.what} in {self.seconds:.1f} s{cached}")
        return result


def _cache_hits() -> int:
    """Graphs Inductor has loaded from its cache in this process so far."""
    from torch._dynamo.utils import counters

    return int(counters["inductor"]["fxgraph_cache_hit"])


def should_compile(setting: str, kind: str, device: torch.device, steps: int | None = None) -> bool:
    """Resolve ``--compile``: ``on``/``off`` as given; ``auto`` (``AUTO_RULE``) compiles image
    training of at least ``AUTO_MIN_STEPS`` steps on a GPU, and nothing else (``steps`` None:
    inference)."""
    if setting != "auto":
        return setting == "on"
    return (
        device.type == "cuda" and kind == "image" and steps is not None and steps >= AUTO_MIN_STEPS
    )
