"""`resnetlab explain`: where the network looks, for each image: the heatmap of a class
activation map over the image, with the class explained and its probability."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from resnetlab.engine.explain import Explainer
from resnetlab.engine.files import write_atomically
from resnetlab.engine.overlay import caption, overlay, png_bytes
from resnetlab.engine.predictor import load
from resnetlab.errors import ResnetlabError


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
    for each and ``OUT/explanations.json``; returns the JSON's entries."""
    explainer = Explainer(load(checkpoint, device=device), layer=layer, method=method)
    explanations = explainer.explain(images, target=target)
    folder = Path(out)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ResnetlabError(f"--out: cannot create '{folder}' ({exc.strerror})") from None
    entries, used = [], set()
    for image, explanation in zip(images, explanations, strict=True):
        path = folder / _unique(f"{Path(image).stem}.{method}", used)
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


def _unique(stem: str, used: set[str]) -> str:
    """``stem.png``, or ``stem-2.png``... where an earlier image had the same name."""
    name, count = f"{stem}.png", 1
    while name in used:
        count += 1
        name = f"{stem}-{count}.png"
    used.add(name)
    return name
