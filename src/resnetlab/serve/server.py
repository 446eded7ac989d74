"""`resnetlab serve`: the web app of ``resnetlab.serve`` for a checkpoint, on uvicorn."""

from __future__ import annotations

import socket
from typing import Any

from resnetlab.errors import ResnetlabError
from resnetlab.inference.predictor import load
from resnetlab.serve.batcher import MAX_BATCH

_EXTRA = "pip install 'resnetlab[serve]'"


def serve(
    checkpoint: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_upload_mb: float = 10.0,
    method: str = "gradcam",
    layer: str | None = None,
    device: str = "auto",
    max_batch: int = MAX_BATCH,
) -> None:
    """Serve ``checkpoint``'s page and ``POST /predict`` on ``host:port`` until Ctrl-C;
    concurrent requests share calls of the network, up to ``max_batch`` images each."""
    if max_upload_mb <= 0:
        raise ResnetlabError(f"--max-upload-mb must be positive (got {max_upload_mb:g})")
    if max_batch < 1:
        raise ResnetlabError(f"--max-batch must be 1 or more (got {max_batch})")
    if not 0 <= port <= 65535:
        raise ResnetlabError(f"--port must be 0-65535 (got {port})")
    try:
        import uvicorn

        from resnetlab.serve.app import create_app
    except ImportError as exc:
        raise ResnetlabError(f"serve needs FastAPI and uvicorn ({exc.name}): {_EXTRA}") from None
    app = create_app(
        load(checkpoint, device=device),
        max_upload_bytes=int(max_upload_mb * 2**20),
        method=method,
        layer=layer,
        max_batch=max_batch,
    )
    listener = listen(host, port)
    bound_host, bound_port = listener.getsockname()[:2]
    address = f"[{bound_host}]" if ":" in bound_host else bound_host  # IPv6
    print(
        f"resnetlab: serving {checkpoint} at http://{address}:{bound_port} (Ctrl-C stops)",
        flush=True,
    )
    config: Any = uvicorn.Config(app, log_level="warning")
    uvicorn.Server(config).run(sockets=[listener])


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on ``host:port``, or a one-line error naming the flags."""
    listener = None
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        listener = socket.socket(family, kind, proto)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(128)
    except OSError as exc:
        if listener is not None:
            listener.close()
        reason = exc.strerror or str(exc)
        raise ResnetlabError(f"--host {host} --port {port}: cannot listen ({reason})") from None
    return listener
