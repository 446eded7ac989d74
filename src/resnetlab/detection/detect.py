"""`resnetlab detect train|eval|predict`: torchvision detectors on resnetlab backbones."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resnetlab.detection.config import DetectConfig
from resnetlab.errors import ResnetlabError

if TYPE_CHECKING:
    from resnetlab.runtime.distributed import World


def detect_train(cfg: DetectConfig, limit_steps: int | None = None) -> dict[str, float]:
    """Train a detector on ``cfg.data`` in a run folder (or continue ``cfg.resume``'s); return
    the best epoch's test mAP. ``limit_steps``: stop after that many steps (tests).
    ``cfg.overwrite``: as `train`'s."""
    from resnetlab.detection.build import start_detector
    from resnetlab.detection.model import DetectorSpec, build_detector
    from resnetlab.detection.sources import load_splits
    from resnetlab.detection.train import fit
    from resnetlab.runtime.distributed import joined
    from resnetlab.runtime.precision import resolve_device
    from resnetlab.training.claim import open_run_dir, run_name

    with joined(cfg.device, cfg.dist_timeout) as world:
        cfg, state, weights = world.on_main(lambda: _read_run(cfg))
        device = resolve_device(cfg.device)
        splits = load_splits(
            cfg.data,
            seed=cfg.seed,
            val_fraction=cfg.val_fraction,
            test_fraction=cfg.test_fraction,
            limit=cfg.limit,
        )
        classes = splits["train"].classes
        if state is None:
            model, spec, loaded = start_detector(cfg, classes, weights)
        else:
            spec, loaded = DetectorSpec(**state["spec"]), None
            model = build_detector(spec)
        name = run_name(f"{cfg.detector}-{cfg.model}", cfg.data)
        with open_run_dir(
            cfg.out, name, world=world, resume=cfg.resume, overwrite=cfg.overwrite
        ) as run:
            model.to(device)  # under torchrun, "cuda" is this process's GPU (joined set it)
            check_batch_size(cfg.batch_size, len(splits["train"]), world)
            if state is None:
                run.write_config(cfg.as_dict())
            sizes = ", ".join(f"{len(data)} {name}" for name, data in splits.items())
            run.print(
                f"{spec.detector} on {cfg.model}-FPN ({spec.norm} norm, trainable stages "
                f"{spec.trainable_stages or 'all'}) | {cfg.data}: {sizes} images, "
                f"{len(classes)} classes | input {cfg.image_size} px | {device} | "
                f"{cfg.optimizer} lr {cfg.lr}, {cfg.epochs} epochs, batch {cfg.batch_size}"
            )
            if loaded:
                run.print(loaded)
            if state is not None:
                run.print(f"resuming from epoch {state['epoch'] + 1}, step {state['step']}")
            return fit(cfg, model, spec.as_dict(), splits, run, world, state, limit_steps)


def _read_run(cfg: DetectConfig) -> tuple[DetectConfig, dict[str, Any] | None, Any]:
    """What rank 0 alone reads, so that other machines need no copy of the run folder or of
    the weights: with ``--resume``, the run's config and training state; else ``cfg``,
    checked, and its ``--weights`` file (a ``WeightsFile``, or None)."""
    from resnetlab.checkpoints.state_dicts import read_weights
    from resnetlab.detection.train import read_state

    state = None
    if cfg.resume:
        state = read_state(cfg.resume)
        cfg = replace(
            DetectConfig(**state["config"]),
            resume=cfg.resume,
            overwrite=cfg.overwrite,
            dist_timeout=cfg.dist_timeout,
        )
    cfg.validate()
    weights = read_weights(cfg.weights) if cfg.weights and state is None else None
    return cfg, state, weights


def check_batch_size(batch_size: int, images: int, world: World) -> None:
    """A global batch that the training split fills and the processes share evenly."""
    if images < batch_size:
        raise ResnetlabError(f"--batch-size {batch_size}: the training split has {images} images")
    world.check_global_batch(batch_size)


def detect_eval(
    checkpoint: str,
    data: str | None = None,
    split: str = "test",
    batch_size: int = 8,
    device: str = "auto",
) -> dict[str, Any]:
    """mAP@0.5 and mAP@[.5:.95] of a detector checkpoint on a split of its training data (the
    run's split, rebuilt from its seed) or of ``data``, computed on ``device``."""
    from resnetlab.detection.checkpoint import load_detector
    from resnetlab.detection.metrics import evaluate_detector
    from resnetlab.detection.sources import SPLIT_NAMES, load_splits
    from resnetlab.runtime.precision import resolve_device

    resolved = resolve_device(device)
    if split not in SPLIT_NAMES:
        raise ResnetlabError(f"--split {split!r}: use one of {', '.join(SPLIT_NAMES)}")
    if batch_size < 1:
        raise ResnetlabError(f"--batch-size {batch_size}: need 1 or more")
    model, header = load_detector(checkpoint)
    source = header["data"]
    splits = load_splits(
        data or source["data"],
        seed=source["seed"],
        val_fraction=source["val_fraction"],
        test_fraction=source["test_fraction"],
    )
    images = splits[split]
    if images.classes != header["detector"]["classes"]:
        raise ResnetlabError(
            f"--data: classes {images.classes} differ from the checkpoint's "
            f"{header['detector']['classes']}"
        )
    scores = evaluate_detector(model.to(resolved), images, batch_size)
    return {"data": data or source["data"], "split": split, "images": len(images), **scores}


@dataclass
class Detection:
    """One image's boxes at or above the score threshold."""

    input: str
    boxes: list[dict[str, Any]]
    drawing: str | None


def detect_predict(
    checkpoint: str,
    inputs: list[str],
    out: str | None = None,
    threshold: float = 0.5,
    device: str = "auto",
) -> list[Detection]:
    """Each image's detections, computed on ``device``; with ``out``, the image with its boxes
    drawn, as ``out/<name>.png`` (``out/<name>-2.png`` for a second image of the same name)."""
    import torch

    from resnetlab.data.decode import BadImage, decode_image
    from resnetlab.detection.checkpoint import load_detector
    from resnetlab.detection.data import detections
    from resnetlab.detection.figures import draw_detections, save_image
    from resnetlab.files import unique_name, writable_folder
    from resnetlab.runtime.precision import resolve_device

    resolved = resolve_device(device)
    if not 0 <= threshold <= 1:
        raise ResnetlabError(f"--threshold {threshold}: need a score in [0, 1]")
    model, header = load_detector(checkpoint)
    model.to(resolved)
    classes = header["detector"]["classes"]
    folder = Path(out) if out else None
    if folder is not None:
        writable_folder(folder)
    results: list[Detection] = []
    used: set[str] = set()
    for name in inputs:
        try:
            image = decode_image(name)
        except BadImage as exc:
            raise ResnetlabError(str(exc)) from None
        with torch.no_grad():
            found = detections(model, [image])[0]
        keep = found["scores"] >= threshold
        boxes = [
            {"class": classes[int(label) - 1], "score": float(score), "box": box.tolist()}
            for label, score, box in zip(
                found["labels"][keep], found["scores"][keep], found["boxes"][keep], strict=True
            )
        ]
        drawing = None
        if folder is not None:
            drawing = str(folder / unique_name(Path(name).stem, used))
            save_image(draw_detections(image, found, classes, threshold), Path(drawing))
        results.append(Detection(name, boxes, drawing))
    return results
