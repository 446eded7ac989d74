"""Model registry: build any network by name, and know each name's defaults."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from resnetlab.errors import ResnetlabError
from resnetlab.models.features import FeatureNet


@dataclass(frozen=True)
class ModelSpec:
    """What the registry knows about one model name."""

    name: str
    builder: Callable[..., nn.Module]
    family: str  # imagenet, cifar, plain, preact, speedrun, sequence, tabular or video
    input_shape: tuple[int, ...]  # default input, without batch: (C, H, W), (C, T, H, W), ...
    num_classes: int  # default number of classes

    @property
    def data_kind(self) -> str:
        """The kind of data the model takes: ``image``, ``sequence``, ``tabular`` or ``video``."""
        return self.family if self.family in ("sequence", "tabular", "video") else "image"

    @property
    def in_chans(self) -> int:
        """Default input channels (features, for tabular models)."""
        return self.input_shape[0]


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(
    name: str, *, family: str, input_shape: tuple[int, ...], num_classes: int
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register a builder ``f(num_classes, in_chans, **options)`` under ``name``."""

    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelSpec(name, builder, family, tuple(input_shape), num_classes)
        return builder

    return decorate


def get_model_spec(name: str) -> ModelSpec:
    """Return the spec for ``name``, or raise an error suggesting the closest names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see `resnetlab models`"
        raise ResnetlabError(f"unknown model {name!r}{hint}") from None


def list_models(family: str | None = None) -> list[str]:
    """Names of all registered models, in registration order, optionally of one family."""
    return [n for n, s in _REGISTRY.items() if family is None or s.family == family]


def create_model(
    name: str,
    num_classes: int | None = None,
    in_chans: int | None = None,
    *,
    features_only: bool = False,
    out_indices: Sequence[int] | None = None,
    **options: object,
) -> nn.Module:
    """Build model ``name``; unset ``num_classes``/``in_chans`` take the registry defaults.

    ``features_only`` (2-D networks): a ``FeatureNet`` returning the feature maps at
    ``out_indices`` (timm's count: 0 is the stem, 1... the stages; default every stage).
    An unknown or invalid option raises a ResnetlabError naming the model.
    """
    spec = get_model_spec(name)
    try:
        model = spec.builder(
            num_classes=spec.num_classes if num_classes is None else num_classes,
            in_chans=spec.in_chans if in_chans is None else in_chans,
            **options,
        )
    except (TypeError, ValueError) as exc:
        raise ResnetlabError(f"bad option for model {name!r}: {exc}") from None
    if not features_only:
        return model
    try:
        return FeatureNet(model, out_indices)
    except ResnetlabError as exc:
        raise ResnetlabError(f"model {name!r}: {exc}") from None
