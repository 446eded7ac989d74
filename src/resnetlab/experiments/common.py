"""Helpers shared by the experiments: network names, output folders, tables."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

from resnetlab.errors import ResnetlabError
from resnetlab.models import get_model_spec

FAMILIES = {"plain": "plain", "cifar": "residual"}  # registry family -> experiment family


def networks_for(depths: Sequence[int]) -> tuple[str, ...]:
    """``plain<d>`` and ``resnet<d>`` for each depth ``d``: the paper's pairs of twins."""
    return tuple(f"{prefix}{d}" for prefix in ("plain", "resnet") for d in depths)


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


def experiment_dir(out: str | None, name: str) -> Path:
    """``out``, or ``runs/<date-time>-<name>``."""
    if out:
        return Path(out)
    return Path("runs") / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{name}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub Markdown table; numbers are expected to be formatted already."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def duration(seconds: float) -> str:
    """``h:mm:ss``."""
    return str(timedelta(seconds=round(seconds)))
