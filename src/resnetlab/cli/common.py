"""Flags and helpers shared by several subcommands."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import yaml

from resnetlab.engine.config import AUTO_RULE, COMPILE_CHOICES, PRECISIONS

DEVICE_HELP = "cpu, cuda, cuda:1 ... (default: auto, a GPU where there is one)"


def parse_option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with the value read as YAML (so ``3`` is an int and ``B`` a string)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, yaml.safe_load(value)


class NestedParser(argparse.ArgumentParser):
    """The parser of a command's action (`experiment degradation`, `detect train`), starting
    from the defaults set on the command's own parser.

    ``--config FILE.yaml`` turns the file into defaults of the command's parser, and argparse
    lets a nested parser's own defaults override its parent's; so the parent's are copied in
    before parsing. ``--config`` may come before or after the action's name.
    """

    def __init__(self, *args: Any, parent: argparse.ArgumentParser, **kwargs: Any) -> None:
        self.parent, self.dests = parent, []
        super().__init__(*args, **kwargs)
        self.add_argument(
            "--config", default=argparse.SUPPRESS, metavar="FILE.yaml",
            help="YAML file setting any flag of this command; flags given override it",
        )  # fmt: skip

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        """Add an argument, remembering its destination."""
        action = super().add_argument(*args, **kwargs)
        self.dests.append(action.dest)
        return action

    def parse_known_args(
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        """Parse, with the parent's defaults (from ``--config``) in place of this parser's."""
        inherited = {dest: self.parent.get_default(dest) for dest in self.dests}
        self.set_defaults(**{k: v for k, v in inherited.items() if v is not None})
        return super().parse_known_args(args, namespace)


def add_overwrite_flag(p: argparse.ArgumentParser) -> None:
    """``--overwrite``: a new run may replace an earlier one in its ``--out`` folder."""
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the earlier run in --out: remove the files it wrote (checkpoints, state, "
        "metrics, log, figures) first; without it, an --out that holds a run is an error",
    )


def add_runtime_flags(p: argparse.ArgumentParser) -> None:
    """``--precision``, ``--device`` and ``--workers``."""
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="autocast precision; auto = bf16 where supported (default: auto)",
    )
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")


def add_compile_flag(p: argparse.ArgumentParser, default: str | None) -> None:
    """``--compile auto|on|off``; the rule for ``auto`` is in its help."""
    p.add_argument(
        "--compile",
        choices=COMPILE_CHOICES,
        default=default,
        help=f"torch.compile the training step (inference: with freezing); {AUTO_RULE} "
        f"(default: {default})",
    )
