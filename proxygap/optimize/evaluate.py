"""Evaluation of a policy on fresh samples: proxy, gold, KL to the initial policy, diversity.

Used by every optimiser that moves the policy's weights (RL, direct alignment). Each call samples
``n_per_prompt`` responses for fixed held-out prompts with a fixed seed (common random numbers:
successive evaluations differ by the policy, not by sampling luck) and reports the metrics of
docs/methods.md §6 with their standard errors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel

from proxygap.analysis.diversity import distinct_n
from proxygap.analysis.hump import collapse_share
from proxygap.estimators.kl import sequence_kl
from proxygap.models.logprobs import response_logprobs
from proxygap.monitor.signals import (
    TOPK,
    UNLIKELY_QUANTILE,
    OutlierReference,
    ensemble_disagreement,
    mc_entropy,
    token_nll,
    topk_signals,
    unlikely_cutoff,
    unlikely_rate,
)
from proxygap.sampling.generate import (
    Samples,
    condition_prompts,
    decode_responses,
    encode_prompts,
    sample,
)

ScoreFn = Callable[[list[str]], np.ndarray]


def _se(x: np.ndarray) -> float:
    return float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")


def _prompt_se(x: np.ndarray, prompt: np.ndarray) -> float:
    """Standard error of the mean of ``x`` with samples clustered by ``prompt``: the SE of the
    mean over per-prompt means (samples of one prompt are correlated, so the per-sample SE
    understates the noise of the mean)."""
    _, group = np.unique(prompt, return_inverse=True)
    means = np.bincount(group, weights=x) / np.bincount(group)
    return _se(means)


def _budget_gold(x: np.ndarray, prompt: np.ndarray, k: int) -> dict[str, float]:
    """``reward/gold_budget`` (and its prompt-clustered ``_se`` with two prompts or more): the
    mean of ``x`` over the samples of the first ``k`` prompts."""
    keep = prompt < k
    out = {"reward/gold_budget": float(x[keep].mean())}
    if k > 1:
        out["reward/gold_budget_se"] = _prompt_se(x[keep], prompt[keep])
    return out


def win_rate(a: np.ndarray, b: np.ndarray) -> float:
    """P(a > b) + P(a = b) / 2 over paired samples."""
    return float(np.mean((a > b) + 0.5 * (a == b)))


@dataclass
class PolicyEvaluator:
    """Scores a policy against the initial policy ``ref`` on held-out prompts.

    ``gold`` and ``proxy`` map full texts to scores; gold is divided by ``gold_scale`` (its
    standard deviation over initial-policy samples) and both are reported as differences from
    the initial policy's mean on the same prompts, so every curve starts at 0.

    Gold-free signals for the overoptimization monitor (:mod:`proxygap.monitor.signals`) come
    with every evaluation: ``signal/entropy`` (per-token entropy of the policy's own samples),
    ``signal/proxy_std`` (the proxy's spread over the samples, with a proxy), and, when given,
    ``signal/ensemble_std`` from ``members`` (texts -> ``(n, K)`` standardised member scores)
    and ``signal/outlier_rate`` from ``embed`` (texts -> ``(n, H)`` reward-model hidden states,
    compared with the initial policy's samples), and ``signal/unlikely_rate``, the share of
    samples the initial policy finds less likely per token than 99% of its own
    (``UNLIKELY_QUANTILE``; :func:`~proxygap.monitor.signals.unlikely_rate`), and
    ``signal/topk_mass`` and ``signal/topk_entropy``, the policy's top-10 probability mass and
    top-10 entropy at its sampled positions (``TOPK``;
    :func:`~proxygap.monitor.signals.topk_signals`).

    With ``gold_budget_prompts = k``, ``reward/gold_budget`` (and ``reward/gold_budget_se``)
    is gold on the samples of the first ``k`` prompts only: what a team with a small labelling
    budget would see, while ``reward/gold`` on all samples is the ground truth.
    """

    ref: PreTrainedModel
    tokenizer: Any
    join: Callable[[Sequence[str], Sequence[str]], list[str]]
    prompts: list[str]
    prompt_ids: list[list[int]]
    gold: ScoreFn
    proxy: ScoreFn | None
    n_per_prompt: int = 4
    max_new_tokens: int = 40
    temperature: float = 1.0
    seed: int = 0
    batch_size: int = 512
    gold_scale: float = 1.0
    members: ScoreFn | None = None
    embed: ScoreFn | None = None
    gold_budget_prompts: int | None = None

    @classmethod
    def for_task(
        cls,
        ref: PreTrainedModel,
        tokenizer: Any,
        task: Any,
        *,
        proxy: ScoreFn | None,
        n_prompts: int,
        n_per_prompt: int,
        max_new_tokens: int | None = None,
        temperature: float = 1.0,
        gold_scale: float = 1.0,
        seed: int = 0,
        members: ScoreFn | None = None,
        embed: ScoreFn | None = None,
        gold_budget_prompts: int | None = None,
    ) -> PolicyEvaluator:
        """An evaluator on ``n_prompts`` prompts of a task, drawn with ``seed`` (use a seed the
        training prompts do not), scored by the task's gold; ``members`` and ``embed`` add the
        monitor's ensemble and latent signals, ``gold_budget_prompts`` the gold of a small
        budget (class docstring)."""
        prompts = task.prompts(n_prompts, seed=seed, heldout=True)
        return cls(
            ref=ref,
            tokenizer=tokenizer,
            join=task.join,
            prompts=prompts,
            prompt_ids=encode_prompts(tokenizer, prompts),
            gold=task.gold,
            proxy=proxy,
            n_per_prompt=n_per_prompt,
            max_new_tokens=max_new_tokens or task.max_new_tokens,
            temperature=temperature,
            seed=seed,
            gold_scale=gold_scale,
            members=members,
            embed=embed,
            gold_budget_prompts=gold_budget_prompts,
        )

    def __post_init__(self) -> None:
        k = self.gold_budget_prompts
        if k is not None and not 1 <= k <= len(self.prompts):
            raise ValueError(f"gold_budget_prompts must lie in [1, {len(self.prompts)}], got {k}")
        self._init: dict[str, np.ndarray] | None = None
        s0 = self._sample(self.ref)
        self._init = self._score(s0)
        # the initial policy's per-token NLL of its own samples, exactly (not the tempered
        # sampling log-probs): the cutoff of signal/unlikely_rate
        nll0 = token_nll(self._ref_logprobs(s0), s0.mask)
        self._unlikely_cutoff = unlikely_cutoff(nll0, UNLIKELY_QUANTILE)
        self._outliers: OutlierReference | None = None  # fitted once: the initial samples
        if "embedding" in self._init and len(self._init["embedding"]) >= 4:
            # fewer than 4 initial samples cannot both fit and calibrate: no outlier rate
            self._outliers = OutlierReference(self._init["embedding"])

    def _sample(
        self,
        policy: PreTrainedModel,
        prefix: Sequence[int] = (),
        vocab_size: int | None = None,
    ) -> Samples:
        prompt_ids = self.prompt_ids
        if prefix:
            prompt_ids = condition_prompts(prompt_ids, prefix, self.tokenizer.bos_token_id)
        return sample(
            policy,
            prompt_ids,
            n_per_prompt=self.n_per_prompt,
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            eos_id=self.tokenizer.eos_token_id,
            pad_id=self.tokenizer.pad_token_id,
            batch_size=self.batch_size,
            seed=self.seed,
            vocab_size=vocab_size,
            topk=TOPK,
        )

    @torch.no_grad()
    def _ref_logprobs(self, s: Samples) -> torch.Tensor:
        """``(B, T)`` log-probs of the sampled responses under the initial policy, on the plain
        prompts, on the samples' device (the CPU, whatever the models run on)."""
        lp = response_logprobs(
            self.ref,
            [self.prompt_ids[i] for i in s.prompt_index.tolist()],
            s.response_ids,
            s.mask,
            pad_id=self.tokenizer.pad_token_id,
            batch_size=self.batch_size,
        )
        return lp.to(s.mask.device)

    def _score(self, s: Samples) -> dict[str, np.ndarray]:
        responses = decode_responses(s, self.tokenizer)
        prompts = [self.prompts[i] for i in s.prompt_index.tolist()]
        texts = self.join(prompts, responses)
        out = {"gold": self.gold(texts) / self.gold_scale}
        if self.embed is not None:  # first: a proxy scorer's pass then serves proxy and members
            out["embedding"] = self.embed(texts)
        if self.proxy is not None:
            out["proxy"] = self.proxy(texts)
        out["length"] = s.lengths.numpy().astype(np.float64)
        out["texts"] = np.array(responses, dtype=object)
        out["full_texts"] = np.array(texts, dtype=object)
        return out

    def _signals(
        self, s: Samples, scores: dict[str, np.ndarray], ref_lp: torch.Tensor
    ) -> dict[str, float]:
        """``signal/*``: what the monitor reads besides the metrics (see the class docstring)."""
        assert self._init is not None
        texts = list(scores["full_texts"])
        out = {
            "signal/entropy": mc_entropy(s.logprobs, s.mask),
            "signal/unlikely_rate": unlikely_rate(token_nll(ref_lp, s.mask), self._unlikely_cutoff),
        }
        if s.topk_stats is not None:
            mass, entropy = topk_signals(s.topk_stats, s.mask)
            out["signal/topk_mass"], out["signal/topk_entropy"] = mass, entropy
        if "proxy" in scores:
            out["signal/proxy_std"] = float(np.std(scores["proxy"]))
        if self.members is not None:
            out["signal/ensemble_std"] = ensemble_disagreement(self.members(texts))
        if self._outliers is not None:
            out["signal/outlier_rate"] = self._outliers.rate(scores["embedding"])
        return out

    @torch.no_grad()
    def __call__(
        self,
        policy: PreTrainedModel,
        *,
        prefix: Sequence[int] = (),
        vocab_size: int | None = None,
    ) -> tuple[dict[str, float], list[dict[str, Any]]]:
        """Metrics (namespaced) and a few example samples.

        Args:
            policy: the policy to measure.
            prefix: token ids the policy is conditioned on, inserted right after the prompts'
                bos (e.g. Quark's best-quantile token); the initial policy's log-probs in the
                KL are taken on the plain prompts, so ``kl/*`` measure
                ``KL(pi(. | prefix, x) || pi0(. | x))``.
            vocab_size: passed to :func:`~proxygap.sampling.generate.sample`: only the policy's
                first ``vocab_size`` logits count (the initial policy's vocabulary).
        """
        assert self._init is not None
        was_training = policy.training
        policy.eval()
        s = self._sample(policy, prefix, vocab_size)
        ref_lp = self._ref_logprobs(s)
        kl, kl_metrics = sequence_kl(s.logprobs - ref_lp, s.mask)
        scores = self._score(s)
        init = self._init
        gold, gold0 = scores["gold"], init["gold"]
        metrics: dict[str, float] = {
            "reward/gold": float(gold.mean() - gold0.mean()),
            "reward/gold_se": _se(gold - gold0),
            "reward/gold_raw": float(gold.mean() * self.gold_scale),
            "winrate/gold_vs_init": win_rate(gold, gold0),
            "length/mean": float(scores["length"].mean()),
            "length/unfinished": collapse_share(
                s.response_ids,
                s.mask,
                eos_id=self.tokenizer.eos_token_id,
                max_new_tokens=self.max_new_tokens,
            ),
            "diversity/distinct1": distinct_n(list(scores["texts"]), 1),
            "diversity/distinct2": distinct_n(list(scores["texts"]), 2),
            **kl_metrics,
            "kl/k1_se": _se(kl.k1.double().numpy()),
            "d": float(np.sqrt(max(kl_metrics["kl/k1"], 0.0))),
        }
        prompts = s.prompt_index.numpy()
        if len(np.unique(prompts)) > 1:  # a clustered SE needs two prompts
            metrics["reward/gold_se_prompt"] = _prompt_se(gold - gold0, prompts)
        if self.gold_budget_prompts is not None:
            metrics |= _budget_gold(gold - gold0, prompts, self.gold_budget_prompts)
        if "proxy" in scores:
            metrics["reward/proxy"] = float(scores["proxy"].mean() - init["proxy"].mean())
            metrics["reward/proxy_se"] = _se(scores["proxy"] - init["proxy"])
        metrics |= self._signals(s, scores, ref_lp)
        examples = [
            {
                "prompt": self.prompts[int(s.prompt_index[i])],
                "response": str(scores["texts"][i]),
                "gold": float(gold[i] * self.gold_scale),
                **({"proxy": float(scores["proxy"][i])} if "proxy" in scores else {}),
            }
            for i in range(0, len(gold), max(1, len(gold) // 4))
        ][:4]
        policy.train(was_training)
        return metrics, examples
