"""The device switch: names refused by their spelling, CUDA devices checked against the build
and the machine."""

from __future__ import annotations

import pytest
import torch

from proxygap.models.device import DeviceError, resolve_device


def test_auto_and_cpu() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("spec", ["gpu", "cuda:", "CUDA", "cuda:x", "mps ", ""])
def test_misspelt_devices_are_named(spec: str) -> None:
    with pytest.raises(DeviceError) as err:
        resolve_device(spec)
    assert str(err.value) == (
        f"runtime.device {spec!r} is not a device: use auto, cpu, cuda or cuda:N"
    )


def test_cuda_needs_a_cuda_build_and_the_device() -> None:
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(DeviceError) as err:
        resolve_device(f"cuda:{count}")  # one past the last device there is
    if torch.version.cuda is None:
        assert "has no CUDA support" in str(err.value)
    else:
        assert f"this machine has {count} usable CUDA device(s)" in str(err.value)
