"""resnetlab: build, train, evaluate, export and understand residual networks.

The Python API in one line each, imported on first use (so that `resnetlab --help` starts
without loading torch)::

    import resnetlab
    model = resnetlab.create_model("resnet20", num_classes=10)
    resnetlab.list_models("cifar")
    result = resnetlab.train(resnetlab.TrainConfig(model="resnet20", data="digits", epochs=5))
    predictor = resnetlab.load("runs/demo/best.safetensors")  # or a .onnx / .pt2 file
    predictor.predict(["cat.png"], topk=5)
"""

from importlib import import_module as _import_module
from typing import Any as _Any

_API = {
    "create_model": "resnetlab.models.registry",
    "list_models": "resnetlab.models.registry",
    "TrainConfig": "resnetlab.config.train",
    "train": "resnetlab.training.train",
    "load": "resnetlab.inference.predictor",
    "Predictor": "resnetlab.inference.predictor",
}
__all__ = sorted(_API)


def __getattr__(name: str) -> _Any:
    """Import an API name from its module when it is first used."""
    if name not in _API:
        raise AttributeError(f"module 'resnetlab' has no attribute {name!r}")
    value = getattr(_import_module(_API[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The API's names and the module's dunders: not its helpers, nor the subpackages that
    happen to be imported (``import resnetlab.detection`` and the like reach those)."""
    return sorted({*__all__, *(name for name in globals() if name.startswith("__"))})
