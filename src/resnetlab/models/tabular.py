"""ResNet for tabular data (Gorishniy et al. 2021, "Revisiting Deep Learning Models for Tabular
Data", sec. 3.2)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from resnetlab.errors import ResnetlabError
from resnetlab.models.classifier import ClassifierMixin
from resnetlab.models.registry import register_model


class TabularBlock(nn.Module):
    """y = shortcut(x) + Dropout(Linear(Dropout(ReLU(Linear(BatchNorm(x)))))).

    The shortcut is the identity when the width is unchanged, else a linear ``projection``;
    ``residual=False`` drops it (the plain twin).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden_features: int,
        dropout: float = 0.0,
        residual_dropout: float = 0.0,
        residual: bool = True,
    ) -> None:
        super().__init__()
        self.residual = residual
        self.norm = nn.BatchNorm1d(in_features)
        self.linear1 = nn.Linear(in_features, hidden_features)
        self.relu = nn.ReLU(inplace=True)
        self.dropout1 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(hidden_features, out_features)
        self.dropout2 = nn.Dropout(residual_dropout)
        self.projection = (
            nn.Linear(in_features, out_features)
            if residual and in_features != out_features
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block to (N, in_features)."""
        out = self.dropout1(self.relu(self.linear1(self.norm(x))))
        out = self.dropout2(self.linear2(out))
        if not self.residual:
            return out
        return out + (x if self.projection is None else self.projection(x))


class TabularResNet(ClassifierMixin, nn.Module):
    """Linear(in_chans -> widths[0]), one block per width, head BatchNorm -> ReLU -> ``fc``.

    ``dropout`` is the hidden dropout, ``residual_dropout`` the one before the addition; each
    block's hidden layer has ``hidden_factor`` times its width. ``shortcut=False`` gives the
    same network without shortcuts.
    """

    kaiming_linear = False  # linear layers keep PyTorch's default init

    def __init__(
        self,
        num_classes: int = 2,
        in_chans: int = 10,
        *,
        widths: Sequence[int] = (20, 40),
        dropout: float = 0.0,
        residual_dropout: float = 0.0,
        hidden_factor: float = 1.0,
        shortcut: bool = True,
    ) -> None:
        super().__init__()
        widths = tuple(widths)
        if not widths or min(widths) < 1:
            raise ResnetlabError(f"option widths must be positive integers, got {widths}")
        if hidden_factor <= 0:
            raise ResnetlabError(f"option hidden_factor must be positive, got {hidden_factor}")
        for name, rate in (("dropout", dropout), ("residual_dropout", residual_dropout)):
            if not 0.0 <= rate < 1.0:
                raise ResnetlabError(f"option {name} must be in [0, 1), got {rate}")
        self.input_layer = nn.Linear(in_chans, widths[0])
        self.blocks = nn.Sequential(
            *(
                TabularBlock(
                    in_width,
                    width,
                    max(1, round(width * hidden_factor)),
                    dropout,
                    residual_dropout,
                    residual=shortcut,
                )
                for in_width, width in zip((widths[0], *widths[:-1]), widths, strict=True)
            )
        )
        self.bn_final = nn.BatchNorm1d(widths[-1])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        """The representation after the last block, before the head: (N, widths[-1])."""
        return self.blocks(self.input_layer(x))

    def pool_features(self, x: Tensor) -> Tensor:
        """The head's BatchNorm and ReLU before ``fc`` (there is nothing to pool)."""
        return self.relu(self.bn_final(x))


@register_model("resnet_tabular", family="tabular", input_shape=(10,), num_classes=2)
def resnet_tabular(num_classes: int, in_chans: int, **options: Any) -> TabularResNet:
    """Tabular ResNet; the defaults reproduce the source article's 10 -> 20 -> 20 -> 40 case."""
    return TabularResNet(num_classes, in_chans, **options)
