"""Exported networks: ONNX files (run by onnxruntime) and pt2 files (``torch.export``), with a
dynamic batch size and the checkpoint's header inside, and the networks read back from them.

The exported graph is the network alone, from normalised inputs to logits; the preprocessing
(normalisation, and what a table's header records) stays in the header, applied by the caller,
so one header serves the checkpoint and every file exported from it.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from resnetlab.checkpoints.checkpoint import HEADER_KEY
from resnetlab.checkpoints.weights import model_from_checkpoint
from resnetlab.errors import ResnetlabError
from resnetlab.files import write_atomically

EXPORT_FORMATS = ("onnx", "pt2")
INPUT_NAME, OUTPUT_NAME = "input", "logits"
_PT2_HEADER = "resnetlab.json"  # the header's name among a pt2 archive's extra files
_EXTRA = "pip install 'resnetlab[export]'"


def onnxruntime() -> Any:
    """The ``onnxruntime`` module, or a one-line error saying how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise ResnetlabError(f"ONNX files need onnxruntime: {_EXTRA}") from None
    return onnxruntime


def _dynamic_batch(example: Tensor) -> tuple[dict[int, Any]]:
    """``dynamic_shapes`` for a network of one input whose batch dimension may be any size."""
    if len(example) < 2:  # a size-1 dimension would be specialised to 1
        raise ValueError("export needs an example batch of at least 2")
    return ({0: torch.export.Dim("batch")},)


def _export_program(model: nn.Module, example: Tensor) -> torch.export.ExportedProgram:
    return torch.export.export(model.eval(), (example,), dynamic_shapes=_dynamic_batch(example))


def onnx_bytes(model: nn.Module, example: Tensor, header: dict[str, Any] | None = None) -> bytes:
    """``model`` (fp32, eval mode, on the CPU) as an ONNX file, traced on ``example`` by
    ``torch.onnx.export(dynamo=True)`` with a dynamic batch size; ``header`` goes into its
    metadata (the whole header as JSON, and its classes, task, mean/std and input shape each
    under its own key, for other tools)."""
    try:
        import onnx
    except ImportError:
        raise ResnetlabError(f"ONNX export needs onnx and onnxscript: {_EXTRA}") from None
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model.eval(),
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=_dynamic_batch(example),
            verbose=False,
        )
    proto = program.model_proto
    if header is not None:
        onnx.helper.set_model_props(proto, onnx_metadata(header))
    return proto.SerializeToString()


def onnx_metadata(header: dict[str, Any]) -> dict[str, str]:
    """ONNX metadata for ``header``: all of it under ``resnetlab``, and the keys other tools
    look for on their own."""
    plain = {
        "classes": header["classes"],
        "task": task_of(header),
        "mean": header["mean"],
        "std": header["std"],
        "input_shape": header["input_shape"],
    }
    return {HEADER_KEY: json.dumps(header), **{k: json.dumps(v) for k, v in plain.items()}}


def task_of(header: dict[str, Any]) -> str:
    """``classification`` or ``regression``: a header without the key is a classifier's."""
    return header.get("task", "classification")


def pt2_bytes(model: nn.Module, example: Tensor, header: dict[str, Any]) -> bytes:
    """``model`` as a ``torch.export`` archive with a dynamic batch size, ``header`` inside."""
    buffer = io.BytesIO()
    torch.export.save(
        _export_program(model, example), buffer, extra_files={_PT2_HEADER: json.dumps(header)}
    )
    return buffer.getvalue()


def write_file(path: Path, data: bytes) -> None:
    """Write an exported file atomically."""
    write_atomically(path, lambda f: f.write(data), "the exported model")


class OnnxNetwork(nn.Module):
    """An ONNX network run by onnxruntime on the CPU, as a module: ``forward`` takes a float
    batch (any memory format) and returns its logits; ``header`` is the resnetlab header the
    file carries, or None."""

    def __init__(self, model: str | Path | bytes, source: str = "<memory>") -> None:
        super().__init__()
        ort = onnxruntime()
        try:
            self.session = ort.InferenceSession(
                model if isinstance(model, bytes) else str(model),
                providers=["CPUExecutionProvider"],
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ResnetlabError(f"{source}: not a readable ONNX file ({_reason(exc)})") from None
        self.input_name = self.session.get_inputs()[0].name
        raw = self.session.get_modelmeta().custom_metadata_map.get(HEADER_KEY)
        self.header: dict[str, Any] | None = json.loads(raw) if raw else None

    def forward(self, x: Tensor) -> Tensor:
        """Logits of the batch ``x``, computed by onnxruntime."""
        inputs = {self.input_name: x.detach().float().cpu().contiguous().numpy()}
        return torch.from_numpy(self.session.run(None, inputs)[0])


class ProgramNetwork(nn.Module):
    """A ``torch.export`` program as a module. It was exported in eval mode and has no other,
    so ``train``/``eval`` change nothing (exported modules refuse them)."""

    def __init__(self, program: torch.export.ExportedProgram) -> None:
        super().__init__()
        self.program = program.module()

    def train(self, mode: bool = True) -> ProgramNetwork:
        """Nothing to switch: see the class."""
        return self

    def forward(self, x: Tensor) -> Tensor:
        """Logits of the batch ``x``."""
        return self.program(x)


def is_exported(path: str | Path) -> bool:
    """Whether ``path`` names an exported file (``.onnx`` or ``.pt2``) rather than a checkpoint."""
    return Path(path).suffix.lower() in (".onnx", ".pt2")


def load_network(
    path: str | Path, expect_model: str | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """The network in a checkpoint (``.safetensors``), an ONNX file or a pt2 file, ready to
    run on normalised inputs, and its header; ``expect_model`` as in ``model_from_checkpoint``."""
    if not is_exported(path):
        return model_from_checkpoint(path, expect_model)
    if not Path(path).is_file():
        raise ResnetlabError(f"--checkpoint: no such file: '{path}'")
    network: nn.Module
    if Path(path).suffix.lower() == ".onnx":
        network = OnnxNetwork(path, str(path))
        header = network.header
    else:
        network, header = _load_pt2(path)
    if header is None:
        raise ResnetlabError(f"{path}: no resnetlab header (not exported by `resnetlab export`)")
    if expect_model is not None and expect_model != header["model"]:
        raise ResnetlabError(
            f"--checkpoint '{path}' holds a {header['model']} model, not --model {expect_model}"
        )
    return network, header


def _load_pt2(path: str | Path) -> tuple[ProgramNetwork, dict[str, Any] | None]:
    extra = {_PT2_HEADER: ""}
    try:
        program = torch.export.load(str(path), extra_files=extra)
    except Exception as exc:  # a damaged archive raises many types
        raise ResnetlabError(f"{path}: not a readable pt2 file ({_reason(exc)})") from None
    return ProgramNetwork(program), json.loads(extra[_PT2_HEADER]) if extra[_PT2_HEADER] else None


def _reason(exc: Exception) -> str:
    """The first line of an exception's message, or its type's name."""
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
