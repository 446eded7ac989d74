"""Named training recipes: defaults for a whole run, which explicit flags still override."""

from __future__ import annotations

from typing import Any

from resnetlab.errors import ResnetlabError

RECIPES: dict[str, dict[str, Any]] = {
    # He et al. 2015, sec. 4.2: SGD lr 0.1, momentum 0.9, weight decay 1e-4 on every weight,
    # batch 128, lr / 10 at 32k and 48k iterations, stop at 64k (182 epochs of 45k images),
    # 4-pixel padded random crops and horizontal flips, 45k/5k train/val split.
    "paper": {
        "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": False,
        "weight_decay": 1e-4, "decay_norm_and_bias": True, "batch_size": 128,
        "schedule": "step", "warmup_epochs": 0.0, "epochs": 182, "limit_steps": 64_000,
        "label_smoothing": 0.0, "crop_padding": 4, "padding_mode": "zeros", "flip": True,
        "flip_alternate": False, "cutout": 0, "val_fraction": 0.1, "test_fraction": 0.0,
    },
    # The best accuracy in a fixed CPU budget (20 minutes of resnet20 on 2 cores): one-cycle
    # lr with Nesterov momentum, label smoothing, reflect-padded crops with alternating flips,
    # bf16 and flip TTA. Batch 128 costs no throughput on a CPU and gives twice the steps.
    "fast": {
        "optimizer": "sgd", "lr": 0.2, "momentum": 0.9, "nesterov": True,
        "weight_decay": 5e-4, "decay_norm_and_bias": False, "batch_size": 128,
        "schedule": "onecycle", "warmup_epochs": 3.0, "epochs": 22,
        "label_smoothing": 0.1, "crop_padding": 4, "padding_mode": "reflect", "flip": True,
        "flip_alternate": True, "cutout": 0, "tta": "flip", "precision": "auto",
        "val_fraction": 0.1, "test_fraction": 0.0,
    },
    # The most accuracy per second of a CPU on CIFAR-sized images (the README's speed run):
    # the speed-run network (its whitening stem set from the data), Page 2018's optimiser
    # (Nesterov SGD, peak lr 0.4 at batch 512, weight decay 5e-4, label smoothing 0.2) on a
    # one-cycle schedule, airbench's 2-pixel reflect-padded crops with alternating flips
    # (Jordan 2024), an EMA of the weights evaluated (Page 2018), flip TTA.
    "speedrun": {
        "model": "speedrun",
        "optimizer": "sgd", "lr": 0.4, "momentum": 0.9, "nesterov": True,
        "weight_decay": 5e-4, "decay_norm_and_bias": False, "batch_size": 512,
        "schedule": "onecycle", "warmup_epochs": 0.0, "epochs": 10,
        "label_smoothing": 0.2, "crop_padding": 2, "padding_mode": "reflect", "flip": True,
        "flip_alternate": True, "cutout": 0, "tta": "flip", "precision": "auto", "ema": 0.98,
        "val_fraction": 0.1, "test_fraction": 0.0,
    },
    # Tables (Gorishniy et al. 2021's recipe): AdamW at a constant lr, standardised features,
    # dropout in the blocks, early stopping on the validation loss, which also picks the best
    # epoch; the batch from the data size. Chosen on tables other than those of the README's
    # benchmark (see benchmarks/tabular_cv.py).
    "tabular": {
        "model": "resnet_tabular",
        "model_options": {"widths": [64, 64], "hidden_factor": 2.0, "dropout": 0.2},
        "optimizer": "adamw", "lr": 1e-3, "weight_decay": 1e-4, "decay_norm_and_bias": False,
        "batch_size": 0, "schedule": "constant", "warmup_epochs": 0.0, "epochs": 200,
        "patience": 20, "best_by": "loss", "label_smoothing": 0.0,
    },
}  # fmt: skip


def recipe_defaults(name: str) -> dict[str, Any]:
    """The settings of recipe ``name``, or an error listing the recipes."""
    try:
        return dict(RECIPES[name])
    except KeyError:
        raise ResnetlabError(
            f"--recipe: unknown recipe {name!r} (choose from {', '.join(RECIPES)})"
        ) from None
