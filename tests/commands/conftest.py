"""The report tests' hand-made study (``tests/report/conftest.py``), for the commands that read run
folders."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "_report_conftest", Path(__file__).parents[1] / "report" / "conftest.py"
)
assert _spec is not None and _spec.loader is not None
_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)

RL_GOLD, RL_D, make_study_result = _module.RL_GOLD, _module.RL_D, _module.make_study_result
study_runs = _module.study_runs
