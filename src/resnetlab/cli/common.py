"""Helpers shared by several subcommands."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import yaml


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
        self.parent = parent
        super().__init__(*args, **kwargs)
        self.add_argument(
            "--config", default=argparse.SUPPRESS, metavar="FILE.yaml",
            help="YAML file setting any flag of this command; flags given override it",
        )  # fmt: skip

    def parse_known_args(
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        """Parse, with the parent's defaults (from ``--config``) in place of this parser's."""
        inherited = {action.dest: self.parent.get_default(action.dest) for action in self._actions}
        self.set_defaults(**{k: v for k, v in inherited.items() if v is not None})
        return super().parse_known_args(args, namespace)
