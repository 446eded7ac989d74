"""Random numbers that are a pure function of (seed, epoch, sample index).

Training draws its batch order and every sample's augmentation from these, never from a stream
whose position would have to be saved: so a run resumed at any step, or a DataLoader worker
that was restarted, sees exactly the numbers an uninterrupted run saw.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

_MASK64 = (1 << 64) - 1
_MASK32 = 0xFFFFFFFF


def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (splitmix64's finaliser on each in turn)."""
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value = (value ^ (part & _MASK64)) * 0xBF58476D1CE4E5B9 & _MASK64
        value = (value ^ (value >> 31)) * 0x94D049BB133111EB & _MASK64
        value ^= value >> 29
    return value >> 1


@contextmanager
def seeded_draws(*parts: int) -> Iterator[None]:
    """Torch's CPU generator seeded by ``derive_seed(*parts)`` for the block, its state given
    back after. (``torch.manual_seed`` would also seed every GPU's generator: some 100 us a
    call, a tenth of decoding an image; the CPU's numbers are the same.)"""
    generator = torch.default_generator
    saved = generator.get_state()
    generator.manual_seed(derive_seed(*parts))
    try:
        yield
    finally:
        generator.set_state(saved)


def sample_hash(indices: torch.Tensor, seed: int) -> torch.Tensor:
    """One pseudo-random 32-bit integer (as int64) per sample index, fixed for ``seed``:
    ``derive_seed(run seed, epoch, stream)`` gives each epoch and use its own numbers. It is
    computed where ``indices`` are (integer arithmetic: the same numbers on any device)."""
    h = (indices.long() ^ (seed & _MASK32) ^ (seed >> 32 & _MASK32)) & _MASK32
    for _ in range(3):
        h = (((h >> 16) ^ h) * 0x45D9F3B) & _MASK32
    return (h >> 16) ^ h


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled order of ``n`` samples in ``epoch``: a permutation seeded by both."""
    generator = torch.Generator().manual_seed(derive_seed(seed, epoch))
    return torch.randperm(n, generator=generator)
