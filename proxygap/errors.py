"""The error types every layer shares, and the hints their messages give (how to get Ray,
whether a Ray cluster answers where a config says)."""

from __future__ import annotations

import socket
from typing import Any

__all__ = ["RAY_INSTALL", "NonFiniteError", "check_ray_address"]

RAY_INSTALL = "pip install 'proxygap[ray]'"
"""How to get Ray, for the messages of what needs it (sweeps, a study's Ray backend)."""


def check_ray_address(address: str, error: type[Exception], *, timeout: float = 5.0) -> None:
    """Raise ``error`` naming ``address`` when nothing listens at its ``host:port`` (also as
    ``ray://host:port``): ``ray.init`` would otherwise wait minutes on an address where no
    cluster runs. Addresses Ray resolves itself (``auto``, ``local``) are left to it."""
    host, sep, port = address.strip().removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        return
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return
    except OSError as err:
        why = err.strerror or type(err).__name__
    raise error(
        f"no Ray cluster answers at address {address!r} ({host}:{port}: {why}): start one "
        f"there (ray start --head --port {port}) or correct the address"
    )


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
