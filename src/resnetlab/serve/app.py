"""The web app: ``GET /`` the page (plain HTML, CSS and JS from ``static/``, nothing fetched from
elsewhere), ``POST /predict`` an image as the multipart field ``file`` -> JSON with the top-5
classes and the Grad-CAM overlay. Concurrent requests share the network's calls (``Batcher``)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from resnetlab.explain.cam import Explainer
from resnetlab.explain.overlay import caption, overlay, png_bytes
from resnetlab.inference.predictor import Predictor
from resnetlab.serve.batcher import MAX_BATCH, Batcher
from resnetlab.serve.upload import UploadRefused, read_upload

STATIC = Path(__file__).parent / "static"
MAX_PIXELS = 40_000_000  # a 40-megapixel photo decodes to 120 MB of RGB
_MULTIPART_SLACK = 16 * 1024  # bytes of multipart framing allowed beyond the file's own limit


def create_app(
    predictor: Predictor,
    *,
    max_upload_bytes: int,
    max_pixels: int = MAX_PIXELS,
    method: str = "gradcam",
    layer: str | None = None,
    max_batch: int = MAX_BATCH,
) -> FastAPI:
    """The app for ``predictor``. Uploads are received and decoded in parallel (as ``predict``
    decodes image files, so that only good images reach the network); one thread
    calls the network (the explainer's hooks and gradients are per call), on up to
    ``max_batch`` images that arrived while its last call ran (``app.state.batcher``)."""
    explainer = Explainer(predictor, layer=layer, method=method)
    batcher = Batcher(lambda images: explainer.explain(images, topk=5), max_batch)
    limit_mb = max_upload_bytes / 2**20
    channels, size = predictor.input_shape[0], predictor.input_shape[-1]

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        batcher.close()

    # no /docs or /redoc: their pages use a CDN
    app = FastAPI(title="resnetlab", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.batcher = batcher
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    too_large = f"upload larger than the limit of {limit_mb:g} MB"
    max_body = max_upload_bytes + _MULTIPART_SLACK

    @app.middleware("http")
    async def refuse_declared_too_large(request: Request, call_next: Any) -> Any:
        """413 in JSON, before reading a byte, for a body whose Content-Length is over the
        limit; a body that grows past it unannounced is cut off by ``max_body_size``."""
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_body:
            return JSONResponse({"detail": too_large}, status_code=413)
        return await call_next(request)

    @app.post("/predict", max_body_size=max_body)
    def predict(file: Annotated[UploadFile, File()]) -> dict[str, Any]:
        """The top-5 classes of the uploaded image, and the Grad-CAM overlay as a PNG data URL."""
        name = file.filename or "upload"
        data = file.file.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            raise UploadRefused(413, f"{name}: larger than the limit of {limit_mb:g} MB")
        explanation = batcher(read_upload(data, name, max_pixels, channels, size))
        picture = overlay(explanation, caption=None)
        return {
            "input": name,
            "top": explanation.answer["top"],
            "explained": {
                "class": explanation.class_name,
                "probability": explanation.probability,
                "method": method,
                "layer": explainer.layer_name,
                "caption": caption(explanation, method, explainer.layer_name),
            },
            "overlay": "data:image/png;base64," + base64.b64encode(png_bytes(picture)).decode(),
        }

    @app.exception_handler(UploadRefused)
    def refused(_request: Request, exc: UploadRefused) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    def no_file(_request: Request, _exc: RequestValidationError) -> JSONResponse:
        detail = "no file: send the image as the multipart form field 'file'"
        return JSONResponse({"detail": detail}, status_code=422)

    return app
