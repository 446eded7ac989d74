"""`resnetlab export` and `resnetlab quantize`: a checkpoint as an ONNX or pt2 file (fp32, or
int8 through onnxruntime), each ending with a parity check against the checkpoint."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnetlab.checkpoints.weights import model_from_checkpoint
from resnetlab.data.bundle import DataBundle
from resnetlab.errors import ResnetlabError
from resnetlab.inference.checkpoint_data import (
    input_preprocessing,
    is_training_data,
    load_data_like,
    pick_split,
)
from resnetlab.inference.exported import (
    EXPORT_FORMATS,
    is_exported,
    load_network,
    onnx_bytes,
    onnxruntime,
    pt2_bytes,
    task_of,
    write_file,
)
from resnetlab.inference.int8 import int8_warning, quantize_onnx
from resnetlab.inference.parity import measure_parity, record_parity
from resnetlab.runtime.precision import Precision
from resnetlab.training.batches import BatchOrder, make_loader
from resnetlab.training.step import evaluate_model

_CPU_FP32 = Precision(torch.device("cpu"), None, channels_last=False)


@dataclass
class ExportConfig:
    """Flags of `resnetlab export` (``int8``/``data``/``calibration_batches`` also serve
    `quantize`): ``data`` is the checkpoint's own by default, whose training split calibrates
    int8 and whose test split (else val, else train) gives the parity check's inputs."""

    checkpoint: str
    format: str = "onnx"
    int8: bool = False
    out: str | None = None
    data: str | None = None
    calibration_batches: int = 8
    batch_size: int = 32
    parity_samples: int = 32

    def validate(self) -> None:
        """Refuse flags that cannot work, naming the flag."""
        if self.format not in EXPORT_FORMATS:
            raise ResnetlabError(f"--format must be one of {', '.join(EXPORT_FORMATS)}")
        if self.int8 and self.format != "onnx":
            raise ResnetlabError(
                "--int8 needs --format onnx (int8 runs through onnxruntime: torchao's pt2e "
                "quantization fails on ResNets with this PyTorch)"
            )
        for flag, value in (
            ("--calibration-batches", self.calibration_batches),
            ("--batch-size", self.batch_size),
            ("--parity-samples", self.parity_samples),
        ):
            if value < 1:
                raise ResnetlabError(f"{flag} must be at least 1 (got {value})")
        if is_exported(self.checkpoint):
            raise ResnetlabError(
                f"--checkpoint {self.checkpoint}: already exported; export a .safetensors "
                "checkpoint"
            )
        if self.out is not None and Path(self.out).suffix.lower() != f".{self.format}":
            raise ResnetlabError(
                f"--out {self.out}: a {self.format} file must end in .{self.format}"
            )

    def out_path(self) -> Path:
        """``--out``, else the checkpoint's name with ``.onnx``, ``.int8.onnx`` or ``.pt2``."""
        if self.out is not None:
            return Path(self.out)
        suffix = f"{'.int8' if self.int8 else ''}.{self.format}"
        return Path(self.checkpoint).with_suffix(suffix)


def export(cfg: ExportConfig) -> dict[str, Any]:
    """Export ``cfg.checkpoint`` and check the file against it (see ``Parity``): the file,
    its format and the parity record. A failed check removes the file and raises."""
    cfg.validate()
    model, header = _float_model(cfg.checkpoint)
    bundle = _checkpoint_data(header, cfg.data, needed=cfg.int8)
    return _export(cfg, model, header, bundle)


def quantize(cfg: ExportConfig) -> dict[str, Any]:
    """Export an int8 ONNX file calibrated on the training split, check its parity, then
    evaluate it and the checkpoint on the same split: both top-1 accuracies and the drop."""
    if cfg.out is None:
        raise ResnetlabError("quantize needs --out FILE.onnx")
    cfg.int8, cfg.format = True, "onnx"
    cfg.validate()
    model, header = _float_model(cfg.checkpoint)
    if task_of(header) == "regression":  # before anything is written
        raise ResnetlabError(
            f"--checkpoint {cfg.checkpoint}: quantize takes classifiers; a regression "
            "network's int8 error is not measured"
        )
    bundle = _checkpoint_data(header, cfg.data, needed=True)
    result = _export(cfg, model, header, bundle)
    split = "all"
    if is_training_data(header, cfg.data):
        split = "test" if bundle.test is not None else "val" if bundle.val is not None else "train"
    dataset = pick_split(bundle, split)
    normalise = input_preprocessing(header)
    int8_network = load_network(result["file"])[0]
    scores = {
        name: evaluate_model(
            network, dataset, bundle.classes, _CPU_FP32, normalise, cfg.batch_size
        )["accuracy"]
        for name, network in (("float", model), ("int8", int8_network))
    }
    return {
        **result,
        "split": split,
        "samples": len(dataset),
        "float_accuracy": scores["float"],
        "int8_accuracy": scores["int8"],
        "drop": scores["float"] - scores["int8"],
    }


def _float_model(checkpoint: str) -> tuple[nn.Module, dict[str, Any]]:
    """The checkpoint's network in fp32 on the CPU, in eval mode, and its header."""
    model, header = model_from_checkpoint(checkpoint)
    return model.float().cpu().eval(), header


def _checkpoint_data(
    header: dict[str, Any], source: str | None, *, needed: bool
) -> DataBundle | None:
    """The checkpoint's data (or ``source``); None where it cannot be loaded and is not
    ``needed`` (the parity check then uses random inputs)."""
    try:
        return load_data_like(header, source)
    except ResnetlabError as exc:
        if needed:
            raise ResnetlabError(f"int8 calibration needs the training data: {exc}") from None
        return None


def _export(
    cfg: ExportConfig, model: nn.Module, header: dict[str, Any], bundle: DataBundle | None
) -> dict[str, Any]:
    """Write the exported file beside ``cfg``'s path, check its parity, then move it there and
    record the parity (a file that fails leaves an earlier export as it was)."""
    out = cfg.out_path()
    inputs, description = _parity_inputs(header, bundle, cfg.parity_samples)
    exported_header = {
        **header,
        "exported": {
            "format": cfg.format,
            "int8": cfg.int8,
            "checkpoint": Path(cfg.checkpoint).name,
        },
    }
    example = inputs[:2] if len(inputs) >= 2 else torch.cat([inputs, inputs])
    if cfg.format == "pt2":
        data, runtime = pt2_bytes(model, example, exported_header), f"torch {torch.__version__}"
    else:
        data = onnx_bytes(model, example, exported_header)
        runtime = f"onnxruntime {onnxruntime().__version__}"
    if cfg.int8:
        warning = int8_warning()
        if warning:
            warnings.warn(warning, stacklevel=2)
        assert bundle is not None  # _checkpoint_data(needed=True)
        data = quantize_onnx(data, _calibration(bundle, header, cfg))
    checked = out.with_name(f".{out.stem}.checking{out.suffix}")  # replaces out once it passes
    write_file(checked, data)
    try:
        parity = measure_parity(
            model,
            load_network(checked)[0],
            inputs,
            file=str(out),
            runtime=runtime,
            description=description,
            int8=cfg.int8,
        )
        record_parity(parity, out, checked)
    finally:
        checked.unlink(missing_ok=True)
    return {
        "file": str(out),
        "format": cfg.format,
        "int8": cfg.int8,
        "bytes": len(data),
        "parity": parity.to_dict(),
        "parity_line": parity.line(),
    }


def _parity_inputs(
    header: dict[str, Any], bundle: DataBundle | None, count: int
) -> tuple[torch.Tensor, str]:
    """Up to ``count`` normalised inputs from the held-out data (test, else val, else train),
    or, without data, ``count`` standard normal ones; and what they are."""
    if bundle is None:
        shape = header["input_shape"]
        generator = torch.Generator().manual_seed(0)
        return torch.randn(count, *shape, generator=generator), f"{count} random inputs"
    name, split = next(
        (n, s) for n, s in (("test", bundle.test), ("val", bundle.val), ("train", bundle.train))
        if s is not None
    )  # fmt: skip
    x, _, _ = next(iter(make_loader(split, min(count, len(split)))))  # its first samples
    return input_preprocessing(header)(x), f"{len(x)} {name} samples of {bundle.name}"


def _calibration(
    bundle: DataBundle, header: dict[str, Any], cfg: ExportConfig
) -> list[torch.Tensor]:
    """``cfg.calibration_batches`` batches of the training split, in a seeded random order,
    normalised."""
    order = BatchOrder(len(bundle.train), cfg.batch_size, shuffle=True, seed=0)
    normalise = input_preprocessing(header)
    batches = []
    for x, _, _ in make_loader(bundle.train, order):
        batches.append(normalise(x))
        if len(batches) == cfg.calibration_batches:
            break
    return batches
