"""Flags and helpers shared by several subcommands."""

from __future__ import annotations

import argparse
from typing import Any

import yaml

from resnetlab.engine.config import AUTO_RULE, COMPILE_CHOICES, PRECISIONS


def parse_option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with the value read as YAML (so ``3`` is an int and ``B`` a string)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, yaml.safe_load(value)


def add_runtime_flags(p: argparse.ArgumentParser) -> None:
    """``--precision``, ``--device`` and ``--workers``."""
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="autocast precision; auto = bf16 where supported (default: auto)",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: auto)")
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
