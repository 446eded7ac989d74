"""Training from shards: each process and each DataLoader worker reads its own shards front to
back, in an order that is a function of (seed, epoch) alone.

An epoch's stream is the shards in a permutation seeded by (seed, epoch), each shard's samples
in the order they lie in it. Process ``rank`` takes a contiguous part of that stream: exactly
its share of every one of the epoch's batches (the share ``BatchOrder`` gives it), so every
process makes the same number of steps, however uneven the shards; a shard may be split between
two processes. Within a process, batch ``j`` comes from lane ``j mod lanes`` (a lane per
DataLoader worker: the order in which a DataLoader takes batches from its workers), and each
lane reads a contiguous part of its process's stream. The samples of each shard (or part of
one) that a lane reads pass through a shuffle buffer of ``SHUFFLE_BUFFER`` samples seeded by
(seed, epoch, shard, where the part starts).

The whole plan is computed on sample indices before anything is read, so a loader that starts
an epoch at batch ``k`` skips exactly the batches before it: the position in the stream is the
epoch and the step, which the training state holds. It depends on the number of processes and
of DataLoader workers (``--workers``) as well: unlike a shuffled image folder, the same batches
do not come whatever the number of processes.

Image Parquet streams the same way, each row group standing for a shard
(``image_parquet.ParquetStream``).
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Iterator, Sequence
from functools import cached_property
from operator import itemgetter
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from resnetlab.data.decode import ArchiveMember, BadImage, decode_bytes
from resnetlab.data.seeds import derive_seed, epoch_order, seeded_draws
from resnetlab.data.streaming import ImageFileDataset

SHUFFLE_BUFFER = 1000  # samples: as webdataset's default; the raw bytes a lane holds at most
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # inputs, targets, sample indices
Position = tuple[int, int]  # (shard, sample number within the shard, in byte order)


class BatchPlan(Protocol):
    """Which batches an epoch has (``training.batches.BatchOrder``): ``batch_size`` is the global
    batch, shared by ``world`` processes; the loader starts at batch ``start`` of ``epoch``."""

    batch_size: int
    shuffle: bool
    seed: int
    drop_last: bool
    rank: int
    world: int
    epoch: int
    start: int

    def __len__(self) -> int: ...


def batch_shares(total: int, plan: BatchPlan, rank: int) -> list[int]:
    """Samples of each of the epoch's batches that process ``rank`` holds: every ``world``-th
    of the global batch, as ``BatchOrder`` shares it (an incomplete last batch is dropped with
    ``drop_last``)."""
    full, rest = divmod(total, plan.batch_size)
    shares = [len(range(rank, plan.batch_size, plan.world))] * full
    if rest and not plan.drop_last:
        shares.append(len(range(rank, rest, plan.world)))
    return shares


def buffer_shuffle(n: int, buffer: int, rng: np.random.Generator) -> np.ndarray:
    """``0..n-1`` in the order a shuffle buffer of ``buffer`` items emits them: filled with
    the first ``buffer``, each next item takes the place of a random one, which is emitted;
    the rest leave in random order at the end. Item ``i`` is never needed before output
    ``i - buffer``, so a reader holds at most ``buffer`` items."""
    held = list(range(min(buffer, n)))
    out = []
    slots = rng.integers(0, len(held), n - len(held)) if n > len(held) else []
    for incoming, slot in zip(range(len(held), n), slots, strict=True):
        out.append(held[slot])
        held[slot] = incoming
    out.extend(held[i] for i in rng.permutation(len(held)))
    return np.asarray(out, dtype=np.int64)


def lane_batches(
    plan: BatchPlan, shard_sizes: Sequence[int], lane: int, lanes: int
) -> list[list[Position]]:
    """The batches of ``lane`` (of ``lanes``) in process ``plan.rank``'s part of epoch
    ``plan.epoch``, from batch ``plan.start`` of the process on, as sample positions."""
    total = sum(shard_sizes)
    shares = [batch_shares(total, plan, rank) for rank in range(plan.world)]
    mine = shares[plan.rank]
    begin = sum(map(sum, shares[: plan.rank])) + sum(sum(mine[i::lanes]) for i in range(lane))
    sizes = mine[lane::lanes]
    end = begin + sum(sizes)
    shards = range(len(shard_sizes))
    order = epoch_order(len(shards), plan.seed, plan.epoch).tolist() if plan.shuffle else shards
    positions: list[Position] = []
    first = 0  # the shard's first position in the stream
    for shard in order:
        low, high = max(begin, first) - first, min(end, first + shard_sizes[shard]) - first
        first += shard_sizes[shard]
        if low >= high:
            continue
        part = np.arange(low, high)
        if plan.shuffle:
            rng = np.random.default_rng(derive_seed(plan.seed, plan.epoch, shard, low))
            part = part[buffer_shuffle(len(part), SHUFFLE_BUFFER, rng)]
        positions.extend((shard, int(p)) for p in part)
    bounds = np.cumsum([0, *sizes]).tolist()
    batches = [positions[a:b] for a, b in itertools.pairwise(bounds)]
    return batches[len(range(lane, plan.start, lanes)) :]  # the lane's batches before start


def read_in_order(archive: Path, members: Sequence[ArchiveMember]) -> Iterator[bytes]:
    """The bytes of ``members`` (of ``archive``), in the order given, reading the archive
    front to back once: a member read before its turn is held until then."""
    ahead = iter(sorted(members, key=lambda member: member.offset))
    held: dict[int, bytes] = {}
    with open(archive, "rb") as file:
        for member in members:
            while member.offset not in held:
                nearest = next(ahead)
                file.seek(nearest.offset)
                held[nearest.offset] = file.read(nearest.size)
            yield held.pop(member.offset)


class ShardStream(ImageFileDataset):
    """The samples of shards (``ArchiveMember`` files): read one by one like an image folder's
    files where a dataset is indexed, and front to back, a shard at a time, for an epoch's
    batches (``epoch``)."""

    source = "shards"

    @staticmethod
    def names(root: Path, files: Sequence[ArchiveMember]) -> list[str]:
        """Each sample's key: what a split record keeps (a repacked set keeps its split)."""
        return [member.key for member in files]

    @staticmethod
    def where(member: ArchiveMember) -> tuple[Hashable, int]:
        """The shard that ``member`` lies in, and its place there."""
        return member.archive, member.offset

    @cached_property
    def shards(self) -> list[list[int]]:
        """The indices of this dataset's samples in each of their shards, in the order they
        lie there."""
        by_shard: dict[Hashable, list[int]] = {}
        for index, member in enumerate(self.files):
            by_shard.setdefault(self.where(member)[0], []).append(index)
        place = [self.where(member)[1] for member in self.files]
        return [sorted(indices, key=place.__getitem__) for indices in by_shard.values()]

    @staticmethod
    def read_part(members: Sequence[ArchiveMember]) -> Iterator[bytes]:
        """The bytes of ``members`` of one shard, in the order given (``read_in_order``)."""
        return read_in_order(members[0].archive, members)

    def epoch(self, plan: BatchPlan) -> EpochBatches:
        """The batches of ``plan``'s epoch, for a DataLoader (``batch_size=None``) to iterate."""
        return EpochBatches(self, plan)

    def sample(self, index: int, data: bytes, epoch: int, seed: int) -> tuple[torch.Tensor, int]:
        """Sample ``index`` from its bytes ``data``, its random transforms drawn from torch's
        generator seeded by (seed, epoch, index) as for an image folder's; one that does not
        decode is reported and replaced as ``__getitem__`` replaces it."""
        with seeded_draws(seed, epoch, index):
            try:
                pixels = decode_bytes(data, self.files[index], self.channels, self.size)
            except BadImage:
                return self[index]
            image = torch.from_numpy(pixels)
            return (self.transform(image) if self.transform else image), self.labels[index]


class EpochBatches(IterableDataset):
    """One epoch's remaining batches ``(x, y, indices)`` of a ``ShardStream``, each DataLoader
    worker reading its lane (see the module docstring)."""

    def __init__(self, stream: ShardStream, plan: BatchPlan) -> None:
        self.stream, self.plan = stream, plan

    def __len__(self) -> int:
        return len(self.plan) - self.plan.start

    def __iter__(self) -> Iterator[Batch]:
        worker = get_worker_info()
        lanes = 1 if worker is None else worker.num_workers
        lane = (0 if worker is None else worker.id) + self.plan.start  # the first goes first
        sizes = [len(shard) for shard in self.stream.shards]
        batches = lane_batches(self.plan, sizes, lane % lanes, lanes)
        samples = self._samples(itertools.chain.from_iterable(batches))
        for batch in batches:
            xs, ys, indices = zip(*itertools.islice(samples, len(batch)), strict=True)
            yield torch.stack(xs), torch.tensor(ys), torch.tensor(indices)

    def _samples(self, positions: Iterator[Position]) -> Iterator[tuple[torch.Tensor, int, int]]:
        """``(x, y, index)`` of the samples at ``positions``, each shard read front to back."""
        stream, plan = self.stream, self.plan
        for shard, run in itertools.groupby(positions, key=itemgetter(0)):
            indices = [stream.shards[shard][position] for _, position in run]
            read = stream.read_part([stream.files[i] for i in indices])
            for index, data in zip(indices, read, strict=True):
                yield (*stream.sample(index, data, plan.epoch, plan.seed), index)
