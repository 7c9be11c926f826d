"""Gold rewards a user brings: a sequence-classification model folder, or an importable Python
function ``f(prompts, responses) -> list[float]``.

In the synthetic-gold methodology (Gao et al. 2023, §2; ``docs/methods.md`` §1) gold plays the
human: it labels the pairs the proxies learn from and scores every policy. A gold model reads
the full texts (:meth:`proxygap.tasks.base.Task.join`); a gold function gets the prompts as the
user wrote them and the responses, and what it returns is checked on every call (one finite
number per text), so a broken function stops the stage that called it with its name.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from proxygap.errors import NonFiniteError
from proxygap.models.loading import ModelLoadError, load_reward_model, load_tokenizer
from proxygap.rewards.reward_model import score_texts
from proxygap.tasks.base import GoldFn, Joined

__all__ = ["CALLABLE", "GoldError", "function_gold", "is_function_spec", "model_gold"]

CALLABLE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


class GoldError(ValueError):
    """A gold that cannot be used: not importable, not callable, or answering the wrong shape."""


def is_function_spec(spec: str) -> bool:
    """Whether ``spec`` reads as ``module:function`` (and is not an existing path)."""
    return bool(CALLABLE.match(spec)) and not Path(spec).exists()


def model_gold(
    path: str | Path,
    *,
    device: torch.device,
    batch_size: int,
    trust_remote_code: bool = False,
    what: str = "task.gold",
) -> GoldFn:
    """Gold from a sequence-classification folder with one output, on ``device``."""
    try:
        model = load_reward_model(path, trust_remote_code=trust_remote_code)
        tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
    except ModelLoadError as err:
        raise ModelLoadError(f"{what}: {err}") from None
    model = model.to(device)  # type: ignore[arg-type]  # wrapped .to: see models.loading

    def gold(texts: Sequence[str]) -> np.ndarray:
        return score_texts(model, tokenizer, texts, batch_size=batch_size)

    return gold


def _import(spec: str, search: Sequence[Path]) -> Callable[..., Any]:
    module_name, _, attr = spec.partition(":")
    added = [str(p) for p in search if str(p) not in sys.path]
    sys.path[:0] = added
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise GoldError(
            f"task.gold {spec!r}: cannot import module {module_name!r} ({err}); it must be "
            "importable from the current folder or the Python path"
        ) from None
    except Exception as err:  # the user's module failed while importing
        raise GoldError(
            f"task.gold {spec!r}: importing {module_name!r} failed: {type(err).__name__}: {err}"
        ) from None
    finally:
        for p in added:
            sys.path.remove(p)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise GoldError(f"task.gold {spec!r}: module {module_name!r} has no {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise GoldError(f"task.gold {spec!r} is a {type(obj).__name__}, not a function")
    return obj


def _parts(texts: Sequence[str], raw: Mapping[str, str], separator: str) -> tuple[list, list]:
    prompts, responses = [], []
    for t in texts:
        if isinstance(t, Joined):
            p, r = t.prompt, t.response
        else:  # a plain text: split at the first separator
            p, _, r = t.partition(separator) if separator else ("", "", t)
        prompts.append(raw.get(p, p))
        responses.append(r)
    return prompts, responses


def function_gold(
    spec: str, *, raw_prompts: Mapping[str, str], separator: str, search: Sequence[Path] = ()
) -> GoldFn:
    """Gold from the function ``module:function`` called as ``f(prompts, responses)``; the
    prompts are given as written (``raw_prompts`` maps what the policy reads back to them).
    The module is imported here, once, with ``search`` folders on ``sys.path``."""
    fn = _import(spec, search)

    def gold(texts: Sequence[str]) -> np.ndarray:
        prompts, responses = _parts(texts, raw_prompts, separator)
        try:
            out = fn(prompts, responses)
        except Exception as err:
            raise GoldError(f"task.gold {spec!r} raised {type(err).__name__}: {err}") from err
        try:
            values = np.asarray(out, dtype=np.float64)
        except (TypeError, ValueError):
            raise GoldError(
                f"task.gold {spec!r} must return one number per text; got {type(out).__name__} "
                f"{str(out)[:60]!r}"
            ) from None
        if values.shape != (len(texts),):
            raise GoldError(
                f"task.gold {spec!r} returned shape {values.shape} for {len(texts)} texts; "
                "expected one number per text"
            )
        bad = ~np.isfinite(values)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise NonFiniteError(
                f"task.gold {spec!r} returned {int(bad.sum())} non-finite value(s) of "
                f"{len(texts)} (first: {values[i]} for prompt {prompts[i][:40]!r})"
            )
        return values

    return gold
