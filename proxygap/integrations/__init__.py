"""proxygap inside other trainers: TRL, verl and OpenRLHF.

What the adapters bring into a run that the trainer does not have: an ensemble reward with the
aggregations of Coste et al. 2023 (mean, WCO, UWO) from reward-model folders, PAR and LSC
transforms of it (docs/methods.md §4), a gold reward that is logged and not trained on, clamped
k1/k3 KL to the reference (docs/methods.md §2), per-batch signals of overoptimization, and the
monitor's score and alarm.

- :mod:`proxygap.integrations.scoring`: the framework-free pieces (ensemble scoring, batch
  signals, a thread-safe window for trainers that score one sample at a time);
- :mod:`proxygap.integrations.trl`: reward functions in TRL's ``reward_funcs`` signature,
  :func:`~proxygap.integrations.trl.monitor_reward` and
  :class:`~proxygap.integrations.trl.ProxygapCallback` (extra ``proxygap[trl]``);
- :mod:`proxygap.integrations.verl`: ``compute_score`` functions for verl's reward managers;
- :mod:`proxygap.integrations.openrlhf`: a ``reward_func(queries, prompts, labels)`` file for
  OpenRLHF's ``--remote_rm_url``.

Nothing here imports TRL, verl or OpenRLHF: the adapters follow their documented call
signatures, so they import (and are tested) without those packages.
"""
