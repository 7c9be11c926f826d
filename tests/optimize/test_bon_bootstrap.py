"""bon_curve's bootstrap over prompts: the point estimates are unchanged, the intervals come
from resampled prompts and are reproducible by seed."""

from __future__ import annotations

import numpy as np
import pytest

from proxygap.optimize.bon import bon_curve, log_spaced_ns


def pools(seed: int = 0, P: int = 24, N: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Proxy = gold + noise that grows in the proxy's upper tail: gold turns down at large n."""
    rng = np.random.default_rng(seed)
    gold = rng.normal(size=(P, N)) + rng.normal(size=(P, 1))  # a shared effect per prompt
    hack = np.maximum(rng.normal(size=(P, N)), 0) ** 3
    return gold + hack, gold - 0.3 * hack


def test_bootstrap_leaves_the_point_estimates_alone() -> None:
    select, gold = pools()
    ns = log_spaced_ns(64, 12)
    plain = bon_curve("rm", select, gold, ns=ns)
    boot = bon_curve("rm", select, gold, ns=ns, n_boot=400, seed=1, keep_per_prompt=True)
    assert plain.boot is None and plain.per_prompt is None
    assert boot.fit == plain.fit and boot.turn == plain.turn
    np.testing.assert_array_equal(boot.gold, plain.gold)
    assert boot.per_prompt is not None and boot.per_prompt.shape == (24, len(boot.ns))
    np.testing.assert_allclose(boot.per_prompt.mean(axis=0), boot.gold, atol=1e-12)
    b = boot.boot
    assert b is not None and b.n_boot == 400 and b.level == 0.95
    assert b.alpha[0] < boot.fit.alpha < b.alpha[1]
    assert b.beta[0] < boot.fit.beta < b.beta[1]
    assert b.observed_gold_peak[0] <= boot.turn.gold_peak <= b.observed_gold_peak[1]
    # the same seed gives the same intervals; another seed, slightly different ones
    again = bon_curve("rm", select, gold, ns=ns, n_boot=400, seed=1).boot
    other = bon_curve("rm", select, gold, ns=ns, n_boot=400, seed=2).boot
    assert again == b and other != b
    assert other is not None and other.alpha_se == pytest.approx(b.alpha_se, rel=0.15)


def test_one_prompt_has_no_bootstrap() -> None:
    select, gold = pools(P=1)
    assert bon_curve("rm", select, gold, ns=log_spaced_ns(64, 8), n_boot=100).boot is None
