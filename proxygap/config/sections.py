"""The study's sections between the task and the runtime: preference pairs, proxies, best-of-n,
RL over KL coefficients, SFT variants and direct alignment (docs/methods.md §1-5). Each field
carries its meaning as its description (``proxygap show CONFIG`` prints them)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from proxygap.optimize.daa import DAAConfig
from proxygap.optimize.rl import RLConfig
from proxygap.schema import PosFloat, PosInt, Strict, safe_name

__all__ = [
    "BonConfig",
    "DAARunConfig",
    "PreferenceConfig",
    "ProxyConfig",
    "RLRunConfig",
    "SFTConfig",
]


class PreferenceConfig(Strict):
    """How preference pairs are made: two base-policy samples per prompt, labelled by gold."""

    n_pairs: PosInt = Field(
        default=24_000, description="training pairs (each proxy takes the first n_pairs of its own)"
    )
    n_heldout: PosInt = Field(
        default=2_000, description="pairs kept aside for held-out accuracy against gold"
    )
    temperature: PosFloat = Field(
        default=1.0, description="sampling temperature of the pair responses"
    )
    max_new_tokens: PosInt | None = Field(
        default=None, description="response length budget in tokens; None: the task's default"
    )
    file: str | None = Field(
        default=None, description="a {prompt, chosen, rejected} JSONL file used instead of sampling"
    )


class ProxyConfig(Strict):
    """One proxy reward model (or a k-member ensemble differing by seed)."""

    name: str = Field(description="the proxy's name (names its folder proxies/<name>/)")
    n_pairs: PosInt | None = Field(
        default=None, description="training pairs it learns from; None: all training pairs"
    )
    labels: Literal["deterministic", "bradley_terry"] = Field(
        default="deterministic",
        description=(
            "how gold labels a pair: deterministic (the higher gold wins) or bradley_terry "
            "(sampled with p = sigmoid(diff / bt_temperature))"
        ),
    )
    bt_temperature: PosFloat = Field(
        default=1.0, description="temperature of Bradley-Terry labels (labels: bradley_terry)"
    )
    label_noise: Annotated[float, Field(ge=0.0, le=0.5)] = Field(
        default=0.0, description="fraction of labels flipped at random (Coste et al. 2023 use 0.25)"
    )
    n_embd: PosInt = Field(default=64, description="hidden width of the GPT-2 reward model")
    n_layer: PosInt = Field(default=2, description="transformer layers of the reward model")
    n_head: PosInt = Field(default=2, description="attention heads (must divide n_embd)")
    epochs: PosFloat = Field(default=2.0, description="passes over its training pairs")
    lr: PosFloat = Field(default=1e-3, description="Adam learning rate")
    batch_size: PosInt = Field(default=64, description="pairs per optimiser step")
    ensemble: PosInt = Field(
        default=1, description="members trained with different seeds (1: a single reward model)"
    )
    aggregation: Literal["mean", "wco", "uwo"] = Field(
        default="mean",
        description=(
            "how members combine into the reward: mean, wco (worst case) or uwo (mean minus "
            "uwo_lambda x variance)"
        ),
    )
    uwo_lambda: Annotated[float, Field(ge=0.0)] = Field(
        default=0.5, description="variance weight of UWO aggregation"
    )
    seed: int = Field(
        default=0,
        description="seed of initialisation, label noise and data order (member k adds k)",
    )
    path: str | None = Field(
        default=None, description="a trained reward model folder: scored as is, not trained"
    )
    target: str = Field(
        default="gold",
        description="what labels its pairs: gold, or one of the task's gold components",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return safe_name(v, "proxy name")

    @model_validator(mode="after")
    def _heads(self) -> ProxyConfig:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        return self


class BonConfig(Strict):
    """The best-of-n study: one pool of ``pool_size`` samples for each of ``n_prompts`` prompts."""

    n_prompts: PosInt = Field(default=64, description="held-out prompts, one pool each")
    pool_size: Annotated[int, Field(ge=2)] = Field(
        default=1024, description="samples per prompt; the curves reach n = pool_size"
    )
    temperature: PosFloat = Field(default=1.3, description="sampling temperature of the pool")
    max_new_tokens: PosInt | None = Field(
        default=None, description="response length budget in tokens; None: the task's default"
    )
    n_points: Annotated[int, Field(ge=3)] = Field(
        default=41, description="log-spaced n values on the curves"
    )
    examples_at: list[PosInt] = Field(
        default_factory=lambda: [1, 16, 128, 1024],
        description="values of n whose picks the report shows",
    )
    examples_per_n: PosInt = Field(default=4, description="picks shown at each of those n")


class RLRunConfig(Strict):
    """Online RL against one proxy, one run per KL coefficient (the rest shared)."""

    proxy: str = Field(description="the name of the study proxy the policy is optimised against")
    kl_coefs: list[Annotated[float, Field(ge=0.0)]] = Field(
        default_factory=lambda: [0.0], min_length=1, description="KL coefficients, one RL run each"
    )
    settings: RLConfig = Field(
        default_factory=RLConfig,
        description="the RL hyperparameters every run shares (kl_coef comes from kl_coefs)",
    )

    @field_validator("kl_coefs")
    @classmethod
    def _distinct(cls, v: list[float]) -> list[float]:
        if len(set(v)) != len(v):
            raise ValueError(f"kl_coefs must be distinct, got {v}")
        return v


class SFTConfig(Strict):
    """The study's two SFT variants, behind ``sft`` and ``soup`` references (mitigation arms,
    DAA): each fine-tunes the base policy on ``n_texts`` chosen responses of the training pairs
    (disjoint halves) with its own seed; the soup is their weight average (SALSA)."""

    n_texts: PosInt = Field(
        default=2000, description="chosen responses each variant is fine-tuned on"
    )
    epochs: PosFloat = Field(default=1.0, description="passes over those texts")
    lr: PosFloat = Field(default=1e-4, description="AdamW learning rate")
    batch_size: PosInt = Field(default=32, description="texts per optimiser step")


class DAARunConfig(Strict):
    """Direct alignment on the study's gold-labelled pairs: one run per (loss, beta).

    The runs train on the first ``n_pairs`` training pairs with ``label_noise`` flips (the same
    labels a proxy with that noise would see) and share ``settings`` otherwise; ``proxy``
    optionally names a study proxy whose reward is tracked too, to compare with RLHF;
    ``reference`` picks the start and reference model (``sft``/``soup`` need the study's
    ``sft``).
    """

    betas: dict[str, list[Annotated[float, Field(gt=0.0)]]] = Field(
        default_factory=lambda: {"dpo": [0.05, 0.25, 1.0]},
        min_length=1,
        description="per DAA loss (dpo, ipo, slic, ...) its betas: one run per (loss, beta)",
    )
    n_pairs: PosInt | None = Field(
        default=None, description="training pairs; None: all training pairs"
    )
    label_noise: Annotated[float, Field(ge=0.0, le=0.5)] = Field(
        default=0.0,
        description="fraction of labels flipped, as a proxy with that noise would see them",
    )
    proxy: str | None = Field(
        default=None, description="a study proxy whose reward is tracked too, to compare with RLHF"
    )
    # the policy's start and the loss's reference model: the base policy, the first SFT
    # variant, or the soup of the two (SALSA); gold and d are measured against the base policy
    reference: Literal["base", "sft", "soup"] = Field(
        default="base",
        description=(
            "start and reference model: base (the base policy), sft (the first SFT variant) or "
            "soup (the average of the two, SALSA); gold and d are measured against the base policy"
        ),
    )
    settings: DAAConfig = Field(
        default_factory=DAAConfig,
        description="the DAA hyperparameters every run shares (loss and beta come from betas)",
    )

    @field_validator("betas")
    @classmethod
    def _losses(cls, v: dict[str, list[float]]) -> dict[str, list[float]]:
        from proxygap.losses.daa import DAA_LOSSES

        unknown = sorted(set(v) - set(DAA_LOSSES))
        if unknown:
            raise ValueError(f"unknown DAA loss(es) {unknown}; allowed: {sorted(DAA_LOSSES)}")
        empty = sorted(k for k, b in v.items() if not b)
        if empty:
            raise ValueError(f"no betas given for {empty}")
        return v
