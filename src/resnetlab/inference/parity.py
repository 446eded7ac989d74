"""The parity check every export ends with: the exported network in its runtime against the
checkpoint's network in PyTorch, on the same inputs, at batch size 1 and at a larger one."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from resnetlab.errors import ResnetlabError
from resnetlab.files import write_atomically
from resnetlab.training.step import class_logits

FP32_RELATIVE_TOLERANCE = 1e-4  # of the largest |logit|
INT8_MIN_AGREEMENT = 95.0  # percent of top-1 classes


@dataclass(frozen=True)
class Parity:
    """How far an exported network's logits are from the checkpoint's: fp32 passes within
    ``FP32_RELATIVE_TOLERANCE`` x the largest |logit| with every top-1 class the same, int8
    with at least ``INT8_MIN_AGREEMENT`` % of them the same."""

    file: str
    runtime: str  # e.g. "onnxruntime 1.32.0"
    inputs: str  # what the inputs were, e.g. "32 test samples of digits"
    batch_sizes: tuple[int, ...]
    max_abs_diff: float
    max_abs_logit: float
    top1_agreement: float  # percent
    int8: bool

    @property
    def tolerance(self) -> float:
        """The largest difference fp32 passes with."""
        return FP32_RELATIVE_TOLERANCE * self.max_abs_logit

    @property
    def passed(self) -> bool:
        """Whether the exported network agrees with the checkpoint's (see the class)."""
        if self.int8:
            return self.top1_agreement >= INT8_MIN_AGREEMENT
        return self.max_abs_diff <= self.tolerance and self.top1_agreement == 100.0

    def line(self) -> str:
        """One line for the terminal, ending with ``passed`` or ``FAILED``."""
        sizes = " and ".join(map(str, self.batch_sizes))
        bound = (
            f"int8 needs >= {INT8_MIN_AGREEMENT:g}% top-1"
            if self.int8
            else f"fp32 needs <= {self.tolerance:.2e} and 100% top-1"
        )
        return (
            f"parity of {Path(self.file).name} ({self.runtime}) with the checkpoint (PyTorch) "
            f"on {self.inputs}, batches of {sizes}: max |diff| {self.max_abs_diff:.2e} "
            f"(max |logit| {self.max_abs_logit:.3g}), top-1 agreement "
            f"{self.top1_agreement:.1f}% ({bound}): {'passed' if self.passed else 'FAILED'}"
        )

    def to_dict(self) -> dict[str, Any]:
        """Everything, with the tolerance and the verdict, for ``<file>.parity.json``."""
        return {**asdict(self), "tolerance": self.tolerance, "passed": self.passed}


@torch.inference_mode()
def measure_parity(
    reference: nn.Module,
    exported: nn.Module,
    inputs: Tensor,
    *,
    file: str,
    runtime: str,
    description: str,
    int8: bool,
) -> Parity:
    """Compare ``exported`` with ``reference`` (fp32, PyTorch) on ``inputs[:1]`` and on all of
    ``inputs`` (normalised model inputs), each batch run by each network separately."""
    reference.eval()
    exported.eval()
    sizes = (1, len(inputs))
    ours = torch.cat([class_logits(reference(inputs[:n]).float()) for n in sizes])
    theirs = torch.cat([class_logits(exported(inputs[:n]).float()) for n in sizes])
    return Parity(
        file=file,
        runtime=runtime,
        inputs=description,
        batch_sizes=sizes,
        max_abs_diff=float((ours - theirs).abs().max()),
        max_abs_logit=float(ours.abs().max()),
        top1_agreement=100 * float((ours.argmax(1) == theirs.argmax(1)).float().mean()),
        int8=int8,
    )


def parity_file(path: Path) -> Path:
    """Where the parity record of the exported file ``path`` is stored: beside it."""
    return path.with_name(f"{path.name}.parity.json")


def record_parity(parity: Parity, path: Path, checked: Path) -> None:
    """Move the exported file ``checked`` to ``path`` and store ``parity`` beside it if it
    passed; else raise a one-line error (the caller removes ``checked``): an earlier export at
    ``path`` and its record stay as they were."""
    if not parity.passed:
        raise ResnetlabError(
            f"{path}: not written, the exported network failed its check: {parity.line()}; "
            f"any earlier {path.name} is intact"
        )
    os.replace(checked, path)
    text = json.dumps(parity.to_dict(), indent=2) + "\n"
    write_atomically(parity_file(path), lambda f: f.write(text.encode()), "the parity record")
