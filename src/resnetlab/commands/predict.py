"""`resnetlab predict`: top-k classes with probabilities for image files or table rows (a
regression checkpoint: the predicted value of each row)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from resnetlab.data.decode import BadImage, decode_image, is_image_file
from resnetlab.data.tabular import is_table_file, read_feature_columns, read_inputs
from resnetlab.engine.loop import Normalizer, class_logits
from resnetlab.engine.precision import resolve_device
from resnetlab.engine.weights import model_from_checkpoint
from resnetlab.errors import ResnetlabError


def _inputs_as_batch(paths: list[str], header: dict[str, Any]) -> tuple[torch.Tensor, list[str]]:
    """Stack every input into one float batch, with a label for each row (file, or file:line)."""
    rows: list[torch.Tensor] = []
    labels: list[str] = []
    for name in paths:
        path = Path(name)
        if not path.is_file():
            raise ResnetlabError(f"INPUT: no such file: '{name}'")
        if header["data_kind"] == "tabular":
            if not is_table_file(path):
                raise ResnetlabError(f"INPUT '{name}': this checkpoint takes table rows (.csv...)")
            if header.get("table") is not None:
                features = torch.from_numpy(read_inputs(path, header["table"]))
            else:  # built-in data: raw feature columns, normalised by the header's statistics
                features = torch.from_numpy(read_feature_columns(path, header["feature_names"]))
            rows.extend(features)
            labels.extend(f"{name}:{i + 2}" for i in range(len(features)))
        elif header["data_kind"] == "image":
            if not is_image_file(path):
                raise ResnetlabError(f"INPUT '{name}': not an image file this checkpoint can read")
            channels, size = header["input_shape"][0], header["input_shape"][-1]
            try:
                rows.append(decode_image(path, channels, size).float() / 255)
            except BadImage as bad:
                raise ResnetlabError(str(bad)) from None
            labels.append(name)
        else:
            raise ResnetlabError(f"predict does not read {header['data_kind']} inputs yet")
    return torch.stack(rows), labels


@torch.inference_mode()
def predict_inputs(
    checkpoint: str, inputs: list[str], *, topk: int = 3, device: str = "auto"
) -> list[dict[str, Any]]:
    """For each input (an image, or each row of a table): the ``topk`` classes and their
    probabilities (regression: the predicted ``value``), using the checkpoint's own
    preprocessing."""
    if topk < 1:
        raise ResnetlabError(f"--topk must be at least 1 (got {topk})")
    model, header = model_from_checkpoint(checkpoint)
    x, labels = _inputs_as_batch(inputs, header)
    dev = resolve_device(device)
    model = model.to(dev).eval()
    normalize = Normalizer(header["mean"], header["std"], header["input_shape"])
    output = model(normalize(x.to(dev))).float().cpu()
    if header.get("task") == "regression":
        table = header["table"]
        values = table["target_mean"] + table["target_std"] * output[:, 0].double()
        return [
            {"input": label, "value": value}
            for label, value in zip(labels, values.tolist(), strict=True)
        ]
    probs = class_logits(output).softmax(dim=1)
    k = min(topk, probs.shape[1])
    top = probs.topk(k, dim=1)
    classes = header["classes"]
    return [
        {
            "input": label,
            "top": [
                {"class": classes[i], "probability": float(p)}
                for p, i in zip(values.tolist(), indices.tolist(), strict=True)
            ],
        }
        for label, values, indices in zip(labels, top.values, top.indices, strict=True)
    ]
