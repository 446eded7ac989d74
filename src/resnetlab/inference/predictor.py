"""``load(path)``: a trained network from a checkpoint, an exported file or a bare state dict,
ready to answer for files, Pillow images, NumPy arrays, tensors and DataFrame rows;
``predict_inputs``: `resnetlab predict`'s answers."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from resnetlab.checkpoints.state_dicts import read_weights
from resnetlab.checkpoints.weights import checkpoint_network, load_pretrained, source_preprocessing
from resnetlab.data.augment import to_unit_float
from resnetlab.data.decode import (
    ArchiveMember,
    BadImage,
    decode_image,
    image_array,
    is_image_file,
)
from resnetlab.data.preprocess import apply_preprocessing
from resnetlab.data.shards import shard_images
from resnetlab.data.tabular import is_table_file, read_feature_columns, read_inputs
from resnetlab.errors import ResnetlabError
from resnetlab.inference.checkpoint_data import input_preprocessing
from resnetlab.inference.exported import OnnxNetwork, ProgramNetwork, is_exported, load_network
from resnetlab.inference.image_inputs import image_batch, warn_out_of_range
from resnetlab.models import get_model_spec
from resnetlab.runtime.compiled import should_compile
from resnetlab.runtime.precision import resolve_device
from resnetlab.training.step import InferenceModel, class_logits, padded

_BATCH = 64  # inputs per forward pass


class Predictor:
    """A trained network with what it needs to answer: its classes, task, input shape and
    preprocessing. ``model`` is the ``nn.Module`` (None for an ONNX file, run by onnxruntime).
    """

    def __init__(self, network: nn.Module, header: dict[str, Any], device: torch.device) -> None:
        self.header = header
        self.device = torch.device("cpu") if isinstance(network, OnnxNetwork) else device
        self.network = network.to(self.device).eval()
        self._normalise = input_preprocessing(header)
        self._compiled: InferenceModel | None = None

    def compile(self) -> Predictor:
        """Compile the network with freezing (``InferenceModel``), which pays over many
        predictions; batches are then padded to one size. Returns the predictor."""
        if isinstance(self.network, OnnxNetwork):
            raise ResnetlabError("an ONNX network runs in onnxruntime: it is not compiled")
        self._compiled = InferenceModel(self.network, compile=True)
        return self

    @property
    def model(self) -> nn.Module | None:
        """The network as an ``nn.Module``: a checkpoint's, a pt2 file's program; None for ONNX."""
        if isinstance(self.network, OnnxNetwork):
            return None
        return self.network.program if isinstance(self.network, ProgramNetwork) else self.network

    @property
    def classes(self) -> list[str] | None:
        """The class names, or None where the weights came without them."""
        return self.header.get("classes")

    @property
    def task(self) -> str:
        """``classification`` or ``regression``."""
        return self.header.get("task", "classification")

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One input's shape, without the batch: (C, H, W), (C, L) or (features,)."""
        return tuple(self.header["input_shape"])

    def preprocess(self, x: Tensor) -> Tensor:
        """A batch of raw inputs (images in [0, 1] or uint8, sequences, table rows) as the
        network takes them: standardised with the training split's mean/std (for a table,
        whatever preprocessing its checkpoint records)."""
        return self._normalise(x.to(self.device))

    def inputs(self, inputs: Any) -> tuple[Tensor, list[str]]:
        """A float batch of raw inputs, and a label for each row: the file (``file:line`` for
        a CSV row) or the position among ``inputs``. See ``predict`` for what ``inputs`` is."""
        items = inputs if isinstance(inputs, list | tuple) else [inputs]
        rows: list[Tensor] = []
        labels: list[str] = []
        for position, item in enumerate(items):
            for row, label in self._rows(item, str(position)):
                rows.append(row)
                labels.append(label)
        if not rows:
            raise ResnetlabError("predict: no inputs")
        batch = torch.stack(rows)
        if self.header["data_kind"] == "image":
            warn_out_of_range(batch, labels)
        return batch, labels

    def logits(self, inputs: Any) -> Tensor:
        """The network's outputs (CPU, float32) for ``inputs`` (see ``predict``)."""
        return self._outputs(self.inputs(inputs)[0])

    @torch.inference_mode()
    def _outputs(self, x: Tensor) -> Tensor:
        """The network's outputs for a batch of raw inputs, ``_BATCH`` at a time."""
        forward, size, outputs = self._compiled or self.network, min(len(x), _BATCH), []
        for batch in x.split(_BATCH):
            inputs = self.preprocess(batch)
            if self._compiled is not None:  # a compiled network takes one batch size
                inputs = padded(inputs, size)
            outputs.append(forward(inputs)[: len(batch)].float().cpu())
        return torch.cat(outputs)

    def predict(self, inputs: Any, topk: int = 5) -> list[dict[str, Any]]:
        """For each input, the ``topk`` classes with their probabilities (``value``s for
        regression). ``inputs`` is one input or a list of them: file paths (images, or CSV files
        of rows for a table), Pillow images, NumPy arrays and tensors (one input or a batch, raw
        as in training; images uint8 or float in [0, 1], in any layout of
        ``image_inputs.LAYOUTS``) and DataFrames (each row, by column name)."""
        if topk < 1:
            raise ResnetlabError(f"--topk must be at least 1 (got {topk})")
        x, labels = self.inputs(inputs)
        return self.ranked(self._outputs(x), labels, topk)

    def probabilities(self, outputs: Tensor) -> Tensor:
        """Class probabilities (N, classes) from the network's outputs (a single-logit head's
        too)."""
        return class_logits(outputs).softmax(dim=1)

    def ranked(self, outputs: Tensor, labels: Sequence[str], topk: int = 5) -> list[dict[str, Any]]:
        """``predict``'s answer for network outputs computed elsewhere (e.g. with gradients, by
        ``Explainer``), each row labelled by ``labels``."""
        if self.task == "regression":  # the target was standardised in training
            scale = self.header.get("table") or {"target_mean": 0.0, "target_std": 1.0}
            outputs = scale["target_mean"] + scale["target_std"] * outputs.double()
            return [
                {"input": label, "value": row.tolist() if len(row) > 1 else float(row[0])}
                for label, row in zip(labels, outputs, strict=True)
            ]
        probs = self.probabilities(outputs)
        top = probs.topk(min(topk, probs.shape[1]), dim=1)
        names = self.classes
        return [
            {
                "input": label,
                "top": [
                    {"class": names[i] if names else i, "probability": float(p)}
                    for p, i in zip(values.tolist(), indices.tolist(), strict=True)
                ],
            }
            for label, values, indices in zip(labels, top.values, top.indices, strict=True)
        ]

    def _rows(self, item: Any, position: str) -> Iterator[tuple[Tensor, str]]:
        """The raw input rows in one item of ``predict``'s inputs, each with its label."""
        kind, shape = self.header["data_kind"], self.input_shape
        if isinstance(item, str | os.PathLike):
            yield from self._file_rows(Path(item), str(item))
        elif isinstance(item, Image.Image) and kind == "image":
            yield to_unit_float(torch.from_numpy(image_array(item, shape[0], shape[-1]))), position
        elif isinstance(item, Tensor | np.ndarray) and kind == "image":
            yield from _labelled(image_batch(item, shape, position), position)
        elif hasattr(item, "columns") and kind == "tabular":  # a pandas DataFrame
            values = torch.as_tensor(self._frame_inputs(item, position))
            yield from (
                (row, f"{position}:{index}") for row, index in zip(values, item.index, strict=True)
            )
        elif isinstance(item, Tensor | np.ndarray):
            tensor = torch.as_tensor(item)
            batch = tensor[None] if tensor.dim() == len(shape) else tensor
            if tuple(batch.shape[1:]) != shape:
                raise ResnetlabError(
                    f"input {position}: shape {tuple(tensor.shape)}, the network takes "
                    f"{shape} (or a batch of them)"
                )
            yield from _labelled(to_unit_float(batch), position)
        else:
            raise ResnetlabError(f"input {position}: a {type(item).__name__} is no {kind} input")

    def _frame_inputs(self, frame: Any, position: str) -> np.ndarray:
        """A DataFrame's rows as model inputs: through the table's fitted preprocessing
        (columns by name), or, for built-in data, its feature columns as they are."""
        fitted = self.header.get("table")
        if fitted is not None:
            return apply_preprocessing(frame, fitted, lambda i: f"DataFrame input {position}")
        names = self.header["feature_names"]
        absent = [name for name in names if name not in frame.columns]
        if absent:
            raise ResnetlabError(f"DataFrame input: no column(s) {', '.join(absent)}")
        return frame[names].to_numpy(dtype=np.float32)

    def _file_rows(self, path: Path, name: str) -> Iterator[tuple[Tensor, str]]:
        """The rows of one input file: an image, or each row of a CSV file."""
        kind, shape = self.header["data_kind"], self.input_shape
        if not path.is_file():
            raise ResnetlabError(f"INPUT: no such file: '{name}'")
        if kind == "tabular":
            if not is_table_file(path):
                raise ResnetlabError(f"INPUT '{name}': this checkpoint takes table rows (.csv...)")
            fitted = self.header.get("table")
            rows = (
                read_inputs(path, fitted)
                if fitted is not None  # else built-in data: its raw feature columns
                else read_feature_columns(path, self.header["feature_names"])
            )
            features = torch.from_numpy(rows)
            yield from ((row, f"{name}:{i + 2}") for i, row in enumerate(features))
        elif kind == "image":
            for file, label in _image_files(path, name):
                try:
                    yield to_unit_float(decode_image(file, shape[0], shape[-1])), label
                except BadImage as bad:
                    raise ResnetlabError(str(bad)) from None
        else:
            raise ResnetlabError(f"predict does not read {kind} files yet")


def _image_files(path: Path, name: str) -> list[tuple[Path | ArchiveMember, str]]:
    """An input image file, or each image of an input shard (``.tar``, ``data.shards``), with
    the name it is reported by (``shard.tar/key.jpg``)."""
    if path.suffix == ".tar":
        images, damage = shard_images(path)
        if damage is not None:
            warnings.warn(
                f"{name}: {damage}; its {len(images)} readable images follow", stacklevel=4
            )
        return [(image, f"{name}/{image.name}") for image in images]
    if not is_image_file(path):
        raise ResnetlabError(f"INPUT '{name}': not an image file this checkpoint can read")
    return [(path, name)]


def load(
    path: str | os.PathLike[str],
    *,
    model: str | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    classes: Sequence[str] | None = None,
    input_size: int | None = None,
    device: str = "auto",
) -> Predictor:
    """A ``Predictor`` for a resnetlab checkpoint, an exported ``.onnx``/``.pt2`` file, or any
    state dict that ``--weights`` accepts. Checkpoints and exported files describe themselves
    (``model`` must then match); a bare state dict knows no classes and no normalisation, so
    ``model`` (default: inferred from its keys), ``mean``/``std``, ``input_size`` and
    ``classes`` supply them; without classes it answers with class indices."""
    dev = resolve_device(device)
    if is_exported(path):
        _refuse_overrides(path, mean, std, classes, input_size)
        return Predictor(*load_network(path, expect_model=model), dev)
    weights = read_weights(path)
    if weights.header is not None and "classes" in weights.header:
        _refuse_overrides(path, mean, std, classes, input_size)
        header = weights.header
        if model is not None and model != header["model"]:
            raise ResnetlabError(f"{path}: holds a {header['model']} model, not model={model}")
        return Predictor(checkpoint_network(weights.state_dict, header, str(path)), header, dev)
    network, report = load_pretrained(weights, model_name=model)
    spec = get_model_spec(report.model)
    first = next(network.parameters())  # the stem (or a table's input layer): (out, in, ...)
    in_chans, outputs = first.shape[1], network.get_classifier().out_features
    if classes is not None and len(classes) != outputs:
        raise ResnetlabError(f"classes: {len(classes)} names, but {path} has {outputs} outputs")
    if classes is None:
        warnings.warn(
            f"{path}: no classes given (classes=[...]): answers are class indices", stacklevel=2
        )
    preprocessing = source_preprocessing(weights, _floats(mean), _floats(std), input_size)
    normalisation = preprocessing.normalisation(in_chans)
    if normalisation is None:
        warnings.warn(
            f"{path}: no mean/std given: inputs go to the network unnormalised", stacklevel=2
        )
        normalisation = [0.0] * in_chans, [1.0] * in_chans
    size = preprocessing.input_size or spec.input_shape[-1]
    header = {
        "model": report.model,
        "model_options": report.model_options,
        "num_classes": outputs,
        "in_chans": in_chans,
        "classes": list(classes) if classes is not None else None,
        "input_shape": [in_chans, *([size] * (len(spec.input_shape) - 1))],
        "data_kind": spec.data_kind,
        "mean": normalisation[0],
        "std": normalisation[1],
        "feature_names": [],
    }
    return Predictor(network, header, dev)


def predict_inputs(
    checkpoint: str,
    inputs: list[str],
    *,
    topk: int = 3,
    device: str = "auto",
    compile: str = "off",
) -> list[dict[str, Any]]:
    """`resnetlab predict`: for each input (an image, or each row of a table), the ``topk``
    classes and their probabilities (regression: the predicted ``value``), using the
    checkpoint's own preprocessing. ``checkpoint`` may also be an exported ``.onnx`` or ``.pt2``
    file; ``compile`` as ``--compile`` (a checkpoint's network only)."""
    predictor = load(checkpoint, device=device)
    kind = predictor.header["data_kind"]
    if not is_exported(checkpoint) and should_compile(compile, kind, predictor.device):
        predictor.compile()
    return predictor.predict(inputs, topk=topk)


def _labelled(batch: Tensor, position: str) -> Iterator[tuple[Tensor, str]]:
    """The rows of a batch given as input ``position``, labelled ``position:row`` (just
    ``position`` for a batch of one)."""
    yield from ((row, f"{position}:{i}" if len(batch) > 1 else position)
                for i, row in enumerate(batch))  # fmt: skip


def _floats(values: Sequence[float] | None) -> list[float] | None:
    return None if values is None else [float(v) for v in values]


def _refuse_overrides(path: str | os.PathLike[str], *overrides: object) -> None:
    """A self-describing file takes no mean/std/classes/input size from the caller."""
    if any(value is not None for value in overrides):
        raise ResnetlabError(
            f"{path}: carries its own classes and preprocessing; mean=, std=, classes= and "
            "input_size= are for bare state dicts"
        )
