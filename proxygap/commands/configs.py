"""Configs from the command line: list the built-in ones, show one resolved with every field's
meaning, and change fields with ``--set a.b=value``.

``--set`` takes a dotted path into the resolved config (list items by index, or ``*`` for every
item: ``proxies.*.label_noise=0.1``) and a value read as YAML (``0.1``, ``true``, ``null``,
``rm-9k``, ``[0, 0.05]``); a section that is null in the config is started empty, so
``--set rl.proxy=rm-9k`` adds RL with its defaults. The result is validated like a config file:
an unknown field or a bad value is named in the error.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import yaml

from proxygap.commands import SetOption, fail

if TYPE_CHECKING:
    from pydantic import BaseModel

    from proxygap.config import StudyConfig

__all__ = [
    "apply_overrides",
    "builtin_configs",
    "configs",
    "describe_config",
    "header_sentence",
    "load_study_config",
    "show",
    "with_overrides",
]


# ---------------------------------------------------------------- built-in configs
def builtin_configs() -> dict[str, Path]:
    """The configs shipped with the package, by name."""
    folder = Path(__file__).parents[1] / "configs"
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


_NOT_AN_END = ("al", "e.g", "i.e", "cf", "vs", "Fig", "Eq")


def header_sentence(text: str) -> str:
    """The first sentence of a YAML file's opening comment ('' if it has none)."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    comment = " ".join(x for x in lines if x)
    for m in re.finditer(r"\.(?=\s|$)", comment):
        if not comment[: m.start()].endswith(_NOT_AN_END):
            return comment[: m.end()]
    return comment


def configs() -> None:
    """List the built-in configs, one line each (run one with `proxygap run NAME`)."""
    found = builtin_configs()
    width = max(len(n) for n in found)
    for name, path in found.items():
        typer.echo(f"{name:<{width}}  {header_sentence(path.read_text(encoding='utf-8'))}")


# ---------------------------------------------------------------- --set
def _parse_override(text: str) -> tuple[list[str], Any]:
    from proxygap.config import ConfigError

    key, eq, raw = text.partition("=")
    key = key.strip()
    if not eq or not key:
        raise ConfigError(f"--set {text!r}: expected a dotted path and a value, as in a.b=value")
    parts = key.split(".")
    if any(not p for p in parts):
        raise ConfigError(f"--set {text!r}: the path {key!r} has an empty part")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {key}: value {raw!r} is not valid YAML: {err}") from None
    return parts, value


def _set(node: Any, parts: list[str], value: Any, key: str, done: list[str]) -> None:
    from proxygap.config import ConfigError

    head, rest = parts[0], parts[1:]
    where = ".".join(done) or "the top level"
    if isinstance(node, list):
        if head == "*":
            keys = list(range(len(node)))
        elif head.isdigit() and int(head) < len(node):
            keys = [int(head)]
        else:
            raise ConfigError(
                f"--set {key}: {where} is a list of {len(node)} item(s); use an index "
                f"0..{len(node) - 1} or * (got {head!r})"
            )
        for k in keys:
            if rest:
                _set(node[k], rest, value, key, [*done, str(k)])
            else:
                node[k] = copy.deepcopy(value)
        return
    if not isinstance(node, dict):
        raise ConfigError(f"--set {key}: {where} is a value, not a section")
    if not rest:
        node[head] = copy.deepcopy(value)
        return
    if node.get(head) is None:  # a null section (or a new field: validation names it)
        node[head] = {}
    _set(node[head], rest, value, key, [*done, head])


def apply_overrides(config: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of ``config`` (a resolved config as plain data) with every ``a.b=value`` set."""
    out = copy.deepcopy(config)
    for text in overrides:
        parts, value = _parse_override(text)
        _set(out, parts, value, ".".join(parts), [])
    return out


def load_study_config(config: str, overrides: Sequence[str] | None = None) -> StudyConfig:
    """The study config ``config`` (a YAML file, or a built-in name) with ``overrides`` set;
    raises :class:`~proxygap.config.ConfigError` naming the file, the override or the field."""
    from proxygap.config import builtin_config_path, load_config

    if Path(config).is_file() or config.endswith((".yaml", ".yml")) or "/" in config:
        path = Path(config)  # a file (load_config names it if it does not exist)
    else:
        path = builtin_config_path(config)
    return with_overrides(load_config(path), overrides, source=config)


def with_overrides(
    cfg: StudyConfig, overrides: Sequence[str] | None, *, source: str
) -> StudyConfig:
    """``cfg`` with every ``a.b=value`` of ``overrides`` set, validated again (the error names
    ``source``, the overrides and the bad field)."""
    from proxygap.config import parse_config

    if not overrides:
        return cfg
    data = apply_overrides(cfg.model_dump(mode="json"), overrides)
    return parse_config(data, source=f"{source!r} with --set {' --set '.join(overrides)}")


# ---------------------------------------------------------------- show
def _description(model: type[BaseModel], name: str, value: Any) -> str:
    from pydantic import BaseModel

    info = model.model_fields[name]
    text = info.description or ""
    if not text and isinstance(value, BaseModel) and value.__doc__:
        text = value.__doc__.strip().split("\n\n")[0]
    # a docstring's cross-references (:func:`~a.b.train_rl`) read as plain names (`train_rl`)
    text = re.sub(r":[a-z]+:`~?(?:[\w.]+\.)?([\w]+)`", r"`\1`", text)
    return " ".join(text.split())


def _scalar(value: Any) -> str:
    return yaml.safe_dump([value], default_flow_style=True, width=10**6).strip()[1:-1]


def _comment(text: str) -> str:
    return f"  # {text}" if text else ""


def _emit(model: BaseModel, indent: int, first_prefix: str | None = None) -> list[str]:
    """``model``'s fields as YAML lines, each with its description as a comment."""
    from pydantic import BaseModel

    out: list[str] = []
    pad = " " * indent
    for i, name in enumerate(type(model).model_fields):
        value = getattr(model, name)
        prefix = first_prefix if (i == 0 and first_prefix is not None) else pad
        note = _comment(_description(type(model), name, value))
        if isinstance(value, BaseModel):
            out.append(f"{prefix}{name}:{note}")
            out += _emit(value, indent + 2)
        elif isinstance(value, list) and value and all(isinstance(x, BaseModel) for x in value):
            out.append(f"{prefix}{name}:{note}")
            for item in value:
                out += _emit(item, indent + 4, first_prefix=" " * (indent + 2) + "- ")
        else:
            dumped = model.model_dump(mode="json", include={name})[name]
            out.append(f"{prefix}{name}: {_scalar(dumped)}{note}")
    return out


def describe_config(cfg: StudyConfig, source: str) -> str:
    """``cfg`` as YAML with every default written out and each field's meaning beside it."""
    head = [
        f"# {source}, resolved: every default written out; after each field, its meaning",
        "# (`proxygap run FILE` runs this text as it is)",
    ]
    return "\n".join(head + _emit(cfg, 0)) + "\n"


def show(
    config: Annotated[str, typer.Argument(help="YAML study config, or a built-in name")],
    set_: SetOption = None,
) -> None:
    """Print a config resolved (defaults filled in), each field with its meaning."""
    from proxygap.config import ConfigError

    try:
        cfg = load_study_config(config, set_)
    except ConfigError as err:
        fail(str(err))
    typer.echo(describe_config(cfg, config), nl=False)
