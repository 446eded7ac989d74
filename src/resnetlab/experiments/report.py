"""The degradation experiment's results: what each network and the whole run produced, as a
table (Markdown) and as JSON."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from resnetlab.data.bundle import DataBundle
from resnetlab.experiments.common import describe_network, duration, markdown_table
from resnetlab.experiments.config import DegradationConfig
from resnetlab.models.complexity import format_count


@dataclass
class NetworkResult:
    """One trained network: its per-epoch history and cost."""

    name: str
    params: int
    history: list[dict[str, Any]]
    run_dir: Path

    @property
    def train_error(self) -> float:
        """Training error (%) over the last epoch."""
        return final_train_error(self.history)

    @property
    def val_error(self) -> float | None:
        """Validation error (%) after the last epoch."""
        val_acc = self.history[-1]["val_acc"]
        return None if val_acc is None else 100.0 - val_acc


@dataclass(frozen=True)
class Verdict:
    """Whether a run showed the effect; ``reproduced`` is None when it could not be checked."""

    reproduced: bool | None
    line: str


@dataclass
class DegradationResult:
    """Everything a run produced; the figure, table and JSON are in ``out``."""

    out: Path
    config: DegradationConfig
    recipe: str
    networks: dict[str, NetworkResult]
    verdict: Verdict
    elapsed_s: float


def final_train_error(history: Sequence[Mapping[str, Any]]) -> float:
    """Training error (%) over the last epoch of ``history`` (running mean over its batches,
    as the paper plots it)."""
    return 100.0 - history[-1]["train_acc"]


def degradation_table(result: DegradationResult) -> str:
    """Final training and validation error, iterations and time of each network (Markdown)."""
    rows = []
    for name, net in result.networks.items():
        last = net.history[-1]
        val = "-" if net.val_error is None else f"{net.val_error:.1f}%"
        rows.append([
            name, describe_network(name)[1], format_count(net.params),
            f"{net.train_error:.1f}%", val, last["step"], duration(last["elapsed_s"]),
        ])  # fmt: skip
    headers = ["network", "layers", "params", "training error", "validation error"]
    return markdown_table([*headers, "iterations", "time"], rows)


def write_degradation_report(result: DegradationResult, bundle: DataBundle) -> None:
    """Write ``degradation.md`` and ``degradation.json`` into the experiment's folder."""
    mode = "fast" if result.config.fast else "full"
    data = (
        f"{bundle.name}: {len(bundle.train)} training and {len(bundle.val)} validation images, "
        f"{bundle.num_classes} classes, {'x'.join(map(str, bundle.input_shape))}"
    )
    markdown = [
        f"# Degradation: plain against residual networks ({mode} mode)",
        "",
        f"- Data: {data}",
        f"- Recipe: {result.recipe}",
        f"- Total time: {duration(result.elapsed_s)}",
        "",
        degradation_table(result),
        "",
        result.verdict.line,
        "",
        "![training (thin) and validation (bold) error](degradation.png)",
    ]
    (result.out / "degradation.md").write_text("\n".join(markdown) + "\n")
    (result.out / "degradation.json").write_text(
        json.dumps(_as_json(result, data), indent=1) + "\n"
    )


def _as_json(result: DegradationResult, data: str) -> dict[str, Any]:
    """The results as plain data: per network, the final errors and the per-epoch curves."""
    networks = {}
    for name, net in result.networks.items():
        family, depth = describe_network(name)
        networks[name] = {
            "family": family,
            "depth": depth,
            "params": net.params,
            "train_error": net.train_error,
            "val_error": net.val_error,
            "iterations": net.history[-1]["step"],
            "seconds": net.history[-1]["elapsed_s"],
            "run_dir": str(net.run_dir),
            "history": net.history,
        }
    return {
        "experiment": "degradation",
        "mode": "fast" if result.config.fast else "full",
        "data": data,
        "recipe": result.recipe,
        "config": asdict(result.config),
        "networks": networks,
        "verdict": asdict(result.verdict),
        "elapsed_s": result.elapsed_s,
    }
