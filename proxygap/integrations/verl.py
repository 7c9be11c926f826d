"""proxygap in verl: ``compute_score`` functions for verl's reward managers (written against
verl 0.9.1; ``pip install "proxygap[verl]"``).

verl calls a custom reward function named in its config (``reward.custom_reward_function.path``
and ``.name``):

- per sample (the ``naive`` manager, also in the reward loop):
  ``compute_score(data_source=, solution_str=, ground_truth=, extra_info=, **reward_kwargs)``
  returning a float or a dict with ``"score"``; every other key of the dict is appended to
  ``reward_extra_info``, so every sample must return the same keys;
- per batch (``reward_manager.name=batch``): ``compute_score(data_sources=, solution_strs=,
  ground_truths=, extra_infos=, **reward_kwargs)`` returning one such value per sample.

``solution_str`` is the decoded response only. A reward model reads prompt and response, so
the prompt must reach the function: put it in each row's ``extra_info`` (key ``"prompt"`` by
default, ``prompt_key`` otherwise) when building the dataset; without it the response alone is
scored. The functions below return ``{"score": reward, "proxygap/proxy": ...,
"proxygap/ensemble_std": ..., ["proxygap/gold"], ["proxygap/monitor/score",
"proxygap/monitor/alarm"]}`` (see :class:`~proxygap.integrations.service.RewardService`).

Configured by environment (``PROXYGAP_REWARD_MODELS`` ..., see
:mod:`proxygap.integrations.service`), point verl at this file::

    FILE=$(python -c "import proxygap.integrations.verl as m; print(m.__file__)")
    python -m verl.trainer.main_ppo ... reward.custom_reward_function.path=$FILE
    # and reward.custom_reward_function.name=compute_score (or compute_score_batch)

or build your own with :func:`make_compute_score` in a file of yours.

Tested against the calling code of verl 0.9.1's ``NaiveRewardManager`` and
``BatchRewardManager`` installed without their GPU dependencies, and by the suite against this
documented contract (verl is not a test dependency). Ray workers each build their own service.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from proxygap.integrations.scoring import Joiner, text_join
from proxygap.integrations.service import RewardService, shared_service

__all__ = ["compute_score", "compute_score_batch", "make_compute_score"]


def _text(
    join: Joiner, solution: str, extra_info: Any, prompt_key: str
) -> str:  # fmt: skip
    prompt = extra_info.get(prompt_key) if isinstance(extra_info, dict) else None
    return join([prompt], [solution])[0] if isinstance(prompt, str) else solution


def make_compute_score(
    service: RewardService | Callable[[], RewardService],
    *,
    prompt_key: str = "prompt",
    join: Joiner | None = None,
    batch: bool = False,
) -> Callable[..., Any]:
    """A verl ``compute_score`` (``batch=True``: for the batch manager) over ``service`` (or a
    function building it on first use). ``join(prompts, responses)`` builds the texts the
    reward models read (default ``prompt + " " + response``)."""
    joiner = join or text_join(" ")
    get = service if callable(service) and not isinstance(service, RewardService) else None

    def svc() -> RewardService:
        return get() if get is not None else service  # type: ignore[return-value]

    def compute_score(
        data_source: Any = None, solution_str: str = "", ground_truth: Any = None,
        extra_info: Any = None, **kwargs: Any,
    ) -> dict[str, float]:  # fmt: skip
        text = _text(joiner, solution_str, extra_info, prompt_key)
        rewards, extras = svc().score([text], [solution_str])
        return {"score": float(rewards[0]), **extras[0]}

    def compute_score_batch(
        data_sources: Sequence[Any] = (), solution_strs: Sequence[str] = (),
        ground_truths: Sequence[Any] = (), extra_infos: Sequence[Any] | None = None,
        **kwargs: Any,
    ) -> list[dict[str, float]]:  # fmt: skip
        infos = list(extra_infos) if extra_infos is not None else [None] * len(solution_strs)
        if len(infos) != len(solution_strs):
            raise ValueError(f"{len(infos)} extra_infos for {len(solution_strs)} solutions")
        texts = [_text(joiner, s, e, prompt_key) for s, e in zip(solution_strs, infos, strict=True)]
        rewards, extras = svc().score(texts, list(solution_strs))
        return [{"score": float(r), **x} for r, x in zip(rewards, extras, strict=True)]

    return compute_score_batch if batch else compute_score


compute_score = make_compute_score(shared_service)
"""Per-sample ``compute_score`` configured by the ``PROXYGAP_*`` environment variables."""

compute_score_batch = make_compute_score(shared_service, batch=True)
"""Batch ``compute_score`` (verl's ``batch`` reward manager), configured by environment."""
