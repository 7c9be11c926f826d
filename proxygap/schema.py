"""Building blocks of typed configs: a strict pydantic base and common constrained types."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
PosInt = Annotated[int, Field(ge=1)]
NonNegInt = Annotated[int, Field(ge=0)]
PosFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
UnitFloat = Annotated[float, Field(ge=0, le=1)]
OpenUnitFloat = Annotated[float, Field(gt=0, lt=1)]


class Strict(BaseModel):
    """A config section: unknown fields are refused, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def safe_name(value: str, what: str) -> str:
    """``value`` if it can name a folder safely, else a ValueError saying why."""
    if not SAFE_NAME.match(value) or value in {".", ".."} or ".." in value:
        raise ValueError(
            f"{what} {value!r} must be 1-64 letters, digits, '_', '-' or '.', starting with a "
            "letter or digit (it names a folder)"
        )
    return value


def format_errors(err: ValidationError, what: str) -> str:
    """One line per bad field of ``err`` (its dotted path and why), under ``invalid {what}:``; a
    check across fields (no path of its own) gives its message alone, which names the fields."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        elif e["type"] == "literal_error":
            msg = f"{msg} (got {e.get('input')!r})"
        elif "input" in e and not isinstance(e["input"], dict | list):
            msg = f"{msg} (got {e['input']!r})"
        lines.append(f"  {loc}: {msg}" if loc else f"  {msg}")
    return f"invalid {what}:\n" + "\n".join(lines)


def keyword_parameters(fn: Callable[..., Any], *, keyword_only: bool = False) -> dict[str, Any]:
    """The parameters of ``fn`` a caller can pass by keyword, in signature order, each with its
    default (``inspect.Parameter.empty`` if required); with ``keyword_only`` only those after
    ``*``. ``*args`` and ``**kwargs`` are left out: :func:`check_keywords` then refuses every
    other name, so a registry built on it can list what its entries accept."""
    params = inspect.signature(fn).parameters.values()
    return {
        p.name: p.default
        for p in params
        if p.kind is inspect.Parameter.KEYWORD_ONLY
        or (not keyword_only and p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD)
    }


def check_keywords(
    accepted: Mapping[str, Any], given: Iterable[str], *, unknown: str, missing: str
) -> None:
    """Raise ValueError if ``given`` names a keyword ``accepted`` lacks (message ``unknown``) or
    leaves out a required one (message ``missing``).

    ``accepted`` maps each keyword to its default, ``inspect.Parameter.empty`` if required (as
    :func:`keyword_parameters` returns it). The messages are format strings: ``{names}`` is the
    list of unknown names (sorted) or of missing ones (in ``accepted``'s order), ``{allowed}``
    the list of ``accepted``'s keywords in order.
    """
    names = set(given)
    allowed = list(accepted)
    bad = sorted(names - set(accepted))
    if bad:
        raise ValueError(unknown.format(names=bad, allowed=allowed))
    absent = [k for k, v in accepted.items() if v is inspect.Parameter.empty and k not in names]
    if absent:
        raise ValueError(missing.format(names=absent, allowed=allowed))
