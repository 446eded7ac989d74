"""The experiments' figures: error curves in the style of He et al. 2015, Fig. 6, and
per-layer gradient norms."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.lines import Line2D

from resnetlab.experiments.common import describe_network

_PANELS = (("plain", "plain networks"), ("residual", "ResNets"))


def plot_degradation(
    histories: Mapping[str, Sequence[Mapping[str, Any]]], path: Path, title: str
) -> None:
    """Training error (thin, dashed) and validation error (bold) against iterations; plain
    networks on the left, residual on the right, one colour per depth (as in Fig. 6)."""
    networks = {name: describe_network(name) for name in histories}
    depths = sorted({depth for _, depth in networks.values()})
    colours = {depth: plt.get_cmap("tab10")(i % 10) for i, depth in enumerate(depths)}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True, constrained_layout=True)
    for ax, (family, panel_title) in zip(axes, _PANELS, strict=True):
        for name, history in histories.items():
            if networks[name][0] != family or not history:
                continue
            depth = networks[name][1]
            steps = [record["step"] for record in history]
            colour = colours[depth]
            label = f"{'plain' if family == 'plain' else 'ResNet'}-{depth}"
            ax.plot(steps, [100 - r["train_acc"] for r in history], "--", lw=1, color=colour)
            if history[-1]["val_acc"] is not None:
                val = [100 - r["val_acc"] for r in history]
                ax.plot(steps, val, "-", lw=2.5, color=colour, label=label)
        ax.set_title(panel_title)
        ax.set_xlabel("iterations")
        ax.grid(alpha=0.3)
        kinds = [
            Line2D([], [], color="gray", ls="--", lw=1, label="training"),
            Line2D([], [], color="gray", lw=2.5, label="validation"),
        ]
        ax.legend(handles=[*ax.get_legend_handles_labels()[0], *kinds], fontsize=8)
    axes[0].set_ylim(bottom=0)  # after plotting: the axes are shared
    axes[0].set_ylabel("error (%)")
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_gradients(
    norms: Mapping[str, Mapping[str, Sequence[float]]], path: Path, title: str
) -> None:
    """Gradient norm of every conv/linear weight by layer index, on a log scale; one panel per
    moment (e.g. ``init`` and ``after 100 steps``), plain networks in reds, ResNets in blues."""
    networks = {name: describe_network(name) for name in norms}
    depths = sorted({depth for _, depth in networks.values()})
    moments = list(next(iter(norms.values())))
    fig, axes = plt.subplots(
        1, len(moments), figsize=(6 * len(moments), 4.5), sharey=True, constrained_layout=True
    )
    axes = [axes] if len(moments) == 1 else list(axes)
    for ax, moment in zip(axes, moments, strict=True):
        for name, by_moment in norms.items():
            family, depth = networks[name]
            shade = 0.45 + 0.45 * depths.index(depth) / max(1, len(depths) - 1)
            colour = plt.get_cmap("Reds" if family == "plain" else "Blues")(shade)
            values = by_moment[moment]
            ax.plot(range(1, len(values) + 1), values, lw=1.5, color=colour, label=name)
        ax.set_yscale("log")
        ax.set_title(moment)
        ax.set_xlabel("layer (conv/linear weight, input to output)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("gradient norm ||dL/dW||")
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)
