"""TensorBoard scalars of each epoch (``--tensorboard``), with the optional ``tensorboard``
package behind ``torch.utils.tensorboard``."""

from __future__ import annotations

from typing import Any

from resnetlab.errors import ResnetlabError
from resnetlab.training.rundir import RunDir

BOARD_FOLDER = "tensorboard"
_SCALARS = {  # metrics.jsonl key -> TensorBoard tag
    "train_loss": "loss/train",
    "val_loss": "loss/val",
    "train_acc": "accuracy/train",
    "val_acc": "accuracy/val",
    "lr": "lr",
    "samples_per_s": "speed/samples_per_s",
    "grad_norm": "gradients/norm",
    "clipped_frac": "gradients/clipped_fraction",
}


def summary_writer() -> type:
    """torch's ``SummaryWriter``; without the tensorboard package, a one-line error."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ResnetlabError(
            "--tensorboard needs the tensorboard package: pip install 'resnetlab[tensorboard]'"
        ) from None
    return SummaryWriter


def open_board(run: RunDir, first_epoch: int) -> Any:
    """A ``SummaryWriter`` on ``RUN_DIR/tensorboard`` whose events from ``first_epoch`` on
    are purged, so that the curves of a resumed run never double back."""
    return summary_writer()(str(run.file(BOARD_FOLDER)), purge_step=first_epoch)


def write_epoch(writer: Any, record: dict[str, Any]) -> None:
    """The epoch's scalars, at step = epoch number."""
    for key, tag in _SCALARS.items():
        if record.get(key) is not None:
            writer.add_scalar(tag, record[key], record["epoch"])
    writer.flush()
