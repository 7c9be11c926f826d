"""The compute device a study runs on, checked before anything is loaded or written.

``auto`` is the first CUDA device when this torch build sees one, else the CPU; ``cpu``;
``cuda`` (the current CUDA device) or ``cuda:N``. Anything else, a CUDA device on a torch build
without CUDA or on a machine without that GPU, is a :class:`DeviceError` naming the value.
"""

from __future__ import annotations

import re

import torch

__all__ = ["DEVICE_PATTERN", "DeviceError", "resolve_device"]

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


class DeviceError(ValueError):
    """A device string that is not valid, or names a device this machine lacks."""


def resolve_device(spec: str) -> torch.device:
    """The torch device ``spec`` names (``auto``, ``cpu``, ``cuda`` or ``cuda:N``)."""
    if not DEVICE_PATTERN.match(spec):
        raise DeviceError(f"runtime.device {spec!r} is not a device: use auto, cpu, cuda or cuda:N")
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if torch.version.cuda is None:
        raise DeviceError(
            f"runtime.device {spec!r}: this torch build ({torch.__version__}) has no CUDA "
            "support; install a CUDA build of torch (README, 'GPU users') or use device: cpu"
        )
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(spec.split(":")[1]) if ":" in spec else 0
    if index >= count:
        raise DeviceError(
            f"runtime.device {spec!r}: this machine has {count} usable CUDA device(s)"
            + ("" if count else " (no driver or no GPU); use device: cpu or auto")
        )
    return torch.device(spec)
