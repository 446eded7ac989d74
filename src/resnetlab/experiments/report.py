"""The degradation experiment's table (Markdown) and results (JSON)."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from resnetlab.data.bundle import DataBundle
from resnetlab.experiments.common import describe_network, duration, markdown_table
from resnetlab.models.complexity import format_count

if TYPE_CHECKING:
    from resnetlab.experiments.degradation import DegradationResult


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
