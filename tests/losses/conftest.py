"""Shared inputs of the loss tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from proxygap.losses.daa import PairBatchLogps


@pytest.fixture
def random_pairs() -> Callable[..., PairBatchLogps]:
    """``make(b, seed)``: ``b`` pairs of float64 policy and reference sequence log-probs in
    ``(-30, 0]`` and response lengths in ``[1, 40)``, from a seeded generator."""

    def make(b: int = 6, seed: int = 0) -> PairBatchLogps:
        g = torch.Generator().manual_seed(seed)

        def logps() -> torch.Tensor:
            return -30.0 * torch.rand(b, generator=g, dtype=torch.float64)

        return PairBatchLogps(
            policy_chosen=logps(),
            policy_rejected=logps(),
            ref_chosen=logps(),
            ref_rejected=logps(),
            chosen_len=torch.randint(1, 40, (b,), generator=g),
            rejected_len=torch.randint(1, 40, (b,), generator=g),
        )

    return make
