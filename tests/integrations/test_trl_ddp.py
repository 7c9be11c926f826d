"""``ProxygapEvalCallback`` in two processes (``torchrun``, gloo on CPU, TRL's ``DPOTrainer``
wrapped in DDP by accelerate; ``ddp_worker.py``): each process samples its share of the prompts,
the shares are gathered, and both processes log the same rows, computed over every prompt; only
the main process writes the history file."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from proxygap.integrations.scoring import text_join
from proxygap.models.loading import load_tokenizer
from proxygap.tasks import get_task

WORKER = Path(__file__).with_name("ddp_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_two_processes_log_the_same_gathered_rows(tmp_path: Path) -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun is not installed beside this Python")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [
        str(torchrun), "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(_free_port()), str(WORKER), str(tmp_path),
    ]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    rows0, rows1 = ranks[0]["rows"], ranks[1]["rows"]
    assert [r["step"] for r in rows0] == [0, 2]
    assert rows0 == rows1  # the same row, hence the same monitor decision, on both processes
    assert ranks[0]["alarm_step"] == ranks[1]["alarm_step"]
    task = get_task("reviews")
    tok = load_tokenizer(task.tokenizer_path)
    join = text_join(task.separator, strip_prefix=f"{tok.bos_token} ")
    for row in rows0:
        s = ranks[0]["samples"][str(row["step"])]
        assert s == ranks[1]["samples"][str(row["step"])]
        # rank 0 sampled prompts 0, 2, 4 and rank 1 prompts 1, 3 (two samples each)
        assert s["prompt_index"] == [0, 0, 2, 2, 4, 4, 1, 1, 3, 3]
        gold = task.gold(join(s["prompts"], s["completions"]))
        assert row["proxygap/reward/gold"] == pytest.approx(np.mean(gold), abs=1e-9)
        means = np.asarray(gold, dtype=float).reshape(5, 2).mean(axis=1)  # per prompt
        assert row["proxygap/reward/gold_se"] == pytest.approx(
            means.std(ddof=1) / np.sqrt(5), abs=1e-9
        )
    history = (tmp_path / "run" / "proxygap" / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in history] == [0, 2]  # written once, by rank 0
