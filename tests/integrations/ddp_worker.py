"""One process of the two-process test (``test_trl_ddp.py``, started by ``torchrun``): TRL's
``DPOTrainer`` for two steps on CPU (gloo) with ``ProxygapEvalCallback``; writes what this
process logged and sampled to ``<out>/rank-<r>.json``."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def main(out: Path) -> None:
    import datasets
    import torch
    import transformers
    from trl import DPOConfig, DPOTrainer

    from proxygap.integrations.scoring import text_join
    from proxygap.integrations.trl import gold_reward
    from proxygap.integrations.trl_eval import ProxygapEvalCallback
    from proxygap.models.loading import load_tokenizer
    from proxygap.tasks import get_task

    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    torch.set_num_threads(1)
    task = get_task("reviews")
    tok = load_tokenizer(task.tokenizer_path)
    join = text_join(task.separator, strip_prefix=f"{tok.bos_token} ")
    prompts = [f"{tok.bos_token} {p}" for p in task.prompts(5, seed=3)]  # 3 on rank 0, 2 on 1
    pairs = datasets.Dataset.from_dict(
        {
            "prompt": [f"{tok.bos_token} {p}" for p in task.prompts(8, seed=0)],
            "chosen": [" a moving and great film ."] * 8,
            "rejected": [" a dull film ."] * 8,
        }
    )
    cb = ProxygapEvalCallback(
        prompts, gold=gold_reward(task.gold, join=join), every=2, n_per_prompt=2,
        max_new_tokens=8, seed=5,
    )  # fmt: skip
    cfg = DPOConfig(
        output_dir=str(out / "run"), use_cpu=True, report_to="none",
        per_device_train_batch_size=2, max_steps=2, logging_steps=1, save_strategy="no",
        disable_tqdm=True, learning_rate=3e-3, seed=0, model_init_kwargs={"dtype": torch.float32},
    )  # fmt: skip
    trainer = DPOTrainer(
        model=str(task.policy_path), args=cfg, train_dataset=pairs, processing_class=tok,
        callbacks=[cb],
    )  # fmt: skip
    trainer.remove_callback(transformers.trainer_callback.PrinterCallback)
    trainer.train()
    rank = trainer.accelerator.process_index
    record = {
        "rank": rank,
        "world": trainer.accelerator.num_processes,
        "rows": [r for r in trainer.state.log_history if "proxygap/reward/gold" in r],
        "samples": {
            str(step): {
                "prompt_index": s.prompt_index.tolist(),
                "prompts": s.prompts,
                "completions": s.completions,
                "gold": s.gold.tolist() if s.gold is not None else [],
            }  # fmt: skip
            for step, s in cb.samples.items()
        },
        "alarm_step": cb.alarm_step,
    }
    (out / f"rank-{rank}.json").write_text(json.dumps(record))
    # leave the process group before exiting: gloo's threads torn down at interpreter exit can
    # abort the process ("terminate called without an active exception") on a busy machine
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
