"""`resnetlab explain`: where the network looks, for each image: the heatmap of a class
activation map over the image, with the class explained and its probability."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from resnetlab.explain.cam import Explainer
from resnetlab.explain.overlay import caption, overlay, png_bytes
from resnetlab.files import unique_name, writable_folder, write_atomically
from resnetlab.inference.predictor import load


def explain_images(
    checkpoint: str,
    images: list[str],
    *,
    layer: str | None = None,
    target: str | None = None,
    method: str = "gradcam",
    out: str = "explanations",
    device: str = "auto",
) -> list[dict[str, Any]]:
    """Explain each image for class ``target`` (an index or a name; default: its top class)
    at ``layer`` (default: the last stage) by ``method``. Writes ``OUT/<image>.<method>.png``
    for each (``OUT/<image>.<method>-2.png`` for a second image of the same name) and
    ``OUT/explanations.json``; returns the JSON's entries."""
    explainer = Explainer(load(checkpoint, device=device), layer=layer, method=method)
    explanations = explainer.explain(images, target=target)
    folder = Path(out)
    writable_folder(folder)
    entries: list[dict[str, Any]] = []
    used: set[str] = set()
    for image, explanation in zip(images, explanations, strict=True):
        path = folder / unique_name(f"{Path(image).stem}.{method}", used)
        picture = overlay(explanation, caption(explanation, method, explainer.layer_name))
        data = png_bytes(picture)
        write_atomically(path, lambda f, data=data: f.write(data), "the explanation")
        entries.append(
            {
                "input": image,
                "class": explanation.class_name,
                "class_index": explanation.class_index,
                "probability": explanation.probability,
                "method": method,
                "layer": explainer.layer_name,
                "file": str(path),
                "top": explanation.answer["top"],
            }
        )
    text = json.dumps(entries, indent=2).encode()
    write_atomically(folder / "explanations.json", lambda f: f.write(text), "the explanations")
    return entries

