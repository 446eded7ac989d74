"""`resnetlab explain`: class activation maps checked where the answer is known (only a coloured
square decides the class), the pictures and JSON it writes, and its one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import assert_one_line_error, make_squares, run_cli
from PIL import Image

from resnetlab.config.train import EXPLAIN_METHODS
from resnetlab.explain.cam import Explainer
from resnetlab.inference.predictor import load


@pytest.fixture(scope="module")
def squares(tmp_path_factory: pytest.TempPathFactory) -> dict[Path, tuple[int, int, int]]:
    """Ten new images of the five classes (another seed than training's), with their squares."""
    return make_squares(tmp_path_factory.mktemp("held_out"), per_class=2, seed=1)


def _on_square(square: tuple[int, int, int], size: int = 32) -> torch.Tensor:
    top, left, side = square
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[top : top + side, left : left + side] = True
    return mask


@pytest.mark.parametrize("method", EXPLAIN_METHODS)
def test_heatmap_mass_lies_on_the_square(
    squares_checkpoint: Path, squares: dict[Path, tuple[int, int, int]], method: str
) -> None:
    """The square covers 14% of each image; at least 60% of the heatmap's mass lies on it."""
    explainer = Explainer(load(squares_checkpoint, device="cpu"), layer="layer2", method=method)
    explanations = explainer.explain(list(squares))
    masses = []
    for (path, square), explanation in zip(squares.items(), explanations, strict=True):
        assert explanation.class_name == path.parent.name  # the network is right...
        heatmap = explanation.heatmap
        assert heatmap.shape == (32, 32) and heatmap.min() == 0 and heatmap.max() == 1
        masses.append(float(heatmap[_on_square(square)].sum() / heatmap.sum()))
    assert sum(masses) / len(masses) >= 0.6, masses  # ...and looks at the square
    assert min(masses) >= 0.4, masses


def test_default_layer_is_the_last_stage_and_peaks_on_the_square(
    squares_checkpoint: Path, squares: dict[Path, tuple[int, int, int]]
) -> None:
    explainer = Explainer(load(squares_checkpoint, device="cpu"))
    assert explainer.layer_name == "layer3"
    for (_, square), explanation in zip(
        squares.items(), explainer.explain(list(squares)), strict=True
    ):
        peak = int(explanation.heatmap.argmax())
        assert _on_square(square).flatten()[peak], (square, divmod(peak, 32))


def test_explain_writes_pictures_and_the_class_explained(
    capsys: pytest.CaptureFixture[str],
    squares_checkpoint: Path,
    squares: dict[Path, tuple[int, int, int]],
    tmp_path: Path,
) -> None:
    images = [str(path) for path in list(squares)[:2]]
    code, out, _ = run_cli(
        capsys, "explain", "--checkpoint", str(squares_checkpoint), *images, "--out", "maps"
    )
    assert code == 0
    expected = load(squares_checkpoint, device="cpu").predict(images, topk=5)
    entries = json.loads((tmp_path / "maps" / "explanations.json").read_text())
    assert [entry["input"] for entry in entries] == images
    for entry, answer in zip(entries, expected, strict=True):
        assert entry["class"] == answer["top"][0]["class"]
        assert entry["probability"] == pytest.approx(answer["top"][0]["probability"], abs=1e-5)
        assert (entry["method"], entry["layer"]) == ("gradcam", "layer3")
        with Image.open(entry["file"]) as picture:  # 32x32 shown at 256x256, a caption below
            assert picture.size == (256, 256 + 22)
        assert f"{entry['class']} {100 * entry['probability']:.1f}% (gradcam, layer3)" in out
    # a class other than the top one, by index: its own probability
    code, out, _ = run_cli(
        capsys, "explain", "--checkpoint", str(squares_checkpoint), images[0], "--class", "2",
        "--method", "gradcam++", "--out", "maps",
    )  # fmt: skip
    assert code == 0
    entry = json.loads((tmp_path / "maps" / "explanations.json").read_text())[0]
    probabilities = {p["class"]: p["probability"] for p in expected[0]["top"]}
    assert entry["class"] == "magenta" and entry["class_index"] == 2  # classes sorted by name
    assert entry["probability"] == pytest.approx(probabilities["magenta"], abs=1e-5)
    assert Path(entry["file"]).name == f"{Path(images[0]).stem}.gradcam++.png"


def test_two_images_of_one_name_get_two_pictures(
    capsys: pytest.CaptureFixture[str],
    squares_checkpoint: Path,
    squares: dict[Path, tuple[int, int, int]],
) -> None:
    red, green = (str(path) for path in list(squares)[::2][:2])  # red/000.png, green/000.png
    code, _, _ = run_cli(capsys, "explain", "--checkpoint", str(squares_checkpoint), red, green)
    assert code == 0
    names = sorted(path.name for path in Path("explanations").glob("*.png"))
    assert names == ["000.gradcam-2.png", "000.gradcam.png"]


@pytest.mark.parametrize(
    ("flags", "needles"),
    [
        (["--layer", "layer9"], ["--layer layer9: no such layer", "layer1, layer2, layer3"]),
        (["--layer", "fc"], ["--layer fc: gives (1, 5), not a feature map"]),
        (["--class", "7"], ["--class 7: the network has 5 classes (0-4)"]),
        (
            ["--class", "purple"],
            ["--class purple: no such class (blue, green, magenta, red, yellow)"],
        ),
    ],
)
def test_bad_flags_are_one_line_errors(
    capsys: pytest.CaptureFixture[str],
    squares_checkpoint: Path,
    squares: dict[Path, tuple[int, int, int]],
    flags: list[str],
    needles: list[str],
) -> None:
    image = str(next(iter(squares)))
    code, _, err = run_cli(
        capsys, "explain", "--checkpoint", str(squares_checkpoint), image, *flags
    )
    assert_one_line_error(code, err, *needles)


def test_a_class_named_by_a_number_is_taken_by_its_name(squares_checkpoint: Path) -> None:
    explainer = Explainer(load(squares_checkpoint, device="cpu"))
    explainer.predictor.header["classes"] = ["3", "4", "0", "1", "2"]  # folders named 0-4
    assert [explainer.target_index(k) for k in ("0", 4, "2")] == [2, 1, 4]
    explainer.predictor.header["classes"] = ["10", "11", "12", "13", "14"]
    assert explainer.target_index("1") == 1  # no class named 1: an index


def test_unreadable_image_is_a_one_line_error(
    capsys: pytest.CaptureFixture[str], squares_checkpoint: Path, tmp_path: Path
) -> None:
    fake = tmp_path / "notes.png"
    fake.write_text("not a picture")
    code, _, err = run_cli(capsys, "explain", "--checkpoint", str(squares_checkpoint), str(fake))
    assert_one_line_error(code, err, "notes.png", "not an image")
    assert not Path("explanations").exists()
