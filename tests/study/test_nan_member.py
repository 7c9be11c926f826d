"""An ensemble member that scores NaN stops the mitigation study with exit 2 and a message naming
the proxy and the member, not a traceback from deep inside best-of-n selection; the stages
finished before it are kept."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from typer.testing import CliRunner

from proxygap.cli import app
from proxygap.models import loading

CONFIG: dict[str, Any] = {
    "name": "nanmember",
    "seed": 3,
    "preferences": {"n_pairs": 100, "n_heldout": 40},
    "proxies": [{"name": "ens", "n_embd": 16, "n_head": 2, "n_layer": 1, "epochs": 1,
                 "ensemble": 2}],
    "bon": None,
    "mitigations": {"proxy": "ens", "seeds": [0, 1, 2], "bon": None, "reference_samples": 2,
                    "rl": [{"name": "single"}, {"name": "uwo", "aggregation": "uwo"}],
                    "settings": {"steps": 2, "prompts_per_step": 2, "group_size": 2,
                                 "eval_every": 2, "eval_prompts": 2,
                                 "eval_samples_per_prompt": 2}},
    "runtime": {"threads": 1},
}  # fmt: skip


def test_a_member_scoring_nan_stops_the_mitigation_study_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = loading.AutoModelForSequenceClassification

    class NanMember1:  # every folder named member-1 loads with a NaN reward head
        @staticmethod
        def from_pretrained(path: Any, **kwargs: Any) -> Any:
            model = real.from_pretrained(path, **kwargs)
            if Path(path).name == "member-1":
                with torch.no_grad():
                    model.score.weight.fill_(float("nan"))
            return model

    monkeypatch.setattr(loading, "AutoModelForSequenceClassification", NanMember1)
    cfg = tmp_path / "study.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    result = CliRunner().invoke(app, ["run", str(cfg), "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    error = next(line for line in result.output.splitlines() if line.startswith("error:"))
    assert error.startswith(
        "error: proxy 'ens': member 1 scores 80 of 80 base-policy reference texts NaN or inf "
        "(first: '"
    )
    assert error.endswith(
        "that member cannot be used: replace or retrain it (finished stages are kept)"
    )
    run = tmp_path / "runs" / "nanmember"
    stages = json.loads((run / "stages.json").read_text())
    assert {"preferences", "proxy:ens"} <= set(stages)
    assert not any(s.startswith("mitigation") for s in stages)  # no result holds the NaN
