"""A study's results saved beside its report (``results.json``) and read back, so the report can
be rendered again without rerunning anything (``proxygap report RUN``).

The file is the :class:`~proxygap.study.results.StudyResult` the study returned, written as JSON
by a codec driven by the records' type hints: dataclasses as objects of their fields, pydantic
configs as their JSON dump, numpy arrays as ``{"__array__": values, "dtype", "shape"}`` and
mappings with non-string keys as ``{"__items__": [[key, value], ...]}``. Reading follows the same
hints, so every record comes back with its types (arrays, fits, configs); a field missing from
the file takes its default, so files stay readable when a record gains a field with one. NaN and
infinities are kept (Python's JSON reads them back).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from proxygap.store.atomic import atomic_write_text
from proxygap.study.results import StudyResult

__all__ = ["RESULTS_FILE", "SavedResultError", "decode", "encode", "load_result", "save_result"]

RESULTS_FILE = "results.json"
FORMAT = 1


class SavedResultError(ValueError):
    """A ``results.json`` that cannot be read back (missing, corrupt, or of another format)."""


def encode(obj: Any) -> Any:
    """``obj`` as JSON-ready values (see the module docstring for the encoding)."""
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return {"__array__": obj.tolist(), "dtype": str(obj.dtype), "shape": list(obj.shape)}
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: encode(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: encode(v) for k, v in obj.items()}
        return {"__items__": [[encode(k), encode(v)] for k, v in obj.items()]}
    if isinstance(obj, list | tuple):
        return [encode(x) for x in obj]
    if hasattr(obj, "detach") and hasattr(obj, "cpu"):  # a torch tensor: as an array
        return encode(obj.detach().cpu().numpy())
    raise TypeError(f"cannot save a {type(obj).__name__} in {RESULTS_FILE}")


def decode(data: Any, hint: Any) -> Any:
    """The value of type ``hint`` that :func:`encode` wrote as ``data``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is object:
        return _plain(data)
    if origin in (typing.Union, types.UnionType):
        if data is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return decode(data, arg)
            except (TypeError, ValueError, KeyError) as err:
                errors.append(err)
        raise ValueError(f"no type of {hint} fits {str(data)[:80]!r}: {errors}")
    if origin is typing.Literal:
        return data
    if hint is np.ndarray:
        return np.asarray(data["__array__"], dtype=data["dtype"]).reshape(data["shape"])
    if isinstance(hint, type) and issubclass(hint, BaseModel):
        return hint.model_validate(data)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if not isinstance(data, dict):
            raise TypeError(f"expected an object for {hint.__name__}")
        hints = typing.get_type_hints(hint)
        fields = {f.name: f for f in dataclasses.fields(hint)}
        return hint(**{k: decode(v, hints[k]) for k, v in data.items() if k in fields})
    if hint is Path:
        return Path(data)
    if origin in (list, tuple) or hint in (list, tuple):
        if not isinstance(data, list):
            raise TypeError(f"expected a list for {hint}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            return tuple(decode(x, a) for x, a in zip(data, args, strict=True))
        item = args[0] if args else Any
        out = [decode(x, item) for x in data]
        return tuple(out) if origin is tuple or hint is tuple else out
    if origin is dict or hint is dict:
        if not isinstance(data, dict):
            raise TypeError(f"expected an object for {hint}")
        key, value = args if args else (Any, Any)
        if "__items__" in data:
            return {_hashable(decode(k, key)): decode(v, value) for k, v in data["__items__"]}
        return {k: decode(v, value) for k, v in data.items()}
    if hint is float:
        return float(data)
    if hint in (int, str, bool):
        if not isinstance(data, hint):
            raise TypeError(f"expected {hint.__name__}, got {type(data).__name__}")
        return data
    return _plain(data)


def _plain(data: Any) -> Any:
    """Untyped values: arrays and non-string-keyed mappings restored, the rest as read."""
    if isinstance(data, dict):
        if "__array__" in data and "dtype" in data:
            return decode(data, np.ndarray)
        if "__items__" in data and len(data) == 1:
            return {_hashable(_plain(k)): _plain(v) for k, v in data["__items__"]}
        return {k: _plain(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_plain(x) for x in data]
    return data


def _hashable(key: Any) -> Any:
    return tuple(_hashable(k) for k in key) if isinstance(key, list) else key


def save_result(study: StudyResult, path: Path | None = None) -> Path:
    """Write ``study`` to ``path`` (default: ``results.json`` in its run folder), atomically."""
    path = path or study.dir / RESULTS_FILE
    record = {"format": FORMAT, "result": encode(study)}
    atomic_write_text(path, json.dumps(record, allow_nan=True) + "\n")
    return path


def load_result(run_dir: Path) -> StudyResult:
    """The :class:`StudyResult` saved in ``run_dir`` (its ``dir`` set to ``run_dir``)."""
    path = Path(run_dir) / RESULTS_FILE
    if not path.is_file():
        raise SavedResultError(f"{str(path)!r} does not exist")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if record.get("format") != FORMAT:
            raise SavedResultError(
                f"{str(path)!r} has format {record.get('format')!r}; this proxygap reads {FORMAT}"
            )
        data = dict(record["result"])
        data["dir"] = str(Path(run_dir).resolve())
        result = decode(data, StudyResult)
    except SavedResultError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, NameError) as err:
        raise SavedResultError(
            f"{str(path)!r} cannot be read back ({type(err).__name__}: {str(err)[:300]}); "
            "rerun the study's `proxygap run` to write it again"
        ) from None
    return typing.cast(StudyResult, result)
