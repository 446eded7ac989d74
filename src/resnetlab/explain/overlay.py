"""An explanation as a picture: the heatmap over the image the network saw, with a caption."""

from __future__ import annotations

import io

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont

from resnetlab.explain.cam import Explanation

_ALPHA = 0.45  # the heatmap's share of each pixel
_CAPTION = 22  # pixels of the caption band


def overlay(explanation: Explanation, caption: str | None = None, size: int = 256) -> Image.Image:
    """The image, scaled up to at least ``size`` pixels a side (bilinear), with its heatmap in
    matplotlib's ``jet`` colours blended over it, and ``caption`` in a band below."""
    image, heatmap = explanation.image, explanation.heatmap
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    pixels = image.permute(1, 2, 0).clamp(0, 1).numpy()
    colours = colormaps["jet"](heatmap.clamp(0, 1).numpy())[..., :3]
    blended = (1 - _ALPHA) * pixels + _ALPHA * colours
    picture = Image.fromarray(np.round(blended * 255).astype(np.uint8), "RGB")
    scale = max(1, -(-size // max(picture.size)))
    picture = picture.resize(
        (picture.width * scale, picture.height * scale), Image.Resampling.BILINEAR
    )
    if caption is None:
        return picture
    framed = Image.new("RGB", (picture.width, picture.height + _CAPTION), "white")
    framed.paste(picture)
    font = ImageFont.load_default(size=14)
    ImageDraw.Draw(framed).text((4, picture.height + 3), caption, fill="black", font=font)
    return framed


def caption(explanation: Explanation, method: str, layer: str) -> str:
    """``cat 93.1% (gradcam, layer3)``."""
    return f"{explanation.class_name} {100 * explanation.probability:.1f}% ({method}, {layer})"


def png_bytes(picture: Image.Image) -> bytes:
    """``picture`` encoded as PNG."""
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()
