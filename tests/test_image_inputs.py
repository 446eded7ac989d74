"""Images given as arrays and tensors in every layout, and one decode of a file for `eval`
(streamed or cached) and `predict`: the same pixels, so the same answer."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_squares
from PIL import Image

from resnetlab.data import ImageOptions, folder, load_data
from resnetlab.data.bundle import DataBundle
from resnetlab.data.folder import scan_image_folder
from resnetlab.errors import ResnetlabError
from resnetlab.inference.evaluate import EvalConfig, evaluate
from resnetlab.inference.image_inputs import reading
from resnetlab.inference.predictor import Predictor, load
from resnetlab.models import create_model
from resnetlab.training import step


@pytest.fixture()
def rgb(squares_checkpoint: Path) -> Predictor:
    return load(squares_checkpoint, device="cpu")


@pytest.fixture()
def grey(tmp_path: Path) -> Predictor:
    """An untrained one-channel resnet20 at 8 x 8: its answers differ from image to image."""
    torch.manual_seed(0)
    path = tmp_path / "grey.pt"
    torch.save(create_model("resnet20", num_classes=3, in_chans=1).state_dict(), path)
    return load(path, model="resnet20", mean=[0.5], std=[0.25], classes=["a", "b", "c"],
                input_size=8, device="cpu")  # fmt: skip


def pixels(path: Path) -> np.ndarray:
    """A file's pixels as Pillow reads them: H x W, or H x W x C."""
    with Image.open(path) as image:
        return np.array(image)


def same_inputs(predictor: Predictor, given: object, files: list[Path]) -> None:
    """``given`` reaches the network as exactly the pixels of ``files``, with their answers."""
    x, _ = predictor.inputs(given)
    assert torch.equal(x, predictor.inputs([str(f) for f in files])[0])
    assert predictor.predict(given, topk=2) != []  # and answers: the network takes them


def test_uint8_arrays_and_tensors_in_every_layout_are_read_as_their_files(
    rgb: Predictor, tmp_path: Path
) -> None:
    files = sorted(make_squares(tmp_path / "small", per_class=1))[:2]  # 32 x 32, as trained
    hwc = np.stack([pixels(f) for f in files])  # (2, 32, 32, 3)
    chw = np.ascontiguousarray(hwc.transpose(0, 3, 1, 2))
    for batch in (hwc, chw, torch.from_numpy(hwc), torch.from_numpy(chw)):
        same_inputs(rgb, batch, files)
    for image in (hwc[0], chw[0], torch.from_numpy(chw[0]), torch.from_numpy(hwc[0])):
        same_inputs(rgb, image, files[:1])
    # another size is cut and resized as a file is; a 2-D array is a greyscale image
    large = sorted(make_squares(tmp_path / "large", per_class=1, size=45))[0]
    Image.open(large).crop((0, 0, 45, 38)).save(tmp_path / "wide.png")
    Image.open(large).convert("L").save(tmp_path / "grey.png")
    wide, grey = pixels(tmp_path / "wide.png"), pixels(tmp_path / "grey.png")
    for image in (wide, torch.from_numpy(wide).permute(2, 0, 1)):
        same_inputs(rgb, image, [tmp_path / "wide.png"])
    for image in (grey, torch.from_numpy(grey)):
        same_inputs(rgb, image, [tmp_path / "grey.png"])
    answers = rgb.predict([hwc, chw[0]], topk=1)
    assert [a["input"] for a in answers] == ["0:0", "0:1", "1"]
    assert answers[0]["top"] == answers[2]["top"]


def test_a_one_channel_network_reads_its_batches_without_channels(
    grey: Predictor, tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 8, 8), dtype=np.uint8)
    files = []
    for i, image in enumerate(images):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(image).save(files[-1])
    for batch in (images, images[:, None], images[..., None], torch.from_numpy(images)):
        same_inputs(grey, batch, files)
    for image in (images[0], images[0][None], images[0][..., None]):
        same_inputs(grey, image, files[:1])
    logits = grey.logits(images)
    assert not torch.allclose(logits[0], logits[1])  # three images, not one


@pytest.mark.parametrize(
    ("shape", "input_shape", "layout"),
    [
        ((3, 8, 3), (3, 32, 32), "CHW"),  # both fit: channels first
        ((8, 8, 3), (3, 32, 32), "HWC"),
        ((8, 8), (3, 32, 32), "HW"),
        ((1, 8, 8), (1, 8, 8), "CHW"),  # also one image of N x H x W
        ((8, 8, 1), (1, 8, 8), "HWC"),
        ((5, 8, 8), (1, 8, 8), "NHW"),
        ((5, 6, 6), (1, 8, 8), None),  # N x H x W only at the network's size
        ((32, 32, 3), (1, 32, 32), None),  # an RGB image is no batch of greyscale ones
        ((2, 3, 8, 3), (3, 32, 32), "NCHW"),
        ((2, 8, 8, 3), (3, 32, 32), "NHWC"),
        ((4, 8, 8), (3, 32, 32), None),
        ((2, 1, 3, 8, 8), (3, 32, 32), None),
    ],
)
def test_the_layout_read_from_a_shape(
    shape: tuple[int, ...], input_shape: tuple[int, int, int], layout: str | None
) -> None:
    assert reading(shape, input_shape) == layout


def test_float_pixels_of_0_to_255_warn_once(rgb: Predictor, tmp_path: Path) -> None:
    files = sorted(make_squares(tmp_path, per_class=1))[:2]
    hwc = np.stack([pixels(f) for f in files])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # floats in [0, 1]: no warning
        scaled = rgb.logits([hwc.astype(np.float32) / 255, torch.from_numpy(hwc[0]) / 255.0])
    assert torch.allclose(scaled, rgb.logits([hwc, hwc[0]]), atol=1e-5)
    with pytest.warns(UserWarning) as caught:
        rgb.predict([hwc.astype(np.float32), hwc[0].astype(np.float64), hwc[1] / 255])
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "3 of 4 input images (the first: input 0:0)" in message and "divide by 255" in message


def test_an_array_that_fits_no_layout_is_a_one_line_error(
    rgb: Predictor, grey: Predictor
) -> None:
    cases = [
        (rgb, np.zeros((4, 32, 32), np.uint8), "input 1: shape (4, 32, 32) is no image",
         "(H, W), (3, H, W), (H, W, 3), (N, 3, H, W), (N, H, W, 3)"),
        (grey, torch.zeros(5, 6, 6), "input 1: shape (5, 6, 6)", "(N, 8, 8)"),
        (rgb, np.zeros((32, 32, 3), np.int64), "input 1: int64 pixels", "uint8 (0..255)"),
    ]  # fmt: skip
    for predictor, array, *needles in cases:
        with pytest.raises(ResnetlabError) as raised:
            predictor.predict([np.zeros((8, 8), np.uint8), array])
        assert "\n" not in str(raised.value)
        for needle in needles:
            assert needle in str(raised.value)


def squares_as_jpegs(root: Path, per_class: int = 2) -> Path:
    """JPEGs of ``make_squares``'s classes, 80 x 71: larger than a 32 x 32 input and not
    square, so decoding at a reduced scale (JPEG draft mode) and cutting the centred square
    both matter."""
    for path in make_squares(root, per_class=per_class, size=80, seed=1):
        with Image.open(path) as image:
            image.crop((0, 0, 80, 71)).save(path.with_suffix(".jpg"), quality=90)
        path.unlink()
    return root


def test_a_streamed_folder_holds_the_cached_pixels(tmp_path: Path) -> None:
    root = squares_as_jpegs(tmp_path / "jpegs", per_class=4)

    def load(**options: float) -> DataBundle:
        return load_data(str(root), val_fraction=0.25, test_fraction=0.25, image_size=32,
                         image_options=ImageOptions(cache_dir=None, **options))  # fmt: skip

    cached, streamed = load(), load(cache_mem_gb=0.0)
    assert streamed.pipeline.startswith("streaming") and cached.pipeline.startswith("cached")
    for part in ("train", "val", "test"):
        parts = (getattr(streamed, part), getattr(cached, part))
        rows = [torch.stack([p[i][0] for i in range(len(p))]) for p in parts]
        assert rows[0].dtype == torch.uint8 and torch.equal(*rows)
    assert streamed.mean == pytest.approx(cached.mean, abs=1e-9)
    assert streamed.std == pytest.approx(cached.std, abs=1e-9)


@pytest.mark.parametrize("streamed", [True, False])
def test_eval_answers_each_file_as_predict_does(
    squares_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, streamed: bool
) -> None:
    root = squares_as_jpegs(tmp_path / "held_out")
    if streamed:
        monkeypatch.setattr(folder, "fits_in_memory", lambda *args, **kwargs: False)
    logits = []
    report = step.classification_report

    def recording(scores: torch.Tensor, *args: object) -> dict:
        logits.append(scores)
        return report(scores, *args)

    monkeypatch.setattr(step, "classification_report", recording)
    result = evaluate(EvalConfig(checkpoint=str(squares_checkpoint), data=str(root),
                                 precision="fp32", device="cpu"))  # fmt: skip
    files = [str(path) for path, _ in scan_image_folder(root)[1]]
    predicted = load(squares_checkpoint, device="cpu").logits(files)
    assert result["samples"] == len(files) == 10
    assert torch.allclose(logits[0], predicted, atol=1e-5)
