"""Settings: config dataclass fields that also say how they are given, checked and resumed.

A field declared with ``setting(...)`` carries, beside its name, type and default, a
``Setting``: its flag's help, name and choices, a check of its value with the error that names
the flag, whether a resumed run may change it, and its help section. Each command's parser is
built from these fields (``resnetlab.cli.flags``), ``validate()`` runs their checks
(``check_settings``) and a resume knows what it may change (``resumable``). Free of torch, so
that ``--help`` stays instant.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import MISSING, Field, dataclass, fields
from typing import Any

from resnetlab.errors import ResnetlabError

_KEY = "resnetlab"  # the key of a field's Setting in its metadata


@dataclass(frozen=True)
class Setting:
    """How a config field is given on the command line, checked and resumed.

    ``help`` may show the field's default as ``%(default)s``; ``flag`` defaults to the field's
    name with dashes (``--batch-size``), ``aliases`` are other names of the same flag. A value
    must be one of ``choices`` and pass ``check``, else ``error`` is raised (the default suits
    ``choices``; a ``check`` gives its own), formatted with ``flag``, ``value`` and
    ``choices``; None passes where the default is None (unset).
    ``resumable``: a resumed run may change it (how the run is watched, saved and fed, not
    what it learns). ``group``: the help section it is listed in. ``negatable``: a bool flag
    with a ``--no-`` form; otherwise a bool's flag stores True, or False where it defaults to
    True (name that flag ``--no-...``). ``parse`` turns the flag's text into the value (a
    list's flag takes one value per word unless parsed). ``cli`` False: the field has no flag;
    ``positional``: it is given without a flag, as the command's argument of the field's name.
    """

    help: str | None = None
    flag: str | None = None
    aliases: tuple[str, ...] = ()
    choices: tuple[Any, ...] | None = None
    check: Callable[[Any], bool] | None = None
    error: str = "{flag} must be one of {choices}"
    resumable: bool = False
    group: str | None = None
    metavar: str | None = None
    negatable: bool = False
    parse: Callable[[str], Any] | None = None
    cli: bool = True
    positional: bool = False


def setting(default: Any = MISSING, *, factory: Any = MISSING, **how: Any) -> Any:
    """A dataclass field defaulting to ``default`` (or to ``factory()``, for a mutable value),
    with the ``Setting`` whose fields ``how`` gives (``help=``, ``check=``, ...)."""
    return dataclasses.field(
        default=default, default_factory=factory, metadata={_KEY: Setting(**how)}
    )


def shared(cls: type, name: str, **changes: Any) -> Any:
    """The setting ``name`` of ``cls`` for another config (a subclass, or a command that
    shares it): declared once, with ``default=`` or any ``Setting`` field changed if given."""
    base = field_of(cls, name)
    default = changes.pop("default", base.default)
    how = dataclasses.replace(setting_of(base), **changes)
    return dataclasses.field(
        default=default,
        default_factory=base.default_factory if default is MISSING else MISSING,
        metadata={_KEY: how},
    )


def field_of(cls: type, name: str) -> Field[Any]:
    """The field ``name`` of the dataclass ``cls``."""
    return next(f for f in fields(cls) if f.name == name)


def setting_of(field: Field[Any]) -> Setting:
    """The field's ``Setting``; a plain field is a flag without help."""
    return field.metadata.get(_KEY) or Setting()


def flag_of(field: Field[Any]) -> str:
    """The field's flag, e.g. ``--batch-size`` (a positional argument's name, e.g. ``folder``)."""
    how = setting_of(field)
    return field.name if how.positional else how.flag or "--" + field.name.replace("_", "-")


def default_of(field: Field[Any]) -> Any:
    """The field's default value (a fresh one where it has a factory)."""
    return field.default_factory() if field.default is MISSING else field.default


def resumable(cls: type) -> frozenset[str]:
    """The settings of ``cls`` that a resumed run may change."""
    return frozenset(f.name for f in fields(cls) if setting_of(f).resumable)


def check_settings(config: Any) -> None:
    """Raise ResnetlabError with the error of the first field (in field order) whose value is
    not one of its choices or fails its check."""
    for f in fields(config):
        how, value = setting_of(f), getattr(config, f.name)
        if (value is None and f.default is None) or _valid(how, value):
            continue
        choices = ", ".join(map(str, how.choices or ()))
        raise ResnetlabError(how.error.format(flag=flag_of(f), value=value, choices=choices))


def positive(value: float) -> bool:
    """A check: above 0."""
    return value > 0


def non_negative(value: float) -> bool:
    """A check: 0 or above."""
    return value >= 0


def at_least_one(value: float) -> bool:
    """A check: 1 or above."""
    return value >= 1


def _valid(how: Setting, value: Any) -> bool:
    try:
        return (how.choices is None or value in how.choices) and (
            how.check is None or bool(how.check(value))
        )
    except TypeError:  # a value of another type, e.g. a word where a number belongs
        return False
