"""Parameters and multiply-adds next to the figures He et al. 2015 published (the article's
second FAQ, "how expensive is a ResNet?", answered by counting)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from resnetlab.errors import ResnetlabError
from resnetlab.models import create_model, get_model_spec, list_models
from resnetlab.models.blocks import Bottleneck
from resnetlab.models.complexity import count_macs, format_count, summarize

# He et al. 2015, Table 6: parameters of the CIFAR-10 ResNets.
PAPER_PARAMS: dict[str, float] = {
    "resnet20": 0.27e6,
    "resnet32": 0.46e6,
    "resnet44": 0.66e6,
    "resnet56": 0.85e6,
    "resnet110": 1.7e6,
    "resnet1202": 19.4e6,
}
# He et al. 2015, Table 1: "FLOPs" (multiply-adds) at 224x224.
PAPER_MACS: dict[str, float] = {
    "resnet18": 1.8e9,
    "resnet34": 3.6e9,
    "resnet50": 3.8e9,
    "resnet101": 7.6e9,
    "resnet152": 11.3e9,
}

FOOTNOTES = {
    "[1]": (
        "[1] The paper prints two or three digits and sometimes cuts rather than rounds: "
        "ResNet-34 counts 3.66G, printed 3.6G (and ResNet-50 v1 3.86G, printed 3.8G)."
    ),
    "[2]": (
        "[2] resnetlab's ResNet-50/101/152 are 'v1.5' (torchvision's layout): the first "
        "bottleneck of stages 3-5 strides on its 3x3 convolution instead of its first 1x1 "
        "convolution (the paper's v1), so that 1x1 convolution runs at full resolution, on four "
        "times as many positions: +0.23G. Counted with the stride moved back (column v1), all "
        "three agree with the paper to its rounding."
    ),
}


@dataclass(frozen=True)
class PaperRow:
    """One model: our counts, the published ones and, for bottleneck networks, the v1 count."""

    name: str
    params: int
    macs: int
    paper_params: float | None
    paper_macs: float | None
    macs_v1: int | None

    @property
    def params_diff(self) -> float | None:
        """Relative difference of our parameter count to the paper's."""
        return None if self.paper_params is None else self.params / self.paper_params - 1

    @property
    def macs_diff(self) -> float | None:
        """Relative difference of our multiply-adds to the paper's."""
        return None if self.paper_macs is None else self.macs / self.paper_macs - 1

    @property
    def note(self) -> str:
        """The footnote that explains a difference, if any."""
        return "[1]" if self.name == "resnet34" else "[2]" if self.macs_v1 is not None else ""

    def to_dict(self) -> dict[str, Any]:
        """Plain data, with the differences and the footnote's text."""
        return {
            **asdict(self),
            "params_diff": self.params_diff,
            "macs_diff": self.macs_diff,
            "note": FOOTNOTES.get(self.note),
        }


def macs_v1(name: str) -> int | None:
    """Multiply-adds of ``name`` with the paper's v1 bottleneck (stride on the first 1x1
    convolution); None for networks without a strided bottleneck. Counted on "meta"."""
    spec = get_model_spec(name)
    with torch.device("meta"):
        model = create_model(name)
    strided = [
        block
        for block in model.modules()
        if isinstance(block, Bottleneck) and block.conv2.stride != (1, 1)
    ]
    if not strided:
        return None
    for block in strided:
        block.conv1.stride, block.conv2.stride = block.conv2.stride, (1, 1)
    return count_macs(model, spec.input_shape)


def compare_with_paper(family: str | None = None) -> list[PaperRow]:
    """Every model the paper gives a figure for (optionally of one family), with our counts."""
    if family is not None and not list_models(family):
        raise ResnetlabError(f"--family: unknown family {family!r}")
    rows = []
    for name in list_models(family):
        if name not in PAPER_PARAMS and name not in PAPER_MACS:
            continue
        summary = summarize(name)
        rows.append(
            PaperRow(
                name, summary.params, summary.macs, PAPER_PARAMS.get(name), PAPER_MACS.get(name),
                macs_v1(name) if name in PAPER_MACS else None,
            )
        )  # fmt: skip
    return rows


def format_comparison(rows: list[PaperRow]) -> str:
    """A text table of ``rows`` with the differences in percent, and the footnotes."""

    def count(value: float | None) -> str:
        return "-" if value is None else format_count(value)

    def diff(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:+.1f}%"

    lines = [
        f"{'model':<11} {'params':>8} {'paper':>7} {'diff':>7}   "
        f"{'mult-adds':>9} {'paper':>7} {'diff':>7} {'v1':>7} {'v1 diff':>7}  note"
    ]
    for r in rows:
        v1_diff = None if r.macs_v1 is None or not r.paper_macs else r.macs_v1 / r.paper_macs - 1
        lines.append(
            f"{r.name:<11} {count(r.params):>8} {count(r.paper_params):>7} "
            f"{diff(r.params_diff):>7}   {count(r.macs):>9} {count(r.paper_macs):>7} "
            f"{diff(r.macs_diff):>7} {count(r.macs_v1):>7} {diff(v1_diff):>7}  {r.note}".rstrip()
        )
    sources = "Paper: He et al. 2015, Table 6 (CIFAR-10 params), Table 1 (ImageNet FLOPs)."
    notes = [FOOTNOTES[mark] for mark in FOOTNOTES if any(r.note == mark for r in rows)]
    return "\n".join([*lines, "", sources, *notes])
