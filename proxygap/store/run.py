"""Run folders: resolved config, versions, stage outputs, and resuming.

A run folder holds ``config.yaml`` (the resolved config), ``versions.json`` (package versions, git
revision, machine) and one output per stage, each written atomically. Starting a run on an
existing folder resumes it: finished stages are read back, not recomputed. A folder made by a
different config is refused unless the caller asks to start over.

The folder takes the config as plain data: its name and its fully resolved form as a JSON-like
dict (``StudyConfig.model_dump(mode="json")``), written out as YAML in field order.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml

from proxygap.store.atomic import atomic_write_json, atomic_write_text


class RunFolderError(RuntimeError):
    """A run folder that cannot be used as asked (other config, unwritable, outside the root)."""


def config_text(config: Mapping[str, Any]) -> str:
    """The resolved config (a JSON-like dict) as YAML, keys in their order."""
    return yaml.safe_dump(dict(config), sort_keys=False)


def config_digest(config: Mapping[str, Any]) -> str:
    """Digest of what decides the results: the resolved config (a JSON-like dict) without
    ``runtime.workers`` (how many processes run independent, self-seeded runs changes no
    number)."""
    same = dict(config)
    if isinstance(same.get("runtime"), Mapping):
        same["runtime"] = {**same["runtime"], "workers": 1}
    return hashlib.sha256(config_text(same).encode()).hexdigest()[:16]


def versions() -> dict[str, Any]:
    """Versions of the packages a result depends on, the git revision and the machine."""
    out: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("proxygap", "torch", "transformers", "tokenizers", "numpy", "scipy"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        out["git_revision"] = rev.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        out["git_revision"] = None
    out["torch_threads"] = torch.get_num_threads()
    return out


class RunFolder:
    """The folder ``root / name`` of one run of the resolved config ``config`` (a JSON-like
    dict); ``path(name)`` locates a stage output inside it."""

    def __init__(
        self, root: Path, name: str, config: Mapping[str, Any], *, restart: bool = False
    ) -> None:
        root = Path(root)
        self.dir = (root / name).resolve()
        if root.resolve() not in self.dir.parents:
            raise RunFolderError(f"run name {name!r} escapes the runs folder {str(root)!r}")
        digest = config_digest(config)
        marker = self.dir / "config.digest"
        if self.dir.exists() and marker.exists():
            old = marker.read_text().strip()
            if old != digest:
                if not restart:
                    raise RunFolderError(
                        f"run folder {str(self.dir)!r} was made by a different config "
                        f"(digest {old}, now {digest}); use another name, or --restart to "
                        "delete it and start over"
                    )
                shutil.rmtree(self.dir)
        elif self.dir.exists() and restart:
            shutil.rmtree(self.dir)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.dir / "config.yaml", config_text(config))
            atomic_write_text(marker, digest + "\n")
            atomic_write_json(self.dir / "versions.json", versions())
        except OSError as err:
            raise RunFolderError(f"cannot write the run folder {str(self.dir)!r}: {err}") from err
        self.resumed = (self.dir / "stages.json").exists()

    def path(self, *parts: str) -> Path:
        p = self.dir.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def done(self, stage: str) -> bool:
        return stage in self._stages()

    def mark_done(self, stage: str, info: dict[str, Any] | None = None) -> None:
        stages = self._stages()
        stages[stage] = info or {}
        atomic_write_json(self.dir / "stages.json", stages)

    def stage_info(self, stage: str) -> dict[str, Any]:
        return self._stages().get(stage, {})

    def _stages(self) -> dict[str, Any]:
        p = self.dir / "stages.json"
        return json.loads(p.read_text()) if p.exists() else {}
