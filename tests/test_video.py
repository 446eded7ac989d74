"""Video ResNets against torchvision's, clips, moving-digits, and training on clips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from helpers import assert_one_line_error, make_folder, randomize_batch_norms, run_cli, shapes
from PIL import Image
from sklearn.datasets import load_digits

from resnetlab.data import data_kind, load_data
from resnetlab.data.augment import BatchAugment
from resnetlab.data.video import make_moving_digits
from resnetlab.models import count_parameters, create_model, list_models

TORCHVISION_VIDEO = {"r3d_18": 33_371_472, "mc3_18": 11_695_440, "r2plus1d_18": 31_505_325}
SMALL = {
    "r3d_10_small": 905_274,
    "mc3_10_small": 324_666,
    "r2plus1d_10_small": 784_393,
    "fr2d_10_small": 310_746,
}


@pytest.mark.parametrize("name", TORCHVISION_VIDEO)
def test_keys_counts_and_outputs_match_torchvision(name: str) -> None:
    torch.manual_seed(0)
    reference = getattr(torchvision.models.video, name)(weights=None).eval()
    randomize_batch_norms(reference)
    with torch.device("meta"):
        ours = create_model(name).eval()
    assert shapes(ours) == shapes(reference)
    assert count_parameters(ours) == TORCHVISION_VIDEO[name]
    ours.load_state_dict(reference.state_dict(), strict=True, assign=True)
    clip = torch.randn(2, 3, 8, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(clip), reference(clip), atol=1e-5, rtol=1e-5)


def test_the_video_family_and_the_small_counts() -> None:
    assert list_models("video") == [*TORCHVISION_VIDEO, *SMALL]
    with torch.device("meta"):
        counts = {name: count_parameters(create_model(name)) for name in SMALL}
    assert counts == SMALL


def test_f_r2d_ignores_frame_order_and_r3d_does_not() -> None:
    torch.manual_seed(0)
    clip = torch.randn(2, 1, 8, 32, 32)
    shuffled = clip[:, :, torch.randperm(8)]
    for name, blind in (("fr2d_10_small", True), ("r3d_10_small", False)):
        model = create_model(name, num_classes=2, in_chans=1).eval()
        randomize_batch_norms(model)
        with torch.no_grad():
            same = torch.allclose(model(clip), model(shuffled), atol=1e-5)
        assert same == blind, name


def test_models_lists_video_networks_at_their_clip_size(capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run_cli(capsys, "models", "--family", "video", "--json")
    rows = {row["name"]: row for row in json.loads(out)}
    assert code == 0 and rows["r3d_18"]["macs_human"] == "40.7G"
    assert rows["r3d_18"]["input_shape"] == [3, 16, 112, 112]
    assert rows["r3d_10_small"]["input_shape"] == [3, 16, 64, 64]


def _digits() -> np.ndarray:
    """scikit-learn's 8x8 digits at 16x16, pixels 0-255."""
    small = load_digits().images[:200] * 255 / 16
    return np.kron(small, np.ones((2, 2))).astype(np.uint8)


def test_moving_digits_is_seeded_balanced_and_labelled_by_the_direction_of_motion() -> None:
    clips, labels = make_moving_digits(_digits(), 64, frames=8, size=32)
    again, _ = make_moving_digits(_digits(), 64, frames=8, size=32)
    assert clips.shape == (64, 1, 8, 32, 32) and torch.equal(clips, again)
    assert labels.bincount().tolist() == [32, 32]
    pixels = clips[:, 0].float()
    grid = torch.arange(32.0)
    mass = pixels.sum((2, 3))
    centre_x = (pixels.sum(2) * grid).sum(2) / mass  # (clips, frames)
    centre_y = (pixels.sum(3) * grid).sum(2) / mass
    moved_x, moved_y = centre_x[:, -1] - centre_x[:, 0], centre_y[:, -1] - centre_y[:, 0]
    horizontal = moved_x.abs() > moved_y.abs()
    assert horizontal.sum() == 32  # the axes are balanced too
    forward = torch.where(horizontal, moved_x, moved_y) > 0  # right or down
    assert torch.equal(forward.long(), labels)


def test_the_shuffled_set_permutes_the_frames_of_the_same_clips() -> None:
    clips, labels = make_moving_digits(_digits(), 32, frames=8, size=32)
    shuffled, same_labels = make_moving_digits(
        _digits(), 32, frames=8, size=32, shuffle_frames=True
    )
    assert torch.equal(labels, same_labels)
    flat, flat_shuffled = clips.flatten(3), shuffled.flatten(3)  # (clips, 1, frames, pixels)
    permuted = 0
    for a, b in zip(flat[:, 0], flat_shuffled[:, 0], strict=True):
        sort = sorted(map(tuple, a.tolist()))
        assert sort == sorted(map(tuple, b.tolist()))  # the same frames
        permuted += not torch.equal(a, b)
    assert permuted == 32


def test_a_clip_is_augmented_as_a_whole() -> None:
    torch.manual_seed(0)
    frames = torch.randint(0, 256, (6, 3, 12, 12), dtype=torch.uint8)
    clips = frames[:, :, None].expand(-1, -1, 4, -1, -1)  # 4 identical frames per clip
    augment = BatchAugment([0.5] * 3, [0.25] * 3, crop_padding=3, flip=True, cutout=4, seed=1)
    indices = torch.arange(6)
    out = augment(clips, indices, epoch=2)
    assert out.shape == (6, 3, 4, 12, 12)
    expected = augment(frames, indices, epoch=2)  # the same draws for the same samples
    for t in range(4):
        torch.testing.assert_close(out[:, :, t], expected)
    assert not torch.equal(expected, augment(frames, indices, epoch=3))


def make_clip_folder(root: Path) -> Path:
    """Two classes of 6 clips each: frame folders, .npy and .pt arrays of 5 or 6 frames; the
    classes differ in brightness."""
    rng = np.random.default_rng(0)
    for label, name in enumerate(("dark", "light")):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(6):
            clip = (rng.integers(0, 100, (1, 5 + i % 2, 16, 16)) + 150 * label).astype(np.uint8)
            if i % 3 == 0:
                (folder / f"c{i}").mkdir()
                for t, frame in enumerate(clip[0]):
                    Image.fromarray(frame).save(folder / f"c{i}" / f"{t:02d}.png")
            elif i % 3 == 1:
                np.save(folder / f"c{i}.npy", clip)
            else:
                torch.save(torch.from_numpy(clip), folder / f"c{i}.pt")
    return root


def test_a_clip_folder_loads_as_one_clip_tensor(tmp_path: Path) -> None:
    root = make_clip_folder(tmp_path / "clips")
    assert data_kind(str(root)) == "video"
    split_images = make_folder(tmp_path / "images" / "train")
    assert data_kind(str(split_images.parent)) == data_kind(str(split_images)) == "image"
    bundle = load_data(str(root), val_fraction=0.0, test_fraction=0.0, image_size=8)
    assert bundle.kind == "video" and bundle.classes == ["dark", "light"]
    assert bundle.input_shape == (1, 5, 8, 8) and len(bundle.train) == 12
    clip, label = bundle.train[0]
    assert clip.dtype == torch.uint8 and int(label) in (0, 1)


def test_hidden_frame_files_are_skipped(tmp_path: Path) -> None:
    root = make_clip_folder(tmp_path / "clips")
    (root / "dark" / "c0" / "._00.png").write_bytes(b"AppleDouble")  # macOS metadata
    (root / "dark" / "c9").mkdir()
    (root / "dark" / "c9" / "._00.png").write_bytes(b"AppleDouble")  # no frames: no clip
    bundle = load_data(str(root), val_fraction=0.0, test_fraction=0.0, image_size=8)
    assert bundle.input_shape == (1, 5, 8, 8) and len(bundle.train) == 12


def test_a_bad_clip_is_named_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_clip_folder(tmp_path / "clips")
    np.save(root / "dark" / "bad.npy", np.zeros((5, 16, 16), dtype=np.uint8))
    code, _, err = run_cli(capsys, "train", "--model", "r3d_10_small", "--data", str(root))
    assert_one_line_error(code, err, "bad.npy", "(C, T, H, W)")
    code, _, err = run_cli(capsys, "train", "--model", "r3d_10_small", "--data", "digits")
    assert_one_line_error(code, err, "r3d_10_small takes video data", "image data")


def test_training_on_clips_runs_and_its_checkpoint_evaluates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_clip_folder(tmp_path / "clips")
    out = tmp_path / "run"
    code, stdout, err = run_cli(
        capsys, "train", "--model", "r2plus1d_10_small", "--data", str(root), "--epochs", "2",
        "--batch-size", "4", "--crop-padding", "2", "--flip", "--out", str(out), "--quiet",
        "--val-fraction", "0.2", "--test-fraction", "0.2",
    )  # fmt: skip
    assert code == 0, err
    assert "input 1x5x16x16 | cpu fp32 |" in stdout
    assert "Accuracy of the network on the test images:" in stdout
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4]
    code, stdout, err = run_cli(capsys, "eval", "--checkpoint", str(out / "best.safetensors"))
    assert code == 0, err
    assert "test" in stdout


def test_the_video_experiment_in_a_tiny_configuration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "video"
    code, stdout, err = run_cli(
        capsys, "experiment", "video", "--image-size", "8", "--epochs", "1",
        "--limit-steps", "2", "--batch-size", "8", "--val-fraction", "0.02",
        "--test-fraction", "0.05", "--out", str(out), "--quiet",
    )  # fmt: skip
    assert code == 0, err
    assert stdout.count("Accuracy of the network on the test images:") == 3
    result = json.loads((out / "video.json").read_text())
    assert [run["model"] for run in result["runs"]] == ["r3d_10_small"] * 2 + ["fr2d_10_small"]
    assert [run["data"] for run in result["runs"]] == [
        "moving-digits", "moving-digits-shuffled", "moving-digits",
    ]  # fmt: skip
    assert result["chance"] == 50.0
    tested = [
        json.loads((Path(run["run_dir"]) / "confusion.json").read_text()) for run in result["runs"]
    ]
    assert {sum(map(sum, t["confusion"])) for t in tested} == {100}  # one test split
    assert (out / "video.png").stat().st_size > 0 and (out / "video.md").is_file()
