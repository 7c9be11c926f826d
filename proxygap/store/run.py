"""Run folders: resolved config, versions, input fingerprints, stage outputs, and resuming.

A run folder holds ``config.yaml`` (the resolved config), ``config.digest`` (what decides the
results: the config without the settings that cannot change a number, and the content of every
input file and model folder), ``inputs.json`` (the inputs' fingerprints,
:mod:`proxygap.store.fingerprint`), ``versions.json`` (package versions, git revision, machine)
and one output per stage, each written atomically. Starting a run on an existing folder resumes
it: finished stages are read back, not recomputed, and the temporary files of an interrupted
write are removed. Once a stage finished, a folder made by a different config, or from inputs
whose content changed since, is refused (the message names the changed fields or inputs) unless
the caller asks to start over; a folder without a finished stage is taken over. While a run
uses its folder it holds the folder's lock (:mod:`proxygap.store.lock`); a worker of that run on
another process or machine (a Ray task) attaches to the folder without the lock
(:meth:`RunFolder.attach`), reads what the run's finished stages wrote and writes only its own
run's files, while the holder records which stages are done.

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

from proxygap.store.atomic import atomic_write_json, atomic_write_text, remove_stale_tmp
from proxygap.store.fingerprint import changed_files, fingerprint
from proxygap.store.lock import LockedError, RunLock

__all__ = [
    "RESULT_INDEPENDENT",
    "RunFolder",
    "RunFolderError",
    "config_digest",
    "config_text",
    "result_config",
]

RESULT_INDEPENDENT = (
    "runtime.workers",
    "runtime.backend",
    "runtime.address",
    "runtime.threads",
    "runtime.report_to",
    "report",
)
"""Dotted config paths that change how a run goes, not what it finds: worker processes or Ray
tasks run independent, self-seeded runs; torch's thread count; the trackers runs log to; how the
report is rendered."""


class RunFolderError(RuntimeError):
    """A run folder that cannot be used as asked (other config or inputs, unwritable, outside
    the root, in use by another run)."""


def config_text(config: Mapping[str, Any]) -> str:
    """The resolved config (a JSON-like dict) as YAML, keys in their order."""
    return yaml.safe_dump(dict(config), sort_keys=False)


def result_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` without the fields of :data:`RESULT_INDEPENDENT`, with ``runtime.device``
    reduced to its type (``cuda:1`` and ``cuda:0`` compute the same numbers)."""
    out = json.loads(json.dumps(dict(config)))  # a deep copy of plain data
    for path in RESULT_INDEPENDENT:
        *parents, last = path.split(".")
        node = out
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    runtime = out.get("runtime")
    if isinstance(runtime, dict) and isinstance(runtime.get("device"), str):
        runtime["device"] = runtime["device"].split(":")[0]
    return out


def config_digest(config: Mapping[str, Any], inputs: Mapping[str, str] | None = None) -> str:
    """Digest of what decides the results: :func:`result_config` of the resolved config (a
    JSON-like dict) and, if given, the content hash of every input (role -> SHA-256)."""
    text = config_text(result_config(config))
    if inputs:
        text += "".join(f"input {k} {v}\n" for k, v in sorted(inputs.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _differing(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two JSON-like values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in list(a) + [k for k in b if k not in a]:
            out += _differing(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".") or "(top level)"]


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
    dict) from the input files and folders ``inputs`` (role, e.g. ``task.policy``, -> path);
    ``path(name)`` locates a stage output inside it. Holds the folder's lock until
    :meth:`close` (or the process ends)."""

    _lock: RunLock | None

    def __init__(
        self,
        root: Path,
        name: str,
        config: Mapping[str, Any],
        *,
        restart: bool = False,
        inputs: Mapping[str, str | Path] | None = None,
    ) -> None:
        root = Path(root)
        self.dir = (root / name).resolve()
        if root.resolve() not in self.dir.parents:
            raise RunFolderError(f"run name {name!r} escapes the runs folder {str(root)!r}")
        marker = self.dir / "config.digest"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._lock = RunLock(self.dir)
        except LockedError as err:
            raise RunFolderError(str(err)) from None
        except OSError as err:
            raise RunFolderError(f"cannot write the run folder {str(self.dir)!r}: {err}") from err
        old_inputs = self._read_json("inputs.json") if marker.exists() else {}
        records = {
            role: fingerprint(path, old_inputs.get(role)) | {"path": str(path)}
            for role, path in (inputs or {}).items()
        }
        digest = config_digest(config, {k: r["sha256"] for k, r in records.items()})
        if marker.exists():
            old = marker.read_text().strip()
            if old != digest:
                # a folder without a finished stage holds no result to protect: a run that
                # stopped on a mistake in its inputs resumes once they are corrected
                if not restart and self._stages():
                    self.close()
                    raise RunFolderError(self._mismatch(old, digest, config, old_inputs, records))
                self._clear()
        elif restart:
            self._clear()
        try:
            atomic_write_text(self.dir / "config.yaml", config_text(config))
            atomic_write_text(marker, digest + "\n")
            atomic_write_json(self.dir / "inputs.json", records)
            atomic_write_json(self.dir / "versions.json", versions())
            self.removed_tmp = remove_stale_tmp(self.dir)
        except OSError as err:
            self.close()
            raise RunFolderError(f"cannot write the run folder {str(self.dir)!r}: {err}") from err
        self.resumed = (self.dir / "stages.json").exists()

    @classmethod
    def attach(cls, folder: str | Path) -> RunFolder:
        """The existing run folder ``folder``, as a worker of the process holding its lock sees
        it: nothing is checked or rewritten, no lock is taken, and :meth:`mark_done` is refused
        (the holder marks stages done)."""
        self = cls.__new__(cls)
        self.dir = Path(folder).resolve()
        if not (self.dir / "config.digest").is_file():
            raise RunFolderError(f"{str(self.dir)!r} is not a run folder (no config.digest)")
        self._lock = None
        self.removed_tmp = []
        self.resumed = True
        return self

    def _mismatch(
        self,
        old: str,
        new: str,
        config: Mapping[str, Any],
        old_inputs: Mapping[str, Any],
        records: Mapping[str, Any],
    ) -> str:
        """Why the folder does not fit: the config fields or the inputs that changed."""
        how = "use another name, or --restart to delete it and start over"
        before = self.dir / "config.yaml"
        fields: list[str] = []
        if before.exists():
            try:
                fields = _differing(
                    result_config(yaml.safe_load(before.read_text()) or {}), result_config(config)
                )
            except yaml.YAMLError:
                fields = []
        changed = []
        for role, rec in records.items():
            prev = old_inputs.get(role)
            if prev is not None and prev.get("sha256") != rec["sha256"]:
                files = [f for f in changed_files(prev, rec) if f != "."]
                inside = f" ({', '.join(files[:3])}{' ...' if len(files) > 3 else ''})"
                changed.append(f"{role} {rec['path']!r}{inside if files else ''}")
        if changed and not fields:
            return (
                f"run folder {str(self.dir)!r} was made from other inputs: "
                f"{'; '.join(changed)} changed since (digest {old}, now {new}); restore them, "
                f"{how}"
            )
        shown = f"; fields that differ: {', '.join(fields[:6])}" if fields else ""
        also = f"; changed inputs: {'; '.join(changed)}" if changed else ""
        return (
            f"run folder {str(self.dir)!r} was made by a different config (digest {old}, now "
            f"{new}){shown}{also}; {how}"
        )

    def _clear(self) -> None:
        """Delete everything in the folder but the lock file (held by this process)."""
        for p in self.dir.iterdir():
            if p.name == ".lock":
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()

    def _read_json(self, name: str) -> dict[str, Any]:
        try:
            data = json.loads((self.dir / name).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def close(self) -> None:
        """Release the folder's lock (an attached folder holds none)."""
        if self._lock is not None:
            self._lock.release()

    def path(self, *parts: str) -> Path:
        p = self.dir.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def done(self, stage: str) -> bool:
        return stage in self._stages()

    def mark_done(self, stage: str, info: dict[str, Any] | None = None) -> None:
        if self._lock is None:
            raise RunFolderError(f"an attached run folder cannot mark stage {stage!r} done")
        stages = self._stages()
        stages[stage] = info or {}
        atomic_write_json(self.dir / "stages.json", stages)

    def stage_info(self, stage: str) -> dict[str, Any]:
        return self._stages().get(stage, {})

    def _stages(self) -> dict[str, Any]:
        p = self.dir / "stages.json"
        return json.loads(p.read_text()) if p.exists() else {}
