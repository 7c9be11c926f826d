"""proxygap: measure, predict and mitigate reward-model overoptimization.

The public API, ``import proxygap as pg`` (the README's "API" section lists every name):

- best-of-n: :func:`best_of_n` (the unbiased all-n estimator of Gao et al. 2023, eq. 1),
  :func:`kl_bon`, :func:`bon_weights`, :func:`bon_log_weights`; gold and proxy curves against
  ``d = sqrt(KL)`` with their law fit, :func:`bon_curve`;
- KL estimators k1, k2 and a k3 that cannot overflow (Schulman 2020; docs/methods.md §2):
  :func:`kl_k1`, :func:`kl_k2`, :func:`kl_k3`, :func:`sequence_kl`, :func:`log_ratio`;
- the laws of Gao et al. 2023 and turn-down tests: :func:`fit_bon_law`, :func:`fit_rl_law`,
  :func:`overoptimization`, :func:`divergence_point`;
- ensemble aggregations (Coste et al. 2023): :func:`ensemble_mean`, :func:`ensemble_wco`,
  :func:`ensemble_uwo`, :func:`ensemble_std`, :func:`aggregate`, :func:`aggregate_members`;
- reward transforms (docs/methods.md §4): :func:`lsc`, :func:`par`, :func:`reference_quantile`,
  :func:`length_penalty`, :func:`clip_rewards`, :func:`whiten` and their hook classes;
- reward models: :func:`new_reward_model`, :func:`train_reward_model`, :func:`score_texts`,
  :func:`pairwise_accuracy`, :class:`ProxyScorer`, and loading by path (safetensors only, no
  remote code unless asked): :func:`load_reward_model`, :func:`load_policy`,
  :func:`load_tokenizer`;
- the gold-free overoptimization monitor, :class:`Monitor` (``update(row)`` gives its score and
  alarm);
- tasks (:func:`get_task`) and run folders: :func:`load_run`, :func:`history_from_log`.

Names are imported on first use (PEP 562), so ``import proxygap`` imports neither torch nor
numpy; the integrations with other trainers live in :mod:`proxygap.integrations`.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (4 ms)

_EXPORTS: dict[str, str] = {
    # best-of-n: estimator, KL, curves
    "BestOfN": "proxygap.estimators.bon",
    "best_of_n": "proxygap.estimators.bon",
    "bon_log_weights": "proxygap.estimators.bon",
    "bon_weights": "proxygap.estimators.bon",
    "kl_bon": "proxygap.estimators.bon",
    "BonCurve": "proxygap.optimize.bon",
    "bon_curve": "proxygap.optimize.bon",
    "log_spaced_ns": "proxygap.optimize.bon",
    # KL estimators
    "K3_CLAMP": "proxygap.estimators.kl",
    "SequenceKL": "proxygap.estimators.kl",
    "kl_k1": "proxygap.estimators.kl",
    "kl_k2": "proxygap.estimators.kl",
    "kl_k3": "proxygap.estimators.kl",
    "log_ratio": "proxygap.estimators.kl",
    "sequence_kl": "proxygap.estimators.kl",
    # laws and turn-down tests
    "LawFit": "proxygap.analysis.laws",
    "Overoptimization": "proxygap.analysis.laws",
    "divergence_point": "proxygap.analysis.laws",
    "fit_bon_law": "proxygap.analysis.laws",
    "fit_rl_law": "proxygap.analysis.laws",
    "overoptimization": "proxygap.analysis.laws",
    # ensembles
    "aggregate": "proxygap.rewards.ensemble",
    "ensemble_mean": "proxygap.rewards.ensemble",
    "ensemble_std": "proxygap.rewards.ensemble",
    "ensemble_uwo": "proxygap.rewards.ensemble",
    "ensemble_wco": "proxygap.rewards.ensemble",
    "aggregate_members": "proxygap.rewards.proxy",
    # reward transforms
    "ChainTransform": "proxygap.mitigations.transforms",
    "ClipTransform": "proxygap.mitigations.transforms",
    "LSCTransform": "proxygap.mitigations.transforms",
    "LengthPenalty": "proxygap.mitigations.transforms",
    "PARTransform": "proxygap.mitigations.transforms",
    "ReferenceCapTransform": "proxygap.mitigations.transforms",
    "WhitenTransform": "proxygap.mitigations.transforms",
    "clip_rewards": "proxygap.mitigations.transforms",
    "length_penalty": "proxygap.mitigations.transforms",
    "lsc": "proxygap.mitigations.transforms",
    "par": "proxygap.mitigations.transforms",
    "reference_quantile": "proxygap.mitigations.transforms",
    "whiten": "proxygap.mitigations.transforms",
    # reward models: training, scoring, loading
    "RewardTrainConfig": "proxygap.rewards.reward_model",
    "TrainHistory": "proxygap.rewards.reward_model",
    "new_reward_model": "proxygap.rewards.reward_model",
    "pairwise_accuracy": "proxygap.rewards.reward_model",
    "score_texts": "proxygap.rewards.reward_model",
    "train_reward_model": "proxygap.rewards.reward_model",
    "ProxyScorer": "proxygap.rewards.proxy",
    "ModelLoadError": "proxygap.models.loading",
    "load_policy": "proxygap.models.loading",
    "load_reward_model": "proxygap.models.loading",
    "load_tokenizer": "proxygap.models.loading",
    # the gold-free monitor
    "Monitor": "proxygap.monitor",
    # tasks and runs
    "Task": "proxygap.tasks",
    "get_task": "proxygap.tasks",
    "RunData": "proxygap.runs",
    "RunLoadError": "proxygap.runs",
    "history_from_log": "proxygap.runs",
    "load_run": "proxygap.runs",
}

__all__ = [
    "__version__",
    "BestOfN",
    "BonCurve",
    "ChainTransform",
    "ClipTransform",
    "K3_CLAMP",
    "LSCTransform",
    "LawFit",
    "LengthPenalty",
    "ModelLoadError",
    "Monitor",
    "Overoptimization",
    "PARTransform",
    "ProxyScorer",
    "ReferenceCapTransform",
    "RewardTrainConfig",
    "RunData",
    "RunLoadError",
    "SequenceKL",
    "Task",
    "TrainHistory",
    "WhitenTransform",
    "aggregate",
    "aggregate_members",
    "best_of_n",
    "bon_curve",
    "bon_log_weights",
    "bon_weights",
    "clip_rewards",
    "divergence_point",
    "ensemble_mean",
    "ensemble_std",
    "ensemble_uwo",
    "ensemble_wco",
    "fit_bon_law",
    "fit_rl_law",
    "get_task",
    "history_from_log",
    "kl_bon",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "length_penalty",
    "load_policy",
    "load_reward_model",
    "load_run",
    "load_tokenizer",
    "log_ratio",
    "log_spaced_ns",
    "lsc",
    "new_reward_model",
    "overoptimization",
    "pairwise_accuracy",
    "par",
    "reference_quantile",
    "score_texts",
    "sequence_kl",
    "train_reward_model",
    "whiten",
]


def __getattr__(name: str) -> object:
    """Import a public name on first use and keep it (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'proxygap' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # the names as type checkers and editors see them
    from proxygap.analysis.laws import (
        LawFit,
        Overoptimization,
        divergence_point,
        fit_bon_law,
        fit_rl_law,
        overoptimization,
    )
    from proxygap.estimators.bon import (
        BestOfN,
        best_of_n,
        bon_log_weights,
        bon_weights,
        kl_bon,
    )
    from proxygap.estimators.kl import (
        K3_CLAMP,
        SequenceKL,
        kl_k1,
        kl_k2,
        kl_k3,
        log_ratio,
        sequence_kl,
    )
    from proxygap.mitigations.transforms import (
        ChainTransform,
        ClipTransform,
        LengthPenalty,
        LSCTransform,
        PARTransform,
        ReferenceCapTransform,
        WhitenTransform,
        clip_rewards,
        length_penalty,
        lsc,
        par,
        reference_quantile,
        whiten,
    )
    from proxygap.models.loading import (
        ModelLoadError,
        load_policy,
        load_reward_model,
        load_tokenizer,
    )
    from proxygap.monitor import Monitor
    from proxygap.optimize.bon import BonCurve, bon_curve, log_spaced_ns
    from proxygap.rewards.ensemble import (
        aggregate,
        ensemble_mean,
        ensemble_std,
        ensemble_uwo,
        ensemble_wco,
    )
    from proxygap.rewards.proxy import ProxyScorer, aggregate_members
    from proxygap.rewards.reward_model import (
        RewardTrainConfig,
        TrainHistory,
        new_reward_model,
        pairwise_accuracy,
        score_texts,
        train_reward_model,
    )
    from proxygap.runs import RunData, RunLoadError, history_from_log, load_run
    from proxygap.tasks import Task, get_task
