"""The error types every layer shares, and the install hints their messages give."""

from __future__ import annotations

from typing import Any

__all__ = ["RAY_INSTALL", "NonFiniteError"]

RAY_INSTALL = "pip install 'proxygap[ray]'"
"""How to get Ray, for the messages of what needs it (sweeps, a study's Ray backend)."""


class NonFiniteError(FloatingPointError):
    """NaN or inf in a reward, score, loss, gradient norm or KL.

    The message names where (a study stage, or a training step). A training loop sets ``step``
    (the step being taken) and ``result`` (the run so far, for the caller to keep); a study stage
    leaves them None. Picklable, so a worker process can hand it back.
    """

    def __init__(self, message: str, *, step: int | None = None, result: Any = None) -> None:
        super().__init__(message if step is None else f"step {step}: {message}")
        self.message = message
        self.step = step
        self.result = result

    def __reduce__(self) -> tuple[Any, tuple[str, int | None, Any]]:
        # keyword-only arguments: pickling goes through a function
        return _non_finite, (self.message, self.step, self.result)


def _non_finite(message: str, step: int | None, result: Any) -> NonFiniteError:
    return NonFiniteError(message, step=step, result=result)
