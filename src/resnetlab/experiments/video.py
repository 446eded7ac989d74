"""Does a 3-D ResNet use time? Three networks on ``moving-digits``, one test split.

1. A small 3-D network (default ``r3d_10_small``) on the clips.
2. The same network trained and tested on the clips with their frames shuffled
   (``moving-digits-shuffled``: the same clips, split the same way).
3. f-R2D (``fr2d_10_small``): a 2-D ResNet on every frame, its logits averaged over time.

The two classes of ``moving-digits`` are time-reversals of each other, so the frames of a clip,
as a set, say nothing about its label: the controls can only guess (50%), and a 3-D network
that beats them reads the order of the frames.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from resnetlab.config.train import TrainConfig
from resnetlab.data import load_data
from resnetlab.data.bundle import DataBundle
from resnetlab.errors import ResnetlabError
from resnetlab.experiments.common import (
    duration,
    experiment_dir,
    markdown_table,
    network_params,
    train_on_bundle,
)
from resnetlab.experiments.config import VideoConfig
from resnetlab.models import get_model_spec
from resnetlab.models.complexity import format_count
from resnetlab.training.rundir import RunDir

TARGET, CONTROL_MARGIN = 90.0, 10.0  # the 3-D network's test accuracy; controls' distance


@dataclass
class VideoRun:
    """One trained network: what it saw, its test accuracy and per-epoch history."""

    label: str
    model: str
    data: str
    params: int
    test_accuracy: float
    seconds: float
    history: list[dict[str, Any]]
    run_dir: Path


@dataclass
class VideoResult:
    """The three runs, the chance level, the verdict; files are in ``out``."""

    out: Path
    runs: list[VideoRun]
    chance: float
    verdict: str
    elapsed_s: float


def run_video(cfg: VideoConfig) -> VideoResult:
    """Train the three networks of ``cfg``; write video.md, video.json and video.png."""
    cfg.validate()
    for flag, name in (("--model", cfg.model), ("--frame-model", cfg.frame_model)):
        if get_model_spec(name).data_kind != "video":
            raise ResnetlabError(f"{flag} {name}: not a video network (see resnetlab models)")
    with experiment_dir(cfg.out, "video", cfg.overwrite) as log:
        return _run(cfg, log)


def _run(cfg: VideoConfig, log: RunDir) -> VideoResult:
    start = time.perf_counter()
    ordered, shuffled = (_load(cfg, name) for name in ("moving-digits", "moving-digits-shuffled"))
    plan = [
        ("3-D, ordered frames", cfg.model, ordered),
        ("3-D, shuffled frames", cfg.model, shuffled),
        ("2-D per frame, averaged", cfg.frame_model, ordered),
    ]
    runs = []
    for index, (label, model, bundle) in enumerate(plan, 1):
        log.print(f"[{index}/3] {label}: {model} on {bundle.name}")
        runs.append(_train(cfg, label, model, bundle, log.path / f"{index}-{model}-{bundle.name}"))
    chance = 100.0 / ordered.num_classes
    result = VideoResult(log.path, runs, chance, _verdict(runs, chance), 0.0)
    result.elapsed_s = time.perf_counter() - start
    table = video_table(result)
    for line in table.splitlines():
        log.print(line)
    log.print(result.verdict)
    _write(result, cfg, table, log)
    log.print(f"Total time: {duration(result.elapsed_s)}; results in {log.path}")
    return result


def _load(cfg: VideoConfig, name: str) -> DataBundle:
    """``name`` split by ``cfg``: both sets have the same labels, so the same split."""
    return load_data(
        name, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction, seed=cfg.seed,
        image_size=cfg.image_size,
    )  # fmt: skip


def _train(cfg: VideoConfig, label: str, model: str, bundle: DataBundle, path: Path) -> VideoRun:
    train_cfg = TrainConfig(
        model=model, data=bundle.name, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
        limit_steps=cfg.limit_steps, seed=cfg.seed, val_fraction=cfg.val_fraction,
        test_fraction=cfg.test_fraction, image_size=cfg.image_size, precision=cfg.precision,
        device=cfg.device, workers=cfg.workers, out=str(path), quiet=cfg.quiet,
    )  # fmt: skip
    trained = train_on_bundle(train_cfg, bundle, f"{model} on {bundle.name}")
    assert trained.test_report is not None  # the split always has a test part
    return VideoRun(
        label, model, bundle.name, network_params(train_cfg, bundle),
        trained.test_report["accuracy"], trained.history[-1]["elapsed_s"], trained.history,
        trained.run_dir,
    )  # fmt: skip


def _verdict(runs: list[VideoRun], chance: float) -> str:
    """Whether the 3-D network reached the target and both controls stayed near chance."""
    network, *controls = runs
    near = all(abs(run.test_accuracy - chance) <= CONTROL_MARGIN for run in controls)
    shown = network.test_accuracy >= TARGET and near
    return (
        f"{'Shown' if shown else 'Not shown'}: the 3-D network {network.test_accuracy:.1f}% "
        f"(target >= {TARGET:g}%), the controls "
        + " and ".join(f"{run.test_accuracy:.1f}%" for run in controls)
        + f" (chance {chance:g}%, target within {CONTROL_MARGIN:g} points)"
        + (": the network reads the order of the frames." if shown else ".")
    )


def video_table(result: VideoResult) -> str:
    """Network, data, parameters, test accuracy and training time of each run (Markdown)."""
    rows = [
        [run.label, run.model, run.data, format_count(run.params), f"{run.test_accuracy:.1f}%",
         duration(run.seconds)]
        for run in result.runs
    ]  # fmt: skip
    headers = ["run", "network", "data", "params", "test accuracy", "training time"]
    return markdown_table(headers, rows)


def _write(result: VideoResult, cfg: VideoConfig, table: str, log: RunDir) -> None:
    """video.png (validation curves, test accuracies), video.md and video.json."""
    plot_video(result, log.file("video.png"))
    figure = "![validation accuracy per epoch, test accuracy per run](video.png)"
    title = "# Does a 3-D ResNet use time? (moving-digits)"
    log.file("video.md").write_text("\n\n".join([title, table, result.verdict, figure]) + "\n")
    log.write_json(
        "video.json",
        {
            "experiment": "video",
            "config": asdict(cfg),
            "chance": result.chance,
            "runs": [{**asdict(run), "run_dir": str(run.run_dir)} for run in result.runs],
            "verdict": result.verdict,
            "elapsed_s": result.elapsed_s,
        },
    )


def plot_video(result: VideoResult, path: Path) -> None:
    """Validation accuracy per epoch of each run (left) and test accuracies (right), with the
    chance level."""
    fig, (curves, bars) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for run in result.runs:
        epochs = [record["epoch"] for record in run.history]
        curves.plot(epochs, [record["val_acc"] for record in run.history], "o-", label=run.label)
    names = [run.label.replace(", ", "\n") for run in result.runs]
    bars.bar(names, [run.test_accuracy for run in result.runs], color=["C0", "C1", "C2"])
    for ax in (curves, bars):
        ax.axhline(result.chance, color="gray", ls="--", lw=1, label="chance")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    curves.xaxis.set_major_locator(MaxNLocator(integer=True))
    curves.set(xlabel="epoch", ylabel="validation accuracy (%)", title="validation")
    curves.legend(fontsize=8)
    bars.set(ylabel="test accuracy (%)", title="test (same split for all three)")
    fig.suptitle("moving-digits: the label is the order of the frames")
    fig.savefig(path, dpi=110)
    plt.close(fig)
