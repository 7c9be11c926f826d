"""Expected calibration error of pairwise preference probabilities (docs/methods.md §7).

A model that gives each labelled pair ``(chosen, rejected)`` a probability ``p`` that the chosen
response is preferred (for a Bradley-Terry model of implicit rewards, ``p = sigma(margin)``)
predicts the chosen one when ``p > 1/2``, with confidence ``c = max(p, 1 - p)`` in ``[1/2, 1]``;
the prediction is correct when ``p > 1/2`` (a tie ``p = 1/2`` counts as half correct). With the
confidences in ``B`` equal-width bins over ``[1/2, 1]`` (the last one closed), the expected
calibration error is

    ECE = sum_b (n_b / n) |acc_b - conf_b|,

the mean confidence ``conf_b`` and the fraction correct ``acc_b`` of bin ``b`` (Guo et al. 2017,
"On Calibration of Modern Neural Networks"). ``ECE = 0`` when every bin is right as often as it
is confident; a model that says ``1/2`` everywhere has ``ECE = |accuracy - 1/2|``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["preference_ece"]


def preference_ece(p_chosen: ArrayLike, *, n_bins: int = 10) -> float:
    """The ECE of ``p_chosen`` (the probability the model gives each pair's chosen response of
    being preferred), with ``n_bins`` equal-width confidence bins over ``[1/2, 1]``."""
    p = np.asarray(p_chosen, dtype=np.float64).reshape(-1)
    if p.size == 0:
        raise ValueError("no probabilities to calibrate")
    if not bool(np.all((p >= 0.0) & (p <= 1.0))):
        raise ValueError("probabilities must lie in [0, 1] (and not be nan)")
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be an integer >= 1, got {n_bins!r}")
    conf = np.maximum(p, 1.0 - p)
    correct = np.where(p > 0.5, 1.0, np.where(p == 0.5, 0.5, 0.0))
    bins = np.minimum(((conf - 0.5) * 2.0 * n_bins).astype(np.int64), n_bins - 1)
    # n_b |acc_b - conf_b| = |sum of correct - sum of confidence| over the bin's pairs
    acc = np.bincount(bins, weights=correct, minlength=n_bins)
    cs = np.bincount(bins, weights=conf, minlength=n_bins)
    return float(np.abs(acc - cs).sum() / p.size)
