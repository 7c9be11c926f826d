"""Building blocks of typed configs: a strict pydantic base and common constrained types."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
PosInt = Annotated[int, Field(ge=1)]
PosFloat = Annotated[float, Field(gt=0)]


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
    """One line per bad field of ``err`` (its dotted path and why), under ``invalid {what}:``."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        elif e["type"] == "literal_error":
            msg = f"{msg} (got {e.get('input')!r})"
        elif "input" in e and not isinstance(e["input"], dict | list):
            msg = f"{msg} (got {e['input']!r})"
        lines.append(f"  {loc}: {msg}")
    return f"invalid {what}:\n" + "\n".join(lines)
