"""Training on many processes and machines with PyTorch's own engine: ``torch.distributed``,
launched by ``torchrun``, which sets RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE.

Without those variables (or with a world of one) everything here is a no-op, so the same code
runs in one process. Across machines, rank 0 alone reads the run's files (``World.on_main``),
each machine builds its own caches (``World.main_first``), and a process that loses another
stops with one line naming it (``joined``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from resnetlab.config.train import DIST_TIMEOUT
from resnetlab.data.cache import default_workers
from resnetlab.errors import LostProcess, ResnetlabError
from resnetlab.runtime.precision import resolve_device

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place among the run's processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that prints and writes the run folder."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether the run has more than one process."""
        return self.size > 1

    def barrier(self) -> None:
        """Wait for every process (a no-op in one process)."""
        if self.distributed:
            dist.barrier()

    @contextmanager
    def main_first(self) -> Iterator[None]:
        """Each machine's first process (LOCAL_RANK 0) runs the block first (e.g. builds the
        machine's cache), then the machine's other processes do."""
        first = self.local_rank == 0
        if not first:
            self.barrier()
        yield
        if first:
            self.barrier()

    def on_main(self, read: Callable[[], T]) -> T:
        """``read()``'s result on every process, rank 0 alone calling it (it reads what only
        rank 0's machine may have: the run folder, a --weights file). A ``ResnetlabError``
        that it raises stops every process with the same line."""
        if not self.distributed:
            return read()
        answer: tuple[Any, str | None] | None = None
        if self.is_main:
            try:
                answer = (read(), None)
            except ResnetlabError as exc:
                answer = (None, str(exc))
        value, error = self.broadcast(answer)
        if error is not None:
            raise ResnetlabError(error)
        return value

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value``, on every process."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Every process's ``value``, in rank order, on every process."""
        if not self.distributed:
            return [value]
        values: list[Any] = [None] * self.size
        dist.all_gather_object(values, value)
        return values

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of ``tensor`` over the processes (in place; a no-op in one process)."""
        return self._all_reduce(tensor, dist.ReduceOp.SUM)

    def max(self, tensor: torch.Tensor) -> torch.Tensor:
        """The maximum of ``tensor`` over the processes (in place)."""
        return self._all_reduce(tensor, dist.ReduceOp.MAX)

    def _all_reduce(self, tensor: torch.Tensor, op: dist.ReduceOp) -> torch.Tensor:
        """``tensor`` reduced with ``op`` over the processes, in place: the one reduction
        of the package. It runs where the process group takes tensors (``collective_device``):
        a tensor that lives elsewhere (a CPU flag under NCCL) is copied there and back."""
        if not self.distributed:
            return tensor
        moved = tensor.to(collective_device())
        dist.all_reduce(moved, op=op)
        return tensor if moved is tensor else tensor.copy_(moved)

    def check_global_batch(self, batch_size: int) -> None:
        """Refuse a ``--batch-size`` (the global batch) that the processes cannot share evenly."""
        if batch_size % self.size:
            raise ResnetlabError(
                f"--batch-size {batch_size} is the global batch: it must divide evenly among the "
                f"{self.size} processes"
            )

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` in DistributedDataParallel, which averages gradients over the processes
        during the backward pass (the model itself in one process). Wrap it again whenever
        the parameters that require gradients change (a new fine-tuning phase)."""
        if not self.distributed:
            return model
        on_gpu = next(model.parameters()).device.type == "cuda"
        return nn.parallel.DistributedDataParallel(
            model, device_ids=[self.local_rank] if on_gpu else None
        )

    def average_batchnorm(self, model: nn.Module) -> None:
        """Average every BatchNorm running mean and variance over the processes, as timm's
        ``--dist-bn reduce`` does: each process saw other batches, and a checkpoint must not
        depend on the process that wrote it."""
        if not self.distributed:
            return
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
                for buffer in (module.running_mean, module.running_var):
                    self.sum(buffer).div_(self.size)


def collective_device() -> torch.device:
    """Where the process group's collectives take tensors: this process's GPU under NCCL
    (which refuses CPU tensors), the CPU under gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def launched_world() -> World:
    """The world that ``torchrun`` describes in the environment (one process without it)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    return World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))


_left_cleanly = False  # set once a distributed run has shut its process group down


@contextmanager
def joined(device: str, timeout: float = DIST_TIMEOUT) -> Iterator[World]:
    """This process in the run's process group (``start_world``) for the block. When the block
    succeeds, every process waits for the others and shuts the group down (``left_cleanly``
    then holds). When it fails, the error goes on at once: torchrun stops the other processes,
    and a barrier or a shutdown here could wait for a process that never comes. A process
    that loses another (gone, or silent for ``timeout`` seconds), or that another never
    joins (e.g. rank 0 stopped at its command line), stops with ``LostProcess``."""
    global _left_cleanly
    world = launched_world()
    try:
        start_world(resolve_device(device), timeout)
        yield world
        if world.distributed:
            dist.barrier()
    except Exception as exc:
        if world.distributed and _from_the_backend(exc):
            raise lost_process(world, exc, timeout) from None
        raise
    if world.distributed:
        dist.destroy_process_group()
        _left_cleanly = True


# How gloo's transport words a lost peer in the RuntimeErrors that reach Python from DDP's
# reducer (its own source path, or a message without it once a timeout closed the pair)
_GLOO_FAILURES = ("/gloo/", "pair closure", "closed by peer", "reset by peer", "Timed out waiting")


def _from_the_backend(exc: Exception) -> bool:
    """Whether ``exc`` is a collective's failure (NCCL and the store raise ``DistError``s,
    gloo also plain RuntimeErrors), not the run's own error."""
    return isinstance(exc, dist.DistError) or (
        isinstance(exc, RuntimeError) and any(words in str(exc) for words in _GLOO_FAILURES)
    )


def lost_process(world: World, exc: Exception, timeout: float) -> LostProcess:
    """The one line for a collective that failed on this process: the rank it lost (the
    other one, in a world of two) or the peer that the backend names, why, and how to go on
    (states are only ever written whole, on rank 0's machine)."""
    first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    reason = re.sub(r"^\[[^\]]*\]\s*", "", first_line).split(". ")[0].rstrip(".")  # no source path
    others = [rank for rank in range(world.size) if rank != world.rank]
    who = f"rank {others[0]}" if len(others) == 1 else "a process"
    return LostProcess(
        f"lost {who} of the run, rank {world.rank} stops ({reason}; --dist-timeout "
        f"{timeout:g} s); the last state saved is in rank 0's run folder: continue with the "
        "same torchrun commands and --resume RUN_DIR"
    )


def left_cleanly() -> bool:
    """Whether this process finished a distributed run and shut its process group down: it
    may then exit at once (see ``cli._exit_now``)."""
    return _left_cleanly


def start_world(device: torch.device, timeout: float = DIST_TIMEOUT) -> World:
    """Join the run's process group: NCCL for GPUs, gloo for CPUs, its collectives failing
    after ``timeout`` seconds. On CPUs, each process gets an equal share of the cores that
    this machine gives the run (its CPU affinity: a container's or ``taskset``'s), so that
    the machine's processes (LOCAL_WORLD_SIZE) do not oversubscribe them."""
    world = launched_world()
    if not world.distributed or dist.is_initialized():
        return world
    if device.type == "cuda":
        if device.index is not None and device.index != world.local_rank:
            raise ResnetlabError(
                f"--device {device}: under torchrun each process uses cuda:LOCAL_RANK; "
                "give --device cuda"
            )
        torch.cuda.set_device(world.local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    gpu = torch.device("cuda", world.local_rank) if backend == "nccl" else None
    # device_id: a barrier then knows each rank's GPU
    dist.init_process_group(backend, device_id=gpu, timeout=timedelta(seconds=timeout))
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world.size))
    threads = max(1, default_workers() // local)
    torch.set_num_threads(threads)
    if world.is_main:
        print(
            f"distributed: {world.size} processes ({local} on this machine), {backend}, "
            f"{threads} threads each",
            flush=True,
        )
    return world
