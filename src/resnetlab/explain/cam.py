"""Class activation maps: where a trained image network looks when it picks a class.

Grad-CAM (Selvaraju et al. 2017), Grad-CAM++ (Chattopadhay et al. 2018) and Score-CAM (Wang et
al. 2020) on any layer of a checkpoint's network, through a forward hook on that layer; the
inputs, their preprocessing and the ranked answer come from ``Predictor``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from resnetlab.config.train import EXPLAIN_METHODS
from resnetlab.errors import ResnetlabError
from resnetlab.inference.exported import OnnxNetwork, ProgramNetwork
from resnetlab.inference.predictor import Predictor

_BATCH = 32  # images per forward/backward pass; Score-CAM: masked copies per forward pass
_EPS = 1e-7


@dataclass
class Explanation:
    """One input explained: its raw image (C, H, W) in [0, 1], the heatmap (H, W) in [0, 1]
    at the image's size, the class explained and its probability, and ``predict``'s answer."""

    image: Tensor
    heatmap: Tensor
    class_index: int
    class_name: str
    probability: float
    answer: dict[str, Any]


def stage_names(network: nn.Module) -> list[str]:
    """The network's stages (``layer1``, ``layer2``...), in order."""
    names = [name for name, _ in network.named_children() if re.fullmatch(r"layer\d+", name)]
    return sorted(names, key=lambda name: int(name[5:]))


class Explainer:
    """Class activation maps of ``predictor``'s network at ``layer`` (default: its last stage),
    by ``method`` (one of ``EXPLAIN_METHODS``)."""

    def __init__(
        self, predictor: Predictor, layer: str | None = None, method: str = "gradcam"
    ) -> None:
        if method not in EXPLAIN_METHODS:
            raise ResnetlabError(f"--method {method}: expected one of {', '.join(EXPLAIN_METHODS)}")
        if isinstance(predictor.network, OnnxNetwork | ProgramNetwork):
            raise ResnetlabError(
                "--checkpoint: explain needs a .safetensors checkpoint (an exported file's "
                "layers cannot be hooked)"
            )
        kind = predictor.header["data_kind"]
        if kind != "image" or predictor.task != "classification":
            raise ResnetlabError(
                f"--checkpoint: explain takes image classifiers, not a {kind} "
                f"{predictor.task} network"
            )
        self.predictor, self.method = predictor, method
        network = predictor.network
        stages = stage_names(network)
        self.layer_name = layer if layer is not None else (stages[-1] if stages else "")
        modules = dict(network.named_modules())
        modules.pop("", None)  # the network itself: its output is no feature map
        if self.layer_name not in modules:
            raise ResnetlabError(
                f"--layer {self.layer_name}: no such layer; the stages are {', '.join(stages)} "
                "(any module name works, e.g. layer1.0.conv1)"
            )
        self.layer = modules[self.layer_name]
        with torch.no_grad():  # a --layer that gives no feature map fails here, not per request
            self._forward(torch.zeros(1, *predictor.input_shape, device=predictor.device))

    def target_index(self, target: int | str | None) -> int | None:
        """The class index that ``--class`` names (a class name, else an index: a folder's
        class ``9`` is the name ``9``); None for each input's top class."""
        if target is None:
            return None
        names = self.predictor.classes or []
        count = int(self.predictor.header["num_classes"])
        if str(target) in names:
            return names.index(str(target))
        if isinstance(target, str) and not target.lstrip("-").isdigit():
            if target not in names:
                raise ResnetlabError(f"--class {target}: no such class ({', '.join(names)})")
            return names.index(target)
        index = int(target)
        if not 0 <= index < max(count, 2):  # a single-logit head has two classes
            raise ResnetlabError(
                f"--class {index}: the network has {max(count, 2)} classes (0-{max(count, 2) - 1})"
            )
        return index

    def explain(
        self, inputs: Any, target: int | str | None = None, topk: int = 5
    ) -> list[Explanation]:
        """Explain each of ``inputs`` (anything ``Predictor.predict`` takes) for the class
        ``target`` (an index or a name; default: each input's top class)."""
        index = self.target_index(target)
        x, labels = self.predictor.inputs(inputs)
        explained: list[Explanation] = []
        for batch, names in zip(x.split(_BATCH), _chunks(labels, _BATCH), strict=True):
            explained += self._explain_batch(batch, names, index, topk)
        return explained

    def _explain_batch(
        self, x: Tensor, labels: Sequence[str], index: int | None, topk: int
    ) -> list[Explanation]:
        """One batch of raw images explained."""
        inputs = self.predictor.preprocess(x)
        with torch.enable_grad():
            activations, outputs = self._forward(inputs.requires_grad_(True))
            probs = self.predictor.probabilities(outputs.detach())
            targets = probs.argmax(1) if index is None else torch.full_like(probs[:, 0], index)
            targets = targets.long()
            if self.method == "scorecam":
                cams = self._score_cam(inputs.detach(), activations.detach(), targets)
            else:
                score = _class_scores(outputs).gather(1, targets[:, None]).sum()
                (grads,) = torch.autograd.grad(score, activations)
                cams = _weighted_cam(activations.detach(), grads, plus=self.method == "gradcam++")
        heatmaps = _normalised(F.interpolate(cams[:, None], size=x.shape[-2:], mode="bilinear"))
        answers = self.predictor.ranked(outputs.detach().float().cpu(), labels, topk)
        names = self.predictor.classes
        rows = zip(x, heatmaps, targets.tolist(), probs, answers, strict=True)
        return [
            Explanation(
                image=image.cpu(),
                heatmap=heatmap[0].cpu(),
                class_index=target,
                class_name=names[target] if names else str(target),
                probability=float(row[target]),
                answer=answer,
            )
            for image, heatmap, target, row, answer in rows
        ]

    def _forward(self, inputs: Tensor) -> tuple[Tensor, Tensor]:
        """The network's outputs, and the layer's output (a feature map) on the way."""
        captured: list[Tensor] = []

        def keep(_module: nn.Module, _inputs: Any, output: Tensor) -> Tensor:
            captured.append(output)
            return output.clone()  # later in-place operations (``out += x``) leave it intact

        handle = self.layer.register_forward_hook(keep)
        try:
            outputs = self.predictor.network(inputs)
        finally:
            handle.remove()
        activations = captured[-1] if captured else None
        if activations is None or activations.dim() != 4:
            shape = "nothing" if activations is None else tuple(activations.shape)
            raise ResnetlabError(
                f"--layer {self.layer_name}: gives {shape}, not a feature map (N, C, H, W); "
                f"try one of {', '.join(stage_names(self.predictor.network))}"
            )
        return activations, outputs.float()

    @torch.no_grad()
    def _score_cam(self, inputs: Tensor, activations: Tensor, targets: Tensor) -> Tensor:
        """Score-CAM: each channel's map, upsampled and scaled to [0, 1], masks the input
        (where it is 0 the input becomes the training mean); the channel's weight is the class's
        probability for the masked input (as in the authors' code, without a baseline)."""
        size = inputs.shape[-2:]
        cams = []
        for image, maps, target in zip(inputs, activations, targets, strict=True):
            masks = _normalised(F.interpolate(maps[:, None], size=size, mode="bilinear"))
            scores = []
            for chunk in masks.split(_BATCH):
                outputs = self.predictor.network(image[None] * chunk).float()
                scores.append(self.predictor.probabilities(outputs)[:, target])
            weights = torch.cat(scores)
            cams.append(F.relu((weights[:, None, None] * maps).sum(0)))
        return torch.stack(cams)


def _class_scores(outputs: Tensor) -> Tensor:
    """Per-class scores to differentiate: the logits; a single-logit head's ``z`` gives
    ``[-z, z]``."""
    return torch.cat([-outputs, outputs], dim=1) if outputs.shape[1] == 1 else outputs


def _weighted_cam(activations: Tensor, grads: Tensor, *, plus: bool) -> Tensor:
    """Grad-CAM: ReLU of the channels weighted by their mean gradient. Grad-CAM++: weighted by
    the positive gradients, each scaled by the closed-form alpha of Chattopadhay et al. (eq.
    19, with the class score passed through exp)."""
    if plus:
        g2, g3 = grads.pow(2), grads.pow(3)
        total = activations.sum(dim=(2, 3), keepdim=True)
        alpha = torch.where(grads != 0, g2 / (2 * g2 + total * g3 + _EPS), torch.zeros_like(g2))
        weights = (alpha * F.relu(grads)).sum(dim=(2, 3), keepdim=True)
    else:
        weights = grads.mean(dim=(2, 3), keepdim=True)
    return F.relu((weights * activations).sum(dim=1))


def _normalised(maps: Tensor) -> Tensor:
    """Each map (N, 1, H, W) scaled to [0, 1] by its minimum and maximum (a flat map: zeros)."""
    low = maps.amin(dim=(2, 3), keepdim=True)
    span = maps.amax(dim=(2, 3), keepdim=True) - low
    return torch.where(span > 0, (maps - low) / span.clamp_min(_EPS), torch.zeros_like(maps))


def _chunks(items: Sequence[str], size: int) -> list[Sequence[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
