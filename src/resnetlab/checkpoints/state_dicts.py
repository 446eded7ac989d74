"""Read weights from any ResNet source safely, and tell which architecture they belong to.

Sources: resnetlab checkpoints, other safetensors files (e.g. timm, whose ResNet keys are already
torchvision's), torchvision/PyTorch pickles and the classic CIFAR training scripts' checkpoints.
Pickles are only ever opened with ``torch.load(weights_only=True)``: nothing in a file runs.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from resnetlab.checkpoints.checkpoint import load_safetensors
from resnetlab.errors import ResnetlabError
from resnetlab.models import classifier_prefix, create_model, list_models

STEM_KEY = "conv1.weight"  # the first convolution of every image ResNet

# Training scripts save {"<one of these>": state_dict, "epoch": ..., "best_acc": ...}.
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net")
# DataParallel/DistributedDataParallel and torch.compile wrap the model and prefix its keys.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Classic CIFAR scripts name the classifier 'linear' and the projection shortcut 'shortcut'.
_CLASSIC_KEYS = (
    (re.compile(r"^linear\."), "fc."),
    (re.compile(r"^(layer\d+\.\d+\.)shortcut\."), r"\1downsample."),
)


@dataclass(frozen=True)
class WeightsFile:
    """A weights file, read once: its state dict (keys normalised, see ``read_weights``), its
    resnetlab header (None: it has none) and the sha256 of its bytes."""

    path: str  # as given, for messages and provenance
    state_dict: dict[str, Tensor]
    header: dict[str, Any] | None
    sha256: str


def read_weights(path: str | Path) -> WeightsFile:
    """Read a safetensors file or a torch pickle, opening it once.

    Training-script wrappers and 'module.'/'_orig_mod.' prefixes are removed and classic CIFAR
    key names mapped to torchvision's, so the state dict can be loaded into our models directly.
    A missing, damaged or code-running file raises a one-line ResnetlabError.
    """
    file = Path(path)
    if not file.is_file():
        raise ResnetlabError(f"no such weights file: '{path}'")
    data = file.read_bytes()
    # A safetensors file starts with an 8-byte header length and then the JSON header.
    if data[8:9] == b"{":
        state_dict, header = load_safetensors(data, path)
    else:
        state_dict, header = _unwrap(_load_pickle(data, path), path), None
    return WeightsFile(
        str(path), _normalise_keys(state_dict, path), header, hashlib.sha256(data).hexdigest()
    )


def _load_pickle(data: bytes, path: str | Path) -> object:
    """``torch.load`` restricted to tensors and plain containers; code-running pickles refused."""
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ResnetlabError(
            f"{path}: refused: {_refusal_reason(str(exc))}; "
            "only weights-only pickles and safetensors are accepted"
        ) from None
    except Exception as exc:  # torch.load reports a damaged file with many exception types
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        raise ResnetlabError(
            f"{path}: not a readable weights file ({type(exc).__name__}: {first_line})"
        ) from None


def _refusal_reason(message: str) -> str:
    """Why ``torch.load(weights_only=True)`` refused a pickle, from its error message."""
    culprit = re.search(r"Unsupported global: GLOBAL (\S+)", message)
    if culprit:
        return f"this file would run code when loaded (it calls {culprit[1]})"
    detail = re.search(r"WeightsUnpickler error:\s*(\S.*)", message)
    found = detail[1] if detail else message.splitlines()[0]
    return f"not a weights-only pickle ({found}), so loading it could run code"


def _unwrap(obj: object, path: str | Path) -> dict[str, Tensor]:
    """Descend through training-script wrappers down to a dict of tensors."""
    while isinstance(obj, dict) and not _is_tensor_dict(obj):
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            found = ", ".join(map(str, list(obj)[:8]))
            raise ResnetlabError(
                f"{path}: no state dict found (top-level keys: {found}; "
                f"expected tensors or one of {', '.join(_WRAPPER_KEYS)})"
            )
        obj = inner
    if not isinstance(obj, dict):
        raise ResnetlabError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    return obj


def _is_tensor_dict(obj: dict[Any, Any]) -> bool:
    return bool(obj) and all(isinstance(v, Tensor) for v in obj.values())


def _normalise_keys(state_dict: dict[str, Tensor], path: str | Path) -> dict[str, Tensor]:
    """Strip wrapper prefixes (in any order and nesting) and map classic CIFAR names."""
    normalised: dict[str, Tensor] = {}
    for key, tensor in state_dict.items():
        name = key
        while name.startswith(_WRAPPER_PREFIXES):
            name = name.split(".", 1)[1]
        for pattern, replacement in _CLASSIC_KEYS:
            name = pattern.sub(replacement, name)
        if name in normalised:
            raise ResnetlabError(f"{path}: keys collide after normalisation: '{key}' -> '{name}'")
        normalised[name] = tensor
    return normalised


_BLOCK_KEY = re.compile(r"^layer(\d+)\.(\d+)\.")
_PROJECTION_KEY = re.compile(r"^layer\d+\.\d+\.downsample\.0\.weight$")


def infer_model(state_dict: dict[str, Tensor]) -> tuple[str, dict[str, Any]]:
    """``(model name, options)`` of the one registered model whose keys and shapes these are.

    The depth is (2 or 3 convs per basic/bottleneck block) x blocks + 2 (He et al. 2015,
    Table 1); grouped or widened 3x3 convs in layer1 name ResNeXt (Xie et al. 2017) and Wide
    ResNets, a ``bn_final`` a pre-activation net (He et al. 2016). A 3-stage post-activation net
    is a CIFAR ResNet with shortcut option B if it has projection weights, else option A
    (He et al. 2015, sec. 4.2); its plain twin has the same keys and is never inferred.
    """
    stages = _blocks_per_stage(state_dict)
    if STEM_KEY not in state_dict or not stages or "layer1.0.conv2.weight" not in state_dict:
        raise ResnetlabError(
            f"cannot infer the model: no '{STEM_KEY}' and 'layerN.M.convK' keys, so not an image "
            "ResNet state dict; pass --model"
        )
    bottleneck = "layer1.0.conv3.weight" in state_dict
    depth = (3 if bottleneck else 2) * sum(stages) + 2
    width, per_group = state_dict["layer1.0.conv2.weight"].shape[:2]
    groups = width // per_group
    options: dict[str, Any] = {}
    if "bn_final.weight" in state_dict:
        family, name = "preact", f"preact_resnet{depth}"
    elif len(stages) == 3:
        family, name = "cifar", f"resnet{depth}"
        options["shortcut"] = "B" if any(map(_PROJECTION_KEY.match, state_dict)) else "A"
    elif groups > 1:
        family, name = "imagenet", f"resnext{depth}_{groups}x{per_group}d"
    elif per_group != 64:
        family, name = "imagenet", f"wide_resnet{depth}_{per_group // 64}"
    else:
        family, name = "imagenet", f"resnet{depth}"
    if name not in list_models(family) or not _fits(name, options, state_dict):
        block = "bottleneck" if bottleneck else "basic"
        raise ResnetlabError(
            f"cannot infer the model: {block} blocks {stages} per stage (read as {name}) fit no "
            f"registered model; pass --model (known {family} models: "
            f"{', '.join(list_models(family))})"
        )
    return name, options


def _blocks_per_stage(state_dict: dict[str, Tensor]) -> tuple[int, ...]:
    """Blocks in layer1, layer2, ... (0 for a stage with no keys)."""
    blocks: dict[int, int] = {}
    for match in filter(None, map(_BLOCK_KEY.match, state_dict)):
        stage, index = int(match[1]), int(match[2])
        blocks[stage] = max(blocks.get(stage, 0), index + 1)
    return tuple(blocks.get(stage, 0) for stage in range(1, max(blocks, default=0) + 1))


def _fits(name: str, options: dict[str, Any], state_dict: dict[str, Tensor]) -> bool:
    """Whether ``name`` built on the meta device (no memory, no init cost) has exactly these
    keys and shapes, classifier and BatchNorm step counters aside."""
    with torch.device("meta"):
        model = create_model(name, in_chans=state_dict[STEM_KEY].shape[1], **options)
    head = classifier_prefix(model)
    return _shapes(model.state_dict(), head) == _shapes(state_dict, head)


def _shapes(state_dict: dict[str, Tensor], head: str) -> dict[str, tuple[int, ...]]:
    """Each key's shape, but for the classifier's (keys starting with ``head``) and BatchNorm
    step counters."""
    return {
        key: tuple(tensor.shape)
        for key, tensor in state_dict.items()
        if not key.startswith(head) and not key.endswith("num_batches_tracked")
    }
