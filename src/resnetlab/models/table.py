"""`resnetlab models`: every registered network with its size and cost."""

from __future__ import annotations

from typing import Any

from resnetlab.errors import ResnetlabError
from resnetlab.models import get_model_spec, list_models
from resnetlab.models.complexity import format_count, summarize


def model_table(family: str | None = None) -> list[dict[str, Any]]:
    """Name, family, parameters and multiply-adds at the default input, for each model."""
    names = list_models(family)
    if not names:
        families = sorted({get_model_spec(n).family for n in list_models()})
        raise ResnetlabError(
            f"--family: unknown family {family!r} (choose from {', '.join(families)})"
        )
    rows = []
    for name in names:
        s = summarize(name)
        rows.append(
            {
                "name": s.name,
                "family": s.family,
                "params": s.params,
                "macs": s.macs,
                "params_human": format_count(s.params),
                "macs_human": format_count(s.macs),
                "input_shape": list(s.input_shape),
            }
        )
    return rows
