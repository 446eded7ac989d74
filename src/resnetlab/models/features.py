"""Multi-scale feature maps of a 2-D network, as timm's ``features_only``: the stem and each
stage's output, for detectors and segmenters.

Index 0 is the stem, 1... are the stages. The wrapped modules keep their names, so the state
dict of a ``FeatureNet`` is its classifier's without the head (and without stages past the last
index asked for): weights load by the classifier's keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from resnetlab.errors import ResnetlabError


@dataclass(frozen=True)
class FeatureLevel:
    """One feature map of a network: the modules that compute it from the previous level's map,
    by attribute name, its channels and its reduction (stride) against the input."""

    modules: tuple[str, ...]
    num_chs: int
    reduction: int


class FeatureInfo(list):
    """Per returned map, a dict ``{"num_chs", "reduction", "module", "index"}`` (timm's keys),
    with timm's ``channels()`` and ``reduction()``."""

    def channels(self) -> list[int]:
        """Channels of each returned map."""
        return [info["num_chs"] for info in self]

    def reduction(self) -> list[int]:
        """Stride of each returned map against the input."""
        return [info["reduction"] for info in self]


def resolve_indices(out_indices: Sequence[int] | None, num_levels: int) -> tuple[int, ...]:
    """``out_indices`` checked and made non-negative (-1 is the last stage); None: every stage."""
    if out_indices is None:
        return tuple(range(1, num_levels))
    indices = tuple(int(i) + num_levels if int(i) < 0 else int(i) for i in out_indices)
    if not indices or any(not 0 <= i < num_levels for i in indices):
        raise ResnetlabError(
            f"out_indices {list(out_indices)}: need indices in 0..{num_levels - 1} "
            "(0 is the stem, 1... the stages)"
        )
    if list(indices) != sorted(set(indices)):
        raise ResnetlabError(f"out_indices {list(out_indices)}: need increasing indices")
    return indices


class FeatureNet(nn.Module):
    """``model``'s stem and stages up to the last of ``out_indices``; ``forward`` returns the
    maps at ``out_indices`` as a list, shallowest first."""

    def __init__(self, model: nn.Module, out_indices: Sequence[int] | None = None) -> None:
        super().__init__()
        levels: list[FeatureLevel] = getattr(model, "feature_levels", [])
        if not levels:
            raise ResnetlabError(
                f"{type(model).__name__} has no 2-D feature maps for features_only"
            )
        self.out_indices = resolve_indices(out_indices, len(levels))
        self.levels = levels[: self.out_indices[-1] + 1]
        for level in self.levels:
            for name in level.modules:
                self.add_module(name, getattr(model, name))
        self.feature_info = FeatureInfo(
            {
                "num_chs": levels[i].num_chs,
                "reduction": levels[i].reduction,
                "module": levels[i].modules[-1],
                "index": i,
            }
            for i in self.out_indices
        )

    def level_modules(self, index: int) -> list[nn.Module]:
        """The modules of feature level ``index`` (0: the stem)."""
        return [getattr(self, name) for name in self.levels[index].modules]

    def forward(self, x: Tensor) -> list[Tensor]:
        """The feature maps at ``out_indices``."""
        maps = []
        for index, level in enumerate(self.levels):
            for name in level.modules:
                x = getattr(self, name)(x)
            if index in self.out_indices:
                maps.append(x)
        return maps
