"""The f-divergence study's section (docs/methods.md §7): f-DPG arms in online RL and f-DPO
losses in direct alignment, each over the same seeds, on the study's task and proxy.

Every RL arm is ``algo: fdpg`` with one divergence and the same ``beta`` (the temperature of the
target ``pi0 exp(r / beta)``, i.e. the KL coefficient of RLHF); the reverse-KL arm is the
KL-penalised RL objective. Every DAA row is one loss of the f-DPO family (``dpo`` is the
reverse KL) at the same ``beta``. Each field carries its meaning as its description
(``proxygap show fdiv`` prints them).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from proxygap.optimize.daa import DAAConfig
from proxygap.optimize.rl_config import RLConfig
from proxygap.schema import PosFloat, PosInt, Strict

__all__ = ["FDivDAAConfig", "FDivRLConfig", "FDivStudyConfig"]

Divergence = Literal["reverse_kl", "forward_kl", "js", "tv"]
_DIVERGENCES: list[Divergence] = ["reverse_kl", "forward_kl", "js"]


def _distinct(values: list, what: str) -> list:
    repeated = sorted({str(v) for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(f"{what} must be distinct; repeated: {repeated}")
    return values


class FDivRLConfig(Strict):
    """The RL arms: one f-DPG run per divergence and seed, all with ``beta`` and ``settings``."""

    divergences: list[Divergence] = Field(
        default_factory=lambda: list(_DIVERGENCES),
        min_length=1,
        description="the divergences D_f(pi || p) of the arms (reverse_kl: RLHF with a KL "
        "penalty; forward_kl: distributional policy gradient; js; tv)",
    )
    beta: PosFloat = Field(
        default=0.1, description="temperature of the target pi0 exp(r/beta), the KL coefficient"
    )
    settings: RLConfig = Field(
        default_factory=RLConfig,
        description="the RL settings every arm shares (algo, divergence, kl_coef and seed come "
        "from the arm)",
    )

    @field_validator("divergences")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        return _distinct(v, "divergences")

    @model_validator(mode="after")
    def _arms_valid(self) -> FDivRLConfig:
        self.arm(self.divergences[0], 0)  # the RLConfig checks (group_size, kl_mode) name fields
        return self

    def arm(self, divergence: str, seed: int) -> RLConfig:
        """The validated settings of one arm."""
        data = self.settings.model_dump()
        data |= {"algo": "fdpg", "divergence": divergence, "kl_coef": self.beta, "seed": seed}
        return RLConfig.model_validate(data)


class FDivDAAConfig(Strict):
    """The DAA rows: one run per loss and seed on the study's gold-labelled pairs."""

    losses: list[str] = Field(
        default_factory=lambda: ["dpo", "fdpo_fkl", "fdpo_js", "fdpo_alpha"],
        min_length=1,
        description="f-DPO losses by registry name (dpo is the reverse KL; fdpo_fkl, fdpo_js, "
        "fdpo_alpha); the first is the baseline the others are compared with",
    )
    beta: PosFloat = Field(default=0.1, description="beta of every loss")
    alpha: Annotated[float, Field(gt=0.0, lt=1.0)] | None = Field(
        default=None, description="alpha of fdpo_alpha; None: the loss's default (0.5)"
    )
    n_pairs: PosInt | None = Field(
        default=None, description="training pairs; None: all training pairs"
    )
    label_noise: Annotated[float, Field(ge=0.0, le=0.5)] = Field(
        default=0.0, description="fraction of labels flipped, as a proxy with that noise sees them"
    )
    settings: DAAConfig = Field(
        default_factory=DAAConfig,
        description="the DAA settings every row shares (loss, beta and seed come from the row)",
    )

    @field_validator("losses")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        from proxygap.losses.daa import DAA_LOSSES

        unknown = sorted(set(v) - set(DAA_LOSSES))
        if unknown:
            raise ValueError(f"unknown DAA loss(es) {unknown}; allowed: {sorted(DAA_LOSSES)}")
        return _distinct(v, "losses")

    @model_validator(mode="after")
    def _rows_valid(self) -> FDivDAAConfig:
        for loss in self.losses:
            self.row(loss, 0)  # a hyperparameter the loss does not take is named here
        return self

    def row(self, loss: str, seed: int) -> DAAConfig:
        """The validated settings of one row (``alpha`` reaches only ``fdpo_alpha``)."""
        data = self.settings.model_dump()
        data["alpha"] = self.alpha if loss == "fdpo_alpha" else None
        return DAAConfig.model_validate(data | {"loss": loss, "beta": self.beta, "seed": seed})


class FDivStudyConfig(Strict):
    """The f-divergence comparison: RL arms and DAA rows, each over ``seeds``."""

    proxy: str = Field(
        description="the study proxy the RL arms optimise (the DAA rows track it too)"
    )
    seeds: list[int] = Field(
        default_factory=lambda: [0, 1, 2],
        min_length=2,
        description="seeds of every arm and row (>= 2 for intervals; the report needs >= 3 to "
        "state a verdict with any power)",
    )
    rl: FDivRLConfig | None = Field(
        default_factory=FDivRLConfig, description="the f-DPG arms; null: none"
    )
    daa: FDivDAAConfig | None = Field(
        default_factory=FDivDAAConfig, description="the f-DPO rows; null: none"
    )

    @field_validator("seeds")
    @classmethod
    def _unique(cls, v: list[int]) -> list[int]:
        return _distinct(v, "seeds")

    @model_validator(mode="after")
    def _something(self) -> FDivStudyConfig:
        if self.rl is None and self.daa is None:
            raise ValueError("fdiv needs rl or daa (both are null)")
        return self
