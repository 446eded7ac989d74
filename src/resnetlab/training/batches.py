"""Batches of ``(x, y, indices)`` in an order that is a function of (seed, epoch) alone.

In-memory tensors are sliced directly (no per-sample Python calls); anything else goes through
a DataLoader, whose workers seed each sample's random transforms from (seed, epoch, index). A
loader can start an epoch at any batch, so a run resumed mid-epoch sees exactly the batches,
and the augmentations, that an uninterrupted run saw. In-memory data that fits a run's GPU
comfortably is moved there once (``keep_on_device``) and batched there, with no host work per
step: the same batches, only gathered elsewhere.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from dataclasses import replace

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset, TensorDataset

from resnetlab.data.bundle import DataBundle
from resnetlab.data.seeds import epoch_order, seeded_draws
from resnetlab.data.shard_stream import ShardStream

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # inputs, targets, sample indices
# In-memory data moves to a run's GPU where it takes at most this share of the free memory
DEVICE_SHARE = 0.25


class BatchOrder:
    """Which samples each batch of an epoch holds: a permutation seeded by (seed, epoch), or
    the dataset's order. ``drop_last`` drops an incomplete last batch, so that every training
    step sees a full batch (a batch of one breaks BatchNorm); evaluation keeps every sample.

    Under ``torchrun``, ``batch_size`` is the global batch and process ``rank`` of ``world``
    takes every ``world``-th sample of it: together the processes see exactly the batches of
    one process (as ``DistributedSampler`` shards an epoch, but per batch).
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.size, self.batch_size, self.shuffle, self.seed = size, batch_size, shuffle, seed
        self.drop_last, self.rank, self.world = drop_last, rank, world
        self.epoch = self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Iterate over ``epoch``'s batches from batch number ``start`` on."""
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        """Batches in a whole epoch."""
        full, rest = divmod(self.size, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self.batches(torch.device("cpu"))

    def batches(self, device: torch.device) -> Iterator[torch.Tensor]:
        """Each batch's sample indices on ``device``, where the epoch's order is copied once."""
        order = (
            epoch_order(self.size, self.seed, self.epoch)
            if self.shuffle
            else torch.arange(self.size)
        ).to(device)
        for batch in range(self.start, len(self)):
            yield order[batch * self.batch_size : (batch + 1) * self.batch_size][
                self.rank :: self.world
            ]


class TensorBatches:
    """``(x[rows[idx]], y[rows[idx]], idx)`` for each batch ``idx`` of ``order``: the samples
    ``rows`` of in-memory tensors (all of them by default), gathered batch by batch, so that
    no loader copies the whole set. With ``pin``, each batch is gathered into pinned memory,
    from which a GPU copies it asynchronously (``non_blocking``). Tensors on a GPU are
    gathered there, with indices on it too: no step copies anything from the host."""

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        order: BatchOrder,
        *,
        rows: torch.Tensor | None = None,
        pin: bool = False,
    ) -> None:
        self.x, self.y, self.order, self.pin = x, y, order, pin
        self.rows = None if rows is None else rows.to(x.device)

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> Iterator[Batch]:
        for idx in self.order.batches(self.x.device):
            picked = idx if self.rows is None else self.rows[idx]
            yield self._gather(self.x, picked), self._gather(self.y, picked), idx

    def _gather(self, tensor: torch.Tensor, picked: torch.Tensor) -> torch.Tensor:
        """``tensor[picked]``, in pinned memory with ``pin``."""
        if not self.pin:
            return tensor[picked]
        out = torch.empty((len(picked), *tensor.shape[1:]), dtype=tensor.dtype, pin_memory=True)
        return torch.index_select(tensor, 0, picked, out=out)


class _Keys(Sampler[list[tuple[int, int]]]):
    """A DataLoader batch sampler: ``(epoch, index)`` keys for each batch of ``order``."""

    def __init__(self, order: BatchOrder) -> None:
        self.order = order

    def __len__(self) -> int:
        return len(self.order) - self.order.start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for idx in self.order:
            yield [(self.order.epoch, i) for i in idx.tolist()]


class _SeededItems(Dataset):
    """``(x, y, index)`` for an ``(epoch, index)`` key: item ``index`` of ``dataset``, its
    random transforms drawn from torch's generator seeded by (seed, epoch, index)."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, int]:
        epoch, index = key
        with seeded_draws(self.seed, epoch, index):
            x, y = self.dataset[index]
        return x, y, index


def _ignore_interrupts(_: int) -> None:
    """DataLoader workers leave Ctrl-C to the main process, which stops the run cleanly."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _as_tensors(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None:
    """The (x, y) tensors behind a TensorDataset or a Subset of one, and the subset's rows of
    them (None: all), else None."""
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[0], dataset.tensors[1], None
    if isinstance(dataset, Subset):
        inner = _as_tensors(dataset.dataset)
        if inner is not None:
            x, y, rows = inner
            picked = torch.as_tensor(dataset.indices, dtype=torch.int64)
            return x, y, picked if rows is None else rows[picked]
    return None


def is_in_memory(dataset: Dataset) -> bool:
    """Whether ``dataset`` is (a subset of) in-memory tensors, batched without a DataLoader."""
    return _as_tensors(dataset) is not None


def fits_on_device(nbytes: int, device: torch.device) -> bool:
    """Whether ``nbytes`` of data fit comfortably on ``device``: a GPU with at least
    ``1 / DEVICE_SHARE`` times as much memory free (the rest is the training's)."""
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= DEVICE_SHARE * free


def keep_on_device(bundle: DataBundle, device: torch.device) -> DataBundle:
    """``bundle`` with its in-memory splits moved to ``device`` once, each tensor that splits
    share moved once, where the training split is in memory and its tensors and those of the
    other splits ``fits_on_device``; else ``bundle`` itself. Its batches are then gathered, and
    augmented, on the device: the same batches as from the host, in the same order."""
    if not is_in_memory(bundle.train):
        return bundle
    splits = {"train": bundle.train, "val": bundle.val, "test": bundle.test}
    tensors = {id(t): t for split in splits.values() for t in _tensors_behind(split)}
    if not fits_on_device(sum(t.nbytes for t in tensors.values()), device):
        return bundle
    copies = {key: tensor.to(device) for key, tensor in tensors.items()}
    moved = {name: _over(split, copies) for name, split in splits.items()}
    return replace(bundle, **moved, pipeline=f"{bundle.pipeline}, kept on {device}")


def _tensors_behind(dataset: Dataset | None) -> tuple[torch.Tensor, ...]:
    """The tensors of the TensorDataset that ``dataset`` is (a subset of), else none."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return tuple(dataset.tensors) if isinstance(dataset, TensorDataset) else ()


def _over(dataset: Dataset | None, copies: dict[int, torch.Tensor]) -> Dataset | None:
    """``dataset`` (a TensorDataset or subsets of one) over ``copies`` of its tensors, by
    their ``id``; any other dataset as it is."""
    if isinstance(dataset, TensorDataset):
        return TensorDataset(*(copies[id(t)] for t in dataset.tensors))
    if isinstance(dataset, Subset) and _tensors_behind(dataset):
        return Subset(_over(dataset.dataset, copies), dataset.indices)
    return dataset


def make_loader(
    dataset: Dataset,
    order: BatchOrder | int,
    *,
    workers: int = 0,
    device: torch.device | None = None,
) -> TensorBatches | DataLoader:
    """An iterator of ``(x, y, indices)`` batches in ``order`` (a batch size: the dataset's
    order): a fast tensor path for in-memory data, else a DataLoader with ``workers`` (shards:
    each worker reads its own, ``data.shard_stream``). For a run on a GPU (``device``), batches
    from the CPU come in pinned memory."""
    if isinstance(order, int):
        order = BatchOrder(len(dataset), order)
    pin = device is not None and device.type == "cuda"
    if isinstance(dataset, ShardStream):  # workers start each epoch: they read its plan
        return DataLoader(
            dataset.epoch(order), batch_size=None, num_workers=workers, pin_memory=pin,
            worker_init_fn=_ignore_interrupts,
        )  # fmt: skip
    tensors = _as_tensors(dataset)
    if tensors is not None:
        x, y, rows = tensors
        return TensorBatches(x, y, order, rows=rows, pin=pin and x.device.type == "cpu")
    return DataLoader(
        _SeededItems(dataset, order.seed),
        batch_sampler=_Keys(order),
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=pin,
        worker_init_fn=_ignore_interrupts,
        generator=torch.Generator().manual_seed(order.seed),  # not the global stream
    )
