"""The tiny TRL trainers the integration tests share: the reviews task's policy on CPU."""

from __future__ import annotations

from typing import Any

import torch

from proxygap.tasks import get_task

TASK = get_task("reviews")


def dpo_trainer(out: Any, pairs: Any, tok: Any, callbacks: list[Any], **config: Any) -> Any:
    """A ``DPOTrainer`` of two steps of 4 pairs (``config`` overrides ``DPOConfig`` fields),
    without the printing callback."""
    import transformers
    from trl import DPOConfig, DPOTrainer

    settings: dict[str, Any] = dict(
        output_dir=str(out), use_cpu=True, report_to="none", per_device_train_batch_size=4,
        max_steps=2, logging_steps=1, save_strategy="no", disable_tqdm=True, learning_rate=3e-3,
        seed=0, beta=0.1, model_init_kwargs={"dtype": torch.float32},
    )  # fmt: skip
    trainer = DPOTrainer(
        model=str(TASK.policy_path), args=DPOConfig(**{**settings, **config}),
        train_dataset=pairs, processing_class=tok, callbacks=callbacks,
    )  # fmt: skip
    trainer.remove_callback(transformers.trainer_callback.PrinterCallback)
    return trainer
