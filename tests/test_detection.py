"""Detection: shapes, COCO folders, torchvision detectors on resnetlab backbones, mAP, and
`resnetlab detect` end to end (train, resume, eval, predict, bad input)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torchvision.ops.misc import FrozenBatchNorm2d

from resnetlab.checkpoints.checkpoint import save_checkpoint
from resnetlab.detection.coco import read_coco
from resnetlab.detection.config import DetectConfig
from resnetlab.detection.data import hflip, training_batches, training_target
from resnetlab.detection.detect import check_batch_size, detect_train
from resnetlab.detection.metrics import detection_map
from resnetlab.detection.model import DetectorSpec, build_detector
from resnetlab.detection.shapes import ShapesSet
from resnetlab.detection.train import read_state
from resnetlab.errors import ResnetlabError
from resnetlab.models import create_model
from resnetlab.runtime.distributed import World
from resnetlab.training.claim import run_files
from tests.helpers import assert_one_line_error, run_cli

CLASSES = ["circle", "square", "triangle"]


def test_shapes_are_seeded_and_hold_one_to_four_objects_of_16_to_96_px() -> None:
    data = ShapesSet("val")
    assert len(data) == 200 and len(ShapesSet("train")) == 2000 and len(ShapesSet("test")) == 500
    image, target = data[3]
    again, same = data[3]
    assert image.shape == (3, 256, 256) and image.dtype == torch.uint8
    assert torch.equal(image, again) and torch.equal(target["boxes"], same["boxes"])
    assert not torch.equal(image, ShapesSet("test")[3][0])
    counts, sides = [], []
    for index in range(40):
        boxes, labels = data[index][1]["boxes"], data[index][1]["labels"]
        counts.append(len(boxes))
        sides += (boxes[:, 2] - boxes[:, 0]).tolist()
        assert set(labels.tolist()) <= {1, 2, 3}
        assert torch.equal(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    assert min(counts) >= 1 and max(counts) == 4
    assert min(sides) >= 16 and max(sides) <= 96


def test_flip_mirrors_the_boxes() -> None:
    image = torch.zeros(3, 10, 20, dtype=torch.uint8)
    image[:, 2:4, 1:5] = 255
    flipped, target = hflip(image, {"boxes": torch.tensor([[1.0, 2.0, 5.0, 4.0]])})
    assert target["boxes"].tolist() == [[15.0, 2.0, 19.0, 4.0]]
    assert flipped[:, 2:4, 15:19].eq(255).all()


def test_epoch_batches_start_anywhere_and_flip_by_seed() -> None:
    data = ShapesSet("val", size=12)
    whole = list(training_batches(data, 4, seed=1, epoch=2))
    resumed = list(training_batches(data, 4, seed=1, epoch=2, start=1))
    assert len(whole) == 3 and len(resumed) == 2
    assert all(torch.equal(a, b) for a, b in zip(whole[1][0], resumed[0][0], strict=True))
    other = list(training_batches(data, 4, seed=1, epoch=3))
    assert not all(torch.equal(a, b) for a, b in zip(whole[0][0], other[0][0], strict=True))


# ---- COCO folders ----


def write_coco(root: Path, doc: dict | None = None) -> Path:
    """Three 40x30 images: a.png with a cat and a crowd box, b.png with a dog and a box that
    leaves the image, c.png with nothing; category ids 3 and 7 (not contiguous)."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(np.full((30, 40, 3), 90, np.uint8)).save(root / name)
    doc = doc or {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 40, "height": 30},
            {"id": 2, "file_name": "b.png"},
            {"id": 5, "file_name": "c.png", "width": 40, "height": 30},
        ],
        "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 3, "bbox": [2, 3, 10, 8]},
            {"id": 2, "image_id": 1, "category_id": 7, "bbox": [20, 5, 15, 15], "iscrowd": 1},
            {"id": 3, "image_id": 2, "category_id": 7, "bbox": [5, 5, 10, 10]},
            {"id": 4, "image_id": 2, "category_id": 3, "bbox": [30, 20, 20, 20]},
        ],
    }
    (root / "annotations.json").write_text(json.dumps(doc))
    return root


def test_coco_labels_are_contiguous_crowds_marked_and_empty_images_kept(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match=r"b.png: box \[30, 20, 20, 20\] is outside"):
        data = read_coco(write_coco(tmp_path / "coco"))
    assert data.classes == ["cat", "dog"]  # ids 3, 7 -> labels 1, 2
    assert len(data) == 3
    image, a = data[0]
    assert image.shape == (3, 30, 40)
    assert a["labels"].tolist() == [1, 2] and a["iscrowd"].tolist() == [0, 1]
    assert a["boxes"].tolist() == [[2.0, 3.0, 12.0, 11.0], [20.0, 5.0, 35.0, 20.0]]
    assert training_target(a)["labels"].tolist() == [1]
    b = data[1][1]
    assert b["boxes"].tolist() == [[5.0, 5.0, 15.0, 15.0], [30.0, 20.0, 40.0, 30.0]]  # clipped
    assert data[2][1]["boxes"].shape == (0, 4)  # a negative


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda d: d.pop("categories"), "'categories' must be a list"),
        (lambda d: d["annotations"][1].update(category_id=9), "annotations[1]: category_id 9"),
        (lambda d: d["annotations"][0].update(image_id=8), "annotations[0]: image_id 8"),
        (lambda d: d["annotations"][2].pop("bbox"), "annotations[2] has no 'bbox'"),
        (lambda d: d["images"][0].update(file_name="gone.png"), "'gone.png' not found"),
    ],
)
def test_bad_coco_files_name_the_key(tmp_path: Path, change, needle: str) -> None:
    root = write_coco(tmp_path / "coco")
    doc = json.loads((root / "annotations.json").read_text())
    change(doc)
    (root / "annotations.json").write_text(json.dumps(doc))
    with pytest.raises(ResnetlabError, match=r"annotations\.json") as caught:
        read_coco(root)
    assert needle in str(caught.value)


def test_a_file_that_is_not_json_is_named(tmp_path: Path) -> None:
    root = write_coco(tmp_path / "coco")
    (root / "annotations.json").write_text("{not json")
    with pytest.raises(ResnetlabError, match=r"annotations.json: not a readable JSON file"):
        read_coco(root)


# ---- mAP ----


def test_map_is_one_for_exact_boxes_and_lower_for_shifted_ones() -> None:
    boxes = torch.tensor([[10.0, 10.0, 50.0, 50.0], [60.0, 20.0, 100.0, 90.0]])
    target = {"boxes": boxes, "labels": torch.tensor([1, 2])}

    def predicted(shift: float) -> list[dict[str, torch.Tensor]]:
        moved = boxes + torch.tensor([shift, 0.0, shift, 0.0])
        return [
            {"boxes": moved, "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([1, 2])}
        ]

    assert detection_map(predicted(0.0), [target]) == {"map_50": 1.0, "map": 1.0}
    slight = detection_map(predicted(8.0), [target])  # IoU 0.67 and 0.75
    assert slight["map_50"] == 1.0 and slight["map"] < 0.6
    assert detection_map(predicted(30.0), [target])["map_50"] == 0.0


def test_detections_on_a_crowd_box_are_not_false_positives() -> None:
    target = {
        "boxes": torch.tensor([[10.0, 10.0, 50.0, 50.0], [60.0, 60.0, 120.0, 120.0]]),
        "labels": torch.tensor([1, 1]),
        "iscrowd": torch.tensor([0, 1]),
    }
    on_crowd = {
        "boxes": target["boxes"],
        "scores": torch.tensor([0.5, 0.9]),  # the crowd box scores highest
        "labels": torch.tensor([1, 1]),
    }
    assert detection_map([on_crowd], [target])["map_50"] == 1.0


# ---- detectors ----


@pytest.mark.parametrize("detector", ["fasterrcnn", "retinanet", "fcos"])
def test_a_torchvision_detector_trains_and_predicts_on_a_resnetlab_backbone(detector: str) -> None:
    torch.manual_seed(0)
    spec = DetectorSpec("resnet18", CLASSES, detector=detector, image_size=64)
    model = build_detector(spec)
    data = ShapesSet("val", size=2)
    images = [data[i][0].float() / 255 for i in range(2)]
    targets = [data[i][1] for i in range(2)]
    losses = model(images, targets)
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    stem = model.backbone.body.conv1.weight
    assert stem.grad is not None and stem.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        outputs = model(images)
    assert len(outputs) == 2
    for out in outputs:
        assert out["boxes"].shape[1:] == (4,) and len(out["scores"]) == len(out["labels"])
        assert (out["boxes"] <= 256).all()  # back in the input's pixels


def test_frozen_norm_and_trainable_stages() -> None:
    spec = DetectorSpec("resnet18", CLASSES, norm="frozen", trainable_stages=3, image_size=64)
    body = build_detector(spec).backbone.body
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in body.modules())
    assert isinstance(body.bn1, FrozenBatchNorm2d)
    trains = {name.split(".")[0] for name, p in body.named_parameters() if p.requires_grad}
    assert trains == {"layer2", "layer3", "layer4"}
    gn = build_detector(DetectorSpec("resnet20", CLASSES, norm="gn", image_size=64))
    assert sum(isinstance(m, torch.nn.GroupNorm) for m in gn.backbone.body.modules()) == 19


# ---- the command ----


def tiny(out: Path, **changes: object) -> DetectConfig:
    values = {
        "data": "shapes", "limit": 4, "epochs": 2, "batch_size": 2, "image_size": 64,
        "warmup_steps": 2, "save_every": 2, "norm": "bn", "out": str(out),
    }  # fmt: skip
    return DetectConfig(**{**values, **changes})


def test_train_resumes_bit_for_bit(tmp_path: Path) -> None:
    whole = tmp_path / "whole"
    detect_train(tiny(whole))
    epochs = [line for line in (whole / "log.txt").read_text().splitlines() if "], Loss" in line]
    assert len(epochs) == 2 and all("mAP@0.5: " in line for line in epochs)
    for name in ("config.yaml", "metrics.jsonl", "curves.png", "best.safetensors", "test.json"):
        assert (whole / name).is_file()
    assert len(list((whole / "predictions").glob("*.png"))) == 4
    assert run_files(whole) == sorted(whole.iterdir())  # all that --overwrite would remove
    stopped = tmp_path / "stopped"
    assert detect_train(tiny(stopped), limit_steps=3) == {}  # mid-epoch 2
    detect_train(DetectConfig(resume=str(stopped)))
    assert (stopped / "last.safetensors").read_bytes() == (whole / "last.safetensors").read_bytes()
    lines = [json.loads(line) for line in (stopped / "metrics.jsonl").read_text().splitlines()]
    expected = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
    assert [line["val_map"] for line in lines] == [line["val_map"] for line in expected]


def test_a_non_finite_loss_stops_the_run_before_the_update(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(ResnetlabError, match=r"non-finite loss \(loss_classifier.*epoch 2, step 1"):
        detect_train(tiny(run, lr=1000.0, warmup_steps=0))
    saved = read_state(str(run))  # after epoch 1, written before the loss blew up
    assert (saved["epoch"], saved["step"]) == (1, 0)
    assert all(torch.isfinite(value).all() for value in saved["model"].values())


def test_cli_trains_on_a_coco_folder_then_evaluates_and_draws(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write_coco(tmp_path / "coco")
    run = tmp_path / "run"
    settings = tmp_path / "detect.yaml"  # --config sets the flags that the command line does not
    settings.write_text("model: resnet18\nepochs: 1\nbatch-size: 1\nimage_size: 64\nlr: 0.5\n")
    code, out, err = run_cli(
        capsys, "detect", "train", "--config", str(settings), "--data", str(root),
        "--lr", "0.01", "--val-fraction", "0.3", "--test-fraction", "0.3", "--detector", "fcos",
        "--out", str(run), "--device", "cpu",
    )  # fmt: skip
    assert code == 0, err
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert (config["model"], config["image_size"], config["lr"]) == ("resnet18", 64, 0.01)
    assert config["device"] == "cpu" and "| cpu |" in out
    assert "mAP@0.5: " in out and "b.png: box" in err
    checkpoint = str(run / "best.safetensors")
    code, out, _ = run_cli(
        capsys, "detect", "eval", "--checkpoint", checkpoint, "--json", "--device", "cpu"
    )
    assert code == 0 and json.loads(out)["images"] == 1
    other = tmp_path / "other" / "a.png"  # another image of the same name
    other.parent.mkdir()
    Image.new("RGB", (20, 10), (200, 10, 10)).save(other)
    code, out, _ = run_cli(
        capsys, "detect", "predict", "--checkpoint", checkpoint, str(root / "a.png"), str(other),
        "--out", str(tmp_path / "drawn"), "--threshold", "0", "--device", "cpu",
    )  # fmt: skip
    drawn = tmp_path / "drawn"
    assert code == 0 and out.startswith(str(root / "a.png"))
    assert f"{other}: " in out and out.rstrip().endswith(f" -> {drawn / 'a-2.png'}")
    assert sorted(path.name for path in drawn.iterdir()) == ["a-2.png", "a.png"]  # no log.txt
    assert Image.open(drawn / "a.png").size == (40, 30)
    assert Image.open(drawn / "a-2.png").size == (20, 10)


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["train", "--data", "nowhere"], ["--data 'nowhere'"]),
        (["train", "--norm", "frozen"], ["--norm frozen needs --weights"]),
        (["train", "--model", "resnet1d"], ["resnet1d", "no 2-D feature maps"]),
        (["train", "--weights", "missing.pt"], ["missing.pt"]),
        (["eval", "--checkpoint", "none.safetensors"], ["none.safetensors"]),
        (["train", "--device", "tpu9"], ["--device: unknown device 'tpu9'"]),
        (["eval", "--checkpoint", "none.safetensors", "--device", "tpu9"], ["--device"]),
        (["predict", "--checkpoint", "x.safetensors", "a.png", "--device", "tpu9"], ["--device"]),
        (["train", "--config", "none.yaml"], ["--config: cannot read 'none.yaml'"]),
        (
            ["predict", "--checkpoint", "x.safetensors", "a.png", "--threshold", "2"],
            ["--threshold"],
        ),
    ],
)
def test_bad_input_is_one_line(
    argv: list[str], needles: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = (
        run_cli(capsys, "detect", *argv, "--limit", "2", "--batch-size", "2")
        if argv[0] == "train"
        else run_cli(capsys, "detect", *argv)
    )
    assert_one_line_error(code, err, *needles)


def test_a_classifier_checkpoint_is_not_a_detector(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "classifier.safetensors"
    save_checkpoint(path, create_model("resnet20").state_dict(), {"model": "resnet20"})
    code, _, err = run_cli(capsys, "detect", "eval", "--checkpoint", str(path))
    assert_one_line_error(code, err, "a classifier's checkpoint")


def test_the_global_batch_must_fill_and_divide_among_the_processes() -> None:
    check_batch_size(8, images=8, world=World(0, 2))
    with pytest.raises(ResnetlabError, match=r"--batch-size 6 is the global batch: .* 4 processes"):
        check_batch_size(6, images=8, world=World(0, 4))
    with pytest.raises(ResnetlabError, match="--batch-size 16: the training split has 8 images"):
        check_batch_size(16, images=8, world=World())
