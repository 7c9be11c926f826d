"""Named random streams: every seed a study or a training loop draws comes from here.

A study's seed ``s`` spawns one stream per named purpose, ``study_seed(s, name)``; a training
loop's seed spawns one stream per (step, purpose), ``step_seed(s, step, name)``. Call sites name
what the randomness is for; the numbers behind the names live only in this module and are fixed,
so a run of a given config draws the same samples in every version that keeps this table.
"""

from __future__ import annotations

import numpy as np

__all__ = ["STEP_STREAMS", "STUDY_STREAMS", "step_seed", "study_seed"]

STUDY_STREAMS: dict[str, int] = {
    "preference_prompts": 1,  # prompts of the preference pairs
    "preference_samples": 2,  # the two base-policy responses of every pair
    "bon_prompts": 3,  # best-of-n prompts
    "bon_pool": 4,  # best-of-n pool samples
    "rl_eval": 5,  # held-out prompts and samples of the RL evaluator
    "rl_train_prompts": 6,  # training prompts of the RL runs
    "policy_eval": 7,  # evaluator of DAA runs and mitigation arms
    "mitigation_train_prompts": 8,  # training prompts of the mitigation arms
    "reference_samples": 9,  # initial-policy samples of the mitigation arms' prompts
    "mitigation_bon_prompts": 11,  # best-of-n prompts of the mitigation study
    "detect_train_prompts": 12,  # training prompts of the detection corpus
    "detect_eval": 13,  # held-out prompts and samples of the detection corpus's evaluator
    "gold_probe": 14,  # base-policy samples gold must tell apart before a run starts
    "prompt_split": 15,  # training / held-out split of a task's prompt file
    "mitigation_members": 16,  # training seeds of the mitigation study's per-seed ensembles
    "fdiv_train_prompts": 17,  # training prompts of the f-divergence study's RL arms
    "fdiv_eval": 18,  # held-out prompts and samples of the f-divergence study's evaluators
    "bon_bootstrap": 19,  # prompt resamples of the best-of-n intervals
    "mitigation_bon_pool": 100,  # + the study seed index: one pool per seed
    "scaling_prompts": 200,  # + the scaling seed: best-of-n prompts of the scaling study
    "scaling_pool": 300,  # + the scaling seed: its pool samples
    "scaling_data": 400,  # + the scaling seed: which training pairs its proxies learn from
    "scaling_bootstrap": 500,  # + the scaling seed: prompt resamples of its intervals
    "scaling_rl": 600,  # + the scaling seed: its RL runs' sampling and prompt order
    "scaling_rl_prompts": 700,  # + the scaling seed: training prompts of its RL runs
    "scaling_rl_eval": 800,  # + the scaling seed: held-out prompts and samples of its RL runs
    "detect_daa_labels": 900,  # + the run's seed: label flips of a detection DAA run's pairs
}
"""Purpose -> offset of ``study_seed`` (``1000 * seed + offset``)."""

STEP_STREAMS: dict[str, int] = {
    "initial_samples": 0,  # samples of the initial policy (a loop's data at step 0)
    "sample": 1,  # the step's rollout
    "minibatch_order": 2,  # shuffling rows into optimiser steps
    "pool": 3,  # draws from a replay pool
}
"""Purpose -> last entry of the ``SeedSequence`` behind ``step_seed``."""


def study_seed(seed: int, name: str, index: int = 0) -> int:
    """The seed of stream ``name`` of a study seeded ``seed`` (``index`` numbers repeats of one
    stream, e.g. one pool per study seed)."""
    if name not in STUDY_STREAMS:
        raise KeyError(f"unknown random stream {name!r}; known: {sorted(STUDY_STREAMS)}")
    return seed * 1000 + STUDY_STREAMS[name] + index


def step_seed(seed: int, step: int, name: str) -> int:
    """The seed of stream ``name`` at training step ``step`` of a loop seeded ``seed``: a 32-bit
    word of ``numpy.random.SeedSequence([|seed|, step, k])`` (independent across steps)."""
    if name not in STEP_STREAMS:
        raise KeyError(f"unknown random stream {name!r}; known: {sorted(STEP_STREAMS)}")
    return mix(seed, step, STEP_STREAMS[name])


def mix(*parts: int) -> int:
    """A 32-bit seed from integers (``SeedSequence`` of their absolute values)."""
    return int(np.random.SeedSequence([abs(p) for p in parts]).generate_state(1)[0])
