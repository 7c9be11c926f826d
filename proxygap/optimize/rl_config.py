"""The hyperparameters of online RL (:func:`proxygap.optimize.rl.train_rl`), docs/methods.md §3."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from proxygap.schema import (
    NonNegFloat,
    NonNegInt,
    OpenUnitFloat,
    PosFloat,
    PosInt,
    Strict,
    UnitFloat,
)

__all__ = ["RLConfig"]


class RLConfig(Strict):
    """Hyperparameters of :func:`train_rl`, validated on construction (errors name the field).

    Defaults: RLOO (Ahmadian et al. 2024) with 32 prompts x 4 samples, Adam lr 5e-5, no KL
    penalty; PPO settings from Ziegler et al. 2019 / Schulman et al. 2017 (clip 0.2, GAE gamma 1,
    lambda 0.95, value clip 0.2, adaptive KL horizon 10000). Deviations: the policy loss is a
    token mean over the optimiser step (``loss_aggregation="token_mean"``, DAPO, TRL's default)
    where GRPO as written averages per sequence first (``"seq_mean"``); for RLOO the token mean
    gives REINFORCE's gradient ``sum_i A_i grad log pi(y_i)`` up to a constant factor per batch.
    One optimiser step per rollout keeps RLOO and GRPO on-policy (ratio 1, no clipping).
    """

    algo: Literal["ppo", "grpo", "rloo", "fdpg"] = Field(
        default="rloo",
        description="ppo (GAE with a critic), grpo (group-normalised), rloo (leave-one-out) or "
        "fdpg (f-divergence towards pi0 exp(r/kl_coef), Go et al. 2023)",
    )
    divergence: Literal["reverse_kl", "forward_kl", "js", "tv"] = Field(
        default="reverse_kl", description="the f-divergence fdpg minimises (fdpg only)"
    )
    steps: PosInt = Field(default=200, description="RL steps")
    prompts_per_step: PosInt = Field(default=32, description="training prompts per step")
    group_size: PosInt = Field(default=4, description="samples per prompt (GRPO/RLOO need >= 2)")
    lr: PosFloat = Field(default=5e-5, description="AdamW learning rate")
    adam_betas: tuple[UnitFloat, UnitFloat] = Field(default=(0.9, 0.999), description="AdamW betas")
    adam_eps: PosFloat = Field(default=1e-8, description="AdamW epsilon")
    weight_decay: NonNegFloat = Field(default=0.0, description="AdamW weight decay")
    lr_schedule: Literal["constant", "cosine"] = Field(
        default="constant", description="constant or cosine decay after warm-up"
    )
    warmup_steps: NonNegInt = Field(default=0, description="steps of linear learning-rate warm-up")
    kl_coef: NonNegFloat = Field(
        default=0.0, description="beta of the KL penalty (initial beta for the adaptive controller)"
    )
    kl_estimator: Literal["k1", "k2", "k3"] | None = Field(
        default=None, description="k1, k2 or k3; None: k1 in the reward, k3 in the loss"
    )
    kl_mode: Literal["reward", "loss"] = Field(
        default="reward",
        description="KL penalty in the per-token reward (Ziegler et al.) or in the loss (GRPO)",
    )
    kl_controller: Literal["fixed", "adaptive"] = Field(
        default="fixed",
        description="fixed beta, or adaptive towards kl_target (Ziegler et al. 2019)",
    )
    kl_target: PosFloat = Field(
        default=6.0, description="target KL of the adaptive controller, nats"
    )
    kl_horizon: PosFloat = Field(
        default=10_000.0, description="horizon of the adaptive controller, samples"
    )
    minibatch_size: PosInt | None = Field(
        default=None, description="most rows per forward pass; None: the whole rollout"
    )
    grad_accum: PosInt = Field(
        default=1,
        description="minibatches per optimiser step (a step is minibatch_size x grad_accum rows)",
    )
    forward_tokens: PosInt = Field(
        default=2048, description="most padded tokens per forward pass (speed and memory only)"
    )
    ppo_epochs: PosInt = Field(default=1, description="passes over each rollout")
    clip: OpenUnitFloat = Field(default=0.2, description="PPO ratio clip epsilon")
    vf_coef: NonNegFloat = Field(default=0.1, description="weight of the value loss (PPO)")
    value_clip: PosFloat = Field(default=0.2, description="value-prediction clip (PPO)")
    gamma: UnitFloat = Field(default=1.0, description="discount of GAE (PPO)")
    lam: UnitFloat = Field(default=0.95, description="lambda of GAE (PPO)")
    max_grad_norm: PosFloat | None = Field(
        default=1.0, description="gradient norm clip; None: no clipping"
    )
    loss_aggregation: Literal["token_mean", "seq_mean"] = Field(
        default="token_mean",
        description="token_mean over the step (DAPO, TRL's default) or seq_mean (GRPO as written)",
    )
    bf16: bool = Field(
        default=False, description="autocast the training forward passes to bfloat16"
    )
    temperature: PosFloat = Field(
        default=1.0, description="sampling temperature of rollouts and evaluation"
    )
    max_new_tokens: PosInt | None = Field(
        default=None,
        description="response length budget; None: the evaluator's (the task's default)",
    )
    eval_every: PosInt = Field(
        default=10,
        description="steps between evaluations (step 0 and the last step are always evaluated)",
    )
    eval_prompts: PosInt = Field(default=64, description="held-out prompts per evaluation")
    eval_samples_per_prompt: PosInt = Field(default=4, description="samples per held-out prompt")
    checkpoint_every: NonNegInt = Field(
        default=0,
        description=(
            "steps between full resumable checkpoints (policy, optimiser, trainer state) when the "
            "run has a checkpoint folder (a study's RL runs do); 0: before each evaluation"
        ),
    )
    sample_batch_size: PosInt = Field(default=512, description="rows per sampling batch")
    seed: int = Field(default=0, description="seed of prompt order, sampling and minibatch order")

    @property
    def batch_size(self) -> int:
        """Responses per step, ``prompts_per_step * group_size``."""
        return self.prompts_per_step * self.group_size

    @property
    def estimator(self) -> str:
        """The KL estimator optimised: ``kl_estimator``, else k1 in the reward, k3 in the loss."""
        return self.kl_estimator or ("k1" if self.kl_mode == "reward" else "k3")

    @model_validator(mode="after")
    def _consistent(self) -> RLConfig:
        if self.algo == "fdpg":
            if self.kl_coef == 0:
                raise ValueError("kl_coef must be > 0 for algo 'fdpg' (the target's beta)")
            if self.kl_mode != "reward":
                raise ValueError(
                    "kl_mode must be 'reward' for algo 'fdpg' (the KL is in the target)"
                )
        elif self.divergence != "reverse_kl":
            raise ValueError(f"divergence is used only by algo 'fdpg', not {self.algo!r}")
        if self.algo in ("grpo", "rloo", "fdpg") and self.group_size < 2:
            raise ValueError(f"group_size must be >= 2 for {self.algo}, got {self.group_size}")
        micro = self.minibatch_size or self.batch_size
        if self.batch_size % (micro * self.grad_accum):
            raise ValueError(
                f"minibatch_size x grad_accum = {micro} x {self.grad_accum} must divide "
                f"prompts_per_step x group_size = {self.batch_size}"
            )
        if self.kl_controller == "adaptive" and self.kl_coef == 0:
            raise ValueError("kl_coef must be > 0 with kl_controller 'adaptive' (0 never moves)")
        if self.kl_controller == "adaptive" and self.batch_size * 0.2 >= self.kl_horizon:
            raise ValueError(f"kl_horizon must exceed 0.2 x batch size = {self.batch_size * 0.2}")
        return self
