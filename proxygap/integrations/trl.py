"""proxygap in TRL (``pip install "proxygap[trl]"``; written against TRL 1.16).

Reward functions in TRL's ``reward_funcs`` signature, and a callback that logs what they scored
with KL, signals and the monitor's alarm (see :mod:`proxygap.integrations.trl_rewards` and
:mod:`proxygap.integrations.trl_callback`)::

    from proxygap.integrations.trl import ProxygapCallback, ensemble_reward, gold_reward

    proxy = ensemble_reward(["rm-0", "rm-1", "rm-2"], aggregation="uwo", reference=base_texts)
    trainer = GRPOTrainer(
        model=policy,
        reward_funcs=[proxy, gold_reward(my_gold)],
        args=GRPOConfig(..., reward_weights=[1.0, 0.0], beta=0.04),  # gold: logged, not trained on
        train_dataset=prompts,
        callbacks=[ProxygapCallback()],
    )

A script with its own reward function changes by ``callbacks=[ProxygapCallback()]`` and
``reward_funcs=monitor_reward(fn)``. Metrics land in ``trainer.state.log_history`` and every
``report_to`` tracker as ``proxygap/<name>``; :func:`proxygap.runs.history_from_log` turns them
into the package's history rows.

Trainers that generate nothing while training (``DPOTrainer``, SFT, KTO ...) take
:class:`~proxygap.integrations.trl_eval.ProxygapEvalCallback` instead: it samples a fixed prompt
set at evaluation points and logs gold, proxy, KL and the monitor on those samples::

    DPOTrainer(..., callbacks=[ProxygapEvalCallback(prompts, proxy=proxy, gold=gold, every=50)])
"""

from __future__ import annotations

from proxygap.integrations.scoring import EnsembleScorer, concat_join, text_join
from proxygap.integrations.trl_callback import ProxygapCallback
from proxygap.integrations.trl_eval import ProxygapEvalCallback
from proxygap.integrations.trl_kl import kl_metrics
from proxygap.integrations.trl_rewards import (
    EnsembleReward,
    GoldReward,
    TransformedReward,
    TRLReward,
    ensemble_reward,
    gold_reward,
    lsc_reward,
    monitor_reward,
    par_reward,
    reference_rewards,
)
from proxygap.runs import history_from_log

__all__ = [
    "EnsembleReward",
    "EnsembleScorer",
    "GoldReward",
    "ProxygapCallback",
    "ProxygapEvalCallback",
    "TRLReward",
    "TransformedReward",
    "concat_join",
    "ensemble_reward",
    "gold_reward",
    "history_from_log",
    "kl_metrics",
    "lsc_reward",
    "monitor_reward",
    "par_reward",
    "reference_rewards",
    "text_join",
]
