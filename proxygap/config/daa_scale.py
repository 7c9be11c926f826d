"""The DAA scale study's config (section ``daa_scale``): direct alignment over a beta grid at
several base-policy sizes, run by :mod:`proxygap.study.daa_scale`."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, field_validator

from proxygap.optimize.daa import DAAConfig
from proxygap.schema import PosInt, Strict

__all__ = ["DAAScaleConfig"]


class DAAScaleConfig(Strict):
    """DPO, IPO, ... over a beta grid at each base-policy size (Rafailov et al. 2024).

    Every ``(size, loss, beta, seed)`` is one run from that size's base policy, which is also its
    reference model and the policy gold, KL and ``d`` are measured against. All sizes learn from
    the same first ``n_pairs`` gold-labelled training pairs (the study's pairs, sampled from the
    task's default base policy) and share ``settings``; ``seeds`` vary data order and sampling.
    ``collapse_threshold`` is the share of never-ending responses from which a checkpoint counts
    as collapsed.
    """

    sizes: list[str] = Field(
        min_length=1, description="base-policy sizes of the task (reviews: tiny, small, base)"
    )
    betas: dict[str, list[Annotated[float, Field(gt=0.0)]]] = Field(
        min_length=1,
        description="per DAA loss (dpo, ipo, slic, ...) its beta grid: one run per beta",
    )
    seeds: list[int] = Field(
        default_factory=lambda: [0], min_length=1, description="training seeds of every run"
    )
    n_pairs: PosInt | None = Field(
        default=None, description="training pairs; None: all the study's training pairs"
    )
    collapse_threshold: Annotated[float, Field(gt=0.0, le=1.0)] = Field(
        default=0.5, description="share of never-ending responses that marks a collapse"
    )
    settings: DAAConfig = Field(
        default_factory=DAAConfig,
        description="the DAA hyperparameters every run shares (loss, beta, seed: from above)",
    )

    @field_validator("sizes", "seeds")
    @classmethod
    def _distinct(cls, v: list[Any]) -> list[Any]:
        dup = sorted({str(x) for x in v if v.count(x) > 1})
        if dup:
            raise ValueError(f"repeated entries {dup}")
        return v

    @field_validator("betas")
    @classmethod
    def _losses(cls, v: dict[str, list[float]]) -> dict[str, list[float]]:
        from proxygap.losses.daa import DAA_LOSSES

        unknown = sorted(set(v) - set(DAA_LOSSES))
        if unknown:
            raise ValueError(f"unknown DAA loss(es) {unknown}; allowed: {sorted(DAA_LOSSES)}")
        for loss, grid in v.items():
            if len(grid) < 2 or len(set(grid)) != len(grid):
                raise ValueError(f"{loss}: a beta grid needs >= 2 distinct betas, got {grid}")
        return {loss: sorted(grid) for loss, grid in v.items()}
