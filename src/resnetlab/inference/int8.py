"""int8 inference: onnxruntime's static quantization of an ONNX network (QDQ format, weights
per output channel, activations per tensor, both int8, ranges calibrated by min/max on real
inputs), run by onnxruntime's int8 kernels.

Chosen by measurement: PyTorch 2 export quantization (torchao 0.18's ``prepare_pt2e`` with
``X86InductorQuantizer``) fails on every ResNet exported by torch 2.14.1 ("Input partition has
more than one output node", at conv + add + relu), with module-type annotation too.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from resnetlab.inference.exported import INPUT_NAME, OnnxNetwork, onnx_bytes, onnxruntime


def int8_warning() -> str | None:
    """A warning for CPUs without VNNI or AMX, whose int8 dot products take several
    instructions each."""
    if torch.cpu._is_vnni_supported() or torch.cpu._is_amx_tile_supported():
        return None
    return (
        "this CPU has neither VNNI nor AMX: int8 runs on slower instructions here, and gains "
        "less over fp32 than on CPUs with them"
    )


def quantize_onnx(float_model: bytes, calibration: Iterable[Tensor]) -> bytes:
    """The int8 version of an ONNX network, its ranges calibrated on ``calibration``'s batches
    of normalised inputs. The network is first pre-processed as onnxruntime recommends (shape
    inference, BatchNorm folded into the convolutions); the metadata is kept."""
    onnxruntime()  # a one-line error if the extra is missing
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches: Iterator[Tensor] = iter(calibration)

        def get_next(self) -> dict[str, Any] | None:
            batch = next(self.batches, None)
            return None if batch is None else {INPUT_NAME: batch.float().contiguous().numpy()}

    with tempfile.TemporaryDirectory(prefix="resnetlab-int8-") as folder:
        source, prepared, quantized = (Path(folder) / f"{n}.onnx" for n in ("f", "p", "q"))
        source.write_bytes(float_model)
        quant_pre_process(str(source), str(prepared))
        quantize_static(
            str(prepared),
            str(quantized),
            Batches(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
        model = onnx.load(str(quantized))
    metadata = {p.key: p.value for p in onnx.load_from_string(float_model).metadata_props}
    onnx.helper.set_model_props(model, metadata)
    return model.SerializeToString()


def int8_network(
    model: nn.Module,
    input_shape: Sequence[int],
    calibration: Tensor | None = None,
    *,
    batch_size: int = 32,
    batches: int = 4,
) -> OnnxNetwork:
    """``model`` (fp32, CPU) quantized to int8 and run by onnxruntime: a module whose forward
    takes a float batch of ``input_shape`` samples (normalised) and returns the logits.

    Calibrated on ``calibration`` (normalised inputs, in batches of ``batch_size``), or without
    it on ``batches`` batches of standard normal inputs, which suits speed measurements but
    not accuracy. For `resnetlab bench`'s int8 row.
    """
    if calibration is None:
        generator = torch.Generator().manual_seed(0)
        calibration = torch.randn(batches * batch_size, *input_shape, generator=generator)
    example = torch.cat([calibration[:2], calibration[:2]])[:2]  # two samples, even from one
    float_model = onnx_bytes(model.float().cpu(), example.float())
    return OnnxNetwork(quantize_onnx(float_model, calibration.split(batch_size)))
