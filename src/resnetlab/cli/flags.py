"""Flags built from a config dataclass's fields (``resnetlab.settings``), and the config built
back from the parsed flags.

Every flag defaults to None, so that what was not given (on the command line, by ``--config``,
a recipe or a resumed run) takes the config class's default; a help text shows that default
as ``%(default)s``.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Iterable
from dataclasses import Field, fields
from typing import Any, TypeVar

from resnetlab.cli.common import parse_option
from resnetlab.settings import Setting, default_of, field_of, flag_of, setting_of

Config = TypeVar("Config")


def add_settings(
    parser: argparse.ArgumentParser,
    cls: type,
    names: Iterable[str] | None = None,
    *,
    leave_out: Iterable[str] = (),
) -> None:
    """Add a flag for each setting of ``cls`` named in ``names``, in that order (default: each
    field that has a flag, in field order), but those in ``leave_out``; a setting's ``group``
    lists it in a help section of that title."""
    chosen = [field_of(cls, name) for name in names] if names is not None else fields(cls)
    hints = typing.get_type_hints(cls)
    skipped = set(leave_out)
    for f in chosen:
        how = setting_of(f)
        if not how.cli or f.name in skipped:
            continue
        options = {"help": _help(how.help, f), "metavar": how.metavar, "choices": how.choices}
        named = {} if how.positional else {"dest": f.name, "default": None}
        _section(parser, how.group).add_argument(
            flag_of(f),
            *how.aliases,
            **named,
            **_kind(_plain(hints[f.name]), f, how),
            **{key: value for key, value in options.items() if value is not None},
        )


def in_group(cls: type, title: str) -> tuple[str, ...]:
    """The settings of ``cls`` listed under the help section ``title``."""
    return tuple(f.name for f in fields(cls) if setting_of(f).group == title)


def config_from_args(cls: type[Config], args: argparse.Namespace) -> Config:
    """``cls`` built from the parsed flags of its fields; those left None take its defaults."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in fields(cls):
        value = getattr(args, f.name, None)
        if value is not None:
            container = typing.get_origin(_plain(hints[f.name]))
            values[f.name] = container(value) if container in (dict, tuple) else value
    return cls(**values)


def _plain(hint: Any) -> Any:
    """``X`` for ``X | None``."""
    if isinstance(hint, types.UnionType):
        (hint,) = (arg for arg in typing.get_args(hint) if arg is not type(None))
    return hint


def _kind(hint: Any, field: Field[Any], how: Setting) -> dict[str, Any]:
    """How argparse reads the flag of a field of type ``hint``."""
    if hint is bool:
        if how.negatable:
            return {"action": argparse.BooleanOptionalAction}
        return {"action": "store_false" if field.default is True else "store_true"}
    if how.parse is not None:
        return {"type": how.parse}
    container = typing.get_origin(hint)
    if container is dict:  # --model-option KEY=VALUE, repeated
        return {"action": "append", "type": parse_option}
    if container in (list, tuple):
        return {"nargs": "+", "type": typing.get_args(hint)[0]}
    return {} if hint is str else {"type": hint}


def _help(text: str | None, field: Field[Any]) -> str | None:
    """The help text with the field's default in place of ``%(default)s`` (a flag's own
    default is None), a list written as on the command line."""
    if text is None or "%(default)s" not in text:
        return text
    default = default_of(field)
    shown = " ".join(map(str, default)) if isinstance(default, tuple | list) else str(default)
    return text.replace("%(default)s", shown.replace("%", "%%"))


def _section(
    parser: argparse.ArgumentParser, title: str | None
) -> argparse.ArgumentParser | argparse._ArgumentGroup:
    """The parser itself, or its argument group ``title`` (made on first use)."""
    if title is None:
        return parser
    for group in parser._action_groups:
        if group.title == title:
            return group
    return parser.add_argument_group(title)
