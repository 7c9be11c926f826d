"""A Ray address where no cluster answers is refused at once, with the address named, instead
of ``ray.init`` waiting minutes on it: the check itself against a closed and a listening port,
a study stopping before its run folder exists, and a sweep."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from proxygap import sweep as sweep_mod
from proxygap.config import parse_config
from proxygap.errors import check_ray_address
from proxygap.study import run_study
from proxygap.study.context import SetupError
from proxygap.sweep import SweepError, SweepRuntime

from .study.test_detect_ray import _tiny


def _closed_port() -> int:
    with socket.socket() as s:  # a port the system just handed out and nothing listens on
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_closed_and_listening_ports() -> None:
    port = _closed_port()
    with pytest.raises(ValueError, match=rf"address '127.0.0.1:{port}'.*--port {port}"):
        check_ray_address(f"127.0.0.1:{port}", ValueError)
    with pytest.raises(KeyError, match=rf"'ray://127.0.0.1:{port}'"):
        check_ray_address(f"ray://127.0.0.1:{port}", KeyError)  # any error type given
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        open_port = server.getsockname()[1]
        check_ray_address(f"127.0.0.1:{open_port}", ValueError)  # something answers: no error
        check_ray_address(f"ray://127.0.0.1:{open_port}", ValueError)
    for left_to_ray in ("auto", "local", "headnode"):
        check_ray_address(left_to_ray, ValueError)


def test_study_with_a_dead_address_stops_before_the_run_folder(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    port = _closed_port()
    cfg = parse_config(_tiny(backend="ray", address=f"127.0.0.1:{port}"))
    with pytest.raises(SetupError, match=rf"no Ray cluster answers at address '127.0.0.1:{port}'"):
        run_study(cfg, tmp_path / "runs", log=lambda *_: None)
    assert not (tmp_path / "runs").exists()


def test_sweep_with_a_dead_address_names_it(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("a Ray is already connected in this process")
    port = _closed_port()
    runtime = SweepRuntime(backend="ray", address=f"127.0.0.1:{port}")
    with pytest.raises(SweepError, match=rf"no Ray cluster answers at address '127.0.0.1:{port}'"):
        sweep_mod.run_ray([], tmp_path, runtime, lambda *_: None)
