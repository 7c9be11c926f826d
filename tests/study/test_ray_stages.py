"""The mitigation, f-divergence, scaling and DAA scale studies' runs as Ray tasks
(``runtime.backend: ray``): the same runs as in one process, number for number."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from proxygap.config import parse_config
from proxygap.study import run_study

from .test_daa_scale import TINY as DAA_SCALE
from .test_fdiv_study import TINY as FDIV
from .test_mitigation_study import TINY as MITIGATIONS
from .test_scaling import TINY as SCALING

SCALING_RL = {
    "sizes": ["a", "b"], "seeds": [0, 1],
    "settings": {"steps": 2, "prompts_per_step": 2, "group_size": 2, "eval_every": 1,
                 "eval_prompts": 2, "eval_samples_per_prompt": 2},
}  # fmt: skip


def _untimed(x: Any) -> Any:
    """``x`` without how it ran: every ``time/*`` key and every ``seconds`` and ``workers``
    field, at any depth."""
    if isinstance(x, dict):
        ran = {"seconds", "workers"}
        return {k: _untimed(v) for k, v in x.items() if not k.startswith("time/") and k not in ran}
    if isinstance(x, list):
        return [_untimed(v) for v in x]
    return x


def _outputs(run: Path, part: str) -> dict[str, Any]:
    """Every JSON, JSON-lines and array file the stage wrote under ``run/part``, but inside
    checkpoints and model folders (whose configs record how the files were loaded; the scores
    and histories made with the models are compared)."""
    out: dict[str, Any] = {}
    for p in sorted((run / part).rglob("*")):
        name = str(p.relative_to(run))
        if "checkpoints" in p.parts or any(q.startswith(("member-", "policy")) for q in p.parts):
            continue
        if p.suffix == ".json":
            out[name] = _untimed(json.loads(p.read_text()))
        elif p.suffix == ".jsonl":
            out[name] = [_untimed(json.loads(line)) for line in p.read_text().splitlines()]
        elif p.suffix == ".npz":
            with np.load(p) as z:
                out[name] = {k: z[k].tolist() for k in z.files}
    return out


@pytest.mark.parametrize("study", ["mitigations", "fdiv", "scaling", "daa_scale"])
def test_ray_tasks_give_the_runs_of_one_process(tmp_path: Path, study: str) -> None:
    pytest.importorskip("ray")
    studies = {"mitigations": MITIGATIONS, "fdiv": FDIV, "scaling": SCALING, "daa_scale": DAA_SCALE}
    base = copy.deepcopy(studies[study])
    if study == "scaling":
        base["scaling"]["rl"] = SCALING_RL  # type: ignore[index]
    if study == "mitigations":  # arms that read references, a soup, SFT, Quark and a constraint
        keep = {"par", "sft", "salsa", "quark", "composite", "constrained"}
        m = base["mitigations"]
        m |= {"rl": [a for a in m["rl"] if a["name"] in keep]}  # type: ignore[index]
    said: list[str] = []
    runs = {}
    for backend, workers in (("processes", 1), ("ray", 2)):
        cfg = base | {"runtime": {"threads": 1, "workers": workers, "backend": backend}}
        log = said.append if backend == "ray" else (lambda *_: None)
        runs[backend] = run_study(parse_config(cfg), tmp_path / backend, log=log).dir
    # every call that hands out runs went to Ray: pools, cells and RL for scaling; the ensembles
    # and the arms without and with a constraint for the mitigations
    calls = {"mitigations": 3, "fdiv": 1, "scaling": 3, "daa_scale": 1}[study]
    assert sum("runs as Ray tasks on a local Ray" in s for s in said) == calls
    ref, got = _outputs(runs["processes"], study), _outputs(runs["ray"], study)
    n_runs = {"mitigations": 6 * 3, "fdiv": 2 * 2 + 2 * 2, "scaling": 3 * 2 * 2 + 2 * 2,
              "daa_scale": 2 * 4 * 2}[study]  # fmt: skip
    ends = ("/history.json", "/scores.npz", "/result.json")
    assert sum(name.endswith(ends) for name in ref) == n_runs
    assert got.keys() == ref.keys()
    for name in ref:
        assert got[name] == ref[name], name
