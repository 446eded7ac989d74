"""`--smoke`, which every benchmark script takes: the smallest run that still goes through all of
the script's code, in seconds, with its results in a new temporary folder (never in
benchmarks/results/). tests/test_benchmarks.py runs each script so, on generated data where
the script reads a folder, so that a change that breaks a script fails the tests."""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

HELP = "the smallest run through all of the script's code; results go to a temporary folder"


def parse_args(
    parser: argparse.ArgumentParser, smallest: Callable[[Path], dict[str, Any]]
) -> argparse.Namespace:
    """``parser``'s arguments with ``--smoke`` added: under it, ``smallest(folder)`` replaces the
    defaults it names (flags given still win), ``folder`` a new temporary folder."""
    parser.add_argument("--smoke", action="store_true", help=HELP)
    args = parser.parse_args()
    if args.smoke:
        folder = Path(tempfile.mkdtemp(prefix=f"{Path(parser.prog).stem}-smoke-"))
        print(f"smoke run: results in {folder}", flush=True)
        parser.set_defaults(**smallest(folder))
        args = parser.parse_args()
    return args
