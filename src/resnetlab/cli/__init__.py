"""Command-line interface: argument parsing and printing only; each command calls one function.

Each subcommand lives in its own module with ``register(subparsers)``; add new ones to COMMANDS.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import yaml

from resnetlab.cli import (
    bench,
    detect,
    evaluate,
    experiment,
    explain,
    export,
    finetune,
    lr_find,
    models,
    pack,
    predict,
    quantize,
    serve,
    train,
)
from resnetlab.config.recipes import recipe_defaults
from resnetlab.errors import LostProcess, ResnetlabError, RunStopped

COMMANDS = (
    train, finetune, lr_find, evaluate, predict, explain, export, quantize, serve, models,
    experiment, bench, detect, pack,
)  # fmt: skip


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The `resnetlab` argument parser, and its subcommand parsers by name."""
    parser = argparse.ArgumentParser(
        prog="resnetlab",
        description="Build, train, evaluate and understand residual networks.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    for subparser in sub.choices.values():
        subparser.add_argument(
            "--config",
            metavar="FILE.yaml",
            help="YAML file setting any flag of this command; flags given override it",
        )
    return parser, sub.choices


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    """Parse ``argv``. Defaults are layered: the command's own, then ``--recipe``'s (`train`
    on a table file: ``tabular``), then the ``--config`` file's; flags given on the command
    line override them all."""
    parser, subparsers = build_parser()
    args = parser.parse_args(argv)
    values = _read_config(args) if args.config else {}
    # `detect train` has its own; under torchrun rank 0 alone reads the run's state and gives
    # the other processes its config (commands: ``check_on_main``)
    if args.command in ("train", "finetune") and args.resume and _on_rank_0():
        values = {**_resumed_run_values(args.resume, args.command), **values}
    recipe = values.get("recipe") or getattr(args, "recipe", None) or _default_recipe(args, values)
    if recipe:
        values = {**_as_flag_values(recipe_defaults(recipe)), "recipe": recipe, **values}
    if not values:
        return args
    subparsers[args.command].set_defaults(**values)
    return parser.parse_args(argv)


def _default_recipe(args: argparse.Namespace, values: dict[str, Any]) -> str | None:
    """``tabular`` for `train` on a table file (``.csv``, ``.parquet``... but image Parquet),
    else None."""
    if args.command != "train":
        return None
    from resnetlab.data.image_parquet import is_image_parquet  # torch: `train` imports it anyway
    from resnetlab.data.tabular import is_table_file

    data = values.get("data") or args.data
    return "tabular" if data and is_table_file(data) and not is_image_parquet(data) else None


def _read_config(args: argparse.Namespace) -> dict[str, Any]:
    """The ``--config`` YAML file as flag defaults; unknown keys are errors."""
    path = Path(args.config)
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ResnetlabError(f"--config: cannot read '{path}': {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ResnetlabError(
            f"--config '{path}': not valid YAML ({exc.__class__.__name__})"
        ) from None
    if not isinstance(values, dict):
        raise ResnetlabError(f"--config '{path}': expected a mapping of flag names to values")
    values = _as_flag_values({str(k).replace("-", "_"): v for k, v in values.items()})
    unknown = sorted(set(values) - set(vars(args)) - {"command", "func", "config"})
    if unknown:
        raise ResnetlabError(
            f"--config '{path}': unknown key(s) for `{args.command}`: {', '.join(unknown)}"
        )
    return values


def _resumed_run_values(run_dir: str, command: str) -> dict[str, Any]:
    """The settings of the run to resume, as flag defaults (flags given override them, and
    the engine refuses any that would change what the run learns)."""
    from resnetlab.training.run import resume_config  # torch: only when resuming

    return _as_flag_values(resume_config(run_dir, command).to_dict())


def _as_flag_values(values: dict[str, Any]) -> dict[str, Any]:
    """Config values as argparse defaults: a mapping (``model_options``) as the (key, value)
    pairs that its flag (``--model-option``) appends."""
    return {k: list(v.items()) if isinstance(v, dict) else v for k, v in values.items()}


def _warn_in_one_line(message: Warning | str, *_: object, **__: object) -> None:
    """Print warnings as ``resnetlab: warning: ...``, one line each."""
    print(f"resnetlab: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `resnetlab` console script; returns the exit status."""
    warnings.showwarning = _warn_in_one_line
    try:
        args = _parse(sys.argv[1:] if argv is None else argv)
        args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        distributed = sys.modules.get("resnetlab.runtime.distributed")  # imported if it ran
        if distributed is not None and distributed.left_cleanly():
            _exit_now()
    except RunStopped as stop:
        _say(f"resnetlab: {stop}")
        if _in_a_process_group():  # every process stopped at the same step, its state saved
            _exit_now(stop.exit_code)
        return stop.exit_code
    except LostProcess as lost:  # every process that remains says it: rank 0 may be lost
        print(f"resnetlab: error: {lost}", file=sys.stderr)
        _exit_now(2)  # its process group is broken: tearing it down could wait or abort
    except ResnetlabError as exc:
        _say(f"resnetlab: error: {exc}")
        return 2
    except KeyboardInterrupt:
        print("resnetlab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _reader_went_away()
    return 0


def _in_a_process_group() -> bool:
    """Whether this process is still in a torchrun process group (one that stopped early)."""
    distributed = sys.modules.get("torch.distributed")
    return distributed is not None and distributed.is_available() and distributed.is_initialized()


def _exit_now(status: int = 0) -> NoReturn:
    """End a distributed run that succeeded (all processes met, its process group is shut
    down, its files are closed) with status 0, or one that stopped or lost a process with
    ``status``, skipping the interpreter's finalisation: there, gloo's threads can still
    abort the process ("terminate called without an active exception"), and torchrun would
    report the whole job as failed."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _say(line: str) -> None:
    """Print a line to stderr; under torchrun, from rank 0 only (every rank fails alike)."""
    if _on_rank_0():
        print(line, file=sys.stderr)


def _on_rank_0() -> bool:
    """Whether this process is rank 0 under torchrun, or runs alone."""
    return os.environ.get("RANK", "0") == "0"


def _reader_went_away() -> int:
    """The reader of stdout (e.g. ``| head``) closed it: stop quietly, as ``cat`` does. Later
    output is sent to /dev/null, so that the interpreter's final flush cannot fail again."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 128 + signal.SIGPIPE
