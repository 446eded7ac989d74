"""`resnetlab serve`: a real uvicorn on 127.0.0.1 answering 50 concurrent requests exactly as
``Predictor`` does, refusing bad uploads with the right status while it keeps serving, and
serving its page with nothing from elsewhere."""

from __future__ import annotations

import asyncio
import base64
import io
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI
from helpers import assert_one_line_error, make_squares, run_cli
from PIL import Image

from resnetlab.inference.predictor import load
from resnetlab.serve.app import STATIC, create_app
from resnetlab.serve.batcher import Batcher
from resnetlab.serve.server import listen

LIMIT = 64 * 1024  # bytes per upload in these tests
MAX_PIXELS = 1_000_000


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Ten new images of the five square classes."""
    return list(make_squares(tmp_path_factory.mktemp("uploads"), per_class=2, seed=2))


@pytest.fixture(scope="module")
def server(squares_checkpoint: Path) -> Iterator[str]:
    """The app on uvicorn in a thread, on a free port of 127.0.0.1: its URL."""
    app = create_app(
        load(squares_checkpoint, device="cpu"), max_upload_bytes=LIMIT, max_pixels=MAX_PIXELS
    )
    with _serving(app) as url:
        yield url


@contextmanager
def _serving(app: FastAPI) -> Iterator[str]:
    """``app`` on uvicorn in a thread, on a free port of 127.0.0.1: its URL."""
    listener = listen("127.0.0.1", 0)
    port = listener.getsockname()[1]
    uvicorn_server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=uvicorn_server.run, kwargs={"sockets": [listener]})
    thread.start()
    deadline = time.monotonic() + 30
    while not uvicorn_server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert uvicorn_server.started
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        uvicorn_server.should_exit = True
        thread.join(timeout=30)


def _post(url: str, name: str, data: bytes) -> httpx.Response:
    return httpx.post(f"{url}/predict", files={"file": (name, data, "image/png")}, timeout=60)


def test_fifty_concurrent_requests_are_answered_as_predictor_answers(
    server: str, squares_checkpoint: Path, images: list[Path]
) -> None:
    expected = load(squares_checkpoint, device="cpu").predict([str(p) for p in images], topk=5)
    uploads = [images[i % len(images)] for i in range(50)]

    async def ask_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server, timeout=120) as client:
            return await asyncio.gather(
                *(
                    client.post("/predict", files={"file": (path.name, path.read_bytes())})
                    for path in uploads
                )
            )

    responses = asyncio.run(ask_all())
    assert [r.status_code for r in responses] == [200] * 50
    for path, response in zip(uploads, responses, strict=True):
        answer, want = response.json(), expected[images.index(path)]
        assert [p["class"] for p in answer["top"]] == [p["class"] for p in want["top"]]
        assert [p["probability"] for p in answer["top"]] == pytest.approx(
            [p["probability"] for p in want["top"]], abs=1e-5
        )
        assert answer["top"][0]["class"] == path.parent.name
        assert answer["explained"]["class"] == answer["top"][0]["class"]
        assert (answer["explained"]["method"], answer["explained"]["layer"]) == (
            "gradcam",
            "layer3",
        )
        header, _, encoded = answer["overlay"].partition(",")
        assert header == "data:image/png;base64"
        with Image.open(io.BytesIO(base64.b64decode(encoded))) as overlay:
            assert (overlay.format, overlay.size) == ("PNG", (256, 256))


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_bad_uploads_get_their_status_and_the_server_keeps_serving(
    server: str, images: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    good = images[0].read_bytes()
    noise = np.random.default_rng(0).integers(0, 256, 4 * LIMIT, dtype=np.uint8).tobytes()
    cases = [
        (noise, 413, "larger than the limit of 0.0625 MB"),  # refused before it is read
        (noise[: LIMIT + 1], 413, "big.png: larger than the limit of 0.0625 MB"),
        (b"just some text, no picture", 415, "big.png: not an image"),
        (good[: len(good) // 2], 400, "big.png: truncated"),
        (_png(2000, 1000), 400, "2000 x 1000 = 2,000,000 pixels, over the limit of 1,000,000"),
    ]
    with monkeypatch.context() as patch:  # a header of more pixels than Pillow opens at all
        patch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
        response = _post(server, "bomb.png", _png(200, 101))
    assert response.status_code == 400
    assert "bomb.png: more than 20,000 pixels" in response.json()["detail"]
    for data, status, message in cases:
        response = _post(server, "big.png", data)
        assert response.status_code == status, (status, response.text)
        assert message in response.json()["detail"]
    head = b'--x\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n\r\n'
    body = head + noise  # a well-formed start, so that only its size can stop it
    chunks = (body[i : i + 4096] for i in range(0, len(body), 4096))  # no Content-Length
    response = httpx.post(
        f"{server}/predict",
        content=chunks,
        headers={"content-type": "multipart/form-data; boundary=x"},
        timeout=60,
    )
    assert response.status_code == 413  # cut off after the limit (Starlette's plain text)
    for form in ({}, {"image": ("a.png", good)}):  # no file, or under another name
        response = httpx.post(f"{server}/predict", files=form or None, data={"x": "1"}, timeout=60)
        assert response.status_code == 422
        assert response.json()["detail"] == (
            "no file: send the image as the multipart form field 'file'"
        )
    assert _post(server, "good.png", good).status_code == 200


def _jpeg(pixels: np.ndarray, exif: bytes = b"") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90, exif=exif)
    return buffer.getvalue()


def test_a_bad_upload_is_refused_before_its_batch_and_jpegs_decode_as_in_predict(
    squares_checkpoint: Path, tmp_path: Path
) -> None:
    predictor = load(squares_checkpoint, device="cpu")
    app = create_app(predictor, max_upload_bytes=LIMIT, max_pixels=MAX_PIXELS)
    batcher = app.state.batcher
    work, entered, release = batcher._work, threading.Event(), threading.Event()

    def held(items: list) -> list:  # the first call waits, so that the next ones queue up
        entered.set()
        release.wait(timeout=30)
        return work(items)

    batcher._work = held
    exif = Image.Exif()
    exif[0x0112], exif[0x010F] = 6, "cam"  # rotated; then Make renumbered as a numeric tag
    broken = _jpeg(
        np.zeros((16, 16, 3), np.uint8), exif.tobytes().replace(b"\x01\x0f", b"\x01\x56")
    )
    photo = tmp_path / "photo.jpg"  # 4x the input size: predict decodes it at 1/4 scale
    photo.write_bytes(_jpeg(np.random.default_rng(0).integers(0, 256, (128, 128, 3), np.uint8)))
    answers: dict[str, httpx.Response] = {}
    with _serving(app) as url:

        def send(name: str, data: bytes) -> threading.Thread:
            def post() -> None:
                answers[name] = _post(url, name, data)

            thread = threading.Thread(target=post)
            thread.start()
            return thread

        def wait_for(done: Callable[[], bool]) -> None:
            deadline = time.monotonic() + 30
            while not done() and time.monotonic() < deadline:
                time.sleep(0.01)

        threads = [send("first.jpg", photo.read_bytes())]
        assert entered.wait(timeout=30)
        threads.append(send("broken.jpg", broken))
        wait_for(lambda: "broken.jpg" in answers or batcher._queue.qsize() == 1)
        threads.append(send("photo.jpg", photo.read_bytes()))
        wait_for(lambda: batcher._queue.qsize() == 1 + ("broken.jpg" not in answers))
        release.set()
        for thread in threads:
            thread.join(timeout=60)
    assert answers["broken.jpg"].status_code == 400
    assert answers["broken.jpg"].json()["detail"].startswith("broken.jpg: damaged (")
    want = predictor.predict(str(photo), topk=5)[0]["top"]
    for name in ("first.jpg", "photo.jpg"):
        assert answers[name].status_code == 200, answers[name].text
        top = answers[name].json()["top"]
        assert [p["class"] for p in top] == [p["class"] for p in want]
        assert [p["probability"] for p in top] == pytest.approx(
            [p["probability"] for p in want], abs=1e-6
        )
    assert batcher.items == 2  # the broken upload never reached the network


def test_page_is_served_with_nothing_from_elsewhere(server: str) -> None:
    client = httpx.Client(base_url=server, timeout=60)  # the suite's other worker loads the CPU
    page = client.get("/")
    assert page.status_code == 200 and '<input id="file" type="file"' in page.text
    for name in ("index.html", "app.js", "style.css"):
        text = (STATIC / name).read_text()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text
        assert client.get(f"/static/{name}").text == text
    assert client.get("/docs").status_code == 404  # FastAPI's docs load a CDN


def test_serve_bad_flags_are_one_line_errors(
    capsys: pytest.CaptureFixture[str], squares_checkpoint: Path
) -> None:
    checkpoint = str(squares_checkpoint)
    code, _, err = run_cli(capsys, "serve", "--checkpoint", checkpoint, "--max-upload-mb", "0")
    assert_one_line_error(code, err, "--max-upload-mb must be positive (got 0)")
    code, _, err = run_cli(capsys, "serve", "--checkpoint", checkpoint, "--max-batch", "0")
    assert_one_line_error(code, err, "--max-batch must be 1 or more (got 0)")
    code, _, err = run_cli(capsys, "serve", "--checkpoint", "missing.safetensors")
    assert_one_line_error(code, err, "missing.safetensors")
    code, _, err = run_cli(capsys, "serve", "--checkpoint", checkpoint, "--layer", "layer7")
    assert_one_line_error(code, err, "--layer layer7: no such layer")
    code, _, err = run_cli(capsys, "serve", "--checkpoint", checkpoint, "--layer", "fc")
    assert_one_line_error(code, err, "--layer fc: gives (1, 5), not a feature map")  # at start
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = str(taken.getsockname()[1])
        code, _, err = run_cli(capsys, "serve", "--checkpoint", checkpoint, "--port", port)
    assert_one_line_error(code, err, f"--host 127.0.0.1 --port {port}: cannot listen")


def _ask_in_threads(batcher: Batcher, items: list[int], answers: dict[int, object]) -> list:
    def ask(item: int) -> None:
        try:
            answers[item] = batcher(item)
        except ValueError as exc:
            answers[item] = exc

    threads = [threading.Thread(target=ask, args=(item,)) for item in items]
    for thread in threads:
        thread.start()
    return threads


def _wait_until_queued(batcher: Batcher, count: int) -> None:
    deadline = time.monotonic() + 30
    while batcher._queue.qsize() < count and time.monotonic() < deadline:
        time.sleep(0.01)


def test_requests_that_arrive_during_a_call_share_the_next_ones() -> None:
    calls: list[list[int]] = []
    entered, release = threading.Event(), threading.Event()

    def work(items: list[int]) -> list[int]:
        calls.append(items)
        entered.set()
        release.wait(timeout=30)
        return [10 * item for item in items]

    batcher = Batcher(work, max_batch=3)
    answers: dict[int, object] = {}
    first = _ask_in_threads(batcher, [0], answers)
    assert entered.wait(timeout=30)
    waiting = _ask_in_threads(batcher, [1, 2, 3, 4, 5], answers)
    _wait_until_queued(batcher, 5)
    release.set()
    for thread in first + waiting:
        thread.join(timeout=30)
    assert answers == {item: 10 * item for item in range(6)}
    assert calls[0] == [0] and sorted(calls[1] + calls[2]) == [1, 2, 3, 4, 5]
    assert [len(call) for call in calls] == [1, 3, 2] and batcher.batches == 3
    batcher.close()
    assert not batcher._thread.is_alive()


def test_an_error_reaches_every_request_of_its_batch_and_the_batcher_goes_on() -> None:
    entered, release = threading.Event(), threading.Event()

    def work(items: list[int]) -> list[int]:
        entered.set()
        release.wait(timeout=30)
        if -1 in items:
            raise ValueError("bad item")
        return items

    batcher = Batcher(work, max_batch=8)
    answers: dict[int, object] = {}
    threads = _ask_in_threads(batcher, [0], answers)
    assert entered.wait(timeout=30)
    threads += _ask_in_threads(batcher, [-1, 2], answers)
    _wait_until_queued(batcher, 2)
    release.set()
    for thread in threads:
        thread.join(timeout=30)
    assert answers[0] == 0 and batcher.batches == 2
    assert isinstance(answers[-1], ValueError) and isinstance(answers[2], ValueError)
    assert batcher(7) == 7
    batcher.close()
